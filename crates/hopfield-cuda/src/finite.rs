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

/// The CPU scan for contiguous f32/f64 tensors; `None` where it does not apply.
fn cpu_all_finite(x: &Tensor) -> Option<bool> {
    use candle_core::{CpuStorage, Storage};
    use crate::simd::wide;
    use rayon::prelude::*;
    let (storage, layout) = x.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    const CHUNK: usize = 1 << 16;
    // `x - x` is 0 exactly for finite x, NaN otherwise: a branch-free test that vectorises.
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v[a..b].par_chunks(CHUNK).all(|c| wide(#[inline(always)] || all_finite_slice(c)))),
        Storage::Cpu(CpuStorage::F64(v)) => Some(v[a..b].par_chunks(CHUNK).all(|c| wide(#[inline(always)] || all_finite_slice(c)))),
        _ => None,
    }
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
                // Strided (non-contiguous) views take the reduction path.
                assert!(!all_finite(&y.reshape((1, 200_003))?.t()?)?);
            }
        }
        Ok(())
    }
}
