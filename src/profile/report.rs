//! The profile: per-kernel and per-layer rows, the step's totals, a text table and JSON.

use super::{Site, Timing};
use crate::bench::Peak;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;

/// One kernel (or one kernel in one layer): per-step numbers, means over the profiled steps.
/// Times are `None` under [`Timing::WallClock`].
#[derive(Clone, Debug)]
pub struct KernelRow {
    /// `shader.entry`
    pub kernel: String,
    /// The layer, in per-layer rows.
    pub layer: Option<String>,
    /// Dispatches per step.
    pub calls: usize,
    pub flops: u64,
    pub bytes: u64,
    /// GPU time per step, all calls together.
    pub total_ms: Option<f64>,
    pub mean_us: Option<f64>,
    /// Fraction of the wall-clock step time.
    pub share: Option<f64>,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
    /// Fractions of the adapter's measured FMA peak and copy bandwidth.
    pub of_fma_peak: Option<f64>,
    pub of_copy_peak: Option<f64>,
}

/// One dispatch of one step on the trace's timeline, in µs from the first profiled step; under
/// `WallClock`, one whole step (`kernel` is `None`).
#[derive(Clone, Debug)]
pub struct TraceEvent {
    pub step: usize,
    pub kernel: Option<String>,
    pub layer: String,
    pub start_us: f64,
    pub dur_us: f64,
}

#[derive(Clone, Debug)]
pub struct Profile {
    pub adapter: String,
    pub timing: Timing,
    pub steps: usize,
    /// Wall-clock time per step: steps submitted back to back, first submit to last finish,
    /// divided by the steps (under `WallClock`, each step's submit-and-wait, averaged).
    pub step_ms: f64,
    /// The same steps without the profiler, when measured.
    pub baseline_step_ms: Option<f64>,
    /// GPU time from the step's first dispatch's begin to its last one's end.
    pub gpu_span_ms: Option<f64>,
    /// Sum of the dispatches' GPU times per step.
    pub kernels_ms: Option<f64>,
    pub flops: u64,
    pub bytes: u64,
    pub peak: Option<Peak>,
    /// Per kernel, slowest first.
    pub kernels: Vec<KernelRow>,
    /// Per kernel and layer, slowest first.
    pub layers: Vec<KernelRow>,
    pub events: Vec<TraceEvent>,
}

/// Builds the profile from per-step `(begin, end)` ns of each dispatch, or under WallClock
/// (`times` empty) from each step's wall-clock ms.
pub(super) fn build(
    adapter: String,
    timing: Timing,
    sites: &[Site],
    steps: usize,
    step_ms: f64,
    times: &[Vec<(f64, f64)>],
    wall_ms: &[f64],
    peak: Option<Peak>,
) -> Profile {
    let timed = !times.is_empty();
    let mean_ms: Vec<f64> = (0..sites.len())
        .map(|i| times.iter().map(|s| (s[i].1 - s[i].0).max(0.0)).sum::<f64>() / times.len().max(1) as f64 / 1e6)
        .collect();
    let span_ms = times
        .iter()
        .map(|s| {
            let begin = s.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
            let end = s.iter().map(|t| t.1).fold(f64::NEG_INFINITY, f64::max);
            (end - begin).max(0.0) / 1e6
        })
        .sum::<f64>()
        / times.len().max(1) as f64;
    let rows = |by_layer: bool| {
        let mut rows: Vec<KernelRow> = Vec::new();
        let mut index: HashMap<(String, Option<String>), usize> = HashMap::new();
        for (site, ms) in sites.iter().zip(&mean_ms) {
            let key = (site.kernel.to_string(), by_layer.then(|| site.label.clone()));
            let i = *index.entry(key.clone()).or_insert_with(|| {
                rows.push(KernelRow {
                    kernel: key.0,
                    layer: key.1,
                    calls: 0,
                    flops: 0,
                    bytes: 0,
                    total_ms: timed.then_some(0.0),
                    mean_us: None,
                    share: None,
                    gflops: None,
                    gbps: None,
                    of_fma_peak: None,
                    of_copy_peak: None,
                });
                rows.len() - 1
            });
            let row = &mut rows[i];
            row.calls += 1;
            row.flops += site.cost.flops;
            row.bytes += site.cost.bytes;
            row.total_ms = row.total_ms.map(|t| t + ms);
        }
        for row in &mut rows {
            if let Some(ms) = row.total_ms {
                let seconds = (ms / 1e3).max(f64::MIN_POSITIVE);
                row.mean_us = Some(ms * 1e3 / row.calls as f64);
                row.share = Some(ms / step_ms);
                row.gflops = Some(row.flops as f64 / seconds / 1e9);
                row.gbps = Some(row.bytes as f64 / seconds / 1e9);
                row.of_fma_peak = peak.zip(row.gflops).map(|(p, g)| g / p.fma_gflops);
                row.of_copy_peak = peak.zip(row.gbps).map(|(p, g)| g / p.copy_gbps);
            }
        }
        // Stable: without times the rows stay in the order the step runs them.
        rows.sort_by(|a, b| b.total_ms.unwrap_or(0.0).total_cmp(&a.total_ms.unwrap_or(0.0)));
        rows
    };
    Profile {
        adapter,
        timing,
        steps,
        step_ms,
        baseline_step_ms: None,
        gpu_span_ms: timed.then_some(span_ms),
        kernels_ms: timed.then(|| mean_ms.iter().sum()),
        flops: sites.iter().map(|s| s.cost.flops).sum(),
        bytes: sites.iter().map(|s| s.cost.bytes).sum(),
        peak,
        kernels: rows(false),
        layers: rows(true),
        events: super::trace::events(sites, times, wall_ms),
    }
}

/// `1.23 G`, `45.6 M`, `789 ` — counts of any size on one line.
fn si(n: u64) -> String {
    let n = n as f64;
    match [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")].iter().find(|(scale, _)| n >= *scale) {
        Some((scale, prefix)) => format!("{:.3} {prefix}", n / scale),
        None => format!("{n} "),
    }
}

fn opt(v: Option<f64>, width: usize, precision: usize, scale: f64, suffix: &str) -> String {
    match v {
        Some(v) => format!("{:>w$}", format!("{:.p$}{suffix}", v * scale, p = precision), w = width),
        None => format!("{:>width$}", "-"),
    }
}

impl Profile {
    /// The text report: a header with the step's totals, then one row per kernel (or per
    /// kernel and layer), slowest first.
    pub fn table(&self, by_layer: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "kiln profile: {} — {} steps — {}", self.adapter, self.steps, self.timing.describe());
        let _ = write!(s, "step {:.3} ms wall", self.step_ms);
        if let Some(base) = self.baseline_step_ms {
            let _ = write!(s, " ({base:.3} ms unprofiled, overhead {:+.1}%)", (self.step_ms / base - 1.0) * 100.0);
        }
        if let (Some(span), Some(kernels)) = (self.gpu_span_ms, self.kernels_ms) {
            let _ = write!(
                s,
                "; GPU span {span:.3} ms; kernels {kernels:.3} ms; gap {:.3} ms (CPU, driver, idle GPU)",
                self.step_ms - kernels
            );
        }
        let _ = writeln!(s, "\nwork per step: {}FLOP, {}B", si(self.flops), si(self.bytes));
        if let Some(p) = self.peak {
            let _ = writeln!(s, "adapter peak: {:.1} GFLOP/s FMA, {:.1} GB/s copy", p.fma_gflops, p.copy_gbps);
        }
        let rows = if by_layer { &self.layers } else { &self.kernels };
        let width =
            rows.iter().map(|r| r.kernel.len() + r.layer.as_ref().map_or(0, |l| l.len() + 3)).max().unwrap_or(0).max(6);
        let _ = writeln!(
            s,
            "{:<width$} {:>6} {:>9} {:>9} {:>7} {:>9} {:>8} {:>6} {:>6}",
            "kernel", "calls", "total ms", "mean µs", "share", "GFLOP/s", "GB/s", "%FMA", "%copy"
        );
        for r in rows {
            let name = match &r.layer {
                Some(l) => format!("{} [{l}]", r.kernel),
                None => r.kernel.clone(),
            };
            let _ = writeln!(
                s,
                "{name:<width$} {:>6} {} {} {} {} {} {} {}",
                r.calls,
                opt(r.total_ms, 9, 3, 1.0, ""),
                opt(r.mean_us, 9, 1, 1.0, ""),
                opt(r.share, 7, 1, 100.0, "%"),
                opt(r.gflops, 9, 2, 1.0, ""),
                opt(r.gbps, 8, 2, 1.0, ""),
                opt(r.of_fma_peak, 6, 1, 100.0, "%"),
                opt(r.of_copy_peak, 6, 1, 100.0, "%"),
            );
        }
        s
    }

    pub fn print_table(&self, by_layer: bool) {
        print!("{}", self.table(by_layer));
    }

    /// The whole report as JSON (times in ms and µs; `null` where not measured).
    pub fn to_json(&self) -> Value {
        let rows = |rows: &[KernelRow]| -> Vec<Value> {
            rows.iter()
                .map(|r| {
                    json!({
                        "kernel": r.kernel, "layer": r.layer, "calls": r.calls, "flops": r.flops,
                        "bytes": r.bytes, "total_ms": r.total_ms, "mean_us": r.mean_us, "share": r.share,
                        "gflops": r.gflops, "gbps": r.gbps, "of_fma_peak": r.of_fma_peak,
                        "of_copy_peak": r.of_copy_peak,
                    })
                })
                .collect()
        };
        json!({
            "adapter": self.adapter,
            "timing": format!("{:?}", self.timing),
            "timing_note": self.timing.describe(),
            "steps": self.steps,
            "step_ms": self.step_ms,
            "baseline_step_ms": self.baseline_step_ms,
            "gpu_span_ms": self.gpu_span_ms,
            "kernels_ms": self.kernels_ms,
            "flops": self.flops,
            "bytes": self.bytes,
            "peak": self.peak.map(|p| json!({"fma_gflops": p.fma_gflops, "copy_gbps": p.copy_gbps})),
            "kernels": rows(&self.kernels),
            "layers": rows(&self.layers),
        })
    }

    pub fn write_json(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        write(path.as_ref(), &self.to_json())
    }

    /// Chrome trace JSON (`traceEvents`) that Perfetto and chrome://tracing open.
    pub fn write_trace(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        write(path.as_ref(), &self.trace_json())
    }
}

fn write(path: &std::path::Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    std::fs::write(path, text).map_err(|source| Error::Io { path: path.display().to_string(), source })
}
