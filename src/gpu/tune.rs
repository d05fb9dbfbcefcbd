//! The autotune cache: which kernel configuration measured fastest for a shape on this
//! adapter, kept in memory and in a JSON file (by default `$XDG_CACHE_HOME/kiln/autotune.json`,
//! one section per adapter, driver and kiln build), so a shape is timed once per machine, not
//! once per run. The file is replaced atomically; a file that does not parse is ignored (and
//! rewritten), never an error, since it only ever saves time.

use std::collections::HashMap;
use std::path::PathBuf;

pub struct TuneCache {
    /// The cache file; `None` keeps choices in memory only.
    path: Option<PathBuf>,
    /// This adapter's section of the file.
    section: String,
    chosen: HashMap<String, String>,
    /// Shapes this process timed (the rest came from the file or an earlier launch).
    pub timed: usize,
}

impl TuneCache {
    /// The cache for `section` (adapter, driver, build), with what `path` already holds.
    pub fn open(path: Option<PathBuf>, section: String) -> TuneCache {
        let chosen = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v.get(&section).and_then(|s| s.as_object()).cloned())
            .map(|entries| entries.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect())
            .unwrap_or_default();
        TuneCache { path, section, chosen, timed: 0 }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.chosen.get(key).map(String::as_str)
    }

    /// Records a choice and rewrites the file (other sections kept). A file that cannot be
    /// written is reported once on stderr and then left alone.
    pub fn insert(&mut self, key: String, choice: String) {
        self.chosen.insert(key, choice);
        self.timed += 1;
        if let Some(path) = &self.path {
            if let Err(e) = self.save(path) {
                log::warn!("autotune cache {}: {e}; keeping choices in memory", path.display());
                self.path = None;
            }
        }
    }

    fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut all = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter(|v| v.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        let entries: serde_json::Map<String, serde_json::Value> = self.chosen.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        all[&self.section] = entries.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string_pretty(&all).unwrap_or_default())?;
        std::fs::rename(&tmp, path)
    }
}
