//! RGB end to end through the `kiln` binary: folders of colour PNGs of mixed sizes train the
//! DCGAN at 32×32 and 64×64 and the conv VAE at 32×32 for a step or two, the sample grids are
//! RGB of the right size, and `kiln sample` from the checkpoints writes RGB images.
//!
//! Steps are few and batches tiny: on Mesa's CPU drivers most of each test is the 64-image
//! sample grid.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// A colour for shape `i`: a deterministic hash spread over the three channels.
fn colour(i: u32) -> [u8; 3] {
    let h = i.wrapping_mul(0x9E37_79B9).rotate_left(7) ^ 0x5bd1_e995;
    [h as u8, (h >> 8) as u8, (h >> 16) as u8]
}

/// `n` PNGs in two class folders: a disc or a rectangle in one colour on a background of
/// another, at sizes that are wider, taller, smaller and larger than the training sizes, so
/// loading resizes and centre-crops. A text file beside them is skipped.
fn rgb_folder(dir: &Path, n: u32) {
    let sizes = [(40, 40), (64, 48), (50, 90), (100, 100), (24, 20)];
    for i in 0..n {
        let (w, h) = sizes[i as usize % sizes.len()];
        let (fg, bg) = (colour(2 * i), colour(2 * i + 1));
        let disc = i % 2 == 0;
        let (cx, cy, r) = (w as i64 / 2 + i as i64 % 5 - 2, h as i64 / 2, w.min(h) as i64 / 3);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let (dx, dy) = (x as i64 - cx, y as i64 - cy);
            let inside = if disc { dx * dx + dy * dy < r * r } else { dx.abs() < r && dy.abs() < r / 2 };
            image::Rgb(if inside { fg } else { bg })
        });
        let class = dir.join(if disc { "discs" } else { "boxes" });
        std::fs::create_dir_all(&class).unwrap();
        img.save(class.join(format!("{i:03}.png"))).unwrap();
    }
    std::fs::write(dir.join("README.txt"), "not an image").unwrap();
}

/// Runs the kiln binary and panics with its output when it fails.
fn kiln(args: &[&str]) -> String {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kiln {}:\n{text}", args.join(" "));
    eprintln!("kiln {} {}: {:.1} s", args[0], args[1], started.elapsed().as_secs_f64());
    text
}

/// Every line of metrics.jsonl has finite values for `keys`; returns the number of lines.
fn finite_metrics(out: &Path, keys: &[&str]) -> usize {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in keys {
            let x = v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {line}"));
            assert!(x.is_finite(), "{key} is {x} in {line}");
        }
    }
    text.lines().count()
}

/// An RGB PNG of `side`×`side` pixels whose channels differ somewhere (not gray stored as RGB).
fn assert_rgb(png: &Path, side: u32) {
    let img = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert_eq!(img.color(), image::ColorType::Rgb8, "{}", png.display());
    assert_eq!((img.width(), img.height()), (side, side), "{}", png.display());
    let rgb = img.to_rgb8();
    assert!(rgb.pixels().any(|p| p[0] != p[1] || p[1] != p[2]), "{} has only gray pixels", png.display());
}

/// `kiln sample` writes `n` numbered RGB images of `size` pixels.
fn sample_rgb(ckpt: &Path, out: &Path, size: u32) {
    let n = 3;
    kiln(&["sample", "--checkpoint", ckpt.to_str().unwrap(), "--n", &n.to_string(), "--out", out.to_str().unwrap()]);
    for i in 0..n {
        assert_rgb(&out.join(format!("{i:06}.png")), size);
    }
    assert!(!out.join(format!("{n:06}.png")).exists());
}

/// One GAN step at `size` on a colour folder: finite losses, an 8×8 RGB grid, RGB samples.
fn gan_end_to_end(size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    rgb_folder(&data, 10);
    let text = kiln(&[
        "train", "gan", "--data", data.to_str().unwrap(), "--image-size", &size.to_string(), "--steps", "1", "--batch-size", "2",
        "--out", out.to_str().unwrap(),
    ]);
    assert!(text.contains(&format!("of 3x{size}x{size}")), "{text}");
    assert_eq!(finite_metrics(&out, &["d_loss", "g_loss", "d_real", "d_fake"]), 1);
    // 64 samples in rows of 8, with torchvision's 2-pixel padding.
    assert_rgb(&out.join("samples/step_0000001.png"), 8 * (size + 2) + 2);
    sample_rgb(&out.join("checkpoint.safetensors"), &dir.path().join("samples"), size);
}

#[test]
fn the_dcgan_trains_on_mixed_size_rgb_images_at_32_and_samples_rgb() {
    gan_end_to_end(32);
}

#[test]
fn the_dcgan_trains_on_mixed_size_rgb_images_at_64_and_samples_rgb() {
    gan_end_to_end(64);
}

#[test]
fn the_conv_vae_trains_on_32x32_rgb_images_and_samples_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    // 20 images: 10% (2) are held out, which must still fill one batch for the test loss.
    rgb_folder(&data, 20);
    let text = kiln(&[
        "train", "vae", "--vae-model", "conv", "--data", data.to_str().unwrap(), "--image-size", "32", "--steps", "2", "--batch-size", "2",
        "--log-every", "1", "--out", out.to_str().unwrap(),
    ]);
    assert!(text.contains("of 3x32x32"), "{text}");
    assert_eq!(finite_metrics(&out, &["loss", "bce", "kl"]), 2);
    assert_rgb(&out.join("samples/step_0000002.png"), 8 * 34 + 2);
    sample_rgb(&out.join("checkpoint.safetensors"), &dir.path().join("samples"), 32);
}

/// Shapes alone, no GPU: the DCGAN adds one upsampling block per doubling of the image side
/// (and the discriminator one downsampling block), for gray and RGB, and the conv VAE decodes
/// to the data's channels.
#[test]
fn models_take_their_shape_from_the_data_gray_or_rgb_at_28_32_and_64() {
    use kiln::graph::Graph;
    use kiln::models::dcgan::{self, ImageShape, LATENT};
    use kiln::models::vae::{Kind, Vae};
    use kiln::nn::{Layer, Mode};
    for (size, upsampling, downsampling) in [(28, 3, 2), (32, 3, 2), (64, 4, 3)] {
        for channels in [1, 3] {
            let image = ImageShape { channels, size };
            let (generator, discriminator) = (dcgan::generator(image).unwrap(), dcgan::discriminator(image).unwrap());
            let count = |layers: &[Layer], convt: bool| {
                layers.iter().filter(|l| if convt { matches!(l, Layer::ConvTranspose2d(_)) } else { matches!(l, Layer::Conv2d(_)) }).count()
            };
            assert_eq!(count(&generator.layers, true), upsampling, "{image:?}");
            assert_eq!(count(&discriminator.layers, false), downsampling, "{image:?}");
            let mut g = Graph::new();
            let z = g.input("z", &[2, LATENT]);
            let fake = generator.forward(&mut g, z, Mode::train(0)).unwrap();
            assert_eq!(g.shape(fake), [2, channels, size as usize, size as usize]);
            let logits = discriminator.forward(&mut g, fake, Mode::train(1)).unwrap();
            assert_eq!(g.shape(logits), [2, 1]);
        }
    }
    let vae = Vae::new(Kind::Conv, [3, 32, 32], 16, 64).unwrap();
    let mut g = Graph::new();
    let flat = g.input("x", &[2, 3 * 32 * 32]);
    let x = g.reshape(flat, &vae.input_shape(2)).unwrap();
    let [loss, _, _, recon] = vae.loss(&mut g, x, flat, None, 0, 1.0).unwrap();
    assert_eq!(g.info(loss).numel(), 1);
    assert_eq!(g.shape(recon), [2, 3 * 32 * 32]);
}
