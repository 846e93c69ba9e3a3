//! The contiguous device data of a CUDA input, as the hand-written kernels read it (feature
//! `cuda`).

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, Layout, Result};

/// The elements of a contiguous CUDA tensor (from its start offset); an error naming `op` for a
/// strided one (callers make their inputs contiguous first).
pub(crate) fn contiguous_view<'a, T: CudaDType>(
    op: &str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("{op}: CUDA input not contiguous"),
    }
}
