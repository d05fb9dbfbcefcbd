//! pytorch-fid's FID Inception-v3 (`InceptionV3([3])`, `use_fid_inception=True`): images to
//! the 2048 pool3 features FID is defined on. Written block by block after
//! pytorch_fid/inception.py and torchvision's Inception3: `BasicConv2d` is a convolution
//! without bias, batch norm (eval, eps 0.001) and ReLU; `FIDInceptionA`, `InceptionB`,
//! `FIDInceptionC`, `InceptionD`, `FIDInceptionE_1` (average pool not counting padding) and
//! `FIDInceptionE_2` (max pool) concatenate their branches along channels. The input is
//! resized bilinearly to 299×299 (`align_corners=False`) and scaled from [0, 1] to [−1, 1]; a
//! grey image is repeated to 3 channels first. Tensors are named as pytorch-fid's state dict
//! (`Mixed_5b.branch1x1.conv.weight`, `Conv2d_1a_3x3.bn.running_mean`), so its weights,
//! converted to safetensors by scripts/inception_weights.py, load by name.

use crate::graph::ops::{Act, Activation, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Cat, Conv2d, Interpolate, MaxPool2d};
use crate::graph::{Graph, Role, Tensor};
use crate::{bail, Result};

/// Features per image (pool3).
pub const FEATURES: usize = 2048;
/// The side pytorch-fid resizes every image to.
pub const INPUT_SIZE: usize = 299;
/// BasicConv2d's batch-norm epsilon.
pub const BN_EPS: f32 = 0.001;

/// The network; `resize` is the side images are resized to (299 for FID; the conformance
/// test uses a smaller one to stay fast on CPU adapters).
#[derive(Clone, Copy, Debug)]
pub struct Inception {
    pub resize: usize,
}

impl Default for Inception {
    fn default() -> Inception {
        Inception { resize: INPUT_SIZE }
    }
}

/// A convolution's kernel (h, w), stride and padding (h, w).
#[derive(Clone, Copy)]
struct Kernel {
    size: [usize; 2],
    stride: usize,
    padding: [usize; 2],
}

/// A square k×k kernel, stride 1, padding p.
const fn k(size: usize, padding: usize) -> Kernel {
    Kernel { size: [size, size], stride: 1, padding: [padding, padding] }
}

/// A square k×k kernel with stride 2, no padding.
const fn k_s2(size: usize) -> Kernel {
    Kernel { size: [size, size], stride: 2, padding: [0, 0] }
}

const K1: Kernel = k(1, 0);
const K3: Kernel = k(3, 0);
const K3_PAD: Kernel = k(3, 1);
/// 1×7 and 7×1, padded to keep the size.
const K1X7: Kernel = Kernel { size: [1, 7], stride: 1, padding: [0, 3] };
const K7X1: Kernel = Kernel { size: [7, 1], stride: 1, padding: [3, 0] };
const K1X3: Kernel = Kernel { size: [1, 3], stride: 1, padding: [0, 1] };
const K3X1: Kernel = Kernel { size: [3, 1], stride: 1, padding: [1, 0] };

/// Which pool an Inception-E block's pool branch takes.
#[derive(Clone, Copy)]
enum EPool {
    /// FIDInceptionE_1: avg_pool2d(3, 1, 1, count_include_pad=False).
    Avg,
    /// FIDInceptionE_2: max_pool2d(3, 1, 1).
    Max,
}

fn max_pool(g: &mut Graph, name: &str, x: Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let op = MaxPool2d { padding: [padding; 2], ..MaxPool2d::new(3, stride) };
    Ok(g.apply(op, &[x], name)?[0])
}

/// avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False), the FID blocks' pool.
fn avg_pool(g: &mut Graph, name: &str, x: Tensor) -> Result<Tensor> {
    g.apply1(AvgPool2d { padding: [1, 1], count_include_pad: false, ..AvgPool2d::new(3, 1) }, &[x], name)
}

fn cat(g: &mut Graph, name: &str, parts: &[Tensor]) -> Result<Tensor> {
    g.apply1(Cat { dim: 1 }, parts, name)
}

/// BasicConv2d `name` (`Mixed_5b.branch1x1`): conv without bias → batch norm → ReLU.
fn basic(g: &mut Graph, name: &str, x: Tensor, out: usize, k: Kernel) -> Result<Tensor> {
    let cin = g.shape(x)[1];
    let w = g.state(&format!("{name}.conv.weight"), &[out, cin, k.size[0], k.size[1]]);
    let conv = Conv2d { stride: [k.stride; 2], padding: k.padding, dilation: [1, 1] };
    let y = g.apply1(conv, &[x, w], &format!("{name}.conv"))?;
    let bn: Vec<Tensor> = ["running_mean", "running_var", "weight", "bias"].iter().map(|t| g.state(&format!("{name}.bn.{t}"), &[out])).collect();
    let norm = BatchNorm { eps: BN_EPS, momentum: 0.1, training: false, update_running: false };
    let y = g.apply(norm, &[y, bn[0], bn[1], bn[2], bn[3]], &format!("{name}.bn"))?[0];
    g.apply1(Activation(Act::Relu), &[y], name)
}

/// A chain of BasicConv2d layers `{block}.{name}` applied in turn.
fn chain(g: &mut Graph, block: &str, x: Tensor, layers: &[(&str, usize, Kernel)]) -> Result<Tensor> {
    let mut h = x;
    for &(name, out, k) in layers {
        h = basic(g, &format!("{block}.{name}"), h, out, k)?;
    }
    Ok(h)
}

/// FIDInceptionA(in, pool_features).
fn inception_a(g: &mut Graph, b: &str, x: Tensor, pool_features: usize) -> Result<Tensor> {
    let b1 = chain(g, b, x, &[("branch1x1", 64, K1)])?;
    let b5 = chain(g, b, x, &[("branch5x5_1", 48, K1), ("branch5x5_2", 64, k(5, 2))])?;
    let b3 = chain(g, b, x, &[("branch3x3dbl_1", 64, K1), ("branch3x3dbl_2", 96, K3_PAD), ("branch3x3dbl_3", 96, K3_PAD)])?;
    let pooled = avg_pool(g, &format!("{b}.avg_pool"), x)?;
    let bp = chain(g, b, pooled, &[("branch_pool", pool_features, K1)])?;
    cat(g, b, &[b1, b5, b3, bp])
}

/// InceptionB(in): the 35→17 reduction.
fn inception_b(g: &mut Graph, b: &str, x: Tensor) -> Result<Tensor> {
    let b3 = chain(g, b, x, &[("branch3x3", 384, k_s2(3))])?;
    let bd = chain(g, b, x, &[("branch3x3dbl_1", 64, K1), ("branch3x3dbl_2", 96, K3_PAD), ("branch3x3dbl_3", 96, k_s2(3))])?;
    let bp = max_pool(g, &format!("{b}.max_pool"), x, 2, 0)?;
    cat(g, b, &[b3, bd, bp])
}

/// FIDInceptionC(in, channels_7x7).
fn inception_c(g: &mut Graph, b: &str, x: Tensor, c7: usize) -> Result<Tensor> {
    let b1 = chain(g, b, x, &[("branch1x1", 192, K1)])?;
    let b7 = chain(g, b, x, &[("branch7x7_1", c7, K1), ("branch7x7_2", c7, K1X7), ("branch7x7_3", 192, K7X1)])?;
    let layers = [("branch7x7dbl_1", c7, K1), ("branch7x7dbl_2", c7, K7X1), ("branch7x7dbl_3", c7, K1X7), ("branch7x7dbl_4", c7, K7X1), ("branch7x7dbl_5", 192, K1X7)];
    let bd = chain(g, b, x, &layers)?;
    let pooled = avg_pool(g, &format!("{b}.avg_pool"), x)?;
    let bp = chain(g, b, pooled, &[("branch_pool", 192, K1)])?;
    cat(g, b, &[b1, b7, bd, bp])
}

/// InceptionD(in): the 17→8 reduction.
fn inception_d(g: &mut Graph, b: &str, x: Tensor) -> Result<Tensor> {
    let b3 = chain(g, b, x, &[("branch3x3_1", 192, K1), ("branch3x3_2", 320, k_s2(3))])?;
    let layers = [("branch7x7x3_1", 192, K1), ("branch7x7x3_2", 192, K1X7), ("branch7x7x3_3", 192, K7X1), ("branch7x7x3_4", 192, k_s2(3))];
    let b7 = chain(g, b, x, &layers)?;
    let bp = max_pool(g, &format!("{b}.max_pool"), x, 2, 0)?;
    cat(g, b, &[b3, b7, bp])
}

/// FIDInceptionE_1 / FIDInceptionE_2(in).
fn inception_e(g: &mut Graph, b: &str, x: Tensor, pool: EPool) -> Result<Tensor> {
    let b1 = chain(g, b, x, &[("branch1x1", 320, K1)])?;
    let s = chain(g, b, x, &[("branch3x3_1", 384, K1)])?;
    let (s_a, s_b) = (chain(g, b, s, &[("branch3x3_2a", 384, K1X3)])?, chain(g, b, s, &[("branch3x3_2b", 384, K3X1)])?);
    let b3 = cat(g, &format!("{b}.branch3x3"), &[s_a, s_b])?;
    let d = chain(g, b, x, &[("branch3x3dbl_1", 448, K1), ("branch3x3dbl_2", 384, K3_PAD)])?;
    let (d_a, d_b) = (chain(g, b, d, &[("branch3x3dbl_3a", 384, K1X3)])?, chain(g, b, d, &[("branch3x3dbl_3b", 384, K3X1)])?);
    let bd = cat(g, &format!("{b}.branch3x3dbl"), &[d_a, d_b])?;
    let pooled = match pool {
        EPool::Avg => avg_pool(g, &format!("{b}.avg_pool"), x)?,
        EPool::Max => max_pool(g, &format!("{b}.max_pool"), x, 1, 1)?,
    };
    let bp = chain(g, b, pooled, &[("branch_pool", 192, K1)])?;
    cat(g, b, &[b1, b3, bd, bp])
}

impl Inception {
    /// The pool3 features `[B, 2048]` of `x` `[B, C, H, W]`: [0, 1] pixels, C = 1 (repeated to
    /// 3 channels) or 3.
    pub fn forward(&self, g: &mut Graph, x: Tensor) -> Result<Tensor> {
        let shape = g.shape(x).to_vec();
        let [_, c, _, _] = shape[..] else { bail!(Shape, "inception: input {shape:?} must be NCHW images") };
        let x = match c {
            3 => x,
            1 => cat(g, "inception.grey_to_rgb", &[x, x, x])?,
            _ => bail!(Shape, "inception: images of {c} channels; the FID Inception takes 3 (RGB) or 1 (grey, repeated to RGB)"),
        };
        let s = self.resize;
        let x = g.apply1(Interpolate { size: [s, s], alpha: 2.0, beta: -1.0 }, &[x], "inception.resize")?;
        // Block 0: input to maxpool1.
        let mut h = basic(g, "Conv2d_1a_3x3", x, 32, k_s2(3))?;
        h = basic(g, "Conv2d_2a_3x3", h, 32, K3)?;
        h = basic(g, "Conv2d_2b_3x3", h, 64, K3_PAD)?;
        h = max_pool(g, "maxpool1", h, 2, 0)?;
        // Block 1: maxpool1 to maxpool2.
        h = basic(g, "Conv2d_3b_1x1", h, 80, K1)?;
        h = basic(g, "Conv2d_4a_3x3", h, 192, K3)?;
        h = max_pool(g, "maxpool2", h, 2, 0)?;
        // Block 2: to the auxiliary classifier.
        h = inception_a(g, "Mixed_5b", h, 32)?;
        h = inception_a(g, "Mixed_5c", h, 64)?;
        h = inception_a(g, "Mixed_5d", h, 64)?;
        h = inception_b(g, "Mixed_6a", h)?;
        h = inception_c(g, "Mixed_6b", h, 128)?;
        h = inception_c(g, "Mixed_6c", h, 160)?;
        h = inception_c(g, "Mixed_6d", h, 160)?;
        h = inception_c(g, "Mixed_6e", h, 192)?;
        // Block 3: to the final average pool.
        h = inception_d(g, "Mixed_7a", h)?;
        h = inception_e(g, "Mixed_7b", h, EPool::Avg)?;
        h = inception_e(g, "Mixed_7c", h, EPool::Max)?;
        let pooled = g.apply1(AdaptiveAvgPool2d { output_size: [1, 1] }, &[h], "avgpool")?;
        let n = shape[0];
        g.reshape(pooled, &[n, FEATURES])
    }

    /// Every weight tensor the network reads, `(name, shape)` in pytorch-fid's names and the
    /// order the graph reads them.
    pub fn tensors() -> Result<Vec<(String, Vec<usize>)>> {
        let mut g = Graph::new();
        let x = g.input("x", &[1, 3, INPUT_SIZE, INPUT_SIZE]);
        Inception::default().forward(&mut g, x)?;
        Ok(g.tensors.iter().filter(|t| t.role == Role::State).map(|t| (t.name.clone(), t.shape.clone())).collect())
    }
}

/// The weights' file name in kiln's cache folder, where `--backbone inception` looks when no
/// `--fid-weights` is given.
pub const CACHE_FILE: &str = "pt_inception-2015-12-05.safetensors";

/// Where to get and how to convert the weights: the end of every missing-weights error.
pub const HOW_TO_GET: &str = "kiln does not download them. Get pytorch-fid's weights, \
pt_inception-2015-12-05-6726825d.pth, from \
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth \
and convert them with `python3 scripts/inception_weights.py convert pt_inception-2015-12-05-6726825d.pth OUT.safetensors` \
(needs pip install torch torchvision pillow pytorch-fid safetensors), then pass --fid-weights OUT.safetensors \
or put the file at the cache path";

/// The default weights file: `$XDG_CACHE_HOME/kiln/pt_inception-2015-12-05.safetensors`
/// (`$HOME/.cache/kiln/...` without XDG_CACHE_HOME).
pub fn cache_path() -> Result<std::path::PathBuf> {
    Ok(crate::data::download::cache_dir()?.join(CACHE_FILE))
}

/// Every tensor of the network, checked against [`Inception::tensors`], with the SHA-256 of
/// the file they came from.
pub struct Weights {
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The first 8 hex digits of the file's SHA-256.
    pub hash: String,
}

impl Weights {
    /// Reads `path` (scripts/inception_weights.py's safetensors); a missing file, a missing
    /// tensor or a wrong shape or dtype is an error naming the file and the tensor.
    pub fn load(path: &std::path::Path) -> Result<Weights> {
        let shown = path.display();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(Invalid, "the inception backbone's weights {shown} do not exist. {HOW_TO_GET} ({}).", cache_path().map(|p| p.display().to_string()).unwrap_or_else(|e| e.to_string()))
            }
            Err(source) => return Err(crate::Error::Io { path: shown.to_string(), source }),
        };
        Weights::from_bytes(&bytes, &shown.to_string())
    }

    /// [`Weights::load`] from the file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Weights> {
        use sha2::Digest;
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| crate::Error::Invalid(format!("{origin}: not a safetensors file ({e}). {HOW_TO_GET}.")))?;
        let mut tensors = Vec::new();
        for (name, shape) in Inception::tensors()? {
            let t = file.tensor(&name).map_err(|_| {
                crate::Error::Invalid(format!("{origin}: no tensor {name:?}, so it is not pytorch-fid's Inception converted by scripts/inception_weights.py. {HOW_TO_GET}."))
            })?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape.as_slice() {
                bail!(Invalid, "{origin}: {name:?} is {:?} {:?}, the FID Inception needs F32 {shape:?}", t.dtype(), t.shape());
            }
            let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            tensors.push((name, shape, values));
        }
        let hash = sha2::Sha256::digest(bytes).iter().take(4).map(|b| format!("{b:02x}")).collect();
        Ok(Weights { tensors, hash })
    }
}

/// Images per batch: at most 16, fewer where the largest activation (Conv2d_2b_3x3's, 64
/// channels of 147×147 at 299) would pass the adapter's largest storage binding.
pub fn batch_for(gpu: &crate::gpu::Gpu, resize: usize) -> usize {
    let side = (resize.saturating_sub(3) / 2).saturating_sub(1).max(1);
    let per_image = 64 * side * side * 4;
    (gpu.limits.max_storage_buffer_binding_size as usize / per_image.max(1)).clamp(1, 16)
}

/// The compiled network for one image shape: [0, 1] images in, pool3 features out.
pub struct InceptionFeatures {
    /// [channels, height, width] of the images it takes.
    pub image: [usize; 3],
    pub batch: usize,
    store: crate::graph::Store,
    program: crate::graph::Program,
    out: Tensor,
}

const INPUT: &str = "inception_x";

impl InceptionFeatures {
    /// Uploads `weights` and compiles the network for `batch` images of `image`.
    pub fn new(gpu: &crate::gpu::Gpu, net: Inception, weights: &Weights, image: [usize; 3], batch: usize) -> Result<InceptionFeatures> {
        let mut store = crate::graph::Store::new();
        for (name, shape, values) in &weights.tensors {
            store.add_state(gpu, name, shape, values)?;
        }
        let [c, h, w] = image;
        let mut g = Graph::new();
        let flat = g.input(INPUT, &[batch, c * h * w]);
        let x = g.reshape(flat, &[batch, c, h, w])?;
        let out = net.forward(&mut g, x)?;
        let program = crate::graph::Program::compile(gpu, &g, &mut store, &[out], &[])?;
        Ok(InceptionFeatures { image, batch, store, program, out })
    }

    /// Features `[n · 2048]` of n whole images (the last batch padded with zeros).
    pub fn run(&self, gpu: &crate::gpu::Gpu, images: &[f32]) -> Result<Vec<f32>> {
        let pixels: usize = self.image.iter().product();
        if images.is_empty() || !images.len().is_multiple_of(pixels) {
            bail!(Shape, "inception: {} values are not whole {:?} images", images.len(), self.image);
        }
        let input = &self.store.input_buffer(INPUT).expect("compiled").buffer;
        let mut features = Vec::with_capacity(images.len() / pixels * FEATURES);
        for chunk in images.chunks(self.batch * pixels) {
            let mut batch = chunk.to_vec();
            batch.resize(self.batch * pixels, 0.0);
            gpu.write(input, &batch)?;
            self.program.run(gpu)?;
            let y = gpu.read(self.program.buffer(self.out)?)?;
            features.extend_from_slice(&y[..chunk.len() / pixels * FEATURES]);
        }
        Ok(features)
    }
}
