//! Reuse of GPU buffers, so that a loop which creates the same tensors every iteration allocates
//! nothing after its first iteration.
//!
//! Buffers are grouped by usage and by size class (four classes per power of two, so at most 25%
//! slack). A buffer returns to the pool when the last handle to it drops; work recorded in a
//! [`crate::Batch`] holds handles until the batch is submitted, and all later GPU use is ordered after
//! that submission on the queue, so reuse never races the GPU.
//!
//! Idle memory is bounded: past [`crate::GpuOptions::pool_idle_limit_bytes`] of idle buffers, the
//! least recently returned ones are freed. A reused buffer is the most recently returned of its
//! class, so a loop's working set stays warm while shapes it no longer uses age out.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What the pool has done so far; see [`crate::Gpu::pool_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// GPU buffers created since the context was made.
    pub buffers_created: u64,
    /// Bytes in those buffers.
    pub bytes_created: u64,
    /// Requests served by a buffer that was already there.
    pub reuses: u64,
    /// Buffers waiting in the pool now.
    pub idle_buffers: u64,
    /// Bytes in those buffers.
    pub idle_bytes: u64,
    /// Idle buffers freed to keep idle memory under the limit (or by a trim).
    pub buffers_freed: u64,
}

/// Idle memory kept by default (see [`crate::GpuOptions::pool_idle_limit_bytes`]).
pub const DEFAULT_POOL_IDLE_LIMIT: u64 = 512 << 20;

type Key = (u64, u32);

#[derive(Default)]
struct Idle {
    /// Idle buffers of each (size class, usage), oldest first, with their return stamps.
    by_key: HashMap<Key, Vec<(u64, wgpu::Buffer)>>,
    /// Return stamp -> key, oldest first: the eviction order.
    lru: BTreeMap<u64, Key>,
    bytes: u64,
    next_stamp: u64,
}

pub(crate) struct BufferPool {
    idle: Mutex<Idle>,
    idle_limit: AtomicU64,
    buffers_created: AtomicU64,
    bytes_created: AtomicU64,
    reuses: AtomicU64,
    freed: AtomicU64,
}

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool::with_idle_limit(DEFAULT_POOL_IDLE_LIMIT)
    }
}

/// The smallest size class that holds `bytes`: 256-byte minimum, then four steps per power of two.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let pow = 63 - (bytes - 1).leading_zeros() as u64; // floor(log2(bytes - 1))
    let step = (1u64 << pow) / 4;
    bytes.div_ceil(step.max(1)) * step.max(1)
}

impl BufferPool {
    pub(crate) fn with_idle_limit(idle_limit: u64) -> Self {
        BufferPool {
            idle: Mutex::default(),
            idle_limit: AtomicU64::new(idle_limit),
            buffers_created: AtomicU64::new(0),
            bytes_created: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
            freed: AtomicU64::new(0),
        }
    }

    /// Sets the idle limit and frees what is past it now.
    pub(crate) fn set_idle_limit(&self, bytes: u64) {
        self.idle_limit.store(bytes, Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            self.evict(&mut idle);
        }
    }

    pub(crate) fn idle_limit(&self) -> u64 {
        self.idle_limit.load(Ordering::Relaxed)
    }

    /// Frees the least recently returned buffers until idle bytes are within the limit.
    fn evict(&self, idle: &mut Idle) {
        let limit = self.idle_limit();
        while idle.bytes > limit {
            let Some((stamp, key)) = idle.lru.pop_first() else {
                break;
            };
            if let Some(list) = idle.by_key.get_mut(&key) {
                if let Some(pos) = list.iter().position(|(s, _)| *s == stamp) {
                    let (_, buffer) = list.remove(pos);
                    idle.bytes -= key.0;
                    self.freed.fetch_add(1, Ordering::Relaxed);
                    drop(buffer);
                }
            }
        }
    }

    fn release(&self, key: Key, buffer: wgpu::Buffer) {
        if let Ok(mut idle) = self.idle.lock() {
            let stamp = idle.next_stamp;
            idle.next_stamp += 1;
            idle.by_key.entry(key).or_default().push((stamp, buffer));
            idle.lru.insert(stamp, key);
            idle.bytes += key.0;
            self.evict(&mut idle);
        }
    }

    pub(crate) fn acquire(
        self: &Arc<Self>,
        device: &wgpu::Device,
        bytes: u64,
        usage: wgpu::BufferUsages,
        max_buffer_size: u64,
    ) -> PooledBuffer {
        let class = size_class(bytes).min(max_buffer_size.max(bytes.next_multiple_of(16)));
        let key = (class, usage.bits());
        let reused = self.idle.lock().ok().and_then(|mut idle| {
            let (stamp, buffer) = idle.by_key.get_mut(&key)?.pop()?;
            idle.lru.remove(&stamp);
            idle.bytes -= key.0;
            Some(buffer)
        });
        let buffer = match reused {
            Some(buffer) => {
                self.reuses.fetch_add(1, Ordering::Relaxed);
                buffer
            }
            None => {
                self.buffers_created.fetch_add(1, Ordering::Relaxed);
                self.bytes_created.fetch_add(class, Ordering::Relaxed);
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgnn pooled buffer"),
                    size: class,
                    usage,
                    mapped_at_creation: false,
                })
            }
        };
        PooledBuffer {
            buffer: Some(buffer),
            key,
            pool: Arc::downgrade(self),
            pending_writes: AtomicU64::new(0),
            pending_uses: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let (idle_buffers, idle_bytes) = self
            .idle
            .lock()
            .map(|idle| (idle.lru.len() as u64, idle.bytes))
            .unwrap_or((0, 0));
        PoolStats {
            buffers_created: self.buffers_created.load(Ordering::Relaxed),
            bytes_created: self.bytes_created.load(Ordering::Relaxed),
            reuses: self.reuses.load(Ordering::Relaxed),
            idle_buffers,
            idle_bytes,
            buffers_freed: self.freed.load(Ordering::Relaxed),
        }
    }

    /// Frees every idle buffer.
    pub(crate) fn trim(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            self.freed
                .fetch_add(idle.lru.len() as u64, Ordering::Relaxed);
            *idle = Idle::default();
        }
    }
}

/// A buffer on loan from the pool; goes back when dropped.
pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    key: Key,
    pool: Weak<BufferPool>,
    /// Recorded, unsubmitted work that writes this buffer / that uses it at all.
    pending_writes: AtomicU64,
    pending_uses: AtomicU64,
}

/// A buffer held by recorded work until its batch is submitted or dropped; while held, it counts
/// as pending (see [`PooledBuffer::has_pending_writes`]).
pub(crate) struct Held {
    buffer: Arc<PooledBuffer>,
    writes: bool,
}

impl Held {
    pub(crate) fn new(buffer: Arc<PooledBuffer>, writes: bool) -> Self {
        buffer.pending_uses.fetch_add(1, Ordering::AcqRel);
        if writes {
            buffer.pending_writes.fetch_add(1, Ordering::AcqRel);
        }
        Held { buffer, writes }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.buffer.pending_uses.fetch_sub(1, Ordering::AcqRel);
        if self.writes {
            self.buffer.pending_writes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl PooledBuffer {
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a pooled buffer is present until drop")
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.key.0
    }

    /// Whether recorded, unsubmitted work writes the buffer.
    pub(crate) fn has_pending_writes(&self) -> bool {
        self.pending_writes.load(Ordering::Acquire) > 0
    }

    /// Whether recorded, unsubmitted work reads or writes the buffer.
    pub(crate) fn has_pending_uses(&self) -> bool {
        self.pending_uses.load(Ordering::Acquire) > 0
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            pool.release(self.key, buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_hold_the_request_with_little_slack() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            4097,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
        ] {
            let class = size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert!(
                class <= (bytes.max(256) * 5).div_ceil(4) + 1,
                "{bytes} -> {class}"
            );
            assert_eq!(class % 4, 0);
        }
        assert_eq!(size_class(4096), 4096);
    }
}
