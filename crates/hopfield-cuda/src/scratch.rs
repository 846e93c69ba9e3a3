//! Reusable host buffers for the intermediates of fused ops.
//!
//! A fused op's intermediates (the packed q/k/v projection, the retrieval output, their
//! gradients) are megabytes each and live for one call. Allocated fresh every call, each one is
//! fresh pages from the kernel: glibc serves blocks this large with `mmap` (or trims them off the
//! heap top when freed), so every call page-faults its whole working set back in, which cost a
//! third of a layer's forward time in `perf` (docs/performance.md). Buffers taken from here go
//! back here instead of to the allocator, so a steady loop of calls touches memory that is
//! already mapped. The pool is bounded ([`MAX_BUFFERS`], [`MAX_BYTES`]) and
//! [`release_scratch`] empties it.

use std::sync::Mutex;

/// Buffers kept per element type; further returns are freed.
pub(crate) const MAX_BUFFERS: usize = 8;

/// Bytes kept per element type; a return that would exceed it is freed.
pub(crate) const MAX_BYTES: usize = 1 << 30;

/// Element types with a pool.
pub(crate) trait Pooled: Copy + Default + Send + 'static {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

static POOL_F32: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static POOL_F64: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());

impl Pooled for f32 {
    fn pool() -> &'static Mutex<Vec<Vec<f32>>> {
        &POOL_F32
    }
}

impl Pooled for f64 {
    fn pool() -> &'static Mutex<Vec<Vec<f64>>> {
        &POOL_F64
    }
}

/// A buffer of `len` elements whose contents are unspecified (whatever its last user left):
/// callers write every element they read. The smallest pooled buffer that fits, else a new one.
pub(crate) fn take<T: Pooled>(len: usize) -> Vec<T> {
    let reused = T::pool().lock().ok().and_then(|mut pool| {
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        Some(pool.swap_remove(best))
    });
    match reused {
        Some(mut b) => {
            // Only elements beyond the old length are written here.
            b.resize(len, T::default());
            b
        }
        None => vec![T::default(); len],
    }
}

/// Hands a buffer back for reuse (or frees it when the pool is full).
pub(crate) fn give<T: Pooled>(buf: Vec<T>) {
    if buf.capacity() == 0 {
        return;
    }
    if let Ok(mut pool) = T::pool().lock() {
        let bytes: usize = pool.iter().map(|b| b.capacity()).sum::<usize>() * size_of::<T>();
        if pool.len() < MAX_BUFFERS && bytes + buf.capacity() * size_of::<T>() <= MAX_BYTES {
            pool.push(buf);
        }
    }
}

/// Frees every pooled scratch buffer (they are otherwise kept for the next call of a fused op,
/// up to 8 buffers and 1 GiB per element type). Returns the bytes freed.
///
/// ```
/// let freed = hopfield_cuda::release_scratch();
/// assert_eq!(hopfield_cuda::release_scratch(), 0);
/// # let _ = freed;
/// ```
pub fn release_scratch() -> usize {
    fn drain<T: Pooled>() -> usize {
        T::pool().lock().map_or(0, |mut pool| {
            let bytes = pool.iter().map(|b| b.capacity()).sum::<usize>() * size_of::<T>();
            pool.clear();
            bytes
        })
    }
    drain::<f32>() + drain::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_resized_and_the_pool_is_bounded() {
        // A type of its own would need its own pool; f64 is shared with the other tests, so
        // only properties that hold whatever else is pooled are asserted.
        let mut a = take::<f64>(1000);
        assert_eq!(a.len(), 1000);
        a.iter_mut().for_each(|x| *x = 7.);
        let cap = a.capacity();
        give(a);
        let b = take::<f64>(10);
        assert_eq!(b.len(), 10);
        assert!(b.capacity() >= 10);
        give(b);
        let c = take::<f64>(cap + 1);
        assert_eq!(c.len(), cap + 1);
        for _ in 0..3 * MAX_BUFFERS {
            give(vec![0f64; 4]);
        }
        assert!(f64::pool().lock().unwrap().len() <= MAX_BUFFERS);
        give(c);
    }
}
