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
    let g = Gather { images, image_len, batch, scale: 2.0 / 255.0, offset: -1.0 };
    let d = gather(gpu, &g, &pixels, &order_buf, 0, &y).unwrap();
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
    let g = Gather { images: 4, image_len: 5, batch: 2, scale: 1.0, offset: 0.0 };
    let err = gather(gpu, &g, &pixels, &order, 2, &zeros("y", 10)).err().expect("must fail").to_string();
    assert!(err.contains("data.gather_normalize") && err.contains("order"), "{err}");
}
