//! Checkpoints: named f32 tensors (PyTorch-style parameter names, optimizer state, running
//! statistics) plus string metadata (step, RNG seed, the run's config) in one safetensors
//! file, written atomically: a temporary file in the same folder, synced, then renamed over
//! the old one, so a run killed mid-write leaves the previous checkpoint intact.

use crate::gpu::Gpu;
use crate::graph::Store;
use crate::optim::{Ema, Optimizer};
use crate::{Error, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn tensor(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        self.tensors.get(name).ok_or_else(|| Error::Invalid(format!("checkpoint has no tensor {name:?}")))
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::Invalid(format!("checkpoint metadata has no {key:?}")))
    }

    pub fn meta_parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let text = self.meta(key)?;
        text.parse().map_err(|_| Error::Invalid(format!("checkpoint metadata {key:?} = {text:?} is not valid")))
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(&String, &Vec<usize>, &[u8])> =
            self.tensors.iter().map(|(n, (s, d))| (n, s, bytemuck::cast_slice::<f32, u8>(d))).collect();
        let views = bytes
            .iter()
            .map(|(n, s, d)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.to_vec(), d).map_err(|e| Error::Invalid(format!("tensor {n:?}: {e}")))?)))
            .collect::<Result<Vec<_>>>()?;
        let meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(format!("cannot serialize checkpoint: {e}")))
    }

    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Checkpoint> {
        let bad = |what: String| Error::Invalid(format!("{origin}: not a kiln checkpoint: {what}"));
        let file = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("{e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("{e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            // PyTorch's batch-norm step counter (int64) matters only for momentum=None.
            if name.ends_with("num_batches_tracked") && view.dtype() != Dtype::F32 {
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name:?} is {:?}, not F32", view.dtype())));
            }
            let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(Checkpoint { tensors, metadata })
    }

    /// Writes atomically: `path` holds either the old checkpoint or the whole new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let io = |source| Error::Io { path: path.display().to_string(), source };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("safetensors.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        // The rename itself is durable only once the folder is synced (Unix).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Checkpoint::from_bytes(&bytes, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("kiln-ckpt-{}", std::process::id()));
        let path = dir.join("run/ckpt.safetensors");
        let mut c = Checkpoint::default();
        c.tensors.insert("0.weight".into(), (vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-30, 7.0]));
        c.tensors.insert("1.running_var".into(), (vec![3], vec![1.0, 1.0, 2.0]));
        c.metadata.insert("step".into(), "42".into());
        c.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.meta_parse::<u64>("step").unwrap(), 42);
        assert!(!path.with_extension("safetensors.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_checkpoint_is_a_clear_error() {
        let err = Checkpoint::from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "ckpt.safetensors").unwrap_err().to_string();
        assert!(err.contains("ckpt.safetensors") && err.contains("not a kiln checkpoint"), "{err}");
        let mut c = Checkpoint::default();
        c.tensors.insert("w".into(), (vec![4], vec![0.0; 4]));
        let bytes = c.to_bytes().unwrap();
        let err = Checkpoint::from_bytes(&bytes[..bytes.len() - 3], "cut.safetensors").unwrap_err().to_string();
        assert!(err.contains("cut.safetensors"), "{err}");
    }
}

/// Copies every parameter and state tensor of `store`, and each optimizer's moments and step
/// count, into `ckpt` under their names.
pub fn capture(gpu: &Gpu, store: &Store, optimizers: &[&Optimizer], ckpt: &mut Checkpoint) -> Result<()> {
    for name in store.param_names() {
        let p = store.param(name).expect("listed");
        ckpt.tensors.insert(name.clone(), (p.shape.clone(), gpu.read(&p.buffer)?));
    }
    for (name, s) in store.states() {
        ckpt.tensors.insert(name.clone(), (s.shape.clone(), gpu.read(&s.buffer)?));
    }
    for opt in optimizers {
        let (step, moments) = opt.state.split_first().expect("the step counter comes first");
        // The counter's four words exactly (t and the bias corrections the GPU accumulated),
        // so a resumed run continues bit for bit.
        let words: Vec<String> = gpu.read_as::<u32>(&step.1)?.iter().map(u32::to_string).collect();
        ckpt.metadata.insert(step.0.clone(), words.join(" "));
        for (name, b) in moments {
            ckpt.tensors.insert(name.clone(), (vec![b.len], gpu.read(b)?));
        }
    }
    Ok(())
}

/// Loads parameters and states by name (a PyTorch state_dict saved with safetensors, or a
/// kiln checkpoint), leaving optimizers alone. Every parameter and state of the store must be
/// in `ckpt` with the same shape; tensors the store does not have are ignored.
pub fn load_weights(gpu: &Gpu, store: &Store, ckpt: &Checkpoint) -> Result<()> {
    restore(gpu, store, &[], ckpt)
}

/// Writes `ckpt`'s tensors back into `store` and the optimizers. Every parameter, state and
/// optimizer tensor must be present with the same shape: a mismatch names the tensor.
pub fn restore(gpu: &Gpu, store: &Store, optimizers: &[&Optimizer], ckpt: &Checkpoint) -> Result<()> {
    let check = |name: &str, shape: &[usize]| -> Result<&Vec<f32>> {
        let (got, data) = ckpt.tensor(name)?;
        if got != shape {
            return Err(Error::Shape(format!("checkpoint tensor {name:?} is {got:?}, the model expects {shape:?}")));
        }
        Ok(data)
    };
    for name in store.param_names() {
        let p = store.param(name).expect("listed");
        gpu.write(&p.buffer, check(name, &p.shape)?)?;
    }
    for (name, s) in store.states() {
        gpu.write(&s.buffer, check(name, &s.shape)?)?;
    }
    for opt in optimizers {
        let (step, moments) = opt.state.split_first().expect("the step counter comes first");
        let words: Vec<u32> = ckpt.meta(&step.0)?.split(' ').map(str::parse).collect::<std::result::Result<_, _>>().map_err(|_| {
            Error::Invalid(format!("checkpoint metadata {:?} is not four step-counter words", step.0))
        })?;
        if words.len() != 4 {
            return Err(Error::Invalid(format!("checkpoint metadata {:?} has {} words, expected 4", step.0, words.len())));
        }
        gpu.write(&step.1, &words)?;
        for (name, b) in moments {
            gpu.write(b, check(name, &[b.len])?)?;
        }
    }
    Ok(())
}

fn group<'a>(store: &'a Store, name: &str) -> Result<&'a crate::graph::ParamGroup> {
    store.groups.iter().find(|g| g.name == name).ok_or_else(|| Error::Invalid(format!("no parameter group {name:?} in the store")))
}

/// Copies each moving average into `ckpt`, one tensor per parameter under
/// [`Ema::tensor_name`] with the parameter's shape, so the averaged weights load into
/// PyTorch by name too.
pub fn capture_averages(gpu: &Gpu, store: &Store, averages: &[&Ema], ckpt: &mut Checkpoint) -> Result<()> {
    for ema in averages {
        let arena = gpu.read(&ema.average)?;
        for (name, start, n) in &group(store, &ema.group)?.layout {
            let shape = store.param(name).expect("in the layout").shape.clone();
            ckpt.tensors.insert(Ema::tensor_name(name), (shape, arena[*start..start + n].to_vec()));
        }
    }
    Ok(())
}

/// The group's arena assembled from the averages in `ckpt`, or None when it has none (a run
/// trained without `--ema`); a partial or misshapen set is an error naming the tensor.
fn averaged_arena(store: &Store, group_name: &str, ckpt: &Checkpoint) -> Result<Option<Vec<f32>>> {
    let g = group(store, group_name)?;
    if !g.layout.iter().any(|(name, _, _)| ckpt.tensors.contains_key(&Ema::tensor_name(name))) {
        return Ok(None);
    }
    let mut arena = vec![0.0; g.params.len];
    for (name, start, n) in &g.layout {
        let key = Ema::tensor_name(name);
        let (shape, data) = ckpt.tensor(&key)?;
        let want = &store.param(name).expect("in the layout").shape;
        if shape != want {
            return Err(Error::Shape(format!("checkpoint tensor {key:?} is {shape:?}, the model expects {want:?}")));
        }
        arena[*start..start + n].copy_from_slice(data);
    }
    Ok(Some(arena))
}

/// Writes the averages of `ckpt` back into `averages` (resuming, after [`restore`] has
/// written the live weights). An average the checkpoint lacks is started from the live
/// weights where [`Ema::start_on_resume`] allows it, else refused.
pub fn restore_averages(gpu: &Gpu, store: &Store, averages: &[&Ema], ckpt: &Checkpoint) -> Result<()> {
    for ema in averages {
        match averaged_arena(store, &ema.group, ckpt)? {
            Some(arena) => gpu.write(&ema.average, &arena)?,
            None if ema.start_on_resume => {
                gpu.write(&ema.average, &gpu.read(&group(store, &ema.group)?.params)?)?;
                log::warn!("the checkpoint has no moving average of {:?}: it starts now, from the resumed weights", ema.group);
            }
            None => crate::bail!(Invalid, "the checkpoint has no moving average of {:?} (ema.* tensors): it was trained without --ema; resume it with --no-ema (or --recipe paper, the default before paper-ema), or start an average now with an explicit --ema 0.999", ema.group),
        }
    }
    Ok(())
}

/// Overwrites group `group_name`'s parameters with the averages stored in `ckpt`, for
/// sampling from the averaged weights; false (and nothing written) when it has none.
pub fn load_averages_as_params(gpu: &Gpu, store: &Store, group_name: &str, ckpt: &Checkpoint) -> Result<bool> {
    match averaged_arena(store, group_name, ckpt)? {
        Some(arena) => {
            gpu.write(&group(store, group_name)?.params, &arena)?;
            Ok(true)
        }
        None => Ok(false),
    }
}
