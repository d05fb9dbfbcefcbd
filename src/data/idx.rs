//! MNIST-family IDX files (MNIST, Fashion-MNIST, EMNIST), raw or gzipped.
//!
//! An IDX file is a big-endian header — magic `0x0000_08dd` (type 0x08 = u8, `dd` = number of
//! dimensions), then one u32 per dimension — followed by the data. Images are `[n, rows, cols]`
//! (magic 0x00000803), labels `[n]` (magic 0x00000801). A file is gzipped when it starts with
//! the gzip magic bytes, whatever its name.

use super::{Dataset, Splits};
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// How to read a directory of IDX files.
#[derive(Clone, Debug, Default)]
pub struct IdxOptions {
    /// File name prefix, e.g. `"emnist-digits-"` for EMNIST's `emnist-digits-train-images-idx3-ubyte.gz`.
    pub prefix: String,
    /// Swap rows and columns of every image: EMNIST stores its images transposed.
    pub transpose: bool,
}

/// Reads the whole file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let io = |e| Error::Io { path: path.display().to_string(), source: e };
    let raw = std::fs::read(path).map_err(io)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| Error::Invalid(format!("{}: corrupt or truncated gzip data: {e}", path.display())))?;
    Ok(out)
}

/// Checks the magic and the declared size against the actual size; returns the dimensions and
/// the data after the header.
fn parse<'a>(path: &Path, bytes: &'a [u8], magic: u32, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    let name = path.display();
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if bytes.len() >= 4 && word(0) != magic {
        return Err(Error::Invalid(format!(
            "{name}: magic number 0x{:08x}, expected 0x{magic:08x} (IDX {what}); is this the right file?",
            word(0)
        )));
    }
    if bytes.len() < header {
        return Err(Error::Invalid(format!(
            "{name}: {} bytes is too short for an IDX {what} header ({header} bytes)",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (1..=ndim).map(|i| word(i) as usize).collect();
    let want = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let have = bytes.len() - header;
    match want {
        Some(want) if want == have => Ok((dims, &bytes[header..])),
        Some(want) if want > have => Err(Error::Invalid(format!(
            "{name}: truncated: header declares {what} {dims:?} = {want} data bytes, file has {have}"
        ))),
        Some(want) => Err(Error::Invalid(format!(
            "{name}: header declares {what} {dims:?} = {want} data bytes, but the file has {have}"
        ))),
        None => Err(Error::Invalid(format!("{name}: header declares {what} {dims:?}, too large to address"))),
    }
}

/// Images `[n, 1, rows, cols]` from an IDX3 file; `transpose` swaps rows and columns.
pub fn read_images(path: &Path, transpose: bool) -> Result<(Vec<u8>, [usize; 4])> {
    let bytes = read_maybe_gz(path)?;
    let (d, data) = parse(path, &bytes, IMAGES_MAGIC, "images")?;
    let (n, h, w) = (d[0], d[1], d[2]);
    if !transpose {
        return Ok((data.to_vec(), [n, 1, h, w]));
    }
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data.chunks_exact(h * w).zip(out.chunks_exact_mut(h * w)) {
        for y in 0..h {
            for x in 0..w {
                dst[x * h + y] = src[y * w + x];
            }
        }
    }
    Ok((out, [n, 1, w, h]))
}

/// Labels from an IDX1 file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    Ok(parse(path, &bytes, LABELS_MAGIC, "labels")?.1.to_vec())
}

/// One labelled set from an images file and a labels file of the same count.
pub fn load_pair(name: &str, images: &Path, labels: &Path, transpose: bool) -> Result<Dataset> {
    let (pixels, shape) = read_images(images, transpose)?;
    let labels_u8 = read_labels(labels)?;
    if labels_u8.len() != shape[0] {
        return Err(Error::Invalid(format!(
            "{} holds {} images but {} holds {} labels",
            images.display(),
            shape[0],
            labels.display(),
            labels_u8.len()
        )));
    }
    Dataset::new(name, pixels, shape, Some(labels_u8.into_iter().map(u16::from).collect()))
}

/// The file `{prefix}{stem}` or `{prefix}{stem}.gz` in `dir` (raw preferred), else an error
/// listing what was looked for.
fn find(dir: &Path, prefix: &str, stems: &[&str]) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for stem in stems {
        for ext in ["", ".gz"] {
            let p = dir.join(format!("{prefix}{stem}{ext}"));
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    Err(Error::Invalid(format!("{}: no IDX file named {}", dir.display(), tried.join(" or "))))
}

/// `true` when `dir` holds a training images file in IDX format (raw or gz) with this prefix.
pub fn looks_like_idx_dir(dir: &Path, prefix: &str) -> bool {
    find(dir, prefix, &["train-images-idx3-ubyte"]).is_ok()
}

/// Train and test sets from the four standard files in `dir`: `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (EMNIST
/// says `test-` for `t10k-`), each raw or `.gz`, all with `opts.prefix` in front.
pub fn load_dir(dir: &Path, opts: &IdxOptions) -> Result<Splits> {
    let p = &opts.prefix;
    let label = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let train = load_pair(
        &format!("{label} train"),
        &find(dir, p, &["train-images-idx3-ubyte"])?,
        &find(dir, p, &["train-labels-idx1-ubyte"])?,
        opts.transpose,
    )?;
    let test = load_pair(
        &format!("{label} test"),
        &find(dir, p, &["t10k-images-idx3-ubyte", "test-images-idx3-ubyte"])?,
        &find(dir, p, &["t10k-labels-idx1-ubyte", "test-labels-idx1-ubyte"])?,
        opts.transpose,
    )?;
    Splits::new(train, test)
}

/// The bytes of an IDX3 images file for `[n, 1, h, w]` u8 images (`c` must be 1).
pub fn encode_images(images: &[u8], shape: [usize; 4]) -> Result<Vec<u8>> {
    let [n, c, h, w] = shape;
    if c != 1 || n * h * w != images.len() {
        return Err(Error::Invalid(format!(
            "IDX images: {} bytes do not form grayscale images {shape:?}",
            images.len()
        )));
    }
    let mut out = Vec::with_capacity(16 + images.len());
    for v in [IMAGES_MAGIC, n as u32, h as u32, w as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(images);
    Ok(out)
}

/// The bytes of an IDX1 labels file.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}
