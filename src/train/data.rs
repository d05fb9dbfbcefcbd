//! A dataset resident on the GPU: its bytes uploaded once, its epoch order shuffled on the CPU
//! (one upload per epoch), and each batch gathered and normalised by a recorded dispatch.

use crate::data::Dataset;
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::kernels::data::{gather, pack_bytes, set_first, Gather};
use crate::{Error, Result};

pub struct GpuData {
    pub len: usize,
    pub image_len: usize,
    pixels: Buffer,
    order: Buffer,
}

impl GpuData {
    pub fn upload(gpu: &Gpu, data: &Dataset) -> Result<GpuData> {
        if data.is_empty() {
            return Err(Error::Invalid(format!("dataset {:?} is empty", data.name)));
        }
        let words = pack_bytes(data.images());
        let pixels = gpu.upload(&format!("{} pixels", data.name), &words).map_err(|e| match e {
            Error::Limit(m) => Error::Limit(format!(
                "{m}: dataset {:?} ({} images of {}) does not fit one GPU buffer; use fewer images",
                data.name,
                data.len(),
                data.image_len()
            )),
            other => other,
        })?;
        let order: Vec<u32> = (0..data.len() as u32).collect();
        let order = gpu.upload(&format!("{} order", data.name), &order)?;
        Ok(GpuData { len: data.len(), image_len: data.image_len(), pixels, order })
    }

    /// A recorded gather of `batch` images into `y`, normalised by `scale · pixel + offset`.
    pub fn gather(&self, gpu: &Gpu, batch: usize, scale: f32, offset: f32, y: &Buffer) -> Result<Dispatch> {
        let g = Gather { images: self.len, image_len: self.image_len, batch, scale, offset };
        gather(gpu, &g, &self.pixels, &self.order, 0, y)
    }

    /// Points a recorded gather at batch `index` of the current epoch.
    pub fn select(&self, gpu: &Gpu, gather: &Dispatch, batch: usize, index: usize) {
        set_first(gpu, gather, index * batch);
    }

    /// A fresh permutation for `epoch`, the same for the same seed (Fisher–Yates on splitmix).
    pub fn shuffle(&self, gpu: &Gpu, seed: u64, epoch: u64) -> Result<()> {
        let mut rng = crate::nn::InitRng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<u32> = (0..self.len as u32).collect();
        for i in (1..order.len()).rev() {
            let j = (rng.unit() * (i + 1) as f64) as usize;
            order.swap(i, j.min(i));
        }
        gpu.write(&self.order, &order)
    }

    /// Restores the natural order (evaluation).
    pub fn unshuffle(&self, gpu: &Gpu) -> Result<()> {
        gpu.write(&self.order, &(0..self.len as u32).collect::<Vec<_>>())
    }
}
