//! Tensors: a GPU buffer from the pool with a shape and a dtype.

use std::fmt;
use std::sync::Arc;

use half::f16;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::pool::PooledBuffer;

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// An n-dimensional array on the GPU, row-major and contiguous.
///
/// Cloning is cheap and shares the buffer. The buffer comes from the context's pool and returns to it
/// when the last handle (including any [`crate::Batch`] that recorded work on it) is gone.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) gpu: Gpu,
    pub(crate) buffer: Arc<PooledBuffer>,
    /// Byte offset of the first element in the buffer (0, or a view's aligned offset).
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

fn numel_of(shape: &[usize], op: &'static str) -> Result<usize> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(Error::EmptyTensor { op });
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{op}: element count of shape {shape:?}"),
            requested: u64::MAX,
            limit: u64::from(u32::MAX),
        })
}

impl Tensor {
    /// An uninitialized tensor (its buffer may hold an earlier tensor's data). Ops write every element
    /// of their outputs, so this is the cheap way to make an output for `*_into` calls.
    pub fn uninit(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Self> {
        gpu.check_alive()?;
        let numel = numel_of(shape, "Tensor::uninit")?;
        gpu.check_limit(
            "tensor elements (u32 indexing)",
            numel as u64,
            u64::from(u32::MAX),
        )?;
        let bytes = (numel * dtype.size()) as u64;
        // Kernels bind tensors as arrays of 4-element vectors: round the binding up to 16 bytes.
        let binding = bytes.next_multiple_of(16);
        let limits = gpu.limits();
        gpu.check_limit(
            "tensor bytes (max_storage_buffer_binding_size)",
            binding,
            limits.max_storage_buffer_binding_size,
        )?;
        gpu.check_limit(
            "tensor bytes (max_buffer_size)",
            binding,
            limits.max_buffer_size,
        )?;
        let buffer = gpu.scoped(|| {
            gpu.0.pool.acquire(
                &gpu.0.device,
                binding,
                STORAGE_USAGE,
                limits.max_buffer_size,
            )
        })?;
        if gpu.0.poison_new_tensors {
            let poison = vec![0xffu8; buffer.capacity() as usize];
            gpu.queue().write_buffer(buffer.buffer(), 0, &poison);
        }
        Ok(Tensor {
            gpu: gpu.clone(),
            buffer: Arc::new(buffer),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A tensor whose every element, and the spare capacity past the last one, is `value`. Tests
    /// use a NaN here to poison outputs, so an element a kernel forgot to write is seen.
    pub fn full(gpu: &Gpu, shape: &[usize], dtype: DType, value: f32) -> Result<Self> {
        let t = Self::uninit(gpu, shape, dtype)?;
        let bytes = t.capacity_bytes() as usize;
        let data: Vec<u8> = match dtype {
            DType::F32 => bytemuck::cast_slice(&vec![value; bytes / 4]).to_vec(),
            DType::U32 => bytemuck::cast_slice(&vec![value as u32; bytes / 4]).to_vec(),
            DType::F16 => bytemuck::cast_slice(&vec![f16::from_f32(value); bytes / 2]).to_vec(),
        };
        gpu.queue().write_buffer(t.buffer.buffer(), t.offset, &data);
        Ok(t)
    }

    /// A tensor of zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Self> {
        Self::full(gpu, shape, dtype, 0.0)
    }

    /// Uploads `data` (row-major) as a tensor of `shape`.
    pub fn from_slice<T: Element>(gpu: &Gpu, data: &[T], shape: &[usize]) -> Result<Self> {
        let t = Self::uninit(gpu, shape, T::DTYPE)?;
        t.write(data)?;
        Ok(t)
    }

    /// Uploads f32 data into a tensor of `dtype`, converting on the host.
    pub fn from_f32(gpu: &Gpu, data: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Self::from_slice(gpu, data, shape),
            DType::U32 => {
                let u: Vec<u32> = data.iter().map(|&x| u32::from_f32(x)).collect();
                Self::from_slice(gpu, &u, shape)
            }
            DType::F16 => {
                let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                Self::from_slice(gpu, &h, shape)
            }
        }
    }

    /// Overwrites the tensor's contents, reusing its buffer. The write lands before the next
    /// submission's work, so a tensor that recorded, unsubmitted work uses is refused with
    /// [`Error::PendingWork`] (the write would overtake that work).
    pub fn write<T: Element>(&self, data: &[T]) -> Result<()> {
        self.expect_dtype(T::DTYPE, "Tensor::write")?;
        self.gpu.check_alive()?;
        if self.buffer.has_pending_uses() {
            return Err(Error::PendingWork {
                op: "Tensor::write",
            });
        }
        if data.len() != self.numel() {
            return Err(Error::DataLength {
                expected: self.numel(),
                found: data.len(),
            });
        }
        let mut bytes: &[u8] = bytemuck::cast_slice(data);
        // write_buffer needs a multiple of 4 bytes: pad an odd f16 count.
        let padded;
        if !bytes.len().is_multiple_of(4) {
            padded = [bytes, &[0u8; 2]].concat();
            bytes = &padded;
        }
        self.gpu
            .queue()
            .write_buffer(self.buffer.buffer(), self.offset, bytes);
        Ok(())
    }

    /// Copies the tensor back to the host. Submits and waits: call it once results are needed, not
    /// inside a hot loop. A tensor that recorded, unsubmitted work writes is refused with
    /// [`Error::PendingWork`]: its contents would be stale.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.expect_dtype(T::DTYPE, "Tensor::to_vec")?;
        let bytes = self.read_bytes(self.size_bytes().next_multiple_of(4))?;
        let mut out: Vec<T> = bytemuck::pod_collect_to_vec(&bytes);
        out.truncate(self.numel());
        Ok(out)
    }

    /// Copies the tensor back to the host as f32, whatever its dtype.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match self.dtype {
            DType::F32 => self.to_vec::<f32>(),
            DType::U32 => Ok(self
                .to_vec::<u32>()?
                .into_iter()
                .map(|x| x as f32)
                .collect()),
            DType::F16 => Ok(self.to_vec::<f16>()?.into_iter().map(f16::to_f32).collect()),
        }
    }

    /// The whole buffer behind the tensor, including spare capacity past its last element. Tests use
    /// it to check that kernels write nothing past a tensor's end.
    pub fn read_capacity_bytes(&self) -> Result<Vec<u8>> {
        self.read_bytes(self.capacity_bytes())
    }

    fn read_bytes(&self, len: u64) -> Result<Vec<u8>> {
        let (bytes, _) = read_parts(&self.gpu, &[(self, len)], "Tensor::to_vec")?;
        Ok(bytes)
    }

    /// The values of several tensors of `T`, one after another, in one copy and one wait.
    pub(crate) fn read_all<T: Element>(gpu: &Gpu, tensors: &[Tensor]) -> Result<Vec<T>> {
        const OP: &str = "Tensor::read_all";
        let mut parts = Vec::with_capacity(tensors.len());
        for t in tensors {
            t.expect_dtype(T::DTYPE, OP)?;
            parts.push((t, t.size_bytes().next_multiple_of(4)));
        }
        let (bytes, offsets) = read_parts(gpu, &parts, OP)?;
        let mut out = Vec::new();
        for (t, &at) in tensors.iter().zip(&offsets) {
            let at = at as usize;
            out.extend(bytemuck::pod_collect_to_vec::<u8, T>(
                &bytes[at..at + t.size_bytes() as usize],
            ));
        }
        Ok(out)
    }

    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let numel = numel_of(shape, "Tensor::reshape")?;
        if numel != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "Tensor::reshape",
                details: format!(
                    "{:?} has {} elements, {shape:?} has {numel}",
                    self.shape,
                    self.numel()
                ),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes the elements occupy.
    pub fn size_bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    /// Bytes of the buffer behind the tensor from its first element on (at least
    /// [`Self::size_bytes`]).
    pub fn capacity_bytes(&self) -> u64 {
        self.buffer.capacity() - self.offset
    }

    /// Byte offset of the tensor's first element in its buffer (non-zero for views).
    pub fn offset_bytes(&self) -> u64 {
        self.offset
    }

    /// A tensor of `shape` over the same buffer, starting `element_offset` elements past this
    /// tensor's first element: a parameter in a flat arena, say. The start must be aligned to the
    /// adapter's `min_storage_buffer_offset_alignment`, and the view must lie within this tensor.
    pub fn view(&self, element_offset: usize, shape: &[usize]) -> Result<Self> {
        let numel = numel_of(shape, "Tensor::view")?;
        let size = self.dtype.size() as u64;
        let end = (element_offset as u64)
            .checked_add(numel as u64)
            .filter(|&end| end <= self.numel() as u64);
        if end.is_none() {
            return Err(Error::ShapeMismatch {
                op: "Tensor::view",
                details: format!(
                    "{numel} elements from element {element_offset} do not fit in {:?}",
                    self.shape
                ),
            });
        }
        let offset = self.offset + element_offset as u64 * size;
        let align = u64::from(self.gpu.limits().min_storage_buffer_offset_alignment);
        if !offset.is_multiple_of(align) {
            return Err(Error::InvalidArgument {
                op: "Tensor::view",
                details: format!("byte offset {offset} is not a multiple of {align}"),
            });
        }
        Ok(Tensor {
            gpu: self.gpu.clone(),
            buffer: self.buffer.clone(),
            offset,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }
    /// The context the tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// The wgpu buffer behind the tensor, for interop (its size may exceed [`Self::size_bytes`]).
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }
    /// Whether two tensors share a buffer.
    pub fn shares_buffer_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }

    pub(crate) fn expect_dtype(&self, dtype: DType, op: &'static str) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DtypeMismatch {
                op,
                details: format!("expected {dtype:?}, found {:?}", self.dtype),
            });
        }
        Ok(())
    }

    /// The binding covering the elements, rounded up to whole 16-byte vectors.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer.buffer(),
            offset: self.offset,
            size: std::num::NonZeroU64::new(
                self.size_bytes()
                    .next_multiple_of(16)
                    .min(self.capacity_bytes()),
            ),
        })
    }
}

/// Copies the first `len` bytes (a multiple of 4) of each tensor, one after another, into one
/// pooled staging buffer in one submission, and reads them back in one wait: the bytes, and
/// where each part starts in them.
fn read_parts(
    gpu: &Gpu,
    parts: &[(&Tensor, u64)],
    op: &'static str,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut offsets = Vec::with_capacity(parts.len());
    let mut len = 0u64;
    for &(t, n) in parts {
        if t.buffer.has_pending_writes() {
            return Err(Error::PendingWork { op });
        }
        offsets.push(len);
        len += n;
    }
    if len == 0 {
        return Ok((Vec::new(), offsets));
    }
    let staging = gpu.0.pool.acquire(
        &gpu.0.device,
        len,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        gpu.limits().max_buffer_size,
    );
    let mut encoder = gpu
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgnn readback"),
        });
    for (&(t, n), &at) in parts.iter().zip(&offsets) {
        encoder.copy_buffer_to_buffer(t.buffer.buffer(), t.offset, staging.buffer(), at, n);
    }
    gpu.scoped(|| gpu.queue().submit([encoder.finish()]))?;
    let slice = staging.buffer().slice(0..len);
    gpu.map_for_reading(&slice)?;
    let bytes = slice
        .get_mapped_range()
        .map_err(|e| Error::gpu_caused("readback failed", e))?
        .to_vec();
    staging.buffer().unmap();
    Ok((bytes, offsets))
}
