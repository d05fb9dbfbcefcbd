//! The op registry: for each op a conformance file may name, PyTorch's positional inputs, the
//! attributes kiln reads (checked generically, so a typo fails the case), and the runner that
//! computes it with kiln's kernels. Wiring an op in is writing its runner in runners.rs and
//! naming it in [`SPEC_OPS`].

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
}

#[derive(Clone, Copy, Debug)]
pub struct OpSpec {
    pub name: &'static str,
    /// PyTorch's positional parameters, in order; those from index `required` on may be absent.
    pub inputs: &'static [&'static str],
    pub required: usize,
    pub attrs: &'static [(&'static str, Attr)],
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

const fn op(
    name: &'static str,
    inputs: &'static [&'static str],
    required: usize,
    attrs: &'static [(&'static str, Attr)],
    runner: Option<Runner>,
) -> OpSpec {
    OpSpec { name, inputs, required, attrs, runner }
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
        3,
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

    /// Checks `case` against its op's spec (known op, input count, attribute names and types)
    /// and returns its runner, or `None` when this build does not implement the op.
    pub fn prepare(&self, case: &Case) -> Result<Option<Runner>> {
        self.validate(case).map_err(|m| Error::Invalid(format!("case {:?}: {m}", case.name)))
    }

    /// [`Registry::prepare`] with the error as a bare message, for report lines that already
    /// name the case.
    pub(crate) fn validate(&self, case: &Case) -> std::result::Result<Option<Runner>, String> {
        let fail = |m: String| Err(m);
        let Some(spec) = self.spec(&case.op) else {
            let known: Vec<&str> = self.ops.iter().map(|o| o.name).collect();
            return fail(format!("unknown op {:?} (kiln check knows {})", case.op, known.join(", ")));
        };
        let n = case.inputs.len();
        if n < spec.required || n > spec.inputs.len() {
            let count = if spec.required == spec.inputs.len() {
                spec.required.to_string()
            } else {
                format!("{} to {}", spec.required, spec.inputs.len())
            };
            let given: Vec<&str> = case.inputs.iter().map(|(name, _)| name.as_str()).collect();
            return fail(format!(
                "{} takes {count} inputs ({}), the case gives {n} ({})",
                spec.name,
                spec.inputs.join(", "),
                given.join(", ")
            ));
        }
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
            };
            if !ok {
                let want = match kind {
                    Attr::Bool => "true or false",
                    Attr::Float => "a number",
                    Attr::Int => "a non-negative integer",
                    Attr::Pair => "a non-negative integer or [h, w]",
                    Attr::Reduction => "\"mean\", \"sum\" or \"none\"",
                };
                return fail(format!("attr {key:?} of {} must be {want}, got {value}", spec.name));
            }
        }
        Ok(spec.runner)
    }

    /// Runs `case` on the GPU. An op without kernels in this build is an error saying so.
    pub fn run_op(&self, gpu: &Gpu, case: &Case) -> Result<OpResult> {
        match self.prepare(case)? {
            Some(runner) => runner(gpu, case),
            None => Err(Error::Invalid(format!("case {:?}: {}", case.name, not_implemented(case)))),
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
