//! The op registry: for each op a conformance file may name, PyTorch's parameters, the
//! attributes kiln reads (checked generically, so a typo fails the case), and the runner that
//! computes it with kiln's kernels. Wiring an op in is writing its runner in runners.rs and
//! naming it in [`SPEC_OPS`]. [`Registry::prepare`] binds a case's inputs to its op's
//! parameters: by name when the file uses PyTorch's names, else by position (docs/CHECK.md).

use super::case::{Case, HostTensor};
use super::runners;
use crate::gpu::Gpu;
use crate::{Error, Result};

/// Computes one case on the GPU: its outputs, and the gradients of the inputs it asks for.
pub type Runner = fn(&Gpu, &Case) -> Result<OpResult>;

/// What a runner produced, by the names the case uses (`y`; an input's name for its gradient).
#[derive(Clone, Debug, Default)]
pub struct OpResult {
    pub outputs: Vec<(String, HostTensor)>,
    pub grads: Vec<(String, HostTensor)>,
}

impl OpResult {
    pub fn output(&mut self, name: &str, t: HostTensor) {
        self.outputs.push((name.to_string(), t));
    }

    pub fn grad(&mut self, input: &str, t: HostTensor) {
        self.grads.push((input.to_string(), t));
    }
}

/// The JSON type an attribute must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    Bool,
    Float,
    Int,
    /// An int or `[h, w]`, as PyTorch's conv arguments.
    Pair,
    /// `"mean"`, `"sum"` or `"none"`.
    Reduction,
    /// Any string (interpolate's mode): the runner says which values kiln computes.
    Str,
}

#[derive(Clone, Copy, Debug)]
pub struct OpSpec {
    pub name: &'static str,
    /// PyTorch's parameter names, in PyTorch's order; those from index `required` on may be
    /// absent (by name, any of them; by position, only trailing ones).
    pub inputs: &'static [&'static str],
    pub required: usize,
    pub attrs: &'static [(&'static str, Attr)],
    /// The op takes one or more tensors in a list (torch.cat's `tensors`), bound by position
    /// whatever their names.
    pub variadic: bool,
    /// `None` until the build has kernels for the op: its cases fail as not implemented.
    pub runner: Option<Runner>,
}

const CONV: &[(&str, Attr)] =
    &[("stride", Attr::Pair), ("padding", Attr::Pair), ("dilation", Attr::Pair), ("groups", Attr::Int)];
const CONV_T: &[(&str, Attr)] = &[
    ("stride", Attr::Pair),
    ("padding", Attr::Pair),
    ("output_padding", Attr::Pair),
    ("groups", Attr::Int),
    ("dilation", Attr::Pair),
];
const REDUCTION: &[(&str, Attr)] = &[("reduction", Attr::Reduction)];
const MAX_POOL: &[(&str, Attr)] = &[
    ("kernel_size", Attr::Pair),
    ("stride", Attr::Pair),
    ("padding", Attr::Pair),
    ("dilation", Attr::Pair),
    ("ceil_mode", Attr::Bool),
];
const AVG_POOL: &[(&str, Attr)] = &[
    ("kernel_size", Attr::Pair),
    ("stride", Attr::Pair),
    ("padding", Attr::Pair),
    ("ceil_mode", Attr::Bool),
    ("count_include_pad", Attr::Bool),
    ("divisor_override", Attr::Int),
];

const fn op(
    name: &'static str,
    inputs: &'static [&'static str],
    required: usize,
    attrs: &'static [(&'static str, Attr)],
    runner: Option<Runner>,
) -> OpSpec {
    OpSpec { name, inputs, required, attrs, variadic: false, runner }
}

/// Names a file may give a parameter instead of PyTorch's own: (alias, PyTorch's name).
pub const ALIASES: &[(&str, &str)] = &[("x", "input")];

fn canonical(name: &str) -> &str {
    ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |&(_, p)| p)
}

/// Every op of the format (docs/CHECK.md), with torch.nn.functional's parameter names.
pub const SPEC_OPS: &[OpSpec] = &[
    op("matmul", &["input", "other"], 2, &[], runners::MATMUL),
    op("linear", &["input", "weight", "bias"], 2, &[], runners::LINEAR),
    op("conv2d", &["input", "weight", "bias"], 2, CONV, runners::CONV2D),
    op("conv_transpose2d", &["input", "weight", "bias"], 2, CONV_T, runners::CONV_TRANSPOSE2D),
    op(
        "batch_norm",
        &["input", "running_mean", "running_var", "weight", "bias"],
        1,
        &[("training", Attr::Bool), ("momentum", Attr::Float), ("eps", Attr::Float)],
        runners::BATCH_NORM,
    ),
    op("relu", &["input"], 1, &[], runners::RELU),
    op("leaky_relu", &["input"], 1, &[("negative_slope", Attr::Float)], runners::LEAKY_RELU),
    op("tanh", &["input"], 1, &[], runners::TANH),
    op("sigmoid", &["input"], 1, &[], runners::SIGMOID),
    op("binary_cross_entropy_with_logits", &["input", "target"], 2, REDUCTION, runners::BCE_WITH_LOGITS),
    op("binary_cross_entropy", &["input", "target"], 2, REDUCTION, runners::BCE),
    op("mse_loss", &["input", "target"], 2, REDUCTION, runners::MSE_LOSS),
    op("kl_normal", &["mu", "logvar"], 2, &[], runners::KL_NORMAL),
    op("max_pool2d", &["input"], 1, MAX_POOL, runners::MAX_POOL2D),
    op("avg_pool2d", &["input"], 1, AVG_POOL, runners::AVG_POOL2D),
    op("adaptive_avg_pool2d", &["input"], 1, &[("output_size", Attr::Pair)], runners::ADAPTIVE_AVG_POOL2D),
    op("cross_entropy", &["input", "target"], 2, REDUCTION, runners::CROSS_ENTROPY),
    OpSpec { variadic: true, ..op("cat", &["tensors"], 1, &[("dim", Attr::Int)], runners::CAT) },
    op("narrow", &["input"], 1, &[("dim", Attr::Int), ("start", Attr::Int), ("length", Attr::Int)], runners::NARROW),
    op(
        "interpolate",
        &["input"],
        1,
        &[("size", Attr::Pair), ("mode", Attr::Str), ("align_corners", Attr::Bool), ("antialias", Attr::Bool)],
        runners::INTERPOLATE,
    ),
];

/// The ops a check run knows: [`SPEC_OPS`], plus any a caller adds (tests, experiments).
#[derive(Clone, Debug)]
pub struct Registry {
    ops: Vec<OpSpec>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

impl Registry {
    pub fn builtin() -> Registry {
        Registry { ops: SPEC_OPS.to_vec() }
    }

    /// Adds `spec`, replacing an op of the same name.
    pub fn with(mut self, spec: OpSpec) -> Registry {
        self.ops.retain(|o| o.name != spec.name);
        self.ops.push(spec);
        self
    }

    pub fn spec(&self, op: &str) -> Option<&OpSpec> {
        self.ops.iter().find(|o| o.name == op)
    }

    /// Checks `case` against its op's spec (known op, inputs, attribute names and types) and
    /// returns it bound to the op's parameters, with its runner (`None` when this build does
    /// not implement the op). Runners read a case's inputs through the binding.
    pub fn prepare(&self, case: &Case) -> Result<(Case, Option<Runner>)> {
        self.validate(case).map_err(|m| Error::Invalid(format!("case {:?}: {m}", case.name)))
    }

    /// [`Registry::prepare`] with the error as a bare message, for report lines that already
    /// name the case.
    pub(crate) fn validate(&self, case: &Case) -> std::result::Result<(Case, Option<Runner>), String> {
        let fail = |m: String| Err(m);
        let Some(spec) = self.spec(&case.op) else {
            let known: Vec<&str> = self.ops.iter().map(|o| o.name).collect();
            return fail(format!("unknown op {:?} (kiln check knows {})", case.op, known.join(", ")));
        };
        let params = self.bind(spec, case)?;
        for (key, value) in &case.attrs {
            let Some(&(_, kind)) = spec.attrs.iter().find(|(a, _)| a == key) else {
                let known: Vec<&str> = spec.attrs.iter().map(|(a, _)| *a).collect();
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                return fail(format!("{} has no attribute {key:?} (it takes {known})", spec.name));
            };
            let ok = match kind {
                Attr::Bool => case.attr_bool(key, false).is_ok(),
                Attr::Float => case.attr_f64(key, 0.0).is_ok(),
                Attr::Int => case.attr_int(key, 0).is_ok(),
                Attr::Pair => case.attr_pair(key, 0).is_ok(),
                Attr::Reduction => matches!(value.as_str(), Some("mean" | "sum" | "none")),
                Attr::Str => value.is_string(),
            };
            if !ok {
                let want = match kind {
                    Attr::Bool => "true or false",
                    Attr::Float => "a number",
                    Attr::Int => "a non-negative integer",
                    Attr::Pair => "a non-negative integer or [h, w]",
                    Attr::Reduction => "\"mean\", \"sum\" or \"none\"",
                    Attr::Str => "a string",
                };
                return fail(format!("attr {key:?} of {} must be {want}, got {value}", spec.name));
            }
        }
        Ok((case.bound(params), spec.runner))
    }

    /// Whether `name` is PyTorch's name (or an alias) for a parameter of any op known here.
    fn is_pytorch_name(&self, name: &str) -> bool {
        let name = canonical(name);
        self.ops.iter().any(|o| o.inputs.contains(&name))
    }

    /// For each of `spec`'s parameters, the index in `case.inputs` of the tensor given for it.
    /// Inputs named with PyTorch's names bind by name, so optional parameters may be absent
    /// anywhere (batch_norm without running statistics); inputs named otherwise bind by
    /// position. A mix would be a guess either way, so it is an error, as are a name the op does
    /// not take, two names for one parameter, and a missing required parameter.
    fn bind(&self, spec: &OpSpec, case: &Case) -> std::result::Result<Vec<Option<usize>>, String> {
        let given: Vec<&str> = case.inputs.iter().map(|(n, _)| n.as_str()).collect();
        if spec.variadic {
            if given.is_empty() {
                return Err(format!("{} takes a list of one or more tensors, the case gives none", spec.name));
            }
            return Ok((0..given.len()).map(Some).collect());
        }
        let (ours, theirs): (Vec<&str>, Vec<&str>) = given.iter().partition(|n| self.is_pytorch_name(n));
        let takes = || {
            let names = spec.inputs.iter().map(|&p| match ALIASES.iter().find(|(_, q)| *q == p) {
                Some((alias, _)) => format!("{p} (or {alias})"),
                None => p.to_string(),
            });
            names.collect::<Vec<_>>().join(", ")
        };
        if ours.is_empty() {
            let n = given.len();
            if n < spec.required || n > spec.inputs.len() {
                let count = if spec.required == spec.inputs.len() {
                    spec.required.to_string()
                } else {
                    format!("{} to {}", spec.required, spec.inputs.len())
                };
                return Err(format!(
                    "{} takes {count} inputs ({}), the case gives {n} ({})",
                    spec.name,
                    spec.inputs.join(", "),
                    given.join(", ")
                ));
            }
            return Ok((0..spec.inputs.len()).map(|i| (i < n).then_some(i)).collect());
        }
        if !theirs.is_empty() {
            return Err(format!(
                "inputs mix PyTorch's parameter names ({}) with others ({}); name every input as {} does \
                 ({}) or none of them (then they are read by position)",
                ours.join(", "),
                theirs.join(", "),
                spec.name,
                takes()
            ));
        }
        let mut params = vec![None; spec.inputs.len()];
        for (j, name) in given.iter().enumerate() {
            let Some(p) = spec.inputs.iter().position(|&p| p == canonical(name)) else {
                return Err(format!("{} has no input {name:?} (it takes {})", spec.name, takes()));
            };
            if let Some(first) = params[p].replace(j) {
                return Err(format!(
                    "inputs {:?} and {name:?} both name {}'s parameter {:?}",
                    given[first], spec.name, spec.inputs[p]
                ));
            }
        }
        if let Some(p) = (0..spec.required).find(|&p| params[p].is_none()) {
            return Err(format!(
                "{} needs input {:?}, the case gives {}",
                spec.name,
                spec.inputs[p],
                given.join(", ")
            ));
        }
        Ok(params)
    }

    /// Runs `case` on the GPU. An op without kernels in this build is an error saying so.
    pub fn run_op(&self, gpu: &Gpu, case: &Case) -> Result<OpResult> {
        match self.prepare(case)? {
            (bound, Some(runner)) => runner(gpu, &bound),
            (_, None) => Err(Error::Invalid(format!("case {:?}: {}", case.name, not_implemented(case)))),
        }
    }
}

pub(crate) fn not_implemented(case: &Case) -> String {
    format!("op {} is not implemented by this build", case.op)
}

/// [`Registry::run_op`] with the built-in ops.
pub fn run_op(gpu: &Gpu, case: &Case) -> Result<OpResult> {
    Registry::builtin().run_op(gpu, case)
}
