//! Downloading MNIST and Fashion-MNIST into a cache directory, once, with SHA-256 checks.
//!
//! A file is streamed into a temporary name beside its destination, hashed on the way, and
//! renamed into place only when its hash matches, so the cache never holds a partial or
//! corrupt file and a file present in the cache is trusted without re-hashing. Mirrors are
//! tried in order. HTTPS needs the default `https` feature (ureq with rustls); without it,
//! https mirrors fail and the plain-http ones are used.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file of a remote dataset and the SHA-256 of its bytes as served (the `.gz`).
#[derive(Clone, Debug)]
pub struct RemoteFile {
    pub name: String,
    pub sha256: String,
}

/// A dataset that can be downloaded: mirror base URLs (ending in `/`) and its files.
#[derive(Clone, Debug)]
pub struct Remote {
    /// Also the name of its folder in the cache.
    pub name: String,
    pub mirrors: Vec<String>,
    pub files: Vec<RemoteFile>,
}

fn files(list: &[(&str, &str)]) -> Vec<RemoteFile> {
    list.iter().map(|&(name, sha256)| RemoteFile { name: name.into(), sha256: sha256.into() }).collect()
}

impl Remote {
    /// MNIST from torchvision's mirror (and Keras/TensorFlow's). The hashes are those of the
    /// original files, whose MD5s match torchvision's published ones.
    pub fn mnist() -> Remote {
        Remote {
            name: "mnist".into(),
            mirrors: vec![
                "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
                "https://storage.googleapis.com/cvdf-datasets/mnist/".into(),
                "http://ossci-datasets.s3.amazonaws.com/mnist/".into(),
            ],
            files: files(&[
                ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
                ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
                ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            ]),
        }
    }

    /// Fashion-MNIST from Zalando's mirror (the one torchvision uses) and its GitHub repository.
    pub fn fashion_mnist() -> Remote {
        Remote {
            name: "fashion-mnist".into(),
            mirrors: vec![
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into(),
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/".into(),
            ],
            files: files(&[
                ("train-images-idx3-ubyte.gz", "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"),
                ("train-labels-idx1-ubyte.gz", "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"),
                ("t10k-images-idx3-ubyte.gz", "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"),
                ("t10k-labels-idx1-ubyte.gz", "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"),
            ]),
        }
    }

    /// `mnist` or `fashion-mnist`.
    pub fn by_name(name: &str) -> Option<Remote> {
        match name {
            "mnist" => Some(Remote::mnist()),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Some(Remote::fashion_mnist()),
            _ => None,
        }
    }

    /// Makes sure every file is in `cache_root/<name>/`, downloading only the missing ones,
    /// and returns that folder.
    pub fn fetch(&self, cache_root: &Path) -> Result<PathBuf> {
        let dir = cache_root.join(&self.name);
        for f in &self.files {
            let dest = dir.join(&f.name);
            if dest.is_file() {
                continue;
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
            let urls: Vec<String> = self.mirrors.iter().map(|m| format!("{m}{}", f.name)).collect();
            log::info!("downloading {} into {}", f.name, dir.display());
            download_verified(&urls, &f.sha256, &dest).map_err(|e| {
                Error::Invalid(format!(
                    "{e}\nIf this machine is offline, copy the {} files ({}) into {} by hand, or train on the built-in synthetic digits.",
                    self.name,
                    self.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "),
                    dir.display()
                ))
            })?;
        }
        Ok(dir)
    }
}

/// `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln` (`%LOCALAPPDATA%\kiln` on Windows).
pub fn cache_dir() -> Result<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .or_else(|| env("LOCALAPPDATA"))
        .map(|d| d.join("kiln"))
        .ok_or_else(|| Error::Invalid("no cache directory: set XDG_CACHE_HOME or HOME".into()))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads the first of `urls` that answers with bytes whose SHA-256 is `sha256` into
/// `dest`. Nothing is left at `dest` (or beside it) unless the hash matched.
pub fn download_verified(urls: &[String], sha256: &str, dest: &Path) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let part = dest.with_file_name(format!(".{file_name}.{}.part", std::process::id()));
    let mut failures = Vec::new();
    for url in urls {
        match fetch_one(&agent, url, &part, sha256) {
            Ok(()) => {
                return std::fs::rename(&part, dest).map_err(|e| {
                    let _ = std::fs::remove_file(&part);
                    Error::Io { path: dest.display().to_string(), source: e }
                });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                log::warn!("{url}: {e}");
                failures.push(format!("  {url}: {e}"));
            }
        }
    }
    Err(Error::Invalid(format!("could not download {file_name}:\n{}", failures.join("\n"))))
}

/// Streams `url` into `part` while hashing; fails on a short body or a hash mismatch.
fn fetch_one(agent: &ureq::Agent, url: &str, part: &Path, sha256: &str) -> std::result::Result<(), String> {
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let declared = response.body().content_length();
    let mut reader = response.body_mut().as_reader();
    let mut out = std::fs::File::create(part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let k = reader.read(&mut buf).map_err(|e| format!("download broke off after {got} bytes: {e}"))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(|e| format!("{}: {e}", part.display()))?;
        got += k as u64;
    }
    out.sync_all().map_err(|e| format!("{}: {e}", part.display()))?;
    if let Some(n) = declared.filter(|&n| n != got) {
        return Err(format!("download broke off: got {got} of {n} bytes"));
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(format!("checksum mismatch: SHA-256 of the {got} bytes is {actual}, expected {sha256}; discarded"));
    }
    Ok(())
}
