//! What `--dataset` names: the built-in synthetic digits, a downloadable dataset, or a
//! directory (IDX files when it holds them, else a folder of images).

use super::download::{cache_dir, Remote};
use super::folder::{self, FolderOptions};
use super::idx::{self, IdxOptions};
use super::synthetic::{self, DigitsOptions};
use super::{Dataset, Splits};
use crate::{Error, Result};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub enum Source {
    Synthetic(DigitsOptions),
    /// `mnist` or `fashion-mnist`, downloaded into the cache when missing.
    Download(Remote),
    Idx(PathBuf, IdxOptions),
    /// Images split 90/10 into train and test by a seeded shuffle.
    Folder(PathBuf, FolderOptions),
}

impl Source {
    /// `synthetic`, `mnist`, `fashion-mnist`, or a directory path. A directory with a
    /// `train-images-idx3-ubyte[.gz]` is read as IDX, any other as an image folder with
    /// `folder` options (ignored otherwise).
    pub fn parse(spec: &str, folder: &FolderOptions) -> Result<Source> {
        if spec == "synthetic" {
            return Ok(Source::Synthetic(DigitsOptions::default()));
        }
        if let Some(remote) = Remote::by_name(spec) {
            return Ok(Source::Download(remote));
        }
        let dir = PathBuf::from(spec);
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "dataset {spec:?}: not `synthetic`, `mnist`, `fashion-mnist`, nor a directory"
            )));
        }
        Ok(if idx::looks_like_idx_dir(&dir, "") {
            Source::Idx(dir, IdxOptions::default())
        } else {
            Source::Folder(dir, folder.clone())
        })
    }

    pub fn load(&self) -> Result<Splits> {
        match self {
            Source::Synthetic(opts) => synthetic::digits(opts),
            Source::Download(remote) => {
                let dir = remote.fetch(&cache_dir()?)?;
                idx::load_dir(&dir, &IdxOptions::default())
            }
            Source::Idx(dir, opts) => idx::load_dir(dir, opts),
            Source::Folder(dir, opts) => folder::load(dir, opts)?.split(0.1, 0),
        }
    }
}

/// `SPEC[:train|:test|:all]`: one set of images from a source, for scoring. Without a suffix:
/// the test split of a source that has one (IDX files, the built-in digits, downloads), every
/// image of a folder of images.
pub fn image_set(spec: &str, folder: &FolderOptions) -> Result<Dataset> {
    let (base, which) = match spec.rsplit_once(':') {
        Some((base, which @ ("train" | "test" | "all"))) => (base, Some(which)),
        _ => (spec, None),
    };
    let source = Source::parse(base, folder)?;
    if let (Source::Folder(dir, opts), None | Some("all")) = (&source, which) {
        return folder::load(dir, opts);
    }
    let Splits { train, test } = source.load()?;
    Ok(match which {
        Some("train") => train,
        Some("all") => train.concat(&test, spec)?,
        _ => test,
    })
}
