//! What a training run leaves for people to read: the loss-curve PNG under --out, and the plain
//! progress lines printed when stdout is not a terminal.

use kiln::data::synthetic::{digits, DigitsOptions};
use kiln::gpu::{Gpu, GpuOptions};
use kiln::models::vae::Kind;
use kiln::train::data::GpuData;
use kiln::train::plot::{read_metrics, write_loss_curve, COLORS, HEIGHT, PLOT_TOP, WIDTH};
use kiln::train::run::{run, RunOptions};
use kiln::train::vae::{VaeConfig, VaeTrainer};
use std::path::{Path, PathBuf};

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Pixels of exactly `color` in the plot area (not the legend) as (x, y).
fn pixels_of(img: &image::RgbImage, color: [u8; 3]) -> Vec<(u32, u32)> {
    img.enumerate_pixels().filter(|(_, y, p)| *y >= PLOT_TOP && p.0 == color).map(|(x, y, _)| (x, y)).collect()
}

/// The mean row of the pixels whose column is within `x` ± `half`.
fn mean_row(pixels: &[(u32, u32)], x: f64, half: f64) -> f64 {
    let rows: Vec<f64> = pixels.iter().filter(|(px, _)| (*px as f64 - x).abs() <= half).map(|(_, y)| *y as f64).collect();
    assert!(!rows.is_empty(), "no pixels near column {x}");
    rows.iter().sum::<f64>() / rows.len() as f64
}

/// Writes one metrics.jsonl line per step, as the training loop does.
fn write_metrics(path: &Path, steps: impl Iterator<Item = u64>, values: impl Fn(u64) -> Vec<(&'static str, f64)>) {
    let mut text = String::new();
    for step in steps {
        let fields: Vec<String> = values(step).iter().map(|(n, v)| format!("\"{n}\":{v}")).collect();
        text += &format!("{{\"step\":{step},\"epoch\":0,{},\"images_per_s\":100.0}}\n", fields.join(","));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_short_vae_run_draws_every_loss_into_loss_curve_png() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let splits = digits(&DigitsOptions { seed: 1, train: 512, test: 128 }).unwrap();
    let (train, test) = (GpuData::upload(&gpu, &splits.train).unwrap(), GpuData::upload(&gpu, &splits.test).unwrap());
    let config = VaeConfig { kind: Kind::Mlp, image: [1, 28, 28], latent: 8, hidden: 64, batch: 32, lr: 3e-3, seed: 5, beta: 1.0, classes: None };
    let vae = VaeTrainer::new(&gpu, config, &train, &test).unwrap();
    let out = out_dir("loss-curve");
    // A killed earlier run left half a line; this run's lines must stay whole after it.
    std::fs::write(out.join("metrics.jsonl"), "{\"step\":0,\"epo").unwrap();
    let opts = RunOptions { out: out.clone(), steps: Some(24), epochs: None, checkpoint_every: 1000, sample_every: 10, log_every: 1, resume: false, seed: 3, eval: None };
    run(&gpu, &vae, &train, &opts).unwrap();

    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(lines.len(), 1 + 24);
    for line in &lines[1..] {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    let img = image::open(out.join("loss_curve.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
    for (i, name) in ["loss", "bce", "kl"].iter().enumerate() {
        let n = pixels_of(&img, COLORS[i]).len();
        eprintln!("{name}: {n} pixels of its colour");
        assert!(n > 50, "the {name} line is missing: {n} pixels of its colour");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_truncated_last_line_of_metrics_still_plots() {
    let out = out_dir("truncated-metrics");
    let metrics = out.join("metrics.jsonl");
    write_metrics(&metrics, 0..10, |s| vec![("d_loss", 1.0 + 0.1 * s as f64), ("g_loss", 2.0 - 0.1 * s as f64)]);
    // A run killed while writing its 11th line.
    let mut file = std::fs::OpenOptions::new().append(true).open(&metrics).unwrap();
    std::io::Write::write_all(&mut file, b"{\"step\":10,\"epoch\":0,\"d_lo").unwrap();
    let png = out.join("loss_curve.png");
    assert_eq!(write_loss_curve(&metrics, &["d_loss", "g_loss"], &png).unwrap(), 20);
    let img = image::open(&png).unwrap().to_rgb8();
    assert!(!pixels_of(&img, COLORS[0]).is_empty() && !pixels_of(&img, COLORS[1]).is_empty());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_resumed_runs_lines_replace_those_logged_after_its_checkpoint() {
    let out = out_dir("resumed-metrics");
    let metrics = out.join("metrics.jsonl");
    // Killed after logging step 7; its checkpoint was at step 5, so steps 5..12 are logged again.
    write_metrics(&metrics, 0..8, |s| vec![("loss", s as f64)]);
    let resumed = std::fs::read_to_string(&metrics).unwrap() + "{\"step\":8,\"lo\n";
    std::fs::write(&metrics, resumed).unwrap();
    let again = out.join("again.jsonl");
    write_metrics(&again, 5..12, |s| vec![("loss", 100.0 + s as f64)]);
    let text = std::fs::read_to_string(&metrics).unwrap() + &std::fs::read_to_string(&again).unwrap();
    std::fs::write(&metrics, text).unwrap();

    let series = read_metrics(&metrics, &["loss"]).unwrap();
    let steps: Vec<f64> = series[0].points.iter().map(|p| p.0).collect();
    let values: Vec<f64> = series[0].points.iter().map(|p| p.1).collect();
    assert_eq!(steps, (0..12).map(|s| s as f64).collect::<Vec<_>>());
    assert_eq!(&values[..5], &[0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(&values[5..], &[105.0, 106.0, 107.0, 108.0, 109.0, 110.0, 111.0]);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_rising_series_is_drawn_higher_at_the_right_on_linear_and_log_axes() {
    let out = out_dir("rising");
    let metrics = out.join("metrics.jsonl");
    let png = out.join("loss_curve.png");
    // Linear: values within a decade. Log: growing tenfold every 10 steps, a straight line.
    for axis in ["linear", "log"] {
        let up = |s: u64| if axis == "linear" { 1.0 + s as f64 / 40.0 } else { 10f64.powf(s as f64 / 10.0) };
        write_metrics(&metrics, 0..41, |s| vec![("up", up(s)), ("down", 0.9 - s as f64 / 100.0)]);
        write_loss_curve(&metrics, &["up", "down"], &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        let (up, down) = (pixels_of(&img, COLORS[0]), pixels_of(&img, COLORS[1]));
        let left = up.iter().map(|p| p.0).min().unwrap() as f64;
        let right = up.iter().map(|p| p.0).max().unwrap() as f64;
        let mid = (left + right) / 2.0;
        let (up_left, up_mid, up_right) = (mean_row(&up, left, 4.0), mean_row(&up, mid, 1.0), mean_row(&up, right, 4.0));
        eprintln!("{axis}: 'up' at rows {up_left:.1}, {up_mid:.1}, {up_right:.1} (left, middle, right)");
        assert!(up_right < up_left - 100.0, "{axis}: a rising series must end higher (a smaller row): {up_left} -> {up_right}");
        assert!(mean_row(&down, right, 4.0) > mean_row(&down, left, 4.0) + 10.0, "{axis}: a falling series must end lower");
        // Both are straight lines on their axis: the middle lies halfway.
        assert!((up_mid - (up_left + up_right) / 2.0).abs() < 4.0, "{axis}: the middle of a straight line at row {up_mid}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn kiln_train_prints_plain_progress_lines_when_stdout_is_not_a_terminal() {
    let out = out_dir("plain-lines");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "vae", "--vae-model", "mlp", "--batch-size", "32", "--steps", "4", "--log-every", "1", "--seed", "3", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains('\r') && !stdout.contains('\x1b'), "terminal control characters in piped output:\n{stdout:?}");
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(progress.len(), 4, "{stdout}");
    for (i, line) in progress.iter().enumerate() {
        let prefix = format!("step {}/4 epoch 0 loss ", i + 1);
        assert!(line.starts_with(&prefix) && line.contains(" bce ") && line.contains(" kl ") && line.ends_with(" img/s"), "{line}");
    }
    assert!(stdout.lines().any(|l| l.starts_with("trained 4 steps at ")), "{stdout}");
    assert!(out.join("loss_curve.png").exists());
    std::fs::remove_dir_all(&out).unwrap();
}
