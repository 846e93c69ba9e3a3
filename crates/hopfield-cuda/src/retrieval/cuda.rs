//! CUDA kernels of the fused retrieval (feature `cuda`).

use super::op::{RetrievalBwd, RetrievalFwd};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

pub(crate) fn supported(_dtype: DType) -> bool {
    false
}

pub(crate) fn forward(
    _op: &RetrievalFwd,
    _q: (&CudaStorage, &Layout),
    _k: (&CudaStorage, &Layout),
    _v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    candle_core::bail!("retrieval: CUDA kernel not built")
}

pub(crate) fn backward(
    _op: &RetrievalBwd,
    _q: (&CudaStorage, &Layout),
    _k: (&CudaStorage, &Layout),
    _v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    candle_core::bail!("retrieval: CUDA kernel not built")
}
