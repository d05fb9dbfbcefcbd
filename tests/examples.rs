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

#[test]
fn the_dcgan_example_trains_and_writes_a_grid_from_fixed_noise() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("dcgan.png");
    let started = std::time::Instant::now();
    dcgan::run(args(&["--steps", "1", "--batch-size", "4", "--out", png.to_str().unwrap()])).unwrap();
    eprintln!("dcgan example, 1 step: {:.1} s", started.elapsed().as_secs_f64());
    let grid = check_grid(&png, 6 * 30 + 2, 28);
    assert_eq!(grid.color(), image::ColorType::L8);
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
