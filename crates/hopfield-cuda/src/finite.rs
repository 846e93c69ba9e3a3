//! The finiteness check every public entry point runs on its inputs.

use candle_core::{DType, Result, Tensor};

/// Whether every entry of `x` is finite (no NaN, no infinity), with one reduction on the tensor's
/// own device and no host copy of the data: `0 * x` is 0 for finite entries and NaN otherwise,
/// so its sum is finite exactly when `x` is. Carries no gradient.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
/// assert!(hopfield_cuda::all_finite(&x)?);
/// assert!(!hopfield_cuda::all_finite(&(x / 0.0)?)?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn all_finite(x: &Tensor) -> Result<bool> {
    if x.elem_count() == 0 {
        return Ok(true);
    }
    // On the CPU, one read of the data in place (no temporary tensor, no second pass).
    if let Some(found) = cpu_all_finite(x) {
        return Ok(found);
    }
    let s = x
        .detach()
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(s.is_finite())
}

/// The storage range `[start, start + n)` holding exactly the `n` elements of `layout`, when its
/// strides are a permutation of contiguous ones (a transposed or permuted contiguous tensor, as
/// the sequence-first layouts are): a scan of that range sees every element once, in some order.
fn dense_span(layout: &candle_core::Layout) -> Option<(usize, usize)> {
    let mut dims: Vec<(usize, usize)> = layout
        .stride()
        .iter()
        .copied()
        .zip(layout.dims().iter().copied())
        .filter(|&(_, d)| d != 1)
        .collect();
    dims.sort_unstable();
    let mut expect = 1;
    for (stride, d) in dims {
        if stride != expect {
            return None;
        }
        expect *= d;
    }
    let start = layout.start_offset();
    Some((start, start + layout.shape().elem_count()))
}

/// The CPU scan for f32/f64 tensors whose elements fill one storage range; `None` where it does
/// not apply.
fn cpu_all_finite(x: &Tensor) -> Option<bool> {
    use candle_core::{CpuStorage, Storage};
    let (storage, layout) = x.storage_and_layout();
    // A permuted layout too: the fallback below allocated `0 * x` and reduced it (4% of a cached
    // batch-mean DiffusedHopfield forward, whose inputs are sequence-first views).
    let (a, b) = dense_span(layout)?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(scan(&v[a..b])),
        Storage::Cpu(CpuStorage::F64(v)) => Some(scan(&v[a..b])),
        _ => None,
    }
}

/// [`all_finite_slice`] over chunks in parallel, each in the AVX2 build where the CPU has it.
fn scan<T>(v: &[T]) -> bool
where
    T: Copy
        + Default
        + PartialEq
        + Send
        + Sync
        + std::ops::Add<Output = T>
        + std::ops::Sub<Output = T>,
{
    use crate::simd::wide;
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    v.par_chunks(CHUNK).all(|c| {
        wide(
            #[inline(always)]
            || all_finite_slice(c),
        )
    })
}

/// Whether every element of `c` is finite: sum of `e - e` over independent lanes (a single
/// running sum would not vectorise). The one finiteness test of the crate's CPU code (inline,
/// so that it is compiled into the caller's SIMD build).
#[allow(clippy::eq_op)] // `e - e` is the test: 0 for finite e, NaN otherwise
#[inline(always)]
pub(crate) fn all_finite_slice<T>(c: &[T]) -> bool
where
    T: Copy + Default + PartialEq + std::ops::Add<Output = T> + std::ops::Sub<Output = T>,
{
    let zero = T::default();
    let mut acc = [zero; 16];
    let chunks = c.chunks_exact(16);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &e) in acc.iter_mut().zip(ch) {
            *a = *a + (e - e);
        }
    }
    let mut total = zero;
    for &a in &acc {
        total = total + a;
    }
    for &e in rest {
        total = total + (e - e);
    }
    total == zero
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cpu_scan_finds_nan_and_inf_anywhere() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let x = Tensor::ones(200_003, dtype, &Device::Cpu)?;
            assert!(all_finite(&x)?);
            for (at, bad) in [
                (0, f64::NAN),
                (100_000, f64::INFINITY),
                (200_002, f64::NEG_INFINITY),
            ] {
                let mut v = vec![1f64; 200_003];
                v[at] = bad;
                let y = Tensor::from_vec(v, 200_003, &Device::Cpu)?.to_dtype(dtype)?;
                assert!(!all_finite(&y)?, "{dtype:?} {bad} at {at}");
                // A transposed view (not contiguous) is scanned in place too.
                assert!(!all_finite(&y.reshape((1, 200_003))?.t()?)?);
            }
        }
        Ok(())
    }

    /// Permuted views scan their storage range in place; views with gaps (a narrowed inner
    /// dimension) take the reduction and never see the elements outside them.
    #[test]
    fn permuted_and_gapped_views() -> Result<()> {
        let mut v: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32).collect();
        v[7] = f32::NAN; // (0, 1, 3)
        let x = Tensor::from_vec(v, (2, 3, 4), &Device::Cpu)?;
        let t = x.transpose(0, 1)?;
        assert_eq!(dense_span(t.layout()), Some((0, 24)));
        assert!(!all_finite(&t)?);
        assert!(!all_finite(&x.permute((2, 0, 1))?)?);
        // Columns 0..3: the NaN at column 3 is outside the view.
        let narrow = x.narrow(2, 0, 3)?;
        assert_eq!(dense_span(narrow.layout()), None);
        assert!(all_finite(&narrow)?);
        assert!(!all_finite(&x.narrow(2, 1, 3)?)?);
        // A later sample alone: its own range only.
        let second = x.narrow(0, 1, 1)?.transpose(1, 2)?;
        assert_eq!(dense_span(second.layout()), Some((12, 24)));
        assert!(all_finite(&second)?);
        Ok(())
    }
}
