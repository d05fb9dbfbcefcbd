//! The runner of each op: uploads the case's inputs, launches kiln's kernels, reads back the
//! outputs and the gradients the case asks for. `None` means this build has no kernels for the
//! op yet; its cases fail as "not implemented by this build".
//!
//! Wiring an op in (docs/CHECK.md shows a whole runner):
//! ```text
//! pub const LINEAR: Option<Runner> = Some(linear);
//! fn linear(gpu: &Gpu, case: &Case) -> Result<OpResult> { ... }
//! ```

use super::case::{Case, HostTensor};
use super::ops::{OpResult, Runner};
use super::via_graph::{via_graph, Arg, Produced};
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::kernels::loss::{self, Reduction};
use crate::kernels::{activation as act, elementwise, reduce};
use crate::{bail, Result};

pub const MATMUL: Option<Runner> = Some(matmul);
pub const LINEAR: Option<Runner> = Some(linear);
pub const CONV2D: Option<Runner> = Some(conv2d);
pub const CONV_TRANSPOSE2D: Option<Runner> = Some(conv_transpose2d);
pub const BATCH_NORM: Option<Runner> = Some(batch_norm);
pub const RELU: Option<Runner> = Some(relu);
pub const LEAKY_RELU: Option<Runner> = Some(leaky_relu);
pub const TANH: Option<Runner> = Some(tanh);
pub const SIGMOID: Option<Runner> = Some(sigmoid);
pub const BCE_WITH_LOGITS: Option<Runner> = Some(bce_with_logits);
pub const BCE: Option<Runner> = Some(bce);
pub const MSE_LOSS: Option<Runner> = Some(mse_loss);
pub const KL_NORMAL: Option<Runner> = Some(kl_normal);
pub const MAX_POOL2D: Option<Runner> = Some(max_pool2d);
pub const AVG_POOL2D: Option<Runner> = Some(avg_pool2d);
pub const ADAPTIVE_AVG_POOL2D: Option<Runner> = Some(adaptive_avg_pool2d);
pub const CROSS_ENTROPY: Option<Runner> = Some(cross_entropy);
pub const CAT: Option<Runner> = Some(cat);
pub const NARROW: Option<Runner> = Some(narrow);
pub const INTERPOLATE: Option<Runner> = Some(interpolate);

/// The case's (single) output name, `y` in the shipped fixture.
fn output_name(case: &Case) -> &str {
    case.outputs.first().map_or("y", |(n, _)| n)
}

/// Parameters past the `supported` first ones (a loss's `weight`, where a registry lists it)
/// would change the result; refusing them beats a silent wrong answer.
fn only_inputs(case: &Case, supported: usize) -> Result<()> {
    if let Some(i) = case.given().find(|&i| i >= supported) {
        bail!(Invalid, "case {:?}: {} input {:?} (#{i}) is not supported by kiln's kernels", case.name, case.op, case.input_name(i));
    }
    Ok(())
}

/// An activation y = f(x); its backward reads x, or y where `backward_from_y`.
fn activation(
    gpu: &Gpu,
    case: &Case,
    backward_from_y: bool,
    forward: impl Fn(&Buffer, &Buffer) -> Result<Dispatch>,
    backward: impl Fn(&Buffer, &Buffer, &Buffer) -> Result<Dispatch>,
) -> Result<OpResult> {
    only_inputs(case, 1)?;
    let x = case.input(0)?;
    let (xb, y) = (x.upload(gpu, "input")?, gpu.zeros("y", x.len())?);
    gpu.run(&[forward(&xb, &y)?])?;
    let mut result = OpResult::default();
    result.output(output_name(case), HostTensor::download(gpu, &y, &x.shape)?);
    if case.wants_grad(0) {
        let dy = case.upstream(output_name(case))?.upload(gpu, "grad_y")?;
        let dx = gpu.zeros("grad_input", x.len())?;
        gpu.run(&[backward(if backward_from_y { &y } else { &xb }, &dy, &dx)?])?;
        result.grad(case.input_name(0), HostTensor::download(gpu, &dx, &x.shape)?);
    }
    Ok(result)
}

fn relu(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let n = case.input(0)?.len();
    activation(gpu, case, false, |x, y| act::relu(gpu, n, x, y), |x, dy, dx| act::relu_backward(gpu, n, x, dy, dx))
}

fn leaky_relu(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let n = case.input(0)?.len();
    let slope = case.attr_f64("negative_slope", 0.01)? as f32;
    let forward = |x: &Buffer, y: &Buffer| act::leaky_relu(gpu, slope, n, x, y);
    activation(gpu, case, false, forward, |x, dy, dx| act::leaky_relu_backward(gpu, slope, n, x, dy, dx))
}

fn tanh(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let n = case.input(0)?.len();
    activation(gpu, case, true, |x, y| act::tanh(gpu, n, x, y), |y, dy, dx| act::tanh_backward(gpu, n, y, dy, dx))
}

fn sigmoid(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let n = case.input(0)?.len();
    activation(gpu, case, true, |x, y| act::sigmoid(gpu, n, x, y), |y, dy, dx| act::sigmoid_backward(gpu, n, y, dy, dx))
}

/// The two inputs of a loss, which must have one shape: kiln's losses do not broadcast.
fn loss_inputs(case: &Case) -> Result<(&HostTensor, &HostTensor)> {
    only_inputs(case, 2)?;
    let (a, b) = (case.input(0)?, case.input(1)?);
    if a.shape != b.shape {
        let (an, bn) = (case.input_name(0), case.input_name(1));
        bail!(Shape, "{}: {an} has shape {:?} but {bn} has shape {:?}; kiln does not broadcast losses", case.op, a.shape, b.shape);
    }
    Ok((a, b))
}

type LossForward = fn(&Gpu, Reduction, usize, &Buffer, &Buffer, &Buffer, &[Buffer]) -> Result<Vec<Dispatch>>;
type LossBackward = fn(&Gpu, Reduction, usize, &Buffer, &Buffer, &Buffer, &Buffer) -> Result<Dispatch>;

/// A loss with `reduction`: a 0-d output for mean and sum, the input's shape for none. The
/// target's gradient is −d(input) where `target_grad_is_negated_input_grad` (mse_loss), and
/// an error otherwise.
fn reduced_loss(gpu: &Gpu, case: &Case, forward: LossForward, backward: LossBackward, target_grad_is_negated_input_grad: bool) -> Result<OpResult> {
    let (x, t) = loss_inputs(case)?;
    let reduction: Reduction = case.attr_str("reduction", "mean")?.parse()?;
    if case.wants_grad(1) && !target_grad_is_negated_input_grad {
        bail!(Invalid, "case {:?}: {}: the gradient of {:?} (the target) is not supported", case.name, case.op, case.input_name(1));
    }
    let n = x.len();
    let (xb, tb) = (x.upload(gpu, "input")?, t.upload(gpu, "target")?);
    let y = gpu.zeros("y", reduction.output_len(n))?;
    let scratch = reduce::alloc_scratch(gpu, &case.op, &loss::scratch_lens(reduction, n))?;
    gpu.run(&forward(gpu, reduction, n, &xb, &tb, &y, &scratch)?)?;
    let mut result = OpResult::default();
    let shape = if reduction == Reduction::None { x.shape.clone() } else { vec![] };
    result.output(output_name(case), HostTensor::download(gpu, &y, &shape)?);
    if case.wants_grad(0) || case.wants_grad(1) {
        let gy = case.upstream(output_name(case))?.upload(gpu, "grad_y")?;
        let (dx, dt) = (gpu.zeros("grad_input", n)?, gpu.zeros("grad_target", n)?);
        gpu.run(&[backward(gpu, reduction, n, &xb, &tb, &gy, &dx)?, elementwise::scale(gpu, -1.0, &dx, &dt, n)?])?;
        for (i, d) in [(0, &dx), (1, &dt)] {
            if case.wants_grad(i) {
                result.grad(case.input_name(i), HostTensor::download(gpu, d, &x.shape)?);
            }
        }
    }
    Ok(result)
}

fn bce_with_logits(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    reduced_loss(gpu, case, loss::binary_cross_entropy_with_logits, loss::binary_cross_entropy_with_logits_backward, false)
}

fn bce(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    reduced_loss(gpu, case, loss::binary_cross_entropy, loss::binary_cross_entropy_backward, false)
}

fn mse_loss(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    reduced_loss(gpu, case, loss::mse_loss, loss::mse_loss_backward, true)
}

fn kl_normal(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let (mu, lv) = loss_inputs(case)?;
    let n = mu.len();
    let (mb, lvb, y) = (mu.upload(gpu, "mu")?, lv.upload(gpu, "logvar")?, gpu.zeros("y", 1)?);
    let scratch = reduce::alloc_scratch(gpu, "kl_normal", &loss::scratch_lens(Reduction::Sum, n))?;
    gpu.run(&loss::kl_normal(gpu, n, &mb, &lvb, &y, &scratch)?)?;
    let mut result = OpResult::default();
    result.output(output_name(case), HostTensor::download(gpu, &y, &[])?);
    if case.wants_any_grad() {
        let gy = case.upstream(output_name(case))?.upload(gpu, "grad_y")?;
        let (dmu, dlv) = (gpu.zeros("grad_mu", n)?, gpu.zeros("grad_logvar", n)?);
        gpu.run(&[loss::kl_normal_backward(gpu, n, &mb, &lvb, &gy, &dmu, &dlv)?])?;
        for (i, d) in [(0, &dmu), (1, &dlv)] {
            if case.wants_grad(i) {
                result.grad(case.input_name(i), HostTensor::download(gpu, d, &mu.shape)?);
            }
        }
    }
    Ok(result)
}

/// batch_norm(input, running_mean?, running_var?, weight?, bias?) through the graph op. In
/// training mode with running statistics, those after PyTorch's update are outputs too.
/// The graph op takes both running statistics and weight and bias or neither, so a parameter
/// the case leaves out gets a stand-in that changes nothing: running statistics that training
/// without them neither reads nor updates, a weight of ones, a bias of zeros.
fn batch_norm(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let training = case.attr_bool("training", false)?;
    let running = match (case.optional_input(1), case.optional_input(2)) {
        (Some(_), Some(_)) => true,
        (None, None) if training => false,
        (None, None) => bail!(
            Invalid,
            "case {:?}: batch_norm in eval mode (training false) needs running_mean and running_var, as PyTorch does",
            case.name
        ),
        _ => bail!(Invalid, "case {:?}: batch_norm needs running_mean and running_var together, or neither", case.name),
    };
    let op = crate::graph::ops::BatchNorm {
        eps: case.attr_f64("eps", 1e-5)? as f32,
        momentum: case.attr_f64("momentum", 0.1)? as f32,
        training,
        update_running: running,
    };
    let channels = case.input(0)?.shape.get(1).copied().unwrap_or(0);
    let fill = |name, value| Arg::Fixed(name, HostTensor { shape: vec![channels], data: vec![value; channels] });
    let mut args = vec![Arg::Param(0)];
    if running {
        args.extend([Arg::State(1), Arg::State(2)]);
    } else {
        args.extend([fill("running_mean", 0.0), fill("running_var", 1.0)]);
    }
    if case.optional_input(3).is_some() || case.optional_input(4).is_some() {
        let given_or = |i, name, value| if case.optional_input(i).is_some() { Arg::Param(i) } else { fill(name, value) };
        args.extend([given_or(3, "weight", 1.0), given_or(4, "bias", 0.0)]);
    }
    via_graph(gpu, case, &args, |g, x| {
        let y = g.apply(op, x, &case.name)?[0];
        let mut out = vec![Produced::Computed("y".into(), y)];
        if op.training && running {
            out.push(Produced::Updated("running_mean".into(), x[1]));
            out.push(Produced::Updated("running_var".into(), x[2]));
        }
        Ok(out)
    })
}

/// One op applied to all the case's inputs, through the graph; output `y`.
fn single_op(gpu: &Gpu, case: &Case, op: impl crate::graph::Op + 'static) -> Result<OpResult> {
    let args: Vec<Arg> = case.given().map(Arg::Param).collect();
    via_graph(gpu, case, &args, |g, x| Ok(vec![Produced::Computed("y".into(), g.apply1(op, x, &case.name)?)]))
}

/// torch.matmul of two 2-D tensors.
fn matmul(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    for i in 0..2 {
        if case.input(i)?.shape.len() != 2 {
            bail!(Invalid, "case {:?}: matmul of {:?}: kiln's matmul takes 2-D tensors", case.name, case.input(i)?.shape);
        }
    }
    single_op(gpu, case, crate::graph::ops::Matmul::default())
}

fn linear(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    single_op(gpu, case, crate::graph::ops::Linear)
}

/// Convolution attributes kiln supports: groups must be 1.
fn conv_attrs(case: &Case) -> Result<([usize; 2], [usize; 2], [usize; 2])> {
    if case.attr_int("groups", 1)? != 1 {
        bail!(Invalid, "case {:?}: {} with groups != 1 is not supported", case.name, case.op);
    }
    Ok((case.attr_pair("stride", 1)?, case.attr_pair("padding", 0)?, case.attr_pair("dilation", 1)?))
}

fn conv2d(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let (stride, padding, dilation) = conv_attrs(case)?;
    single_op(gpu, case, crate::graph::ops::Conv2d { stride, padding, dilation })
}

fn conv_transpose2d(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let (stride, padding, dilation) = conv_attrs(case)?;
    let output_padding = case.attr_pair("output_padding", 0)?;
    single_op(gpu, case, crate::graph::ops::ConvTranspose2d { stride, padding, output_padding, dilation })
}

/// kernel_size (required, as in PyTorch), stride (PyTorch's default: kernel_size), padding and
/// ceil_mode: the attributes both pools take.
fn pool_attrs(case: &Case) -> Result<([usize; 2], [usize; 2], [usize; 2], bool)> {
    if !case.attrs.contains_key("kernel_size") {
        bail!(Invalid, "case {:?}: {} needs the attr kernel_size", case.name, case.op);
    }
    let kernel = case.attr_pair("kernel_size", 0)?;
    let stride = if case.attrs.contains_key("stride") { case.attr_pair("stride", 0)? } else { kernel };
    Ok((kernel, stride, case.attr_pair("padding", 0)?, case.attr_bool("ceil_mode", false)?))
}

fn max_pool2d(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let (kernel, stride, padding, ceil_mode) = pool_attrs(case)?;
    let dilation = case.attr_pair("dilation", 1)?;
    single_op(gpu, case, crate::graph::ops::MaxPool2d { kernel, stride, padding, dilation, ceil_mode })
}

fn avg_pool2d(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    let (kernel, stride, padding, ceil_mode) = pool_attrs(case)?;
    let count_include_pad = case.attr_bool("count_include_pad", true)?;
    let divisor_override = case.attrs.contains_key("divisor_override").then(|| case.attr_int("divisor_override", 0)).transpose()?;
    single_op(gpu, case, crate::graph::ops::AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad, divisor_override })
}

/// adaptive_avg_pool2d to 1x1 only (a global mean per channel); the graph op refuses others.
fn adaptive_avg_pool2d(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    if !case.attrs.contains_key("output_size") {
        bail!(Invalid, "case {:?}: adaptive_avg_pool2d needs the attr output_size", case.name);
    }
    let output_size = case.attr_pair("output_size", 1)?;
    single_op(gpu, case, crate::graph::ops::AdaptiveAvgPool2d { output_size })
}

/// cross_entropy(input [N, C] logits, target [N] class indices). The target is checked here,
/// before the GPU (which would only give that row NaN): a value that is not a class index
/// fails the case naming the row. It gets no gradient, as in PyTorch.
fn cross_entropy(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    only_inputs(case, 2)?;
    let (x, t) = (case.input(0)?, case.input(1)?);
    let (xn, tn) = (case.input_name(0), case.input_name(1));
    let [n, classes] = x.dims::<2>(&format!("case {:?}: cross_entropy's {xn} (kiln takes [N, C] logits)", case.name))?;
    if t.shape != [n] {
        bail!(Shape, "case {:?}: cross_entropy's {tn} has shape {:?}; kiln takes [{n}] class indices (not class probabilities)", case.name, t.shape);
    }
    let target: Vec<f64> = t.data.iter().map(|&v| v as f64).collect();
    crate::reference::loss::class_indices(&target, classes).map_err(|e| crate::Error::Invalid(format!("case {:?}: {e} ({tn})", case.name)))?;
    if case.wants_grad(1) {
        bail!(Invalid, "case {:?}: cross_entropy: {tn:?} holds class indices, which have no gradient", case.name);
    }
    let reduction: Reduction = case.attr_str("reduction", "mean")?.parse()?;
    via_graph(gpu, case, &[Arg::Param(0), Arg::State(1)], |g, x| {
        let y = g.apply1(crate::graph::ops::CrossEntropy { reduction }, x, &case.name)?;
        Ok(vec![Produced::Computed(output_name(case).into(), y)])
    })
}

/// torch.cat(tensors, dim): every input of the case, in the file's order.
fn cat(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    single_op(gpu, case, crate::graph::ops::Cat { dim: case.attr_int("dim", 0)? })
}

/// torch.narrow(input, dim, start, length): all three attributes are required, as in PyTorch.
fn narrow(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    if let Some(missing) = ["dim", "start", "length"].into_iter().find(|a| !case.attrs.contains_key(*a)) {
        bail!(Invalid, "case {:?}: narrow needs the attr {missing}", case.name);
    }
    let (dim, start, length) = (case.attr_int("dim", 0)?, case.attr_int("start", 0)?, case.attr_int("length", 0)?);
    single_op(gpu, case, crate::graph::ops::Narrow { dim, start, length })
}

/// F.interpolate(input, size, mode="bilinear", align_corners=False): the resize in front of
/// pytorch-fid's Inception. Other modes, align_corners, antialias and scale_factor are refused,
/// and so is a gradient: kiln's bilinear resize is for feature extraction and has no backward.
fn interpolate(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    if !case.attrs.contains_key("size") {
        bail!(Invalid, "case {:?}: interpolate needs the attr size (kiln does not take scale_factor)", case.name);
    }
    let mode = case.attr_str("mode", "nearest")?;
    if mode != "bilinear" {
        bail!(Invalid, "case {:?}: interpolate mode {mode:?} is not implemented by kiln (it has \"bilinear\" only)", case.name);
    }
    for flag in ["align_corners", "antialias"] {
        if case.attr_bool(flag, false)? {
            bail!(Invalid, "case {:?}: interpolate with {flag}=True is not implemented by kiln", case.name);
        }
    }
    single_op(gpu, case, crate::graph::ops::Interpolate::bilinear(case.attr_pair("size", 0)?))
}
