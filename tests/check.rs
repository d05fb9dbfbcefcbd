//! `kiln check`: the conformance file format (docs/CHECK.md), its validation, the pass rule,
//! the op registry, and the shipped PyTorch fixture.

use kiln::check::{
    check_case, check_file, compare, CaseFile, CaseResult, HostTensor, OpResult, OpSpec, Registry, Verdict, SPEC_OPS,
};
use kiln::gpu::{Gpu, GpuOptions, Kernels};
use kiln::kernels::elementwise;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/torch_cases.safetensors");

// FLIP to `true` once every op's kernels are wired into src/check/runners.rs: the shipped
// fixture must then pass in full. Until then its only allowed failure is "not implemented".
const FIXTURE_MUST_ALL_PASS: bool = true;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

type Tensor = (String, Dtype, Vec<usize>, Vec<f32>);

fn f32t(name: &str, shape: &[usize], v: &[f32]) -> Tensor {
    (name.to_string(), Dtype::F32, shape.to_vec(), v.to_vec())
}

/// A safetensors file in memory: `meta` as the `kiln.cases` value (none: no metadata key),
/// tensors with their values converted to each one's dtype.
fn file_bytes(meta: Option<&str>, tensors: &[Tensor]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F64 => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
            Dtype::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
            other => panic!("test helper has no {other:?}"),
        })
        .collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, dtype, shape, _), b)| (name.as_str(), TensorView::new(*dtype, shape.clone(), b).unwrap()))
        .collect();
    let metadata = meta.map(|m| HashMap::from([("kiln.cases".to_string(), m.to_string())]));
    safetensors::serialize(views, metadata).unwrap()
}

/// A one-case file "m": mse_loss of x and t with `attrs`, checking the gradient of x;
/// `drop` leaves a tensor out, `retype` stores one in another dtype.
fn mse_case(attrs: &str, drop: Option<&str>, retype: Option<(&str, Dtype)>) -> Vec<u8> {
    let (x, t, gy) = ([1.0f32, 2.0, -1.0], [0.5f32, 2.5, 1.0], [1.0f32, -2.0, 0.5]);
    let y: Vec<f32> = x.iter().zip(&t).map(|(a, b)| (a - b) * (a - b)).collect();
    let gx: Vec<f32> = (0..3).map(|i| 2.0 * (x[i] - t[i]) * gy[i]).collect();
    let meta = format!(r#"[{{"name":"m","op":"mse_loss","attrs":{attrs},"inputs":["x","target"],"outputs":["y"],"grads":["x"]}}]"#);
    let tensors: Vec<Tensor> = [
        f32t("m/in/x", &[3], &x),
        f32t("m/in/target", &[3], &t),
        f32t("m/out/y", &[3], &y),
        f32t("m/grad_out/y", &[3], &gy),
        f32t("m/grad_in/x", &[3], &gx),
    ]
    .into_iter()
    .filter(|(n, ..)| Some(n.as_str()) != drop)
    .map(|(n, d, s, v)| match retype {
        Some((which, dt)) if which == n => (n, dt, s, v),
        _ => (n, d, s, v),
    })
    .collect();
    file_bytes(Some(&meta), &tensors)
}

const NONE: &str = r#"{"reduction":"none"}"#;

/// A one-case file "a" with op `op`, one input x and one output y, both [1].
fn one_case(op: &str) -> Vec<u8> {
    let meta = format!(r#"[{{"name":"a","op":"{op}","inputs":["x"],"outputs":["y"]}}]"#);
    file_bytes(Some(&meta), &[f32t("a/in/x", &[1], &[1.0]), f32t("a/out/y", &[1], &[1.0])])
}

fn load_err(bytes: &[u8]) -> String {
    let err = CaseFile::from_bytes(bytes, "test.safetensors").expect_err("must be rejected").to_string();
    eprintln!("{err}");
    assert!(err.starts_with("test.safetensors: "), "error must name the file: {err}");
    err
}

/// mse_loss with reduction "none" from the elementwise kernels alone: d = x − t, y = d², and
/// dx = 2·d·dy. It shows what a runner is, and runs real PyTorch cases end to end.
fn mse_none_runner(gpu: &Gpu, case: &kiln::check::Case) -> kiln::Result<OpResult> {
    if case.attr_str("reduction", "mean")? != "none" {
        return Err(kiln::Error::Invalid("this test runner only does reduction \"none\"".into()));
    }
    let (x, t) = (case.input(0)?, case.input(1)?);
    let n = x.len();
    let (d, tb, y) = (x.upload(gpu, "d")?, t.upload(gpu, "t")?, gpu.zeros("y", n)?);
    gpu.run(&[elementwise::axpy(gpu, -1.0, &tb, &d, n)?, elementwise::mul(gpu, &d, &d, &y, n)?])?;
    let mut result = OpResult::default();
    result.output("y", HostTensor::download(gpu, &y, &x.shape)?);
    if case.wants_grad(0) {
        let (gy, tmp, gx) = (case.upstream("y")?.upload(gpu, "gy")?, gpu.zeros("tmp", n)?, gpu.zeros("gx", n)?);
        gpu.run(&[elementwise::mul(gpu, &d, &gy, &tmp, n)?, elementwise::scale(gpu, 2.0, &tmp, &gx, n)?])?;
        result.grad(case.input_name(0), HostTensor::download(gpu, &gx, &x.shape)?);
    }
    Ok(result)
}

fn with_mse_runner(runner: kiln::check::Runner) -> Registry {
    let spec = *SPEC_OPS.iter().find(|o| o.name == "mse_loss").unwrap();
    Registry::builtin().with(OpSpec { runner: Some(runner), ..spec })
}

// ---- the file format ----

#[test]
fn check_reads_a_valid_case() {
    let file = CaseFile::from_bytes(&mse_case(NONE, None, None), "test.safetensors").unwrap();
    let (case, _) = Registry::builtin().prepare(&file.cases[0]).unwrap();
    assert_eq!((case.name.as_str(), case.op.as_str(), case.tol), ("m", "mse_loss", 1e-4));
    assert_eq!(case.inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["x", "target"]);
    assert_eq!(case.input(1).unwrap().data, [0.5, 2.5, 1.0]);
    assert!(case.wants_grad(0) && !case.wants_grad(1));
    assert_eq!(case.attr_str("reduction", "mean").unwrap(), "none");
    assert_eq!(case.grads[0].1.shape, [3]);
}

#[test]
fn check_rejects_a_file_that_is_not_safetensors() {
    let err = load_err(b"definitely not a safetensors file");
    assert!(err.contains("not a safetensors file"), "{err}");
}

#[test]
fn check_rejects_a_missing_file_naming_it() {
    let err = CaseFile::load("/nonexistent/cases.safetensors").err().unwrap().to_string();
    assert!(err.contains("/nonexistent/cases.safetensors"), "{err}");
}

#[test]
fn check_rejects_a_file_without_the_metadata_key() {
    let err = load_err(&file_bytes(None, &[f32t("a/in/x", &[1], &[1.0])]));
    assert!(err.contains("no \"kiln.cases\" key"), "{err}");
}

#[test]
fn check_rejects_bad_json() {
    let err = load_err(&file_bytes(Some("[{\"name\": \"a\", "), &[]));
    assert!(err.contains("not valid JSON"), "{err}");
    let err = load_err(&file_bytes(Some("{\"name\": \"a\"}"), &[]));
    assert!(err.contains("must be a JSON array"), "{err}");
}

#[test]
fn check_rejects_malformed_case_entries() {
    let cases = [
        (r#"[{"op":"relu","inputs":[],"outputs":["y"]}]"#, "case #0: missing \"name\""),
        (r#"[{"name":"a","inputs":["x"],"outputs":["y"]}]"#, "case \"a\": missing \"op\""),
        (r#"[{"name":"a","op":"relu","inputs":["x"],"outputs":["y"],"tolerance":1}]"#, "unknown key \"tolerance\""),
        (r#"[{"name":"a","op":"relu","inputs":"x","outputs":["y"]}]"#, "\"inputs\" must be a list"),
        (r#"[{"name":"a","op":"relu","inputs":["x"],"outputs":["y"],"tol":-1}]"#, "\"tol\" must be"),
        (r#"[{"name":"a","op":"relu","inputs":["x"],"outputs":["y"],"attrs":[1]}]"#, "\"attrs\" must be a JSON object"),
        (r#"[{"name":"a","op":"relu","inputs":["x"],"outputs":["y"],"grads":["w"]}]"#, "\"grads\" names \"w\""),
    ];
    for (meta, want) in cases {
        let err = load_err(&file_bytes(Some(meta), &[]));
        assert!(err.contains(want), "{meta}: {err}");
    }
}

#[test]
fn check_rejects_a_missing_tensor_naming_case_and_tensor() {
    for missing in ["m/in/target", "m/out/y", "m/grad_in/x"] {
        let err = load_err(&mse_case(NONE, Some(missing), None));
        assert!(err.contains(&format!("case \"m\": missing tensor \"{missing}\"")), "{err}");
    }
    let err = load_err(&mse_case(NONE, Some("m/grad_out/y"), None));
    assert!(err.contains("case \"m\"") && err.contains("missing tensor \"m/grad_out/y\""), "{err}");
}

#[test]
fn check_rejects_tensors_that_are_not_f32() {
    for dtype in [Dtype::F64, Dtype::I32] {
        let err = load_err(&mse_case(NONE, None, Some(("m/in/x", dtype))));
        assert!(err.contains(&format!("case \"m\": tensor \"m/in/x\" is {dtype:?}, expected F32")), "{err}");
    }
}

#[test]
fn check_rejects_gradient_shapes_unlike_their_tensors() {
    let meta = r#"[{"name":"a","op":"relu","inputs":["x"],"outputs":["y"],"grads":["x"]}]"#;
    let t = [
        f32t("a/in/x", &[2, 2], &[1.0; 4]),
        f32t("a/out/y", &[2, 2], &[1.0; 4]),
        f32t("a/grad_out/y", &[2, 2], &[1.0; 4]),
        f32t("a/grad_in/x", &[4], &[1.0; 4]),
    ];
    let err = load_err(&file_bytes(Some(meta), &t));
    assert!(err.contains("\"a/grad_in/x\" has shape [4] but \"a/in/x\" has shape [2, 2]"), "{err}");
}

#[test]
fn check_rejects_stray_tensors_duplicate_names_and_non_finite_expectations() {
    let meta = r#"[{"name":"a","op":"relu","inputs":["x"],"outputs":["y"]}]"#;
    let (x, y) = (f32t("a/in/x", &[1], &[1.0]), f32t("a/out/y", &[1], &[1.0]));
    let err = load_err(&file_bytes(Some(meta), &[x.clone(), y.clone(), f32t("a/in/typo", &[1], &[1.0])]));
    assert!(err.contains("tensor \"a/in/typo\" is not named by any case"), "{err}");
    let twice = format!("[{},{}]", &meta[1..meta.len() - 1], &meta[1..meta.len() - 1]);
    let err = load_err(&file_bytes(Some(&twice), &[x.clone(), y]));
    assert!(err.contains("two cases are named \"a\""), "{err}");
    let err = load_err(&file_bytes(Some(meta), &[x, f32t("a/out/y", &[1], &[f32::NAN])]));
    assert!(err.contains("expected tensor \"a/out/y\" has NaN"), "{err}");
}

// ---- the pass rule ----

#[test]
fn check_pass_rule_is_relative_l2_plus_a_small_absolute_slack() {
    let want = [3.0f32, 4.0]; // ‖want‖ = 5
    assert!(compare(&[3.0, 4.0], &want, 1e-4).pass);
    assert!(compare(&[3.0004, 4.0], &want, 1e-4).pass); // 4e-4 ≤ 5e-4 + 1e-6
    let c = compare(&[3.0006, 4.0], &want, 1e-4);
    assert!(!c.pass && (c.rel - 1.2e-4).abs() < 1e-6, "{c:?}");
    assert!(compare(&[5e-7], &[0.0], 1e-4).pass, "near-zero wants pass within 1e-6");
    assert!(!compare(&[2e-6], &[0.0], 1e-4).pass);
    assert!(!compare(&[f32::NAN, 4.0], &want, 1.0).pass);
    assert!(!compare(&[f32::INFINITY, 4.0], &want, 1.0).pass);
}

// ---- running cases ----

#[test]
fn check_unknown_op_is_a_failed_case_not_a_crash() {
    let file = CaseFile::from_bytes(&one_case("softmax2000"), "t").unwrap();
    let report = check_file(gpu(), &Registry::builtin(), &file, |_| {});
    assert_eq!((report.passed(), report.failed()), (0, 1));
    let Verdict::Fail(m) = &report.results[0].verdict else { panic!("{:?}", report.results[0]) };
    assert!(m.contains("unknown op \"softmax2000\"") && m.contains("conv2d"), "{m}");
    assert_eq!(report.summary(), "0 passed, 1 failed");
}

#[test]
fn check_rejects_unknown_attrs_and_wrong_input_counts_per_case() {
    let registry = with_mse_runner(mse_none_runner);
    let run = |attrs: &str| {
        let file = CaseFile::from_bytes(&mse_case(attrs, None, None), "t").unwrap();
        check_case(gpu(), &registry, &file.cases[0]).verdict
    };
    let Verdict::Fail(m) = run(r#"{"reduction":"none","stride":2}"#) else { panic!() };
    assert!(m.contains("mse_loss has no attribute \"stride\" (it takes reduction)"), "{m}");
    let Verdict::Fail(m) = run(r#"{"reduction":"avg"}"#) else { panic!() };
    assert!(m.contains("attr \"reduction\" of mse_loss must be"), "{m}");
    let file = CaseFile::from_bytes(&one_case("conv2d"), "t").unwrap();
    let Verdict::Fail(m) = check_case(gpu(), &Registry::builtin(), &file.cases[0]).verdict else { panic!() };
    assert!(m.contains("conv2d needs input \"weight\", the case gives x"), "{m}");
}

#[test]
fn check_runs_a_registered_op_and_judges_outputs_and_gradients() {
    let file = CaseFile::from_bytes(&mse_case(NONE, None, None), "t").unwrap();
    let r = check_case(gpu(), &with_mse_runner(mse_none_runner), &file.cases[0]);
    assert_eq!(r.verdict, Verdict::Pass, "{r}");
    assert!(r.worst.as_ref().is_some_and(|(e, _)| *e < 1e-6), "{r}");
    assert!(r.line(4).starts_with("m     mse_loss") && r.line(4).ends_with("pass"), "{}", r.line(4));

    // A runner that forgets the factor 2 in the gradient fails on grad_in/x, by name.
    fn no_two(gpu: &Gpu, case: &kiln::check::Case) -> kiln::Result<OpResult> {
        let mut r = mse_none_runner(gpu, case)?;
        r.grads[0].1.data.iter_mut().for_each(|g| *g *= 0.5);
        Ok(r)
    }
    let r = check_case(gpu(), &with_mse_runner(no_two), &file.cases[0]);
    let Verdict::Fail(m) = &r.verdict else { panic!("{r}") };
    assert!(m.starts_with("grad_in/x: relative error 5.00e-1"), "{m}");
    assert_eq!(r.worst.as_ref().unwrap().1, "grad_in/x");

    fn wrong_shape(gpu: &Gpu, case: &kiln::check::Case) -> kiln::Result<OpResult> {
        let mut r = mse_none_runner(gpu, case)?;
        r.outputs[0].1.shape = vec![3, 1];
        Ok(r)
    }
    let Verdict::Fail(m) = check_case(gpu(), &with_mse_runner(wrong_shape), &file.cases[0]).verdict else { panic!() };
    assert_eq!(m, "out/y has shape [3, 1], expected [3]");

    fn forgets_grad(gpu: &Gpu, case: &kiln::check::Case) -> kiln::Result<OpResult> {
        let mut r = mse_none_runner(gpu, case)?;
        r.grads.clear();
        Ok(r)
    }
    let Verdict::Fail(m) = check_case(gpu(), &with_mse_runner(forgets_grad), &file.cases[0]).verdict else { panic!() };
    assert_eq!(m, "grad_in/x was not produced");

    fn panics(_: &Gpu, _: &kiln::check::Case) -> kiln::Result<OpResult> {
        panic!("kernel bug")
    }
    let Verdict::Fail(m) = check_case(gpu(), &with_mse_runner(panics), &file.cases[0]).verdict else { panic!() };
    assert!(m.contains("panicked: kernel bug"), "{m}");
}

// ---- the shipped PyTorch fixture ----

#[test]
fn check_fixture_covers_every_op_with_valid_cases() {
    let file = CaseFile::load(FIXTURE).unwrap();
    assert!(!file.cases.is_empty());
    for spec in SPEC_OPS {
        let n = file.cases.iter().filter(|c| c.op == spec.name).count();
        assert!(n >= 3, "{}: only {n} cases in the fixture", spec.name);
    }
    let report = check_file(gpu(), &Registry::builtin(), &file, |r| eprintln!("{}", r.line(34)));
    eprintln!("{}", report.summary());
    let allowed = |r: &&CaseResult| r.passed() || (!FIXTURE_MUST_ALL_PASS && matches!(r.verdict, Verdict::NotImplemented(_)));
    let bad: Vec<String> = report.results.iter().filter(|r| !allowed(r)).map(|r| r.line(34)).collect();
    assert!(bad.is_empty(), "{} fixture cases failed:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn check_fixture_mse_none_cases_pass_through_the_gpu() {
    let file = CaseFile::load(FIXTURE).unwrap();
    let registry = with_mse_runner(mse_none_runner);
    let none = |c: &&kiln::check::Case| c.op == "mse_loss" && c.attrs.get("reduction").is_some_and(|r| r == "none");
    let cases: Vec<_> = file.cases.iter().filter(none).collect();
    assert_eq!(cases.len(), 1);
    for case in cases {
        let r = check_case(gpu(), &registry, case);
        eprintln!("{r}");
        assert!(r.passed(), "{r}");
    }
}

/// The ops whose runners go through the GEMM kernels (matmul.wgsl, conv*.wgsl, gemm.wgsl).
const GEMM_OPS: [&str; 4] = ["matmul", "linear", "conv2d", "conv_transpose2d"];

#[test]
fn check_fixture_gemm_cases_pass_with_every_kernel_family_forced() {
    // `Auto` picks one family per adapter; each must pass PyTorch's cases on any adapter.
    let file = CaseFile::load(FIXTURE).unwrap();
    let registry = Registry::builtin();
    let cases: Vec<_> = file.cases.iter().filter(|c| GEMM_OPS.contains(&c.op.as_str())).collect();
    assert!(cases.len() >= 4 * 3, "{} GEMM cases in the fixture", cases.len());
    let mut failed = Vec::new();
    for kernels in [Kernels::Tiled, Kernels::Windowed, Kernels::Blocked] {
        let gpu = Gpu::new(&GpuOptions { kernels: Some(kernels), ..Default::default() }).unwrap_or_else(|e| panic!("{e}"));
        for case in &cases {
            let r = check_case(&gpu, &registry, case);
            if !r.passed() {
                failed.push(format!("{kernels:?}: {}", r.line(34)));
            }
        }
    }
    assert!(failed.is_empty(), "{} cases failed:\n{}", failed.len(), failed.join("\n"));
}

/// The ops whose runners use kiln's activation and loss kernels.
const ACTIVATION_AND_LOSS_OPS: [&str; 8] = [
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy",
    "mse_loss",
    "kl_normal",
];

#[test]
fn check_fixture_activation_and_loss_cases_all_pass() {
    let file = CaseFile::load(FIXTURE).unwrap();
    let registry = Registry::builtin();
    let mut failed = Vec::new();
    for op in ACTIVATION_AND_LOSS_OPS {
        let cases: Vec<_> = file.cases.iter().filter(|c| c.op == op).collect();
        assert!(!cases.is_empty(), "the fixture has no {op} case");
        let mut worst: Option<(f64, String)> = None;
        for case in cases {
            let r = check_case(gpu(), &registry, case);
            eprintln!("{}", r.line(34));
            if !r.passed() {
                failed.push(r.line(34));
            }
            if let Some((e, tensor)) = &r.worst {
                if worst.as_ref().is_none_or(|(w, _)| e > w) {
                    worst = Some((*e, format!("{} {tensor}", case.name)));
                }
            }
        }
        let (e, at) = worst.unwrap_or((f64::NAN, "nothing compared".into()));
        eprintln!("{op}: worst relative error {e:.2e} ({at})");
    }
    assert!(failed.is_empty(), "{} activation/loss cases failed:\n{}", failed.len(), failed.join("\n"));
}

/// A one-case file "c": `op` of x and target ([3] each, plus an input `extra` if given) with
/// `attrs`, checking the gradients `grads`. Expected values are mse_loss's with reduction
/// none; for another op the case must fail before anything is compared.
fn pair_case(op: &str, attrs: &str, extra: Option<&str>, grads: &[&str]) -> Vec<u8> {
    let (x, t, gy) = ([0.2f32, 0.6, 0.9], [0.0f32, 1.0, 0.5], [1.0f32, -2.0, 0.5]);
    let y: Vec<f32> = (0..3).map(|i| (x[i] - t[i]) * (x[i] - t[i])).collect();
    let gx: Vec<f32> = (0..3).map(|i| 2.0 * (x[i] - t[i]) * gy[i]).collect();
    let gt: Vec<f32> = gx.iter().map(|g| -g).collect();
    let mut inputs = vec!["x", "target"];
    inputs.extend(extra);
    let quoted = |names: &[&str]| names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(",");
    let meta = format!(
        r#"[{{"name":"c","op":"{op}","attrs":{attrs},"inputs":[{}],"outputs":["y"],"grads":[{}]}}]"#,
        quoted(&inputs),
        quoted(grads)
    );
    let mut tensors = vec![f32t("c/in/x", &[3], &x), f32t("c/in/target", &[3], &t), f32t("c/out/y", &[3], &y), f32t("c/grad_out/y", &[3], &gy)];
    tensors.extend(extra.map(|e| f32t(&format!("c/in/{e}"), &[3], &[1.0; 3])));
    for g in grads {
        tensors.push(f32t(&format!("c/grad_in/{g}"), &[3], if *g == "x" { &gx } else { &gt }));
    }
    file_bytes(Some(&meta), &tensors)
}

fn pair_verdict(registry: &Registry, bytes: &[u8]) -> Verdict {
    let file = CaseFile::from_bytes(bytes, "t").unwrap();
    let r = check_case(gpu(), registry, &file.cases[0]);
    eprintln!("{r}");
    r.verdict
}

#[test]
fn check_loss_runners_refuse_inputs_and_gradients_they_cannot_compute() {
    let builtin = Registry::builtin();
    // A weight input or a pos_weight attribute would change the loss: each fails by name.
    let Verdict::Fail(m) = pair_verdict(&builtin, &pair_case("binary_cross_entropy", NONE, Some("weight"), &["x"])) else { panic!() };
    assert!(m.contains("binary_cross_entropy has no input \"weight\" (it takes input (or x), target)"), "{m}");
    let attrs = r#"{"reduction":"none","pos_weight":2.0}"#;
    let Verdict::Fail(m) = pair_verdict(&builtin, &pair_case("binary_cross_entropy_with_logits", attrs, None, &["x"])) else { panic!() };
    assert!(m.contains("binary_cross_entropy_with_logits has no attribute \"pos_weight\""), "{m}");
    // The runner refuses the extra input itself where a registry lets it through.
    let spec = *SPEC_OPS.iter().find(|o| o.name == "binary_cross_entropy").unwrap();
    let wide = Registry::builtin().with(OpSpec { inputs: &["input", "target", "weight"], ..spec });
    let Verdict::Fail(m) = pair_verdict(&wide, &pair_case("binary_cross_entropy", NONE, Some("weight"), &["x"])) else { panic!() };
    assert!(m.contains("binary_cross_entropy input \"weight\" (#2) is not supported"), "{m}");
    // BCE's target gradient has no kernel; mse_loss's is −d(input).
    for op in ["binary_cross_entropy", "binary_cross_entropy_with_logits"] {
        let Verdict::Fail(m) = pair_verdict(&builtin, &pair_case(op, NONE, None, &["x", "target"])) else { panic!() };
        assert!(m.contains(op) && m.contains("gradient of \"target\" (the target) is not supported"), "{m}");
    }
    assert_eq!(pair_verdict(&builtin, &pair_case("mse_loss", NONE, None, &["x", "target"])), Verdict::Pass);
}

// ---- binding inputs to the op's parameters ----

/// One tensor of a case: (name, shape, values).
type Named<'a> = (&'a str, &'a [usize], &'a [f32]);

/// A one-case file "c": `op` with `attrs`, its inputs in the file's order, the expected
/// outputs, their upstream gradients and the expected gradients of the inputs in `grads`.
fn named_case(op: &str, attrs: &str, inputs: &[Named], outputs: &[Named], grad_out: &[Named], grads: &[Named]) -> Vec<u8> {
    let names = |list: &[Named]| list.iter().map(|(n, ..)| format!("{n:?}")).collect::<Vec<_>>().join(",");
    let meta = format!(
        r#"[{{"name":"c","op":"{op}","attrs":{attrs},"inputs":[{}],"outputs":[{}],"grads":[{}]}}]"#,
        names(inputs),
        names(outputs),
        names(grads)
    );
    let mut tensors = Vec::new();
    for (kind, list) in [("in", inputs), ("out", outputs), ("grad_out", grad_out), ("grad_in", grads)] {
        tensors.extend(list.iter().map(|(n, shape, v)| f32t(&format!("c/{kind}/{n}"), shape, v)));
    }
    file_bytes(Some(&meta), &tensors)
}

fn run_named(bytes: &[u8]) -> CaseResult {
    let file = CaseFile::from_bytes(bytes, "t").unwrap();
    let r = check_case(gpu(), &Registry::builtin(), &file.cases[0]);
    eprintln!("{r}");
    r
}

fn failure(r: &CaseResult) -> &str {
    match &r.verdict {
        Verdict::Fail(m) => m,
        v => panic!("expected a failed case, got {v:?}"),
    }
}

/// Why `op` of inputs named `names` ([1] each) does not bind: a failed case (its report line
/// names the case), and the same message from Registry::prepare prefixed with the case.
fn binding_error(op: &str, names: &[&str]) -> String {
    let inputs: Vec<Named> = names.iter().map(|n| (*n, &[1][..], &[1.0f32][..])).collect();
    let file = CaseFile::from_bytes(&named_case(op, "{}", &inputs, &[("y", &[1], &[1.0])], &[], &[]), "t").unwrap();
    let r = check_case(gpu(), &Registry::builtin(), &file.cases[0]);
    let m = failure(&r).to_string();
    assert!(r.line(1).starts_with("c  "), "{}", r.line(1));
    let err = Registry::builtin().prepare(&file.cases[0]).expect_err("must not bind").to_string();
    assert_eq!(err, format!("case \"c\": {m}"));
    eprintln!("{err}");
    m
}

#[test]
fn check_binds_pytorch_names_in_any_order_with_grads_by_name() {
    // linear without bias, weight [2, 3] given before input [4, 3]: by position this would be
    // a shape error; by name it is x·wᵀ.
    let (n, i, o) = (4, 3, 2);
    let x: Vec<f32> = (0..n * i).map(|k| (k as f32) * 0.25 - 1.0).collect();
    let w: Vec<f32> = [0.5, -1.0, 2.0, 1.5, 0.25, -0.75].to_vec();
    let gy: Vec<f32> = (0..n * o).map(|k| 1.0 - (k as f32) * 0.3).collect();
    let y: Vec<f32> = (0..n * o).map(|k| (0..i).map(|j| x[k / o * i + j] * w[k % o * i + j]).sum()).collect();
    let dw: Vec<f32> = (0..o * i).map(|k| (0..n).map(|r| gy[r * o + k / i] * x[r * i + k % i]).sum()).collect();
    let dx: Vec<f32> = (0..n * i).map(|k| (0..o).map(|c| gy[k / i * o + c] * w[c * i + k % i]).sum()).collect();
    let bytes = named_case(
        "linear",
        "{}",
        &[("weight", &[o, i], &w), ("input", &[n, i], &x)],
        &[("y", &[n, o], &y)],
        &[("y", &[n, o], &gy)],
        &[("weight", &[o, i], &dw), ("input", &[n, i], &dx)],
    );
    let r = run_named(&bytes);
    assert_eq!(r.verdict, Verdict::Pass, "{r}");
}

#[test]
fn check_reads_the_files_own_names_by_position() {
    let (x, t) = ([1.0f32, 2.0, -1.0], [0.5f32, 2.5, 1.0]);
    let y: Vec<f32> = x.iter().zip(&t).map(|(a, b)| (a - b) * (a - b)).collect();
    let bytes = named_case("mse_loss", NONE, &[("pred", &[3], &x), ("label", &[3], &t)], &[("y", &[3], &y)], &[], &[]);
    assert_eq!(run_named(&bytes).verdict, Verdict::Pass);
    let m = binding_error("conv2d", &["image"]);
    assert_eq!(m, "conv2d takes 2 to 3 inputs (input, weight, bias), the case gives 1 (image)");
}

#[test]
fn check_fails_cases_whose_input_names_do_not_bind() {
    let m = binding_error("mse_loss", &["x", "label"]);
    assert!(m.starts_with("inputs mix PyTorch's parameter names (x) with others (label)"), "{m}");
    assert!(m.contains("as mse_loss does (input (or x), target)"), "{m}");
    let m = binding_error("linear", &["input", "weight", "running_mean"]);
    assert_eq!(m, "linear has no input \"running_mean\" (it takes input (or x), weight, bias)");
    let m = binding_error("linear", &["input", "bias"]);
    assert_eq!(m, "linear needs input \"weight\", the case gives input, bias");
    let m = binding_error("batch_norm", &["weight", "bias"]);
    assert_eq!(m, "batch_norm needs input \"input\", the case gives weight, bias");
    let m = binding_error("relu", &["x", "input"]);
    assert_eq!(m, "inputs \"x\" and \"input\" both name relu's parameter \"input\"");
    // The same name twice is a malformed file, as any list of names with a repeat.
    let meta = r#"[{"name":"c","op":"relu","inputs":["x","x"],"outputs":["y"]}]"#;
    let err = load_err(&file_bytes(Some(meta), &[]));
    assert!(err.contains("case \"c\": \"inputs\" names \"x\" twice"), "{err}");
}

/// batch_norm in training mode of x [n, c] in f64, as PyTorch computes it, for weight `w` and
/// bias `b` (ones and zeros when absent): y, the batch mean and unbiased variance, and the
/// gradients of x, weight and bias for upstream `gy`.
struct BatchNormTrain {
    y: Vec<f32>,
    mean: Vec<f64>,
    var_unbiased: Vec<f64>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

fn batch_norm_train(x: &[f32], c: usize, w: &[f32], b: &[f32], gy: &[f32], eps: f64) -> BatchNormTrain {
    let n = x.len() / c;
    let mut r = BatchNormTrain { y: vec![0.0; x.len()], mean: vec![], var_unbiased: vec![], dx: vec![0.0; x.len()], dw: vec![], db: vec![] };
    for j in 0..c {
        let col = |v: &[f32]| (0..n).map(|i| v[i * c + j] as f64).collect::<Vec<f64>>();
        let (xs, gs) = (col(x), col(gy));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let invstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = xs.iter().map(|v| (v - mean) * invstd).collect();
        let sum_g: f64 = gs.iter().sum();
        let sum_gx: f64 = gs.iter().zip(&xhat).map(|(g, h)| g * h).sum();
        for i in 0..n {
            r.y[i * c + j] = (xhat[i] * w[j] as f64 + b[j] as f64) as f32;
            r.dx[i * c + j] = (w[j] as f64 * invstd * (gs[i] - sum_g / n as f64 - xhat[i] * sum_gx / n as f64)) as f32;
        }
        r.mean.push(mean);
        r.var_unbiased.push(var * n as f64 / (n - 1) as f64);
        r.dw.push(sum_gx as f32);
        r.db.push(sum_g as f32);
    }
    r
}

#[test]
fn check_batch_norm_training_takes_running_statistics_and_affine_each_optional_by_name() {
    let (n, c, momentum) = (5, 3, 0.1);
    let (shape, per_channel) = ([n, c], [c]);
    let x: Vec<f32> = (0..n * c).map(|k| ((k * 7 % 11) as f32) * 0.3 - 1.0).collect();
    let gy: Vec<f32> = (0..n * c).map(|k| ((k * 5 % 7) as f32) * 0.25 - 0.7).collect();
    let (w, b) = ([0.5f32, 1.5, -1.0], [0.2f32, -0.3, 0.7]);
    let (rm, rv) = ([0.1f32, -0.2, 0.3], [1.0f32, 0.5, 2.0]);
    for running in [false, true] {
        for (weight, bias) in [(true, true), (false, false), (true, false), (false, true)] {
            let r = batch_norm_train(&x, c, if weight { &w } else { &[1.0; 3] }, if bias { &b } else { &[0.0; 3] }, &gy, 1e-5);
            let update = |old: &[f32], batch: &[f64]| -> Vec<f32> {
                old.iter().zip(batch).map(|(&o, &v)| ((1.0 - momentum) * o as f64 + momentum * v) as f32).collect()
            };
            let (new_rm, new_rv) = (update(&rm, &r.mean), update(&rv, &r.var_unbiased));
            // As PyTorch code calls it, F.batch_norm(x, None, None, weight, bias, training=True).
            let mut inputs: Vec<Named> = vec![("x", &shape, &x)];
            let mut outputs: Vec<Named> = vec![("y", &shape, &r.y)];
            let mut grads: Vec<Named> = vec![("x", &shape, &r.dx)];
            if weight {
                inputs.push(("weight", &per_channel, &w));
                grads.push(("weight", &per_channel, &r.dw));
            }
            if bias {
                inputs.push(("bias", &per_channel, &b));
                grads.push(("bias", &per_channel, &r.db));
            }
            if running {
                inputs.extend([("running_mean", &per_channel[..], &rm[..]), ("running_var", &per_channel, &rv)]);
                outputs.extend([("running_mean", &per_channel[..], &new_rm[..]), ("running_var", &per_channel, &new_rv)]);
            }
            let bytes = named_case("batch_norm", r#"{"training":true}"#, &inputs, &outputs, &[("y", &shape, &gy)], &grads);
            let result = run_named(&bytes);
            assert_eq!(result.verdict, Verdict::Pass, "running {running}, weight {weight}, bias {bias}: {result}");
        }
    }
}

#[test]
fn check_batch_norm_without_both_running_statistics_fails_unless_training() {
    let (x, per_channel) = ([1.0f32, 2.0, 4.0, 3.0], [1.0f32, 1.0]);
    let inputs = |names: &[&'static str]| -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
        let mut v = vec![("x", vec![2, 2], x.to_vec())];
        v.extend(names.iter().map(|n| (*n, vec![2], per_channel.to_vec())));
        v
    };
    for (attrs, names, want) in [
        (r#"{"training":false}"#, &["weight", "bias"][..], "case \"c\": batch_norm in eval mode (training false) needs running_mean and running_var"),
        ("{}", &["weight", "bias"][..], "case \"c\": batch_norm in eval mode"),
        (r#"{"training":true}"#, &["running_mean", "weight", "bias"][..], "case \"c\": batch_norm needs running_mean and running_var together"),
    ] {
        let owned = inputs(names);
        let named: Vec<Named> = owned.iter().map(|(n, s, v)| (*n, &s[..], &v[..])).collect();
        let r = run_named(&named_case("batch_norm", attrs, &named, &[("y", &[2, 2], &x)], &[], &[]));
        assert!(failure(&r).starts_with(want), "{attrs} {names:?}: {r}");
    }
}

// ---- pooling and cross_entropy ----

#[test]
fn check_cross_entropy_fails_a_target_that_is_not_a_class_naming_the_row() {
    let x = [0.1f32, 0.5, -0.3, 1.0, 0.0, 2.0];
    let y: &[Named] = &[("y", &[], &[0.0])];
    let ce = |target: Named, grads: &[Named]| {
        let grad_out: &[Named] = if grads.is_empty() { &[] } else { &[("y", &[], &[1.0])] };
        run_named(&named_case("cross_entropy", "{}", &[("input", &[2, 3], &x), target], y, grad_out, grads))
    };
    // On the GPU row 1 would only be NaN; the runner says which row and why before that.
    let r = ce(("target", &[2], &[0.0, 3.0]), &[]);
    let m = failure(&r);
    assert!(m.contains("case \"c\"") && m.contains("row 1 is 3") && m.contains("[0, 3)") && m.contains("target"), "{m}");
    let m = failure(&ce(("target", &[2], &[0.5, 1.0]), &[])).to_string();
    assert!(m.contains("row 0 is 0.5"), "{m}");
    // Class probabilities (PyTorch's other target form) are refused, not misread.
    let m = failure(&ce(("target", &[2, 3], &[0.2, 0.3, 0.5, 1.0, 0.0, 0.0]), &[])).to_string();
    assert!(m.contains("[2] class indices"), "{m}");
    let m = failure(&ce(("target", &[2], &[0.0, 2.0]), &[("target", &[2], &[0.0, 0.0])])).to_string();
    assert!(m.contains("class indices, which have no gradient"), "{m}");
}

#[test]
fn check_pooling_needs_kernel_size_and_pools_adaptively_to_1x1_only() {
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let input: &[Named] = &[("input", &[1, 1, 4, 4], &x)];
    let r = run_named(&named_case("max_pool2d", r#"{"stride":2}"#, input, &[("y", &[1, 1, 2, 2], &[5.0, 7.0, 13.0, 15.0])], &[], &[]));
    assert!(failure(&r).contains("max_pool2d needs the attr kernel_size"), "{r}");
    // Without a stride, PyTorch's default is the kernel size.
    let r = run_named(&named_case("max_pool2d", r#"{"kernel_size":2}"#, input, &[("y", &[1, 1, 2, 2], &[5.0, 7.0, 13.0, 15.0])], &[], &[]));
    assert_eq!(r.verdict, Verdict::Pass, "{r}");
    let r = run_named(&named_case("adaptive_avg_pool2d", r#"{"output_size":2}"#, input, &[("y", &[1, 1, 2, 2], &[0.0; 4])], &[], &[]));
    assert!(failure(&r).contains("output_size [2, 2] is not supported") && failure(&r).contains("1x1"), "{r}");
    let r = run_named(&named_case("avg_pool2d", r#"{"kernel_size":2,"return_indices":true}"#, input, &[("y", &[1, 1, 2, 2], &[0.0; 4])], &[], &[]));
    assert!(failure(&r).contains("avg_pool2d has no attribute \"return_indices\""), "{r}");
}

#[test]
fn check_cat_narrow_and_interpolate_refuse_what_kiln_does_not_compute() {
    let a: &[f32] = &[1.0, 2.0, 3.0, 4.0];
    let b: &[f32] = &[5.0, 6.0];
    // cat binds any names by position, however many: [2, 2] and [2, 1] along dim 1.
    let cat = |inputs: &[Named], y: Named| run_named(&named_case("cat", r#"{"dim":1}"#, inputs, &[y], &[], &[]));
    let r = cat(&[("p", &[2, 2], a), ("q", &[2, 1], b)], ("y", &[2, 3], &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]));
    assert_eq!(r.verdict, Verdict::Pass, "{r}");
    // Even the inputs' order matters: the same tensors the other way round fail the values.
    let r = cat(&[("q", &[2, 1], b), ("p", &[2, 2], a)], ("y", &[2, 3], &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]));
    assert!(!r.passed(), "{r}");
    let r = cat(&[("p", &[2, 2], a), ("q", &[1, 2], b)], ("y", &[2, 3], &[0.0; 6]));
    assert!(failure(&r).contains("shapes must agree except along dim 1"), "{r}");
    let narrow = |attrs: &str| run_named(&named_case("narrow", attrs, &[("input", &[2, 2], a)], &[("y", &[2, 1], &[2.0, 4.0])], &[], &[]));
    assert_eq!(narrow(r#"{"dim":1,"start":1,"length":1}"#).verdict, Verdict::Pass);
    assert!(failure(&narrow(r#"{"dim":1,"start":1}"#)).contains("narrow needs the attr length"));
    assert!(failure(&narrow(r#"{"dim":1,"start":2,"length":1}"#)).contains("past the size 2 of dim 1"));
    // A 1x1 image resized to 2x2 bilinearly is four copies of its pixel.
    let resize = |attrs: &str, grads: &[Named]| {
        let grad_out: &[Named] = if grads.is_empty() { &[] } else { &[("y", &[1, 1, 2, 2], &[1.0; 4])] };
        run_named(&named_case("interpolate", attrs, &[("input", &[1, 1, 1, 1], &[3.0])], &[("y", &[1, 1, 2, 2], &[3.0; 4])], grad_out, grads))
    };
    assert_eq!(resize(r#"{"size":2,"mode":"bilinear"}"#, &[]).verdict, Verdict::Pass);
    assert!(failure(&resize(r#"{"size":2}"#, &[])).contains("mode \"nearest\" is not implemented"));
    assert!(failure(&resize(r#"{"size":2,"mode":"bilinear","align_corners":true}"#, &[])).contains("align_corners=True"));
    assert!(failure(&resize(r#"{"mode":"bilinear","scale_factor":2}"#, &[])).contains("no attribute \"scale_factor\""));
    assert!(failure(&resize(r#"{"mode":"bilinear"}"#, &[])).contains("needs the attr size"));
    let r = resize(r#"{"size":2,"mode":"bilinear"}"#, &[("input", &[1, 1, 1, 1], &[4.0])]);
    assert!(failure(&r).contains("has no backward"), "{r}");
}

// ---- the command line ----

#[test]
fn check_command_exits_non_zero_with_a_clear_message_on_a_malformed_file() {
    let path = std::env::temp_dir().join(format!("kiln-check-bad-{}.safetensors", std::process::id()));
    std::fs::write(&path, file_bytes(Some("[1, 2"), &[])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).arg("check").arg(&path).output().unwrap();
    std::fs::remove_file(&path).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"kiln.cases\" is not valid JSON") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_command_reports_each_case_and_fails_when_one_fails() {
    let path = std::env::temp_dir().join(format!("kiln-check-unknown-{}.safetensors", std::process::id()));
    std::fs::write(&path, one_case("softmax2000")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).arg("check").arg(&path).output().unwrap();
    std::fs::remove_file(&path).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("a  softmax2000") && stdout.contains("FAIL: unknown op"), "{stdout}");
    assert!(stdout.trim_end().ends_with("0 passed, 1 failed"), "{stdout}");
}
