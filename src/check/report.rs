//! Running cases and judging them: every produced tensor against the file's, by relative L2
//! error, with one printable line per case and a closing `N passed, M failed`.

use super::case::{Case, CaseFile, HostTensor, ABS_TOL};
use super::ops::{not_implemented, OpResult, Registry};
use crate::gpu::Gpu;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// The op is in the format but this build has no kernels for it.
    NotImplemented(String),
    Fail(String),
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub op: String,
    /// The largest ‖got − want‖₂ / ‖want‖₂ over the case's tensors, and which tensor
    /// (`out/y`, `grad_in/weight`); `None` when nothing was compared.
    pub worst: Option<(f64, String)>,
    pub verdict: Verdict,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The report line, with the name padded to `width` so a file's lines align.
    pub fn line(&self, width: usize) -> String {
        let worst = match &self.worst {
            Some((e, t)) => format!("{e:.2e} ({t})"),
            None => "-".to_string(),
        };
        let verdict = match &self.verdict {
            Verdict::Pass => "pass".to_string(),
            Verdict::NotImplemented(m) | Verdict::Fail(m) => format!("FAIL: {m}"),
        };
        format!("{:<width$}  {:<16}  {worst:<26}  {verdict}", self.name, self.op)
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line(0))
    }
}

/// How one produced tensor compares with the expected one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// ‖got − want‖₂ / ‖want‖₂, or the absolute difference when want is all zeros.
    pub rel: f64,
    pub pass: bool,
}

/// The pass rule: no NaN/Inf in `got` and ‖got − want‖₂ ≤ tol·‖want‖₂ + 1e-6, in f64.
pub fn compare(got: &[f32], want: &[f32], tol: f64) -> Comparison {
    let finite = got.iter().all(|v| v.is_finite());
    let diff = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum::<f64>().sqrt();
    let norm = want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt();
    let rel = if !finite { f64::INFINITY } else if norm > 0.0 { diff / norm } else { diff };
    Comparison { rel, pass: finite && got.len() == want.len() && diff <= tol * norm + ABS_TOL }
}

/// Judges what a runner produced against `case`'s expected outputs and gradients.
pub fn judge(case: &Case, got: &OpResult) -> CaseResult {
    let mut worst: Option<(f64, String)> = None;
    let mut failure = None;
    let expected = case.outputs.iter().map(|(n, t)| ("out", n, t, &got.outputs));
    let grads = case.grads.iter().map(|(n, t)| ("grad_in", n, t, &got.grads));
    for (kind, name, want, produced) in expected.chain(grads) {
        let key = format!("{kind}/{name}");
        let problem = match produced.iter().find(|(n, _)| n == name).map(|(_, t)| t) {
            None => Some(format!("{key} was not produced")),
            Some(t) if t.shape != want.shape => Some(format!("{key} has shape {:?}, expected {:?}", t.shape, want.shape)),
            Some(t) => {
                let c = compare(&t.data, &want.data, case.tol);
                if worst.as_ref().is_none_or(|(w, _)| c.rel > *w || c.rel.is_nan()) {
                    worst = Some((c.rel, key.clone()));
                }
                (!c.pass).then(|| describe_mismatch(&key, t, want, c, case.tol))
            }
        };
        if failure.is_none() {
            failure = problem;
        }
    }
    let verdict = failure.map_or(Verdict::Pass, Verdict::Fail);
    CaseResult { name: case.name.clone(), op: case.op.clone(), worst, verdict }
}

fn describe_mismatch(key: &str, got: &HostTensor, want: &HostTensor, c: Comparison, tol: f64) -> String {
    if let Some(i) = got.data.iter().position(|v| !v.is_finite()) {
        return format!("{key}[{i}] is {}", got.data[i]);
    }
    let (i, _) = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .enumerate()
        .fold((0, -1.0), |best, (i, d)| if d > best.1 { (i, d) } else { best });
    format!("{key}: relative error {:.2e} > tol {tol:e}; worst at [{i}]: got {} want {}", c.rel, got.data[i], want.data[i])
}

/// Runs one case: checks it against its op's spec, runs the op, judges the result. Every
/// problem (an unknown op, a kernel's shape error, a device error, even a panic) is a failed
/// case, so one bad case never stops the others.
pub fn check_case(gpu: &Gpu, registry: &Registry, case: &Case) -> CaseResult {
    let failed = |verdict| CaseResult { name: case.name.clone(), op: case.op.clone(), worst: None, verdict };
    let (bound, runner) = match registry.validate(case) {
        Ok((bound, Some(r))) => (bound, r),
        Ok((_, None)) => return failed(Verdict::NotImplemented(not_implemented(case))),
        Err(m) => return failed(Verdict::Fail(m)),
    };
    match catch_unwind(AssertUnwindSafe(|| runner(gpu, &bound))) {
        Ok(Ok(result)) => judge(case, &result),
        Ok(Err(e)) => failed(Verdict::Fail(e.to_string())),
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned();
            let msg = msg.or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            failed(Verdict::Fail(format!("runner for {} panicked: {msg}", case.op)))
        }
    }
}

/// The results of a whole file.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// The closing line: `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Runs every case of `file`, calling `each` with each result as it comes (to print it).
pub fn check_file(gpu: &Gpu, registry: &Registry, file: &CaseFile, mut each: impl FnMut(&CaseResult)) -> Report {
    let mut report = Report::default();
    for case in &file.cases {
        let result = check_case(gpu, registry, case);
        each(&result);
        report.results.push(result);
    }
    report
}

/// The width that aligns a file's report lines.
pub fn name_width(file: &CaseFile) -> usize {
    file.cases.iter().map(|c| c.name.len()).max().unwrap_or(0)
}
