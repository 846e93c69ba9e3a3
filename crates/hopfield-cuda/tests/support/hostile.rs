//! Helpers shared by the hostile-input property tests of hopfield-cuda, hopfield-core and
//! hopfield-nn (each includes this file with `#[path]`).

use candle_core::{DType, Device, Result, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The property of every hostile call: `Ok` results are finite and errors are typed (`typed`
/// finds one of the workspace's error enums in them); a panic, a NaN/inf result or an untyped
/// error (candle's own, from deep inside) fails with a description.
pub fn outcome(
    typed: impl Fn(&candle_core::Error) -> bool,
    f: impl FnOnce() -> Result<Tensor>,
) -> std::result::Result<(), String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(p) => Err(format!(
            "panic: {:?}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        )),
        Ok(Err(e)) if typed(&e) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "untyped error: {}",
            e.to_string().lines().next().unwrap_or_default()
        )),
        Ok(Ok(t)) if !t.dtype().is_float() || hopfield_cuda::all_finite(&t).unwrap_or(false) => {
            Ok(())
        }
        Ok(Ok(t)) => Err(format!("non-finite result of shape {:?}", t.dims())),
    }
}

/// A seeded tensor of `dims` in `dtype` with values in `(-scale, scale)` (a NaN or infinite
/// scale gives NaN or infinite entries).
pub fn tensor(dims: &[usize], dtype: DType, scale: f64, seed: u64) -> Result<Tensor> {
    let len: usize = dims.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f64> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}
