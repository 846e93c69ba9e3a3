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

/// `out[row] = f(src[row])` for every row of length `dim`, rows in parallel.
pub(crate) fn par_rows<T: Copy + Default + Send + Sync>(
    src: &[T],
    dim: usize,
    f: impl Fn(&[T], &mut [T]) + Sync,
) -> Vec<T> {
    let mut dst = vec![T::default(); src.len()];
    if dim == 0 || src.is_empty() {
        // Rows of no elements: nothing to compute, and no zero-size chunks.
        return dst;
    }
    let chunk = rows_per_task(dim) * dim;
    dst.par_chunks_mut(chunk)
        .zip(src.par_chunks(chunk))
        .for_each(|(d, s)| {
            for (dr, sr) in d.chunks_mut(dim).zip(s.chunks(dim)) {
                f(sr, dr);
            }
        });
    dst
}

/// `out[row] = f(a[row], b[row])` for every row of length `dim`, rows in parallel.
pub(crate) fn par_rows2<T: Copy + Default + Send + Sync>(
    a: &[T],
    b: &[T],
    dim: usize,
    f: impl Fn(&[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    let mut dst = vec![T::default(); a.len()];
    if dim == 0 || a.is_empty() {
        return dst;
    }
    let chunk = rows_per_task(dim) * dim;
    dst.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk).zip(b.par_chunks(chunk)))
        .for_each(|(d, (ac, bc))| {
            for ((dr, ar), br) in d.chunks_mut(dim).zip(ac.chunks(dim)).zip(bc.chunks(dim)) {
                f(ar, br, dr);
            }
        });
    dst
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
}
