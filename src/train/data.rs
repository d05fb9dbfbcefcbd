//! A dataset resident on the GPU: its bytes uploaded once, its epoch order shuffled on the CPU
//! (one upload per epoch), and each batch gathered and normalised by a recorded dispatch.

use crate::data::Dataset;
use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::kernels::data::{gather, pack_bytes, set_first, Gather, MAX_CHUNKS};
use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct GpuData {
    pub len: usize,
    pub image_len: usize,
    per_chunk: usize,
    chunks: Vec<Buffer>,
    order: Buffer,
    /// The class labels, one byte per image (so the image gather gathers them too, through
    /// the same order); `Err` says why there are none.
    labels: std::result::Result<Buffer, String>,
    /// (rank, ranks) of a data-parallel run: which part of each global batch this process
    /// gathers. (0, 1) alone.
    shard: (AtomicUsize, AtomicUsize),
}

impl GpuData {
    /// Uploads `data`, split into as many buffers (up to four) as the adapter's binding limit
    /// needs.
    pub fn upload(gpu: &Gpu, data: &Dataset) -> Result<GpuData> {
        Self::upload_in_chunks(gpu, data, gpu.max_binding_bytes() as usize)
    }

    /// [`upload`](Self::upload) with chunks of at most `chunk_bytes` each.
    pub fn upload_in_chunks(gpu: &Gpu, data: &Dataset, chunk_bytes: usize) -> Result<GpuData> {
        if data.is_empty() {
            return Err(Error::Invalid(format!("dataset {:?} is empty", data.name)));
        }
        // Whole images per chunk, a multiple of 4 so every chunk starts on a word.
        let per_chunk = (chunk_bytes / data.image_len().max(1)) / 4 * 4;
        let chunks_needed = if per_chunk == 0 { usize::MAX } else { data.len().div_ceil(per_chunk) };
        if chunks_needed > MAX_CHUNKS {
            return Err(Error::Limit(format!(
                "dataset {:?} ({} images of {} bytes, {} MiB) needs more than {MAX_CHUNKS} GPU buffers of {} MiB; use fewer or smaller images",
                data.name,
                data.len(),
                data.image_len(),
                data.images().len() >> 20,
                chunk_bytes >> 20
            )));
        }
        let bytes = data.images();
        let chunks = (0..chunks_needed)
            .map(|i| {
                let range = i * per_chunk * data.image_len()..((i + 1) * per_chunk * data.image_len()).min(bytes.len());
                gpu.upload(&format!("{} pixels {i}", data.name), &pack_bytes(&bytes[range]))
            })
            .collect::<Result<Vec<_>>>()?;
        let order: Vec<u32> = (0..data.len() as u32).collect();
        let order = gpu.upload(&format!("{} order", data.name), &order)?;
        let labels = match data.labels() {
            None => Err(format!("dataset {:?} has no labels", data.name)),
            Some(l) => match l.iter().max().filter(|&&top| top > 255) {
                Some(top) => Err(format!("dataset {:?} has class {top}; labels are gathered on the GPU as bytes, classes 0-255", data.name)),
                None => Ok(gpu.upload(&format!("{} labels", data.name), &pack_bytes(&l.iter().map(|&c| c as u8).collect::<Vec<_>>()))?),
            },
        };
        Ok(GpuData { len: data.len(), image_len: data.image_len(), per_chunk, chunks, order, labels, shard: (AtomicUsize::new(0), AtomicUsize::new(1)) })
    }

    /// How many buffers hold the images.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// A recorded gather of `batch` images into `y`, normalised by `scale · pixel + offset`.
    pub fn gather(&self, gpu: &Gpu, batch: usize, scale: f32, offset: f32, y: &Buffer) -> Result<Dispatch> {
        let g = Gather { images: self.len, per_chunk: self.per_chunk, image_len: self.image_len, batch, scale, offset };
        gather(gpu, &g, &self.chunks, &self.order, 0, y)
    }

    /// A recorded gather of the class labels of the same `batch` images as [`gather`](Self::gather)
    /// (as f32 class indices into `y`); an error naming the dataset when it has no labels.
    pub fn gather_labels(&self, gpu: &Gpu, batch: usize, y: &Buffer) -> Result<Dispatch> {
        let labels = self.labels.as_ref().map_err(|why| Error::Invalid(why.clone()))?;
        let g = Gather { images: self.len, per_chunk: self.len.next_multiple_of(4), image_len: 1, batch, scale: 1.0, offset: 0.0 };
        gather(gpu, &g, std::slice::from_ref(labels), &self.order, 0, y)
    }

    /// Points a recorded gather (of images or labels) at batch `index` of the current epoch:
    /// for rank r of N, the r-th `batch` images of global batch `index` (of N · `batch`), so the
    /// ranks share one epoch order and draw disjoint shards of it.
    pub fn select(&self, gpu: &Gpu, gather: &Dispatch, batch: usize, index: usize) {
        let (rank, ranks) = self.shard();
        set_first(gpu, gather, (index * ranks + rank) * batch);
    }

    /// Makes [`select`](Self::select) gather rank `rank`'s shard of each global batch of
    /// `ranks` shards (a data-parallel run; every rank shuffles with the same seed).
    pub fn set_shard(&self, rank: usize, ranks: usize) {
        self.shard.0.store(rank, Ordering::Relaxed);
        self.shard.1.store(ranks.max(1), Ordering::Relaxed);
    }

    /// (rank, ranks) as [`set_shard`](Self::set_shard) left them; (0, 1) by default.
    pub fn shard(&self) -> (usize, usize) {
        (self.shard.0.load(Ordering::Relaxed), self.shard.1.load(Ordering::Relaxed))
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
