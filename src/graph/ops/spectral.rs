//! spectral_norm as torch.nn.utils.parametrizations.spectral_norm: (weight, u, v) →
//! (weight / σ, σ) with σ = uᵀ W_mat v. With `power_iteration` on, one power iteration first
//! updates u and v in place (PyTorch's training mode, n_power_iterations = 1); a step that runs
//! the same layer several times (a GAN's discriminator on real, fake and G's pass) turns it on
//! for the first forward only, and the later ones, recorded after it, read the updated u, v.
//! The backward holds u and v constant, as PyTorch computes them under no_grad.

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::spectral::{self as k, Spectral};
use crate::reference::spectral as r;
use crate::Result;

#[derive(Clone, Copy, Debug)]
pub struct SpectralNorm {
    /// The weight's dim that becomes W_mat's rows: 0 for Linear and Conv2d, 1 for
    /// ConvTranspose2d (PyTorch's choice).
    pub dim: usize,
    pub eps: f32,
    pub power_iteration: bool,
}

impl SpectralNorm {
    /// PyTorch's default eps of F.normalize in the power iteration.
    pub const EPS: f32 = 1e-12;

    /// PyTorch's defaults along `dim`.
    pub fn new(dim: usize, power_iteration: bool) -> SpectralNorm {
        SpectralNorm { dim, eps: Self::EPS, power_iteration }
    }

    fn matrix(&self, w: &[usize]) -> std::result::Result<Spectral, String> {
        Spectral::new("spectral_norm", w, self.dim, self.eps).map_err(|e| e.to_string())
    }
}

impl Op for SpectralNorm {
    fn name(&self) -> &'static str {
        "spectral_norm"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        if x.len() != 3 {
            return Err(format!("{} inputs; expected weight, u, v", x.len()));
        }
        let sn = self.matrix(x[0])?;
        if x[1] != [sn.rows] || x[2] != [sn.cols()] {
            return Err(format!("u must be [{}] and v [{}] for weight {:?} along dim {}", sn.rows, sn.cols(), x[0], self.dim));
        }
        Ok(vec![x[0].to_vec(), vec![]])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        self.matrix(x[0]).map(|sn| sn.forward_scratch_lens()).unwrap_or_default()
    }
    fn mutates(&self) -> &'static [usize] {
        if self.power_iteration {
            &[1, 2]
        } else {
            &[]
        }
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let sn = Spectral::new("spectral_norm", io.input_shapes[0], self.dim, self.eps)?;
        let (w, u, v) = (io.inputs[0], io.inputs[1], io.inputs[2]);
        let mut dispatches = if self.power_iteration { k::power_iteration(gpu, &sn, w, u, v, &io.scratch)? } else { Vec::new() };
        dispatches.extend(k::forward(gpu, &sn, w, u, v, io.outputs[1], io.outputs[0], &io.scratch)?);
        Ok(dispatches)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let shape = x[0].0.clone();
        let m = r::to_matrix(&x[0].1, &shape, self.dim);
        if self.power_iteration {
            let (mut u, mut v) = (x[1].1.clone(), x[2].1.clone());
            r::power_iteration(&m, &mut u, &mut v, 1, self.eps as f64);
            (x[1].1, x[2].1) = (u, v);
        }
        let sigma = r::sigma(&m, &x[1].1, &x[2].1);
        vec![(shape, x[0].1.iter().map(|w| w / sigma).collect()), (vec![], vec![sigma])]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Some(dy) = dys[0].filter(|_| dys[1].is_none()) else {
            crate::bail!(Invalid, "spectral_norm {:?}: σ (output 1) carries no gradient; only the normalized weight does", n.layer);
        };
        let [w, u, v] = [n.inputs[0], n.inputs[1], n.inputs[2]];
        let dw = g.apply1(SpectralNormGrad { dim: self.dim }, &[dy, w, u, v, n.outputs[1]], &n.layer)?;
        Ok(vec![Some(dw), None, None])
    }
}

/// (dL/dW_sn, weight, u, v, σ) → dL/dweight, u and v constant.
#[derive(Debug)]
pub struct SpectralNormGrad {
    pub dim: usize,
}

impl Op for SpectralNormGrad {
    fn name(&self) -> &'static str {
        "spectral_norm_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        if x.len() != 5 {
            return Err(format!("{} inputs; expected dL/dW_sn, weight, u, v, σ", x.len()));
        }
        SpectralNorm::new(self.dim, false).infer(&x[1..4])?;
        if x[0] != x[1] || !x[4].is_empty() {
            return Err(format!("the gradient must be shaped as the weight {:?} and σ a scalar", x[1]));
        }
        Ok(vec![x[1].to_vec()])
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        Spectral::new("spectral_norm_backward", x[1], self.dim, 0.0).map(|sn| sn.backward_scratch_lens()).unwrap_or_default()
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let sn = Spectral::new("spectral_norm_backward", io.input_shapes[1], self.dim, 0.0)?;
        let i = &io.inputs;
        k::backward(gpu, &sn, i[0], i[1], i[2], i[3], i[4], io.outputs[0], &io.scratch)
    }
    fn reference(&self, x: &mut [HostValue]) -> Vec<HostValue> {
        let shape = x[1].0.clone();
        let dw = r::backward(&x[0].1, &x[1].1, &shape, self.dim, &x[2].1, &x[3].1, x[4].1[0]);
        vec![(shape, dw)]
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        crate::bail!(Invalid, "{}: second derivatives of spectral_norm are not supported", n.layer)
    }
}
