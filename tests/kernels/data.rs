use crate::support::*;
use kiln::kernels::data::{gather, pack_bytes, set_first, Gather};

#[test]
fn gather_reads_shuffled_images_from_packed_bytes_and_normalises() {
    let gpu = gpu();
    // 7 images of 5 pixels: odd sizes so images straddle u32 words.
    let (images, image_len, batch) = (7, 5, 3);
    let bytes: Vec<u8> = (0..images * image_len).map(|i| (i * 37 % 256) as u8).collect();
    let pixels = gpu.upload("pixels", &pack_bytes(&bytes)).unwrap();
    let order: Vec<u32> = vec![6, 2, 5, 0, 3, 1, 4];
    let order_buf = gpu.upload("order", &order).unwrap();
    let y = zeros("batch", batch * image_len);
    let g = Gather { images, per_chunk: images, image_len, batch, scale: 2.0 / 255.0, offset: -1.0 };
    let d = gather(gpu, &g, std::slice::from_ref(&pixels), &order_buf, 0, &y).unwrap();
    for first in [0, 4] {
        set_first(gpu, &d, first);
        gpu.run(std::slice::from_ref(&d)).unwrap();
        let want: Vec<f64> = (0..batch * image_len)
            .map(|i| {
                let (b, j) = (i / image_len, i % image_len);
                bytes[order[first + b] as usize * image_len + j] as f64 * 2.0 / 255.0 - 1.0
            })
            .collect();
        assert_close(&format!("gather from {first}"), &read(&y), &want, 1e-6);
    }
}

#[test]
fn gather_past_the_order_is_an_error() {
    let gpu = gpu();
    let pixels = gpu.upload("pixels", &pack_bytes(&[0u8; 20])).unwrap();
    let order = gpu.upload("order", &[0u32, 1, 2]).unwrap();
    let g = Gather { images: 4, per_chunk: 4, image_len: 5, batch: 2, scale: 1.0, offset: 0.0 };
    let err = gather(gpu, &g, std::slice::from_ref(&pixels), &order, 2, &zeros("y", 10)).err().expect("must fail").to_string();
    assert!(err.contains("data.gather_normalize") && err.contains("order"), "{err}");
}

#[test]
fn a_dataset_split_across_buffers_gathers_from_every_chunk() {
    use kiln::train::data::GpuData;
    let gpu = gpu();
    let (n, image_len) = (23, 7);
    let bytes: Vec<u8> = (0..n * image_len).map(|i| (i * 13 % 251) as u8).collect();
    let data = kiln::data::Dataset::new("split", bytes.clone(), [n, 1, 1, image_len], None).unwrap();
    // Chunks of 8 images (56 bytes): 3 buffers.
    let gpu_data = GpuData::upload_in_chunks(gpu, &data, 8 * image_len).unwrap();
    assert_eq!(gpu_data.chunks(), 3);
    let y = zeros("batch", n * image_len);
    let d = gpu_data.gather(gpu, n, 1.0, 0.0, &y).unwrap();
    gpu_data.shuffle(gpu, 9, 0).unwrap();
    gpu.run(std::slice::from_ref(&d)).unwrap();
    let got = read(&y);
    // Every image arrives whole, each exactly once, in some order.
    let mut seen: Vec<Vec<u8>> = got.chunks(image_len).map(|img| img.iter().map(|&v| v as u8).collect()).collect();
    let mut want: Vec<Vec<u8>> = bytes.chunks(image_len).map(|c| c.to_vec()).collect();
    assert_ne!(seen, want, "the shuffle should change the order");
    seen.sort();
    want.sort();
    assert_eq!(seen, want);

    let err = GpuData::upload_in_chunks(gpu, &data, 4 * image_len).err().expect("6 chunks are too many").to_string();
    assert!(err.contains("split") && err.contains("GPU buffers"), "{err}");
}

#[test]
fn gather_folds_grids_over_65535_workgroups() {
    // 21,400 images of 784 pixels: 16.8M values, over 65,535 workgroups of 256, in reverse
    // order so every image lands somewhere else.
    let gpu = gpu();
    let (images, image_len) = (21_400, 784);
    let bytes: Vec<u8> = (0..images * image_len).map(|i| (i * 131 % 251) as u8).collect();
    let pixels = gpu.upload("pixels", &pack_bytes(&bytes)).unwrap();
    let order: Vec<u32> = (0..images as u32).rev().collect();
    let order_buf = gpu.upload("order", &order).unwrap();
    let y = zeros("batch", images * image_len);
    let g = Gather { images, per_chunk: images, image_len, batch: images, scale: 1.0, offset: 0.0 };
    let d = gather(gpu, &g, std::slice::from_ref(&pixels), &order_buf, 0, &y).unwrap();
    assert!(d.workgroups[1] > 1, "grid {:?} is not folded", d.workgroups);
    gpu.run(std::slice::from_ref(&d)).unwrap();
    let want: Vec<f64> = (0..images * image_len).map(|i| bytes[order[i / image_len] as usize * image_len + i % image_len] as f64).collect();
    assert_close("gather of 16.8M values", &read(&y), &want, 1e-7);
}
