//! The examples, run for a step or a few: they train through the library API and write their
//! sample grid. The example files are compiled in here as modules, so `cargo test --test
//! examples` needs no separately built example binaries.

use std::path::Path;

#[allow(dead_code)]
#[path = "../examples/vae.rs"]
mod vae;

#[allow(dead_code)]
#[path = "../examples/dcgan.rs"]
mod dcgan;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Opens the grid at `png`, checks its size, and checks that its first tile is not one flat
/// value (a model gone NaN writes black tiles).
fn check_grid(png: &Path, side: u32, tile: u32) -> image::DynamicImage {
    let grid = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert_eq!((grid.width(), grid.height()), (side, side), "{}", png.display());
    let gray = grid.to_luma8();
    let first: Vec<u8> = (2..2 + tile).flat_map(|y| (2..2 + tile).map(move |x| (x, y))).map(|(x, y)| gray.get_pixel(x, y)[0]).collect();
    assert!(first.iter().any(|&v| v != first[0]), "the first sample of {} is one flat value {}", png.display(), first[0]);
    grid
}

#[test]
fn the_vae_example_trains_and_writes_a_grid_of_64_digits() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("vae.png");
    let started = std::time::Instant::now();
    vae::run(args(&["--steps", "3", "--batch-size", "16", "--out", png.to_str().unwrap()])).unwrap();
    eprintln!("vae example, 3 steps: {:.1} s", started.elapsed().as_secs_f64());
    // 8 × 8 digits of 28 pixels with 2-pixel padding, gray.
    let grid = check_grid(&png, 8 * 30 + 2, 28);
    assert_eq!(grid.color(), image::ColorType::L8);
}

/// The example writes out what `train::gan::Gan` does (same seeds, streams and recipe), so
/// its losses must be the trainer's: the second step's also checks the Adam updates.
#[test]
fn the_dcgan_example_matches_kilns_gan_trainer_and_writes_a_grid_from_fixed_noise() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("dcgan.png");
    let started = std::time::Instant::now();
    let losses = dcgan::run(args(&["--steps", "2", "--batch-size", "2", "--out", png.to_str().unwrap()])).unwrap();
    eprintln!("dcgan example, 2 steps: {:.1} s", started.elapsed().as_secs_f64());
    let grid = check_grid(&png, 6 * 30 + 2, 28);
    assert_eq!(grid.color(), image::ColorType::L8);

    use kiln::train::gan::{Gan, GanConfig, Recipe};
    let gpu = kiln::Gpu::new(&kiln::GpuOptions::default()).unwrap();
    let digits = kiln::data::synthetic::digits(&Default::default()).unwrap();
    let data = kiln::train::data::GpuData::upload(&gpu, &digits.train).unwrap();
    let image = kiln::models::dcgan::ImageShape { channels: 1, size: 28 };
    let config = GanConfig { image, batch: 2, recipe: Recipe::Paper, lr_g: None, lr_d: None, real_label: 1.0, seed: 0, ..GanConfig::default() };
    let gan = Gan::new(&gpu, config, &data).unwrap();
    data.shuffle(&gpu, 0, 0).unwrap();
    for (step, &(d, g)) in losses.iter().enumerate() {
        gan.prepare(&gpu, &data, step as u64, step).unwrap();
        gpu.submit("gan step", &gan.step_dispatches(), None).unwrap();
        let (want_d, want_g) = (gpu.read(&gan.logged[0]).unwrap()[0], gpu.read(&gan.logged[1]).unwrap()[0]);
        eprintln!("step {step}: example d {d} g {g}, trainer d {want_d} g {want_g}");
        assert!((d - want_d).abs() <= 1e-5 * want_d.abs().max(1.0), "step {step}: d_loss {d} vs the trainer's {want_d}");
        assert!((g - want_g).abs() <= 1e-5 * want_g.abs().max(1.0), "step {step}: g_loss {g} vs the trainer's {want_g}");
    }
}

#[test]
fn an_example_with_a_bad_argument_or_too_few_images_says_so() {
    let err = vae::run(args(&["--steps", "many"])).unwrap_err().to_string();
    assert!(err.contains("--steps"), "{err}");
    // Four images (10% held out rounds to none) and a batch of 8.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_pixel(40, 30, image::Rgb([60 * i, 200, 90])).save(dir.path().join(format!("{i}.png"))).unwrap();
    }
    let data = dir.path().to_str().unwrap();
    let err = dcgan::run(args(&["--data", data, "--image-size", "32", "--batch-size", "8"])).unwrap_err().to_string();
    assert!(err.contains("has 4 training images, fewer than one batch of 8"), "{err}");
}
