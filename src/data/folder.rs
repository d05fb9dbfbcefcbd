//! A folder of PNG/JPEG images as a dataset: each image is resized so its shorter side is
//! `size`, centre-cropped to `size`×`size` (torchvision's `Resize(size)` + `CenterCrop(size)`),
//! and converted to grayscale or RGB. With `recursive`, images in sub-folders are included,
//! and when every image sits in a sub-folder, the sub-folder names (sorted) are the classes,
//! like torchvision's `ImageFolder`.

use super::Dataset;
use crate::{Error, Result};
use image::imageops::FilterType;
use image::GenericImageView;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Gray,
    Rgb,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Gray => 1,
            Color::Rgb => 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FolderOptions {
    /// Side of the square output images in pixels.
    pub size: u32,
    pub color: Color,
    /// Descend into sub-folders.
    pub recursive: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions { size: 64, color: Color::Rgb, recursive: true }
    }
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Image files under `dir`, sorted by path so that the order (and so the labels) is the same
/// on every file system; also counts the other files it skipped.
fn list(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>, skipped: &mut usize) -> Result<()> {
    let io = |e| Error::Io { path: dir.display().to_string(), source: e };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>().map_err(io)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                list(&path, recursive, out, skipped)?;
            }
        } else if is_image(&path) {
            out.push(path);
        } else {
            log::info!("{}: skipped, not a PNG or JPEG file", path.display());
            *skipped += 1;
        }
    }
    Ok(())
}

/// Decodes one image and brings it to `[c, size, size]`.
fn load_one(path: &Path, opts: &FolderOptions) -> Result<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: cannot read image: {e}", path.display()));
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?
        .with_guessed_format()
        .map_err(|e| bad(&e))?
        .decode()
        .map_err(|e| bad(&e))?;
    let (w, h) = (img.width(), img.height());
    let s = opts.size;
    // Shorter side to `s`, the longer one rounded, never below `s` so the crop fits.
    let (nw, nh) = if w <= h {
        (s, ((h as u64 * s as u64 + w as u64 / 2) / w as u64).max(s as u64) as u32)
    } else {
        (((w as u64 * s as u64 + h as u64 / 2) / h as u64).max(s as u64) as u32, s)
    };
    let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
    let hwc: Vec<u8> = match opts.color {
        Color::Gray => image::imageops::resize(&img.to_luma8(), nw, nh, FilterType::Triangle)
            .view(x0, y0, s, s)
            .to_image()
            .into_raw(),
        Color::Rgb => image::imageops::resize(&img.to_rgb8(), nw, nh, FilterType::Triangle)
            .view(x0, y0, s, s)
            .to_image()
            .into_raw(),
    };
    let (c, n) = (opts.color.channels(), (s * s) as usize);
    let mut chw = vec![0u8; c * n];
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            chw[ch * n + i] = v;
        }
    }
    Ok(chw)
}

/// All PNG/JPEG images under `dir` as `[n, c, size, size]`. Other files are skipped with an
/// info log line each (and a warning with their count); an unreadable image is an error that
/// names it; a folder without images is an error.
pub fn load(dir: &Path, opts: &FolderOptions) -> Result<Dataset> {
    if opts.size == 0 {
        return Err(Error::Invalid(format!("{}: image size must be at least 1 pixel", dir.display())));
    }
    let (mut files, mut skipped) = (Vec::new(), 0);
    list(dir, opts.recursive, &mut files, &mut skipped)?;
    if skipped > 0 {
        log::warn!("{}: skipped {skipped} files that are not PNG or JPEG images", dir.display());
    }
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no PNG or JPEG images found{} ({skipped} other files)",
            dir.display(),
            if opts.recursive { " in it or its sub-folders" } else { "" }
        )));
    }
    let s = opts.size as usize;
    let mut images = Vec::with_capacity(files.len() * opts.color.channels() * s * s);
    for f in &files {
        images.extend(load_one(f, opts)?);
    }
    let labels = class_labels(dir, &files);
    let name = dir.display().to_string();
    Dataset::new(name, images, [files.len(), opts.color.channels(), s, s], labels)
}

/// Class index per file from its top-level sub-folder, or `None` when some image lies directly
/// in `dir` (then there are no classes to speak of).
fn class_labels(dir: &Path, files: &[PathBuf]) -> Option<Vec<u16>> {
    let class_of = |f: &PathBuf| {
        let rel = f.strip_prefix(dir).ok()?;
        (rel.components().count() > 1).then(|| rel.components().next().unwrap().as_os_str().to_owned())
    };
    let classes: Vec<_> = files.iter().map(class_of).collect::<Option<_>>()?;
    let mut names = classes.clone();
    names.sort();
    names.dedup();
    if names.len() > u16::MAX as usize + 1 {
        return None;
    }
    log::info!("{}: {} classes from sub-folders: {:?}", dir.display(), names.len(), names);
    Some(classes.iter().map(|c| names.binary_search(c).unwrap() as u16).collect())
}
