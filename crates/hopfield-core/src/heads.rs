//! Heads: the projections' `(N, T, H*d)` outputs as `(N, T, H, d)` views, static inputs shared
//! by every head of their sample, and the heads-major layout of the explicit path.

use crate::ops::linear;
use crate::weights::Projection;
use candle_core::{Result, Tensor};

/// `(N, T, H*d)` -> `(N, T, H, d)`, a free reshape of the projection's output.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, t, f) = x.dims3()?;
    x.reshape((n, t, heads, f / heads))
}

/// A static input is shared by every head of its own sample (fixes hflayers quirks Q3/Q4, which
/// pair heads with other samples' data): a head-stride-0 view, no copy.
pub(crate) fn broadcast_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, t, f) = x.dims3()?;
    x.unsqueeze(2)?.broadcast_as((n, t, heads, f))
}

/// `(N, T, H, d)` -> `(N, H, T, d)`, contiguous, for the explicit path.
pub(crate) fn heads_major(x: &Tensor) -> Result<Tensor> {
    x.transpose(1, 2)?.contiguous()
}

pub(crate) fn project(x: &Tensor, p: &Projection, heads: usize) -> Result<Tensor> {
    match &p.weight {
        Some(w) => split_heads(&linear(x, w, p.bias.as_ref())?, heads),
        None => broadcast_heads(x, heads),
    }
}
