//! The shader-level profiler on a small elementwise program: every kernel reported, times that
//! fit inside the step, a trace that Perfetto can open, and steps in a row without stalls.
//! Run with `--nocapture` to see the tables (and the profiler's overhead) on this adapter.

use kiln::bench::Peak;
use kiln::gpu::{Buffer, Gpu, GpuOptions};
use kiln::graph::ops::{Add, Fill, Mul, Scale};
use kiln::graph::{Graph, Program, Store, Tensor};
use kiln::profile::{profile_dispatches, profile_program, Profile, Profiler, Timing};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

mod common;
use common::with_another_thread_polling;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

/// Three "layers" of elementwise work on `n` elements: 10 dispatches of 4 kernels. Returns the
/// program, its output and its input buffer.
fn program_with_io(gpu: &Gpu, n: usize) -> (Program, Tensor, Buffer) {
    let mut g = Graph::new();
    let x = g.input("x", &[n]);
    let w = g.param("w", &[n]);
    let mut h = x;
    for layer in ["enc.0", "enc.1", "dec.0"] {
        let bias = g.apply1(Fill { value: 0.25, shape: vec![n] }, &[], layer).unwrap();
        h = g.apply1(Mul, &[h, w], layer).unwrap();
        h = g.apply1(Add, &[h, bias], layer).unwrap();
    }
    let y = g.apply1(Scale { alpha: 0.5 }, &[h], "out").unwrap();
    let mut store = Store::new();
    store.add_group(gpu, "p", vec![("w".into(), vec![n], vec![0.5; n])]).unwrap();
    let program = Program::compile(gpu, &g, &mut store, &[y], &[]).unwrap();
    (program, y, store.input_buffer("x").unwrap().buffer.clone())
}

fn program(gpu: &Gpu, n: usize) -> Program {
    program_with_io(gpu, n).0
}

const PEAK: Peak = Peak { fma_gflops: 100.0, copy_gbps: 10.0 };

fn kernels_of(program: &Program) -> BTreeSet<String> {
    program.dispatches.iter().map(|d| d.kernel.to_string()).collect()
}

/// Checks shared by every timed mode.
fn assert_timed_profile_is_consistent(program: &Program, profile: &Profile, steps: usize) {
    println!("{}", profile.table(false));
    println!("{}", profile.table(true));
    let reported: BTreeSet<String> = profile.kernels.iter().map(|r| r.kernel.clone()).collect();
    assert_eq!(reported, kernels_of(program));
    assert_eq!(profile.kernels.iter().map(|r| r.calls).sum::<usize>(), program.dispatches.len());
    let layers: BTreeSet<(String, String)> =
        program.dispatches.iter().map(|d| (d.kernel.to_string(), d.label.clone())).collect();
    let reported: BTreeSet<(String, String)> =
        profile.layers.iter().map(|r| (r.kernel.clone(), r.layer.clone().unwrap())).collect();
    assert_eq!(reported, layers);

    let kernels_ms = profile.kernels_ms.unwrap();
    let span_ms = profile.gpu_span_ms.unwrap();
    let rows_ms: f64 = profile.kernels.iter().map(|r| r.total_ms.unwrap()).sum();
    assert!((rows_ms - kernels_ms).abs() <= 1e-9 * kernels_ms.max(1.0), "rows {rows_ms} vs kernels {kernels_ms}");
    assert!(kernels_ms > 0.0, "no GPU time measured");
    assert!(kernels_ms <= span_ms * (1.0 + 1e-9), "kernels {kernels_ms} ms exceed the GPU span {span_ms} ms");
    assert!(kernels_ms <= profile.step_ms, "kernels {kernels_ms} ms exceed the step {} ms", profile.step_ms);
    let times: Vec<f64> = profile.kernels.iter().map(|r| r.total_ms.unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not sorted by time: {times:?}");
    for r in &profile.kernels {
        let seconds = r.total_ms.unwrap() / 1e3;
        let gbps = r.bytes as f64 / seconds / 1e9;
        assert!((r.gbps.unwrap() - gbps).abs() <= 1e-9 * gbps, "{}", r.kernel);
        assert!((r.of_copy_peak.unwrap() - gbps / PEAK.copy_gbps).abs() <= 1e-9 * gbps, "{}", r.kernel);
        assert!(
            (r.of_fma_peak.unwrap() * PEAK.fma_gflops - r.gflops.unwrap()).abs() <= 1e-9 * r.gflops.unwrap().max(1.0)
        );
    }
    assert_trace_is_valid(profile, steps * program.dispatches.len(), "dispatch");
}

/// The trace parses back as JSON with `count` complete events of `cat`, each with a positive
/// duration, in non-decreasing start order.
fn assert_trace_is_valid(profile: &Profile, count: usize, cat: &str) {
    let path = std::env::temp_dir().join(format!("kiln-trace-{}-{cat}-{:?}.json", std::process::id(), profile.timing));
    profile.write_trace(&path).unwrap();
    let trace: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let events: Vec<&Value> = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(events.len(), count);
    let mut last = f64::NEG_INFINITY;
    for e in events {
        assert_eq!(e["cat"], cat);
        let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
        assert!(dur > 0.0, "event without duration: {e}");
        assert!(ts >= last, "start times go back: {ts} after {last}");
        last = ts;
    }
}

#[test]
fn timestamps_inside_the_pass_time_every_kernel_of_the_step() {
    let gpu = gpu();
    assert_eq!(Timing::best(gpu), Timing::InsidePasses, "{} should offer timestamps inside passes", gpu.describe());
    let program = program(gpu, 1 << 16);
    let profile = profile_program(gpu, &program, 4, Some(PEAK)).unwrap();
    assert_eq!(profile.timing, Timing::InsidePasses);
    assert_timed_profile_is_consistent(&program, &profile, 4);
}

#[test]
fn one_pass_per_dispatch_times_every_kernel_of_the_step() {
    let gpu = gpu();
    let program = program(gpu, 1 << 16);
    let profile = profile_dispatches(gpu, &program.dispatches, 4, Some(PEAK), Timing::PassPerDispatch).unwrap();
    assert_eq!(profile.timing, Timing::PassPerDispatch);
    assert_timed_profile_is_consistent(&program, &profile, 4);
}

#[test]
fn without_timestamps_the_profile_says_so_and_times_only_the_step() {
    let options = GpuOptions { without_timestamps: true, ..GpuOptions::default() };
    let gpu = Gpu::new(&options).unwrap();
    assert_eq!(Timing::best(&gpu), Timing::WallClock);
    let program = program(&gpu, 1 << 12);
    let err = profile_dispatches(&gpu, &program.dispatches, 2, None, Timing::InsidePasses).unwrap_err().to_string();
    assert!(err.contains("TIMESTAMP_QUERY"), "{err}");

    let profile = profile_program(&gpu, &program, 3, Some(PEAK)).unwrap();
    let table = profile.table(false);
    println!("{table}");
    assert!(table.contains("NO GPU TIMESTAMPS"), "{table}");
    assert!(profile.step_ms > 0.0 && profile.kernels_ms.is_none() && profile.gpu_span_ms.is_none());
    let reported: BTreeSet<String> = profile.kernels.iter().map(|r| r.kernel.clone()).collect();
    assert_eq!(reported, kernels_of(&program));
    assert!(profile.kernels.iter().all(|r| r.total_ms.is_none() && r.gflops.is_none()));
    assert_eq!(profile.to_json()["kernels"][0]["total_ms"], Value::Null);
    assert_trace_is_valid(&profile, 3, "step");
}

#[test]
fn many_profiled_steps_in_a_row_interleave_with_training_steps() {
    let gpu = gpu();
    let (program, y, x) = program_with_io(gpu, 1 << 10);
    gpu.write(&x, &vec![1.0f32; 1 << 10]).unwrap();
    for timing in [Timing::InsidePasses, Timing::PassPerDispatch] {
        let mut profiler = Profiler::new(gpu, timing, &program.dispatches).unwrap();
        // More steps than the timestamp ring has slots, with unprofiled steps in between.
        for _ in 0..12 {
            profiler.step(gpu, &program.dispatches).unwrap();
            program.submit(gpu, None).unwrap();
        }
        let profile = profiler.finish(gpu, None).unwrap();
        assert_eq!(profile.steps, 12);
        assert_eq!(profile.events.len(), 12 * program.dispatches.len());
        let steps: BTreeSet<usize> = profile.events.iter().map(|e| e.step).collect();
        assert_eq!(steps, (0..12).collect());
        assert!(profile.kernels.iter().all(|r| r.of_fma_peak.is_none()));
    }
    // Profiled steps compute what unprofiled ones do: three layers of h*0.5 + 0.25, then *0.5.
    assert_eq!(gpu.read(program.buffer(y).unwrap()).unwrap(), vec![0.28125f32; 1 << 10]);
}

#[test]
fn every_step_keeps_its_timestamps_while_another_thread_polls_the_device() {
    let gpu = gpu();
    let program = program(gpu, 256);
    with_another_thread_polling(gpu, || {
        for round in 0..400 {
            let mut profiler = Profiler::new(gpu, Timing::best(gpu), &program.dispatches).unwrap();
            for _ in 0..4 {
                profiler.step(gpu, &program.dispatches).unwrap();
            }
            let profile = profiler.finish(gpu, None).unwrap();
            assert_eq!(profile.events.len(), 4 * program.dispatches.len(), "round {round}");
        }
    });
}

#[test]
fn a_step_of_other_kernels_is_an_error_naming_the_profiler() {
    let gpu = gpu();
    let program = program(gpu, 64);
    let mut profiler = Profiler::new(gpu, Timing::best(gpu), &program.dispatches).unwrap();
    let err = profiler.step(gpu, &program.dispatches[1..]).unwrap_err().to_string();
    assert!(err.contains("profiler"), "{err}");
    assert!(Profiler::new(gpu, Timing::best(gpu), &[]).is_err());
}

#[test]
fn json_report_lists_every_kernel_with_its_numbers() {
    let gpu = gpu();
    let program = program(gpu, 1 << 12);
    let profile = profile_program(gpu, &program, 2, Some(PEAK)).unwrap();
    let path = std::env::temp_dir().join(format!("kiln-profile-{}.json", std::process::id()));
    profile.write_json(&path).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let kernels = json["kernels"].as_array().unwrap();
    let names: BTreeSet<String> = kernels.iter().map(|k| k["kernel"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, kernels_of(&program));
    for k in kernels {
        assert!(k["total_ms"].as_f64().unwrap() > 0.0 && k["gbps"].as_f64().unwrap() > 0.0, "{k}");
    }
    assert_eq!(json["steps"], 2);
    assert!(json["baseline_step_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["peak"]["copy_gbps"], 10.0);
}
