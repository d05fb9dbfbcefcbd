//! Datasets in host memory: u8 images `[n, c, h, w]` with optional class labels, and the
//! sources that fill them — the built-in synthetic digits (offline default), MNIST-family IDX
//! files (raw or gzipped, downloaded into a cache on request), and folders of PNG/JPEG files.
//! `images` writes sample grids and single PNGs.
//!
//! Pixels stay u8 until a batch is uploaded: 60,000 MNIST images are 47 MB as u8, four times
//! that as f32.

pub mod download;
pub mod folder;
pub mod idx;
pub mod images;
pub(crate) mod rng;
pub mod source;
pub mod synthetic;

pub use source::Source;

use crate::{Error, Result};
use rng::SplitMix64;

/// Images `[n, c, h, w]` as u8 (0 = black, 255 = white) and, optionally, one label per image.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where the data came from, for messages ("mnist train", "synthetic digits test").
    pub name: String,
    images: Vec<u8>,
    shape: [usize; 4],
    labels: Option<Vec<u16>>,
}

/// A training set and a held-out test set of the same image shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

impl Dataset {
    /// Checks that `images` holds `n·c·h·w` bytes and that there is one label per image.
    /// Labels are u16 so that folder datasets with more than 256 classes fit; IDX labels are u8.
    pub fn new(name: impl Into<String>, images: Vec<u8>, shape: [usize; 4], labels: Option<Vec<u16>>) -> Result<Self> {
        let name = name.into();
        let [n, c, h, w] = shape;
        let want = n.checked_mul(c).and_then(|v| v.checked_mul(h)).and_then(|v| v.checked_mul(w));
        if want != Some(images.len()) {
            let want = want.map_or("more than usize::MAX".to_string(), |w| w.to_string());
            return Err(Error::Invalid(format!(
                "dataset {name:?}: shape {shape:?} needs {want} bytes, got {}",
                images.len()
            )));
        }
        if let Some(l) = &labels {
            if l.len() != n {
                return Err(Error::Invalid(format!("dataset {name:?}: {n} images but {} labels", l.len())));
            }
        }
        Ok(Dataset { name, images, shape, labels })
    }

    pub fn len(&self) -> usize {
        self.shape[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn channels(&self) -> usize {
        self.shape[1]
    }
    pub fn height(&self) -> usize {
        self.shape[2]
    }
    pub fn width(&self) -> usize {
        self.shape[3]
    }
    /// `[n, c, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }
    /// Bytes per image, `c·h·w`.
    pub fn image_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }
    /// All pixels, NCHW.
    pub fn images(&self) -> &[u8] {
        &self.images
    }
    /// Image `i` as `c·h·w` bytes (panics when `i >= len()`, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        let k = self.image_len();
        &self.images[i * k..(i + 1) * k]
    }
    pub fn labels(&self) -> Option<&[u16]> {
        self.labels.as_deref()
    }
    /// 1 + the largest label, or `None` for an unlabelled set.
    pub fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|l| l.iter().map(|&v| v as usize + 1).max().unwrap_or(0))
    }

    /// The images at `indices`, in that order, with their labels.
    pub fn subset(&self, name: impl Into<String>, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!(
                "dataset {:?}: index {bad} out of range for {} images",
                self.name,
                self.len()
            )));
        }
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let labels = self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect());
        let [_, c, h, w] = self.shape;
        Dataset::new(name, images, [indices.len(), c, h, w], labels)
    }

    /// Splits into train and test by a seeded shuffle: the same seed gives the same split.
    /// The test set gets `round(len · test_fraction)` images; `test_fraction` must be in [0, 1].
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<Splits> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(Error::Invalid(format!(
                "dataset {:?}: test fraction {test_fraction} is not in [0, 1]",
                self.name
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        SplitMix64::new(seed).shuffle(&mut order);
        let n_test = (self.len() as f64 * test_fraction).round() as usize;
        let (test, train) = order.split_at(n_test);
        Ok(Splits {
            train: self.subset(format!("{} train", self.name), train)?,
            test: self.subset(format!("{} test", self.name), test)?,
        })
    }

    /// This set's images followed by `other`'s (of the same shape), labels kept when both have them.
    pub fn concat(&self, other: &Dataset, name: impl Into<String>) -> Result<Dataset> {
        if self.shape[1..] != other.shape[1..] {
            return Err(Error::Invalid(format!("{:?} has images {:?}, {:?} has {:?}", self.name, &self.shape[1..], other.name, &other.shape[1..])));
        }
        let images = [self.images.as_slice(), other.images.as_slice()].concat();
        let labels = self.labels.as_ref().zip(other.labels.as_ref()).map(|(a, b)| [a.as_slice(), b.as_slice()].concat());
        let [n, c, h, w] = self.shape;
        Dataset::new(name, images, [n + other.len(), c, h, w], labels)
    }

    /// Dynamic binarization (as for binarized-MNIST likelihoods): each pixel becomes 255 with
    /// probability pixel / 255, else 0, from a generator seeded by `seed`, so the same seed gives
    /// the same images.
    pub fn binarized(&self, seed: u64) -> Result<Dataset> {
        let mut rng = SplitMix64::new(seed ^ 0xB1_4A_21_2E);
        let images = self.images.iter().map(|&p| if rng.unit() * 255.0 < p as f32 { 255 } else { 0 }).collect();
        Dataset::new(format!("{} (binarized)", self.name), images, self.shape, self.labels.clone())
    }

    /// Pixels mapped linearly from [0, 255] to [lo, hi] as f32, NCHW: `(-1, 1)` for a GAN whose
    /// generator ends in tanh, `(0, 1)` for a VAE with a sigmoid decoder.
    pub fn to_f32(&self, lo: f32, hi: f32) -> Vec<f32> {
        let table: Vec<f32> = (0..256).map(|p| lo + (p as f32 / 255.0) * (hi - lo)).collect();
        self.images.iter().map(|&p| table[p as usize]).collect()
    }
}

impl Splits {
    /// Checks that train and test images have the same `[c, h, w]`.
    pub fn new(train: Dataset, test: Dataset) -> Result<Self> {
        if train.shape[1..] != test.shape[1..] {
            return Err(Error::Invalid(format!(
                "train set {:?} has images {:?} but test set {:?} has {:?}",
                train.name,
                &train.shape[1..],
                test.name,
                &test.shape[1..]
            )));
        }
        Ok(Splits { train, test })
    }
}
