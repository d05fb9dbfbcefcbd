//! Storage buffers of 32-bit elements, checked against the device's limits when created.

use super::Gpu;
use crate::{Error, Result};

/// A GPU storage buffer holding `len` 32-bit elements (f32 unless a kernel says otherwise),
/// or a view of `len` elements at byte `offset` into a larger one (a parameter arena: all of
/// a model's parameters in one allocation, so one optimizer dispatch updates them all).
#[derive(Clone)]
pub struct Buffer {
    pub raw: wgpu::Buffer,
    /// Byte offset of element 0 in `raw`.
    pub offset: u64,
    pub len: usize,
    pub label: String,
}

impl Buffer {
    pub fn bytes(&self) -> u64 {
        self.len as u64 * 4
    }

    /// The binding of exactly this buffer's elements (at least 4 bytes: empty tensors still bind).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.raw,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        })
    }

    /// Elements `start..start + len` as a buffer of their own. Kernels can bind views only at
    /// offsets that are multiples of the adapter's `min_storage_buffer_offset_alignment`.
    pub fn view(&self, label: &str, start: usize, len: usize) -> Result<Buffer> {
        if start + len > self.len {
            return Err(Error::Shape(format!(
                "view {label:?} of elements {start}..{} is past the end of {:?} ({} elements)",
                start + len,
                self.label,
                self.len
            )));
        }
        Ok(Buffer { raw: self.raw.clone(), offset: self.offset + start as u64 * 4, len, label: label.to_string() })
    }
}

// UNIFORM: kernels for CPU adapters bind 64 KiB windows of a buffer as uniform buffers, which
// llvmpipe reads far faster than storage buffers (src/kernels/conv/window.rs).
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::UNIFORM)
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// Largest buffer, in bytes, that one kernel binding can see.
    pub fn max_binding_bytes(&self) -> u64 {
        (self.limits.max_storage_buffer_binding_size as u64).min(self.limits.max_buffer_size)
    }

    fn check_size(&self, label: &str, len: usize) -> Result<u64> {
        let bytes = len as u64 * 4;
        let max = self.max_binding_bytes();
        if bytes > max {
            return Err(Error::Limit(format!(
                "buffer {label:?} needs {len} elements ({bytes} bytes), over this adapter's \
                 storage binding limit of {max} bytes ({})",
                self.info.name
            )));
        }
        // Zero-sized bindings are invalid; keep one element so empty tensors still bind.
        Ok(bytes.max(4))
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros(&self, label: &str, len: usize) -> Result<Buffer> {
        let size = self.check_size(label, len)?;
        self.created.buffers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let raw = self.scoped(label, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: USAGE,
                mapped_at_creation: false,
            })
        })?;
        Ok(Buffer { raw, offset: 0, len, label: label.to_string() })
    }

    /// A buffer holding a copy of `data` (f32, u32 or any other 4-byte Pod type).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<Buffer> {
        assert_eq!(std::mem::size_of::<T>(), 4, "kiln buffers hold 32-bit elements");
        let buffer = self.zeros(label, data.len())?;
        self.write(&buffer, data)?;
        Ok(buffer)
    }

    /// Overwrites the start of `buffer` with `data`.
    pub fn write<T: bytemuck::Pod>(&self, buffer: &Buffer, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() as u64 > buffer.bytes() {
            return Err(Error::Shape(format!(
                "writing {} bytes into buffer {:?} of {} bytes",
                bytes.len(),
                buffer.label,
                buffer.bytes()
            )));
        }
        if !bytes.is_empty() {
            self.queue.write_buffer(&buffer.raw, buffer.offset, bytes);
        }
        Ok(())
    }

    /// Copies `buffer` back to the CPU as f32 (blocking: tests, checks and logging only).
    pub fn read(&self, buffer: &Buffer) -> Result<Vec<f32>> {
        self.read_as(buffer)
    }

    /// Copies `buffer` back to the CPU as any 4-byte Pod type.
    pub fn read_as<T: bytemuck::Pod>(&self, buffer: &Buffer) -> Result<Vec<T>> {
        if buffer.len == 0 {
            return Ok(Vec::new());
        }
        let size = buffer.bytes();
        let what = format!("read of {:?}", buffer.label);
        let staging = self.scoped(&what, || {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln.readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&buffer.raw, buffer.offset, &staging, 0, size);
            self.queue.submit([encoder.finish()]);
            staging
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait(None, &what)?;
        self.wait_for_map(&rx, &what)?.map_err(|e| Error::Device { kernel: what.clone(), message: e.to_string() })?;
        let data = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Device { kernel: what.clone(), message: e.to_string() })?;
            bytemuck::cast_slice::<u8, T>(&view[..buffer.len * 4]).to_vec()
        };
        staging.unmap();
        Ok(data)
    }
}
