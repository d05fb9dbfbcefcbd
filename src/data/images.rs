//! Writing images: sample grids laid out like torchvision's `make_grid` + `save_image`, and
//! single PNGs. Inputs are NCHW, u8 or f32; f32 pixels are read as [0, 1] and converted like
//! torchvision (`x·255 + 0.5`, clamped), so map a tanh output with `(x + 1) / 2` first.

use crate::{Error, Result};
use std::path::Path;

/// A pixel type that can be written: u8 as is, f32 in [0, 1].
pub trait Pixel: Copy {
    fn to_u8(self) -> u8;
}

impl Pixel for u8 {
    fn to_u8(self) -> u8 {
        self
    }
}

impl Pixel for f32 {
    fn to_u8(self) -> u8 {
        // NaN clamps to 0 through the `as` cast.
        (self * 255.0 + 0.5).clamp(0.0, 255.0) as u8
    }
}

/// An interleaved 8-bit image (HWC), 1 (gray), 3 (RGB) or 4 (RGBA) channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let color = match self.channels {
            1 => image::ExtendedColorType::L8,
            3 => image::ExtendedColorType::Rgb8,
            4 => image::ExtendedColorType::Rgba8,
            c => return Err(Error::Invalid(format!("{}: cannot write {c}-channel image as PNG", path.display()))),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        }
        image::save_buffer_with_format(
            path,
            &self.pixels,
            self.width as u32,
            self.height as u32,
            color,
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Invalid(format!("{}: writing PNG failed: {e}", path.display())))
    }
}

fn check_shape(what: &str, len: usize, shape: [usize; 4]) -> Result<()> {
    let [n, c, h, w] = shape;
    if n * c * h * w != len || ![1, 3, 4].contains(&c) || h == 0 || w == 0 {
        return Err(Error::Invalid(format!(
            "{what}: {len} values do not form images of shape {shape:?} with 1, 3 or 4 channels"
        )));
    }
    Ok(())
}

/// Lays out `n` images `[n, c, h, w]` in rows of `nrow`, with `padding` pixels of `pad_value`
/// around and between them — torchvision's `make_grid` geometry: the grid is
/// `rows·(h + padding) + padding` high and `cols·(w + padding) + padding` wide.
pub fn make_grid<T: Pixel>(
    images: &[T],
    shape: [usize; 4],
    nrow: usize,
    padding: usize,
    pad_value: u8,
) -> Result<Image> {
    check_shape("make_grid", images.len(), shape)?;
    let [n, c, h, w] = shape;
    if n == 0 || nrow == 0 {
        return Err(Error::Invalid(format!(
            "make_grid: need at least one image and nrow > 0, got n = {n}, nrow = {nrow}"
        )));
    }
    let cols = nrow.min(n);
    let rows = n.div_ceil(cols);
    let (gh, gw) = (rows * (h + padding) + padding, cols * (w + padding) + padding);
    let mut pixels = vec![pad_value; gh * gw * c];
    for k in 0..n {
        let (oy, ox) = ((k / cols) * (h + padding) + padding, (k % cols) * (w + padding) + padding);
        let img = &images[k * c * h * w..(k + 1) * c * h * w];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    pixels[((oy + y) * gw + ox + x) * c + ch] = img[(ch * h + y) * w + x].to_u8();
                }
            }
        }
    }
    Ok(Image { width: gw, height: gh, channels: c, pixels })
}

/// Writes `images` `[n, c, h, w]` as one PNG grid, `nrow` images per row, with torchvision's
/// default 2-pixel black padding.
pub fn save_grid<T: Pixel>(images: &[T], shape: [usize; 4], nrow: usize, path: impl AsRef<Path>) -> Result<()> {
    make_grid(images, shape, nrow, 2, 0)?.save_png(path)
}

/// Writes one image `[c, h, w]` as a PNG.
pub fn save_png<T: Pixel>(image: &[T], shape: [usize; 3], path: impl AsRef<Path>) -> Result<()> {
    let [c, h, w] = shape;
    let path = path.as_ref();
    check_shape(&path.display().to_string(), image.len(), [1, c, h, w])?;
    make_grid(image, [1, c, h, w], 1, 0, 0)?.save_png(path)
}

/// Originals above their reconstructions: rows of `columns` images of `top`, each followed by
/// the same row of `bottom` (both `[n, image_len]` with n a multiple of `columns`), for
/// [`save_grid`] with `nrow = columns`.
pub fn pair_rows<T: Copy>(top: &[T], bottom: &[T], image_len: usize, columns: usize) -> Vec<T> {
    let row = image_len * columns;
    top.chunks(row).zip(bottom.chunks(row)).flat_map(|(t, b)| t.iter().chain(b).copied()).collect()
}
