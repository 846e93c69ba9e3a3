//! Row-parallel helpers shared by the CPU kernels.

use candle_core::{Layout, Result};
use rayon::prelude::*;

/// Rows handed to one rayon task: enough work to amortise scheduling.
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;

pub(crate) fn rows_per_task(dim: usize) -> usize {
    (MIN_ELEMS_PER_TASK / dim.max(1)).max(1)
}

/// The contiguous slice of a storage described by `l`.
pub(crate) fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("hopfield-cuda kernels need contiguous inputs"),
    }
}

/// [`contiguous`] of a CPU storage as `T` (an error names a dtype that differs).
pub(crate) fn cpu_contiguous<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    contiguous(s.as_slice::<T>()?, l)
}

/// [`cpu_contiguous`] of a tensor's storage (a backward pass reads its tensors this way); a
/// storage on another device is an error naming `op`.
pub(crate) fn storage_slice<'a, T: candle_core::WithDType>(
    s: &'a candle_core::Storage,
    l: &Layout,
    op: &'static str,
) -> Result<&'a [T]> {
    match s {
        candle_core::Storage::Cpu(c) => cpu_contiguous(c, l),
        _ => candle_core::bail!("{op}: the CPU kernel's tensors must be on the CPU"),
    }
}

/// A custom op's gradients computed on the host, as tensors shaped like the op's inputs; `None`
/// for the inputs that are not tracked (candle drops those anyway).
pub(crate) fn tracked_grads<T: candle_core::WithDType, const K: usize>(
    args: [&candle_core::Tensor; K],
    grads: [Vec<T>; K],
) -> Result<[Option<candle_core::Tensor>; K]> {
    let mut out = [(); K].map(|_| None);
    for ((slot, d), arg) in out.iter_mut().zip(grads).zip(args) {
        if arg.track_op() {
            *slot = Some(candle_core::Tensor::from_vec(
                d,
                arg.shape(),
                &candle_core::Device::Cpu,
            )?);
        }
    }
    Ok(out)
}

/// A vector of `len` elements built in parallel chunks of `chunk` (> 0): each chunk is set to
/// `T::default()` by its own task, right before `f(chunk index, chunk)` writes it. A large output
/// made with `vec![T::default(); len]` is zeroed on the calling thread first (glibc's `calloc`
/// clears reused heap memory with `memset`) while the pool waits: the normalised input and the
/// projected output of a (16, 512, 256, 8) forward, 8 MB each, spent 1.5% of its samples there,
/// serially, and the tasks then wrote those lines again from memory.
pub(crate) fn par_vec<T: Copy + Default + Send + Sync>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    // SAFETY: every element of each chunk is initialised before `f` sees it.
    unsafe {
        par_vec_uninit(len, chunk, |i, c| {
            for e in c.iter_mut() {
                e.write(T::default());
            }
            // SAFETY: every element of `c` was initialised just above, and `MaybeUninit<T>`
            // has `T`'s layout.
            f(i, &mut *(c as *mut [std::mem::MaybeUninit<T>] as *mut [T]));
        })
    }
}

/// [`par_vec`] without setting the chunks first, for kernels that write every output element
/// once: on a 100 MB sparse product that first pass took a fifth of the samples (each line
/// written twice, and read in between).
///
/// # Safety
/// `f(i, chunk)` initialises every element of `chunk`.
pub(crate) unsafe fn par_vec_uninit<T: Send + Sync>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    huge_pages(v.spare_capacity_mut());
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
    // SAFETY: the chunks cover `0..len`, and `f` initialised each of their elements (the
    // caller's contract).
    unsafe { v.set_len(len) };
    v
}

/// `dst = src` into memory not yet initialised (a [`par_vec_uninit`] chunk).
#[inline(always)]
pub(crate) fn write_uninit<T: Copy>(dst: &mut [std::mem::MaybeUninit<T>], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: the lengths match; MaybeUninit<T> has T's layout.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut T, src.len()) };
}

/// Outputs at least this large ask for transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 32 << 20;

/// Asks the kernel to back a large, not yet touched buffer with 2 MiB pages (`MADV_HUGEPAGE`;
/// a no-op below [`HUGE_PAGE_MIN_BYTES`], off Linux, or where transparent huge pages are off).
/// A gather over a 100 MB operand in 4 KiB pages misses the TLB on nearly every row; the next
/// kernel reading this output (the next diffusion step) then walks 512x fewer pages.
fn huge_pages<T>(buf: &mut [std::mem::MaybeUninit<T>]) {
    #[cfg(target_os = "linux")]
    {
        let bytes = std::mem::size_of_val(buf);
        if bytes < HUGE_PAGE_MIN_BYTES {
            return;
        }
        const HUGE: usize = 2 << 20;
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside `buf`'s allocation; MADV_HUGEPAGE only changes how
            // the kernel backs those pages, never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// `out[row] = f(src[row])` for every row of length `dim`, rows in parallel.
pub(crate) fn par_rows<T: Copy + Default + Send + Sync>(
    src: &[T],
    dim: usize,
    f: impl Fn(&[T], &mut [T]) + Sync,
) -> Vec<T> {
    if dim == 0 || src.is_empty() {
        // Rows of no elements: nothing to compute, and no zero-size chunks.
        return vec![T::default(); src.len()];
    }
    let chunk = rows_per_task(dim) * dim;
    par_vec(src.len(), chunk, |i, d| {
        let s = &src[i * chunk..i * chunk + d.len()];
        for (dr, sr) in d.chunks_mut(dim).zip(s.chunks(dim)) {
            f(sr, dr);
        }
    })
}

/// `out[row] = f(a[row], b[row])` for every row of length `dim`, rows in parallel.
pub(crate) fn par_rows2<T: Copy + Default + Send + Sync>(
    a: &[T],
    b: &[T],
    dim: usize,
    f: impl Fn(&[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    if dim == 0 || a.is_empty() {
        return vec![T::default(); a.len()];
    }
    let chunk = rows_per_task(dim) * dim;
    par_vec(a.len(), chunk, |i, d| {
        let span = i * chunk..i * chunk + d.len();
        let (ac, bc) = (&a[span.clone()], &b[span]);
        for ((dr, ar), br) in d.chunks_mut(dim).zip(ac.chunks(dim)).zip(bc.chunks(dim)) {
            f(ar, br, dr);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of zero elements (an empty memory, a zero-width feature) give an empty result
    /// instead of a zero-size-chunk panic.
    #[test]
    fn empty_rows_do_not_panic() {
        assert!(par_rows::<f32>(&[], 0, |_, _| {}).is_empty());
        assert!(par_rows::<f32>(&[], 4, |_, _| {}).is_empty());
        assert!(par_rows2::<f64>(&[], &[], 0, |_, _, _| {}).is_empty());
    }

    /// Every element is the default before `f` sees it and what `f` wrote after, for lengths that
    /// are and are not multiples of the chunk, and for no elements at all.
    #[test]
    fn par_vec_hands_out_every_chunk_once_in_order() {
        // The last size is over HUGE_PAGE_MIN_BYTES: the huge-page hint must leave it intact.
        let big = HUGE_PAGE_MIN_BYTES / 8 + 12_345;
        for (len, chunk) in [
            (0, 4),
            (1, 4),
            (7, 3),
            (12, 4),
            (100_003, 1 << 14),
            (big, 1 << 16),
        ] {
            let v = par_vec::<u64>(len, chunk, |i, c| {
                assert!(c.iter().all(|&e| e == 0));
                for (j, e) in c.iter_mut().enumerate() {
                    *e = (i * chunk + j) as u64 + 1;
                }
            });
            assert_eq!(v.len(), len);
            assert!(v.iter().enumerate().all(|(i, &e)| e == i as u64 + 1));
        }
        let src: Vec<f64> = (0..12).map(f64::from).collect();
        let doubled = par_rows(&src, 3, |s, d| {
            d.iter_mut().zip(s).for_each(|(d, &x)| *d = 2.0 * x)
        });
        assert_eq!(doubled, src.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
    }
}
