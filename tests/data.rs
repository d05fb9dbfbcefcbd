//! The data layer: datasets in memory, synthetic digits, IDX files, image folders, image
//! writing, and downloads from a local HTTP server. CPU only; no network beyond 127.0.0.1.

use kiln::data::download::{download_verified, sha256_hex, Remote, RemoteFile};
use kiln::data::folder::{self, Color, FolderOptions};
use kiln::data::idx::{self, IdxOptions};
use kiln::data::images::{make_grid, save_grid, save_png};
use kiln::data::synthetic::{self, DigitsOptions};
use kiln::data::{Dataset, Source};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn err_text<T: std::fmt::Debug>(r: kiln::Result<T>) -> String {
    let e = r.expect_err("expected an error");
    eprintln!("error as the user sees it: {e}");
    e.to_string()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `n` distinct 3×5 images (row-major, so transposition is visible) and their labels.
fn tiny_set(n: usize) -> (Vec<u8>, Vec<u8>) {
    let images = (0..n * 15).map(|i| (i * 7 % 251) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    (images, labels)
}

fn write_idx_dir(dir: &Path, prefix: &str, test_word: &str, gzip: bool) -> (Vec<u8>, Vec<u8>) {
    let (images, labels) = tiny_set(12);
    let img = idx::encode_images(&images, [12, 1, 3, 5]).unwrap();
    let lab = idx::encode_labels(&labels);
    let (img, lab, ext) = if gzip { (gz(&img), gz(&lab), ".gz") } else { (img, lab, "") };
    for split in ["train", test_word] {
        write(&dir.join(format!("{prefix}{split}-images-idx3-ubyte{ext}")), &img);
        write(&dir.join(format!("{prefix}{split}-labels-idx1-ubyte{ext}")), &lab);
    }
    (images, labels)
}

// ---------------------------------------------------------------- Dataset

#[test]
fn dataset_rejects_byte_count_that_does_not_match_shape() {
    let msg = err_text(Dataset::new("x", vec![0; 10], [2, 1, 2, 2], None));
    assert!(msg.contains("[2, 1, 2, 2] needs 8 bytes, got 10"), "{msg}");
    let msg = err_text(Dataset::new("x", vec![0; 8], [2, 1, 2, 2], Some(vec![1])));
    assert!(msg.contains("2 images but 1 labels"), "{msg}");
}

#[test]
fn split_is_deterministic_disjoint_and_sized_by_fraction() {
    let n = 50;
    let ds = Dataset::new("ids", (0..n as u8).collect(), [n, 1, 1, 1], Some((0..n as u16).collect())).unwrap();
    let a = ds.split(0.2, 7).unwrap();
    assert_eq!(a, ds.split(0.2, 7).unwrap(), "same seed, same split");
    assert_ne!(a.test, ds.split(0.2, 8).unwrap().test, "another seed, another split");
    assert_eq!((a.train.len(), a.test.len()), (40, 10));
    let mut all: Vec<u8> = a.train.images().iter().chain(a.test.images()).copied().collect();
    all.sort();
    assert_eq!(all, (0..n as u8).collect::<Vec<_>>(), "every image exactly once");
    assert_eq!(
        a.test.images().iter().map(|&v| v as u16).collect::<Vec<_>>(),
        a.test.labels().unwrap(),
        "labels follow images"
    );
    assert!(err_text(ds.split(1.5, 0)).contains("not in [0, 1]"));
}

#[test]
fn to_f32_maps_bytes_to_the_requested_range() {
    let ds = Dataset::new("x", vec![0, 255, 51], [3, 1, 1, 1], None).unwrap();
    for ((lo, hi), want) in [((-1.0, 1.0), [-1.0, 1.0, -0.6]), ((0.0, 1.0), [0.0, 1.0, 0.2])] {
        let got = ds.to_f32(lo, hi);
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?} vs {want:?}");
    }
}

// ---------------------------------------------------------------- synthetic digits

fn small(seed: u64) -> DigitsOptions {
    DigitsOptions { seed, train: 600, test: 100 }
}

#[test]
fn synthetic_digits_same_seed_gives_identical_bytes() {
    let a = synthetic::digits(&small(3)).unwrap();
    let b = synthetic::digits(&small(3)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.train.shape(), [600, 1, 28, 28]);
    assert_eq!(a.test.shape(), [100, 1, 28, 28]);
}

#[test]
fn synthetic_digits_different_seeds_differ_and_test_differs_from_train() {
    let a = synthetic::digits(&small(1)).unwrap();
    let b = synthetic::digits(&small(2)).unwrap();
    let differing = (0..600).filter(|&i| a.train.image(i) != b.train.image(i)).count();
    assert_eq!(differing, 600, "every image should change with the seed");
    assert!((0..100).all(|i| a.test.image(i) != a.train.image(i)), "test set is its own stream");
}

#[test]
fn synthetic_digit_depends_only_on_seed_and_index() {
    let big = synthetic::digits(&DigitsOptions { seed: 5, train: 4001, test: 0 }).unwrap();
    let few = synthetic::digits(&DigitsOptions { seed: 5, train: 37, test: 0 }).unwrap();
    assert_eq!(&big.train.images()[..37 * 784], few.train.images(), "thread split must not change bytes");
    let mut one = [0u8; 784];
    synthetic::render_digit(5, 0, 4000, 0, &mut one);
    assert_eq!(&one[..], big.train.image(4000));
}

#[test]
fn synthetic_labels_are_balanced_over_ten_digits() {
    let s = synthetic::digits(&DigitsOptions { seed: 0, train: 1000, test: 30 }).unwrap();
    let mut counts = [0usize; 10];
    for &l in s.train.labels().unwrap() {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [100; 10]);
    assert_eq!(s.train.num_classes(), Some(10));
}

#[test]
fn synthetic_digits_look_like_mnist_statistically() {
    // MNIST: mean pixel ≈ 0.13, a dark 1–2 px border, every digit inked to full white.
    let s = synthetic::digits(&small(9)).unwrap().train;
    let mean = s.images().iter().map(|&v| v as f64).sum::<f64>() / s.images().len() as f64 / 255.0;
    eprintln!("mean intensity {mean:.3}");
    assert!((0.07..0.25).contains(&mean), "mean intensity {mean}");
    for i in 0..s.len() {
        let img = s.image(i);
        assert!(img.contains(&255), "image {i} has no full-ink pixel");
        let border: u32 = (0..28)
            .map(|k| img[k] as u32 + img[27 * 28 + k] as u32 + img[k * 28] as u32 + img[k * 28 + 27] as u32)
            .sum();
        assert!(border < 4 * 255, "image {i} touches the border too much ({border})");
    }
    // Class means differ: the digits are not one blob.
    let mean_of = |d: u16| -> Vec<f64> {
        let idx: Vec<usize> = (0..s.len()).filter(|&i| s.labels().unwrap()[i] == d).collect();
        (0..784).map(|p| idx.iter().map(|&i| s.image(i)[p] as f64).sum::<f64>() / idx.len() as f64).collect()
    };
    let (one, zero) = (mean_of(1), mean_of(0));
    let centre = |m: &[f64]| m[14 * 28 + 14];
    assert!(
        centre(&one) > 2.0 * centre(&zero),
        "a 1 inks the centre, a 0 does not: {} vs {}",
        centre(&one),
        centre(&zero)
    );
}

#[test]
fn synthetic_default_set_has_mnist_sizes() {
    let t = Instant::now();
    let s = synthetic::digits(&DigitsOptions::default()).unwrap();
    eprintln!("60,000 + 10,000 synthetic digits in {:?}", t.elapsed());
    assert_eq!(s.train.shape(), [60_000, 1, 28, 28]);
    assert_eq!(s.test.shape(), [10_000, 1, 28, 28]);
}

// ---------------------------------------------------------------- IDX

#[test]
fn idx_raw_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = write_idx_dir(dir.path(), "", "t10k", false);
    let s = idx::load_dir(dir.path(), &IdxOptions::default()).unwrap();
    assert_eq!(s.train.shape(), [12, 1, 3, 5]);
    assert_eq!(s.train.images(), &images[..]);
    assert_eq!(s.test.labels().unwrap(), labels.iter().map(|&l| l as u16).collect::<Vec<_>>());
}

#[test]
fn idx_gzipped_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = write_idx_dir(dir.path(), "", "t10k", true);
    let s = idx::load_dir(dir.path(), &IdxOptions::default()).unwrap();
    assert_eq!(s.test.images(), &images[..]);
    assert_eq!(s.train.labels().unwrap(), labels.iter().map(|&l| l as u16).collect::<Vec<_>>());
}

#[test]
fn idx_emnist_prefix_test_names_and_transpose() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _) = write_idx_dir(dir.path(), "emnist-digits-", "test", true);
    let opts = IdxOptions { prefix: "emnist-digits-".into(), transpose: true };
    let s = idx::load_dir(dir.path(), &opts).unwrap();
    assert_eq!(s.train.shape(), [12, 1, 5, 3], "transposed images swap height and width");
    let img = s.train.image(1);
    for y in 0..5 {
        for x in 0..3 {
            assert_eq!(img[y * 3 + x], images[15 + x * 5 + y]);
        }
    }
}

#[test]
fn idx_truncated_file_is_an_error_naming_file_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _) = tiny_set(12);
    let mut bytes = idx::encode_images(&images, [12, 1, 3, 5]).unwrap();
    bytes.truncate(16 + 100);
    let path = dir.path().join("train-images-idx3-ubyte");
    write(&path, &bytes);
    let msg = err_text(idx::read_images(&path, false));
    assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"), "{msg}");
    assert!(msg.contains("180") && msg.contains("100"), "expected and actual bytes: {msg}");
    // Too short even for a header.
    write(&path, &bytes[..7]);
    assert!(err_text(idx::read_images(&path, false)).contains("too short"));
}

#[test]
fn idx_truncated_gzip_stream_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _) = tiny_set(12);
    let z = gz(&idx::encode_images(&images, [12, 1, 3, 5]).unwrap());
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    write(&path, &z[..z.len() / 2]);
    let msg = err_text(idx::read_images(&path, false));
    assert!(msg.contains("train-images-idx3-ubyte.gz") && msg.contains("gzip"), "{msg}");
}

#[test]
fn idx_wrong_magic_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("train-labels-idx1-ubyte");
    write(&labels, &idx::encode_labels(&[1, 2, 3]));
    let msg = err_text(idx::read_images(&labels, false));
    assert!(msg.contains("0x00000801") && msg.contains("expected 0x00000803") && msg.contains("train-labels"), "{msg}");
    let mut bytes = idx::encode_labels(&[1, 2, 3]);
    bytes[2] = 0x0d; // float data type
    write(&labels, &bytes);
    assert!(err_text(idx::read_labels(&labels)).contains("0x00000d01"));
}

#[test]
fn idx_extra_trailing_bytes_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let mut bytes = idx::encode_labels(&[1, 2, 3]);
    bytes.push(9);
    write(&path, &bytes);
    let msg = err_text(idx::read_labels(&path));
    assert!(msg.contains("3 data bytes") && msg.contains("has 4"), "{msg}");
}

#[test]
fn idx_image_and_label_counts_must_match() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), "", "t10k", false);
    write(&dir.path().join("t10k-labels-idx1-ubyte"), &idx::encode_labels(&[0; 11]));
    let msg = err_text(idx::load_dir(dir.path(), &IdxOptions::default()));
    assert!(msg.contains("12 images") && msg.contains("11 labels") && msg.contains("t10k-labels"), "{msg}");
}

#[test]
fn idx_missing_file_lists_the_names_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_text(idx::load_dir(dir.path(), &IdxOptions::default()));
    assert!(msg.contains("train-images-idx3-ubyte or train-images-idx3-ubyte.gz"), "{msg}");
}

// ---------------------------------------------------------------- image folders

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).unwrap();
}

/// 40×20: red in columns 0–9, green in 10–29, blue in 30–39.
fn bands(x: u32, _y: u32) -> [u8; 3] {
    match x {
        0..=9 => [255, 0, 0],
        10..=29 => [0, 255, 0],
        _ => [0, 0, 255],
    }
}

#[test]
fn folder_resizes_shorter_side_and_centre_crops() {
    let dir = tempfile::tempdir().unwrap();
    save_rgb(&dir.path().join("wide.png"), 40, 20, bands);
    // Tall JPEG: 12×30, white rows 0–8 and 21–29 around a black middle.
    save_rgb(&dir.path().join("tall.jpg"), 12, 30, |_, y| if (9..21).contains(&y) { [0; 3] } else { [255; 3] });
    for size in [8u32, 10, 16] {
        let ds = folder::load(dir.path(), &FolderOptions { size, color: Color::Rgb, recursive: false }).unwrap();
        let s = size as usize;
        assert_eq!(ds.shape(), [2, 3, s, s], "size {size}");
        assert_eq!(ds.labels(), None, "flat folder: no classes");
        // Sorted by name: tall.jpg first. Its centre crop keeps only the dark middle.
        let tall = ds.image(0);
        let mid = tall[(s / 2) * s + s / 2];
        assert!(mid < 40, "size {size}: centre of the tall image should be dark, got {mid}");
        // wide.png: the crop keeps the green band, away from the red and blue ones.
        let wide = ds.image(1);
        let (r, g, b) = (wide[(s / 2) * s + 1], wide[s * s + (s / 2) * s + 1], wide[2 * s * s + (s / 2) * s + s - 2]);
        assert!(r < 30 && g > 225 && b < 30, "size {size}: crop should be green at the edges, got r {r} g {g} b {b}");
    }
}

#[test]
fn folder_grayscale_and_class_labels_from_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    for (class, n) in [("cats", 2), ("dogs", 3)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        for i in 0..n {
            save_rgb(&dir.path().join(class).join(format!("{i}.png")), 9, 7, |_, _| [200, 200, 200]);
        }
    }
    write(&dir.path().join("dogs").join("notes.txt"), b"not an image");
    let ds = folder::load(dir.path(), &FolderOptions { size: 5, color: Color::Gray, recursive: true }).unwrap();
    assert_eq!(ds.shape(), [5, 1, 5, 5]);
    assert_eq!(ds.labels().unwrap(), &[0, 0, 1, 1, 1]);
    assert!(ds.images().iter().all(|&v| v.abs_diff(200) <= 1), "gray stays gray");
    // Flat: the sub-folders are not entered, so there are no images.
    let msg = err_text(folder::load(dir.path(), &FolderOptions { size: 5, color: Color::Gray, recursive: false }));
    assert!(msg.contains("no PNG or JPEG images"), "{msg}");
}

#[test]
fn folder_without_images_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_text(folder::load(dir.path(), &FolderOptions::default()));
    assert!(msg.contains("no PNG or JPEG images") && msg.contains(&dir.path().display().to_string()), "{msg}");
    write(&dir.path().join("readme.md"), b"hello");
    let msg = err_text(folder::load(dir.path(), &FolderOptions::default()));
    assert!(msg.contains("1 other files"), "{msg}");
}

#[test]
fn folder_corrupt_image_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    save_rgb(&dir.path().join("a.png"), 4, 4, |_, _| [1, 2, 3]);
    let good = std::fs::read(dir.path().join("a.png")).unwrap();
    write(&dir.path().join("b.png"), &good[..good.len() / 2]);
    let msg = err_text(folder::load(dir.path(), &FolderOptions { size: 4, ..Default::default() }));
    assert!(msg.contains("b.png") && msg.contains("cannot read image"), "{msg}");
    write(&dir.path().join("b.png"), b"\x89PNG but not really");
    assert!(err_text(folder::load(dir.path(), &FolderOptions { size: 4, ..Default::default() })).contains("b.png"));
}

// ---------------------------------------------------------------- writing images

fn read_png(path: &Path) -> image::DynamicImage {
    image::open(path).unwrap()
}

#[test]
fn save_grid_uses_torchvision_make_grid_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("grid.png");
    // 5 gray 3×4 images, image k filled with 10·(k+1); 2 per row → 3 rows.
    let images: Vec<u8> = (0..5).flat_map(|k| vec![10 * (k + 1) as u8; 12]).collect();
    save_grid(&images, [5, 1, 3, 4], 2, &path).unwrap();
    let img = read_png(&path).to_luma8();
    assert_eq!(img.dimensions(), (2 * (4 + 2) + 2, 3 * (3 + 2) + 2));
    for k in 0..5u32 {
        let (ox, oy) = ((k % 2) * 6 + 2, (k / 2) * 5 + 2);
        assert_eq!(img.get_pixel(ox, oy)[0], 10 * (k as u8 + 1));
        assert_eq!(img.get_pixel(ox + 3, oy + 2)[0], 10 * (k as u8 + 1));
        assert_eq!(img.get_pixel(ox - 1, oy)[0], 0, "padding");
    }
    assert_eq!(img.get_pixel(9, 13)[0], 0, "the missing sixth cell is padding");
}

#[test]
fn save_grid_converts_f32_like_torchvision_save_image() {
    let g = make_grid(&[0.0f32, 0.5, 1.0, -3.0, 7.0, f32::NAN], [6, 1, 1, 1], 6, 0, 0).unwrap();
    assert_eq!(g.pixels, vec![0, 128, 255, 0, 255, 0]);
    // RGB planes are interleaved.
    let g = make_grid(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0], [1, 3, 1, 2], 1, 0, 0).unwrap();
    assert_eq!(g.pixels, vec![255, 0, 0, 0, 0, 255]);
}

#[test]
fn save_png_writes_one_image_and_rejects_bad_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.png");
    let chw: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
    save_png(&chw, [3, 2, 3], &path).unwrap();
    let img = read_png(&path).to_rgb8();
    assert_eq!(img.dimensions(), (3, 2));
    assert_eq!(img.get_pixel(1, 1).0, [chw[4], chw[6 + 4], chw[12 + 4]]);
    assert!(err_text(save_png(&chw, [2, 3, 3], &path)).contains("channels"));
    assert!(err_text(save_grid(&chw, [2, 1, 3, 4], 2, &path)).contains("[2, 1, 3, 4]"));
}

// ---------------------------------------------------------------- downloads

enum Reply {
    Bytes(Vec<u8>),
    /// Declares the full length, sends the first half, then hangs up.
    Partial(Vec<u8>),
    NotFound,
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 serving fixed replies by path; it stops by itself
/// after `max` requests or 30 s. Returns its base URL and a request counter.
fn serve(routes: Vec<(&'static str, Reply)>, max: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while counter.load(Ordering::SeqCst) < max && Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => req.extend_from_slice(&buf[..k]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("").trim_start_matches('/').to_string();
            let reply = routes.iter().find(|(p, _)| *p == path).map(|(_, r)| r);
            let head = |status: &str, len: usize| {
                format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            };
            let _ = match reply {
                Some(Reply::Bytes(b)) => {
                    stream.write_all(head("200 OK", b.len()).as_bytes()).and_then(|_| stream.write_all(b))
                }
                Some(Reply::Partial(b)) => stream
                    .write_all(head("200 OK", b.len()).as_bytes())
                    .and_then(|_| stream.write_all(&b[..b.len() / 2])),
                _ => stream.write_all(head("404 Not Found", 0).as_bytes()),
            };
        }
    });
    (base, hits)
}

fn remote(base: &str, files: &[(&str, &[u8])]) -> Remote {
    Remote {
        name: "tiny".into(),
        mirrors: vec![base.to_string()],
        files: files.iter().map(|(n, b)| RemoteFile { name: n.to_string(), sha256: sha256_hex(b) }).collect(),
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn download_fetches_missing_files_once_and_they_load_as_idx() {
    let (images, labels) = tiny_set(12);
    let img = gz(&idx::encode_images(&images, [12, 1, 3, 5]).unwrap());
    let lab = gz(&idx::encode_labels(&labels));
    let names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    let files: Vec<(&str, &[u8])> = vec![(names[0], &img), (names[1], &lab), (names[2], &img), (names[3], &lab)];
    let routes = files.iter().map(|(n, b)| (*n, Reply::Bytes(b.to_vec()))).collect();
    let (base, hits) = serve(routes, 4);
    let cache = tempfile::tempdir().unwrap();
    let r = remote(&base, &files);
    let dir = r.fetch(cache.path()).unwrap();
    assert_eq!(dir, cache.path().join("tiny"));
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert_eq!(
        listing(&dir),
        {
            let mut n = names.map(String::from).to_vec();
            n.sort();
            n
        },
        "no temporary files left"
    );
    let s = idx::load_dir(&dir, &IdxOptions::default()).unwrap();
    assert_eq!(s.train.images(), &images[..]);
    // Present files are not fetched again.
    r.fetch(cache.path()).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[test]
fn download_checksum_mismatch_is_an_error_and_leaves_nothing() {
    let (base, _) = serve(vec![("f.gz", Reply::Bytes(b"tampered bytes".to_vec()))], 1);
    let cache = tempfile::tempdir().unwrap();
    let r = remote(&base, &[("f.gz", b"the real bytes")]);
    let msg = err_text(r.fetch(cache.path()));
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&sha256_hex(b"the real bytes")) && msg.contains("f.gz"),
        "{msg}"
    );
    assert_eq!(listing(&cache.path().join("tiny")), Vec::<String>::new());
}

#[test]
fn download_broken_off_leaves_no_partial_file() {
    let body = vec![7u8; 100_000];
    let (base, _) = serve(vec![("big.gz", Reply::Partial(body.clone()))], 1);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("big.gz");
    let msg = err_text(download_verified(&[format!("{base}big.gz")], &sha256_hex(&body), &dest));
    assert!(msg.contains("big.gz") && msg.contains("broke off"), "{msg}");
    assert_eq!(listing(cache.path()), Vec::<String>::new(), "neither the file nor its .part remains");
}

#[test]
fn download_tries_the_next_mirror() {
    let (bad, _) = serve(vec![("f.gz", Reply::NotFound)], 1);
    let (good, _) = serve(vec![("f.gz", Reply::Bytes(b"payload".to_vec()))], 1);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("f.gz");
    download_verified(&[format!("{bad}f.gz"), format!("{good}f.gz")], &sha256_hex(b"payload"), &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"payload");
}

#[test]
fn download_offline_gives_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cache = tempfile::tempdir().unwrap();
    let r = remote(&format!("http://127.0.0.1:{port}/"), &[("x.gz", b"x")]);
    let msg = err_text(r.fetch(cache.path()));
    assert!(msg.contains("could not download x.gz") && msg.contains("offline") && msg.contains("synthetic"), "{msg}");
}

#[test]
fn known_remotes_have_four_files_with_sha256_and_mirrors() {
    for name in ["mnist", "fashion-mnist"] {
        let r = Remote::by_name(name).unwrap();
        assert_eq!(r.files.len(), 4, "{name}");
        assert!(r.files.iter().all(|f| f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit())));
        assert!(r.mirrors.iter().all(|m| m.ends_with('/')) && !r.mirrors.is_empty());
    }
    assert!(Remote::by_name("cifar").is_none());
}

#[test]
fn source_parses_names_and_directories() {
    let fo = FolderOptions::default();
    assert!(matches!(Source::parse("synthetic", &fo).unwrap(), Source::Synthetic(_)));
    assert!(matches!(Source::parse("fashion-mnist", &fo).unwrap(), Source::Download(r) if r.name == "fashion-mnist"));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Source::parse(dir.path().to_str().unwrap(), &fo).unwrap(), Source::Folder(..)));
    write_idx_dir(dir.path(), "", "t10k", true);
    let src = Source::parse(dir.path().to_str().unwrap(), &fo).unwrap();
    assert!(matches!(src, Source::Idx(..)));
    assert_eq!(src.load().unwrap().train.len(), 12);
    assert!(err_text(Source::parse("/no/such/dir", &fo)).contains("not `synthetic`"));
}
