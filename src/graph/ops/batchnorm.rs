//! batch_norm as torch.nn.functional: inputs (x, running_mean, running_var[, weight, bias]).
//! Training mode normalizes by the batch statistics and outputs them (mean, invstd) for the
//! backward; it updates the running statistics in place unless `update_running` is off (a
//! GAN's generator step re-runs a forward whose statistics were already counted).

use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, HostValue, NodeView, Op, OpIo, Tensor};
use crate::kernels::batchnorm::{self as k, Affine, Running, Saved};
use crate::reference::batchnorm as r;
use crate::Result;

#[derive(Clone, Copy, Debug)]
pub struct BatchNorm {
    pub eps: f32,
    pub momentum: f32,
    pub training: bool,
    pub update_running: bool,
}

fn channels_of(x: &[usize]) -> std::result::Result<usize, String> {
    if x.len() < 2 {
        return Err("input must be [N, C] or [N, C, H, W]".into());
    }
    Ok(x[1])
}

fn check_inputs(x: &[&[usize]]) -> std::result::Result<usize, String> {
    let c = channels_of(x[0])?;
    if x.len() != 3 && x.len() != 5 {
        return Err(format!("{} inputs; expected x, running_mean, running_var and optionally weight, bias", x.len()));
    }
    for s in &x[1..] {
        if *s != [c] {
            return Err(format!("per-channel tensors must be [{c}], got {s:?}"));
        }
    }
    Ok(c)
}

fn kernel_shape(x: &[usize], op: &BatchNorm) -> k::BatchNorm {
    k::BatchNorm { eps: op.eps, momentum: op.momentum, ..k::BatchNorm::new(x) }
}

fn opt<'a>(v: &'a [HostValue], i: usize) -> Option<&'a [f64]> {
    v.get(i).map(|t| t.1.as_slice())
}

impl Op for BatchNorm {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let c = check_inputs(x)?;
        let per_channel: usize = x[0].iter().product::<usize>() / c.max(1);
        if self.training && per_channel < 2 {
            return Err(format!("training needs more than one value per channel, got input {:?}", x[0]));
        }
        Ok(if self.training { vec![x[0].to_vec(), vec![c], vec![c]] } else { vec![x[0].to_vec()] })
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        vec![kernel_shape(x[0], self).scratch_len()]
    }
    fn mutates(&self) -> &'static [usize] {
        if self.training && self.update_running {
            &[1, 2]
        } else {
            &[]
        }
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let bn = kernel_shape(io.input_shapes[0], self);
        let i = &io.inputs;
        let affine = (i.len() == 5).then(|| Affine { gamma: i[3], beta: i[4] });
        let running = Running { mean: i[1], var: i[2] };
        if !self.training {
            return Ok(vec![k::forward_eval(gpu, &bn, i[0], affine, running, io.outputs[0])?]);
        }
        let saved = Saved { mean: io.outputs[1], invstd: io.outputs[2] };
        let running = self.update_running.then_some(running);
        k::forward_train(gpu, &bn, i[0], affine, running, io.outputs[0], saved, &io.scratch[0])
    }
    fn reference(&self, v: &mut [HostValue]) -> Vec<HostValue> {
        let shape = v[0].0.clone();
        let (eps, momentum) = (self.eps as f64, self.momentum as f64);
        let (g, b) = (opt(v, 3), opt(v, 4));
        if !self.training {
            return vec![(shape.clone(), r::forward_eval(&v[0].1, &shape, g, b, &v[1].1, &v[2].1, eps))];
        }
        let t = r::forward_train(&v[0].1, &shape, g, b, &v[1].1, &v[2].1, eps, momentum);
        if self.update_running {
            v[1].1 = t.running_mean;
            v[2].1 = t.running_var;
        }
        let c = vec![t.mean.len()];
        vec![(shape, t.y), (c.clone(), t.mean), (c, t.invstd)]
    }
    fn backward(&self, g: &mut Graph, n: &NodeView, dys: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dy = dys[0].expect("batch_norm's statistics outputs carry no gradient");
        let affine = n.inputs.len() == 5;
        let mut inputs = vec![n.inputs[0], dy];
        if self.training {
            inputs.extend([n.outputs[1], n.outputs[2]]);
        } else {
            inputs.extend([n.inputs[1], n.inputs[2]]);
        }
        if affine {
            inputs.push(n.inputs[3]);
        }
        let grads = g.apply(BatchNormGrad { eps: self.eps, training: self.training, affine }, &inputs, &n.layer)?;
        let mut out = vec![Some(grads[0]), None, None];
        if affine {
            out.push(needs[3].then_some(grads[1]));
            out.push(needs[4].then_some(grads[2]));
        }
        Ok(out)
    }
}

/// (x, dy, mean, invstd[, weight]) in training mode or (x, dy, running_mean, running_var[,
/// weight]) in eval mode → (dx[, dweight, dbias]).
#[derive(Debug)]
pub struct BatchNormGrad {
    pub eps: f32,
    pub training: bool,
    pub affine: bool,
}

impl Op for BatchNormGrad {
    fn name(&self) -> &'static str {
        "batch_norm_backward"
    }
    fn infer(&self, x: &[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> {
        let c = channels_of(x[0])?;
        Ok(if self.affine { vec![x[0].to_vec(), vec![c], vec![c]] } else { vec![x[0].to_vec()] })
    }
    fn scratch(&self, x: &[&[usize]]) -> Vec<usize> {
        vec![k::BatchNorm::new(x[0]).scratch_len()]
    }
    fn lower(&self, gpu: &Gpu, io: &OpIo) -> Result<Vec<Dispatch>> {
        let bn = k::BatchNorm { eps: self.eps, ..k::BatchNorm::new(io.input_shapes[0]) };
        let (i, o) = (&io.inputs, &io.outputs);
        let gamma = self.affine.then(|| i[4]);
        let grads = self.affine.then(|| Affine { gamma: o[1], beta: o[2] });
        if self.training {
            k::backward_train(gpu, &bn, i[0], i[1], gamma, Saved { mean: i[2], invstd: i[3] }, o[0], grads, &io.scratch[0])
        } else {
            k::backward_eval(gpu, &bn, i[0], i[1], gamma, Running { mean: i[2], var: i[3] }, o[0], grads, &io.scratch[0])
        }
    }
    fn reference(&self, v: &mut [HostValue]) -> Vec<HostValue> {
        let shape = v[0].0.clone();
        let gamma = opt(v, 4);
        let gr = if self.training {
            r::backward_train(&v[0].1, &v[1].1, &shape, gamma, &v[2].1, &v[3].1)
        } else {
            r::backward_eval(&v[0].1, &v[1].1, &shape, gamma, &v[2].1, &v[3].1, self.eps as f64)
        };
        let c = vec![gr.dgamma.len()];
        let mut out = vec![(shape, gr.dx)];
        if self.affine {
            out.push((c.clone(), gr.dgamma));
            out.push((c, gr.dbeta));
        }
        out
    }
    fn backward(&self, _: &mut Graph, n: &NodeView, _: &[Option<Tensor>], _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        crate::bail!(Invalid, "{}: second derivatives are not supported", n.layer)
    }
}
