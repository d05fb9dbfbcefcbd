//! Reading a conformance file (docs/CHECK.md): the `kiln.cases` JSON in the safetensors
//! metadata, and every tensor it names, validated up front so that a malformed file is one
//! clear error naming the case and the tensor, before any GPU work.

use crate::gpu::{Buffer, Gpu};
use crate::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// The safetensors metadata key that holds the JSON array of cases.
pub const METADATA_KEY: &str = "kiln.cases";
/// Relative L2 tolerance of a case that gives none.
pub const DEFAULT_TOL: f64 = 1e-4;
/// Absolute slack in the pass rule ‖got − want‖₂ ≤ tol·‖want‖₂ + ABS_TOL, for near-zero wants.
pub const ABS_TOL: f64 = 1e-6;

const CASE_KEYS: [&str; 7] = ["name", "op", "attrs", "inputs", "outputs", "grads", "tol"];

/// A tensor on the host: row-major f32 with its shape (`[]` for a scalar).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Checks that `data` holds exactly the elements `shape` describes.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape(format!("tensor of shape {shape:?} needs {n} elements, got {}", data.len())));
        }
        Ok(HostTensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> HostTensor {
        HostTensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The shape as exactly `N` dimensions; `what` names the tensor in the error.
    pub fn dims<const N: usize>(&self, what: &str) -> Result<[usize; N]> {
        self.shape
            .as_slice()
            .try_into()
            .map_err(|_| Error::Shape(format!("{what} must have {N} dimensions, has shape {:?}", self.shape)))
    }

    pub fn upload(&self, gpu: &Gpu, label: &str) -> Result<Buffer> {
        gpu.upload(label, &self.data)
    }

    /// Reads the first `shape.product()` elements of `buffer` back as a tensor of that shape.
    pub fn download(gpu: &Gpu, buffer: &Buffer, shape: &[usize]) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        let mut data = gpu.read(buffer)?;
        if data.len() < n {
            return Err(Error::Shape(format!(
                "buffer {:?} holds {} elements, shape {shape:?} needs {n}",
                buffer.label,
                data.len()
            )));
        }
        data.truncate(n);
        Ok(HostTensor { shape: shape.to_vec(), data })
    }
}

/// One conformance case: an op, its attributes, its inputs, the expected outputs and the
/// expected gradients of the inputs named in `grads`.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    /// A torch.nn.functional name (`conv2d`), or `kl_normal`.
    pub op: String,
    pub attrs: Map<String, Value>,
    /// The inputs in the file's order, by the file's names.
    pub inputs: Vec<(String, HostTensor)>,
    /// For each of the op's parameters (PyTorch's order), the index in `inputs` of the tensor
    /// given for it. Empty until [`Registry::prepare`](super::Registry::prepare) binds the case:
    /// only it knows the op's parameters, and an unbound case must not be read by position.
    params: Vec<Option<usize>>,
    /// Expected outputs, in the file's order.
    pub outputs: Vec<(String, HostTensor)>,
    /// Upstream gradient of each output that has one; an output without one passes none back.
    pub grad_out: Vec<(String, HostTensor)>,
    /// Expected gradient of each input named in `grads`, in that order.
    pub grads: Vec<(String, HostTensor)>,
    pub tol: f64,
}

fn find<'a>(list: &'a [(String, HostTensor)], name: &str) -> Option<&'a HostTensor> {
    list.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

impl Case {
    /// This case with its inputs bound to the op's parameters (see `params`).
    pub(super) fn bound(&self, params: Vec<Option<usize>>) -> Case {
        Case { params, ..self.clone() }
    }

    /// The input given for the op's parameter `i`, with the file's name for it.
    fn param(&self, i: usize) -> Option<&(String, HostTensor)> {
        self.params.get(i).copied().flatten().map(|j| &self.inputs[j])
    }

    /// The op's parameters that the case gives, in PyTorch's order.
    pub fn given(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.params.len()).filter(|&i| self.params[i].is_some())
    }

    /// The input for the op's parameter `i`; an error (naming the case) when the case has none.
    pub fn input(&self, i: usize) -> Result<&HostTensor> {
        self.optional_input(i)
            .ok_or_else(|| Error::Invalid(format!("case {:?}: {} needs its parameter #{i}, the case gives none", self.name, self.op)))
    }

    /// The input for the op's parameter `i` where PyTorch makes it optional (a bias).
    pub fn optional_input(&self, i: usize) -> Option<&HostTensor> {
        self.param(i).map(|(_, t)| t)
    }

    /// The file's name for the op's parameter `i` (the key its gradient is reported under).
    pub fn input_name(&self, i: usize) -> &str {
        self.param(i).map_or("", |(n, _)| n)
    }

    /// Whether the gradient of the op's parameter `i` is checked.
    pub fn wants_grad(&self, i: usize) -> bool {
        self.param(i).is_some_and(|(n, _)| self.grads.iter().any(|(g, _)| g == n))
    }

    pub fn wants_any_grad(&self) -> bool {
        !self.grads.is_empty()
    }

    /// The expected output `name` (its shape is what the op must produce).
    pub fn output(&self, name: &str) -> Option<&HostTensor> {
        find(&self.outputs, name)
    }

    /// The upstream gradient of output `name`: the file's, or zeros shaped like the output.
    pub fn upstream(&self, name: &str) -> Result<HostTensor> {
        if let Some(g) = find(&self.grad_out, name) {
            return Ok(g.clone());
        }
        let out = self
            .output(name)
            .ok_or_else(|| Error::Invalid(format!("case {:?}: no output {name:?} to take a gradient of", self.name)))?;
        Ok(HostTensor::zeros(&out.shape))
    }

    fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs.get(name)
    }

    fn bad_attr(&self, name: &str, want: &str) -> Error {
        Error::Invalid(format!("case {:?}: attr {name:?} must be {want}, got {}", self.name, self.attrs[name]))
    }

    pub fn attr_f64(&self, name: &str, default: f64) -> Result<f64> {
        match self.attr(name) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad_attr(name, "a number")),
        }
    }

    pub fn attr_bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.attr(name) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad_attr(name, "true or false")),
        }
    }

    pub fn attr_int(&self, name: &str, default: usize) -> Result<usize> {
        match self.attr(name) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| self.bad_attr(name, "a non-negative integer")),
        }
    }

    /// An int-or-pair attribute as PyTorch takes them: `2` means `[2, 2]`, `[h, w]` as given.
    pub fn attr_pair(&self, name: &str, default: usize) -> Result<[usize; 2]> {
        let Some(v) = self.attr(name) else { return Ok([default; 2]) };
        let bad = || self.bad_attr(name, "a non-negative integer or [h, w]");
        if let Some(n) = v.as_u64() {
            return Ok([n as usize; 2]);
        }
        match v.as_array().map(|a| a.as_slice()) {
            Some([h, w]) => Ok([h.as_u64().ok_or_else(bad)? as usize, w.as_u64().ok_or_else(bad)? as usize]),
            _ => Err(bad()),
        }
    }

    pub fn attr_str<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str> {
        match self.attr(name) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad_attr(name, "a string")),
        }
    }
}

/// Every case of one conformance file.
#[derive(Clone, Debug)]
pub struct CaseFile {
    pub path: String,
    pub cases: Vec<Case>,
}

impl CaseFile {
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<CaseFile> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: shown.clone(), source })?;
        CaseFile::from_bytes(&bytes, &shown)
    }

    /// Parses a file already in memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<CaseFile> {
        let invalid = |m: String| Error::Invalid(format!("{origin}: {m}"));
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let json = header.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)).ok_or_else(|| {
            invalid(format!("no {METADATA_KEY:?} key in the safetensors metadata; see docs/CHECK.md for the format"))
        })?;
        let value: Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("{METADATA_KEY:?} is not valid JSON: {e}")))?;
        let entries = value.as_array().ok_or_else(|| invalid(format!("{METADATA_KEY:?} must be a JSON array of cases")))?;

        let mut reader = Reader { tensors: &tensors, used: HashSet::new() };
        let mut names = HashSet::new();
        let mut cases = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let case = reader.case(i, entry).map_err(invalid)?;
            if !names.insert(case.name.clone()) {
                return Err(invalid(format!("two cases are named {:?}", case.name)));
            }
            cases.push(case);
        }
        let mut stray: Vec<&str> = tensors.names().into_iter().filter(|n| !reader.used.contains(*n)).collect();
        stray.sort();
        if let Some(name) = stray.first() {
            return Err(invalid(format!(
                "tensor {name:?} is not named by any case in {METADATA_KEY:?} ({} such tensors)",
                stray.len()
            )));
        }
        Ok(CaseFile { path: origin.to_string(), cases })
    }
}

/// Errors inside the reader are bare messages; `from_bytes` prefixes the file name.
type Msg<T> = std::result::Result<T, String>;

struct Reader<'a> {
    tensors: &'a SafeTensors<'a>,
    used: HashSet<String>,
}

fn names(case: &str, obj: &Map<String, Value>, key: &str, required: bool) -> Msg<Vec<String>> {
    let Some(v) = obj.get(key) else {
        return if required { Err(format!("case {case:?}: missing {key:?}")) } else { Ok(vec![]) };
    };
    let list: Option<Vec<String>> =
        v.as_array().and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect());
    let list = list.ok_or_else(|| format!("case {case:?}: {key:?} must be a list of tensor names, got {v}"))?;
    let mut seen = HashSet::new();
    for n in &list {
        if n.is_empty() || n.contains('/') {
            return Err(format!("case {case:?}: {key:?} has the name {n:?}; names must be non-empty and without '/'"));
        }
        if !seen.insert(n) {
            return Err(format!("case {case:?}: {key:?} names {n:?} twice"));
        }
    }
    Ok(list)
}

impl Reader<'_> {
    fn case(&mut self, index: usize, entry: &Value) -> Msg<Case> {
        let obj = entry.as_object().ok_or_else(|| format!("case #{index} must be a JSON object, got {entry}"))?;
        let name = match obj.get("name").map(|n| n.as_str()) {
            Some(Some(n)) if !n.is_empty() && !n.contains('/') => n.to_string(),
            Some(_) => return Err(format!("case #{index}: \"name\" must be a non-empty string without '/'")),
            None => return Err(format!("case #{index}: missing \"name\"")),
        };
        if let Some(k) = obj.keys().find(|k| !CASE_KEYS.contains(&k.as_str())) {
            return Err(format!("case {name:?}: unknown key {k:?} (a case has {})", CASE_KEYS.join(", ")));
        }
        let op = match obj.get("op") {
            Some(Value::String(op)) => op.clone(),
            Some(v) => return Err(format!("case {name:?}: \"op\" must be a string, got {v}")),
            None => return Err(format!("case {name:?}: missing \"op\"")),
        };
        let attrs = match obj.get("attrs") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(v) => return Err(format!("case {name:?}: \"attrs\" must be a JSON object, got {v}")),
        };
        let tol = match obj.get("tol") {
            None => DEFAULT_TOL,
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() && t >= 0.0 => t,
                _ => return Err(format!("case {name:?}: \"tol\" must be a non-negative number, got {v}")),
            },
        };
        let input_names = names(&name, obj, "inputs", true)?;
        let output_names = names(&name, obj, "outputs", true)?;
        let grad_names = names(&name, obj, "grads", false)?;
        if output_names.is_empty() {
            return Err(format!("case {name:?}: \"outputs\" is empty"));
        }
        if let Some(g) = grad_names.iter().find(|g| !input_names.contains(g)) {
            return Err(format!("case {name:?}: \"grads\" names {g:?}, which is not one of its inputs {input_names:?}"));
        }

        let inputs = self.read_all(&name, "in", &input_names, false)?;
        let outputs = self.read_all(&name, "out", &output_names, true)?;
        let grads = self.read_all(&name, "grad_in", &grad_names, true)?;
        let mut grad_out = Vec::new();
        for (o, want) in &outputs {
            let key = format!("{name}/grad_out/{o}");
            if self.tensors.tensor(&key).is_ok() {
                let g = self.read(&name, &key)?;
                same_shape(&name, &key, &g, &format!("{name}/out/{o}"), want)?;
                grad_out.push((o.clone(), g));
            }
        }
        if !grads.is_empty() && grad_out.is_empty() {
            return Err(format!(
                "case {name:?}: \"grads\" asks for gradients but no output has an upstream gradient \
                 (missing tensor \"{name}/grad_out/{}\")",
                output_names[0]
            ));
        }
        for (g, want) in &grads {
            let input = &inputs.iter().find(|(n, _)| n == g).expect("grads ⊂ inputs").1;
            same_shape(&name, &format!("{name}/grad_in/{g}"), want, &format!("{name}/in/{g}"), input)?;
        }
        Ok(Case { name, op, attrs, inputs, params: vec![], outputs, grad_out, grads, tol })
    }

    fn read_all(
        &mut self,
        case: &str,
        kind: &str,
        names: &[String],
        expected: bool,
    ) -> Msg<Vec<(String, HostTensor)>> {
        names
            .iter()
            .map(|n| {
                let key = format!("{case}/{kind}/{n}");
                let t = self.read(case, &key)?;
                // Expected values are the oracle; a NaN there would fail every build for no reason.
                if expected {
                    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                        return Err(format!("case {case:?}: expected tensor {key:?} has {} at element {i}", t.data[i]));
                    }
                }
                Ok((n.clone(), t))
            })
            .collect()
    }

    fn read(&mut self, case: &str, key: &str) -> Msg<HostTensor> {
        let view = self.tensors.tensor(key).map_err(|_| format!("case {case:?}: missing tensor {key:?}"))?;
        if view.dtype() != Dtype::F32 {
            return Err(format!("case {case:?}: tensor {key:?} is {:?}, expected F32", view.dtype()));
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        self.used.insert(key.to_string());
        Ok(HostTensor { shape: view.shape().to_vec(), data })
    }
}

fn same_shape(case: &str, key: &str, t: &HostTensor, other_key: &str, other: &HostTensor) -> Msg<()> {
    if t.shape != other.shape {
        return Err(format!(
            "case {case:?}: tensor {key:?} has shape {:?} but {other_key:?} has shape {:?}",
            t.shape, other.shape
        ));
    }
    Ok(())
}
