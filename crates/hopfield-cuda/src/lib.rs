//! # hopfield-cuda
//!
//! Fused kernels of hopfield-rs as Candle custom ops, each with a backward pass so that training
//! can use them (candle-nn's fused softmax has none).
//!
//! - [`retrieval`]: the fused softmax retrieval `softmax(beta q k^T + mask) v` per (sample, head),
//!   FlashAttention-style (online softmax over blocks of stored patterns, log-sum-exp output,
//!   FlashAttention-2 backward), reading the projections' `(N, T, H, d)` views in place;
//!   [`retrieval::retrieve_projected`] adds the packed q/k/v and output projections around it as
//!   one graph node whose intermediates live in reused scratch buffers ([`release_scratch`]).
//! - [`masked_softmax`]: softmax over the last dimension that maps fully masked rows (all `-inf`)
//!   to zeros instead of NaN, fused per row on the CPU (rayon over rows; a vectorisable `exp` and
//!   lane-wise reductions, compiled for AVX2+FMA as well and picked at run time), with a fused
//!   backward op whose own backward is composed.
//!
//! - [`normalize`]: `(x - mean) / sqrt(var + eps)` per row (LayerNorm without its affine part),
//!   fused on the CPU with a fused first-order backward; [`affine`]: LayerNorm's `x * w + b` as one
//!   node (off candle's elementwise thread pool).
//! - [`attention_energy_grad`]: the gradient of the Energy Transformer's attention energy (a
//!   softmax-retrieval row and column pass per head) with its closed-form backward.
//! - [`et_step`]: one Energy Transformer block step (norm, both energy gradients, update) as one
//!   graph node with its closed-form backward.
//! - [`hopfield_energy_grad`]: the gradient of a dense-associative-memory energy (ReLU or
//!   log-sum-exp interaction) over tokens, with its closed-form backward.
//! - [`sparse`]: a shared CSR matrix ([`sparse::CsrMatrix`], transpose cached), its product with
//!   dense tensors and the fused factored diffusion step, with backward passes.
//! - [`all_finite`]: the one-reduction NaN/inf check behind every crate's typed `NonFinite` error.
//! - [`tune_allocator`]: an opt-in process-wide malloc setting that removes most page-fault
//!   overhead of large temporary tensors on Linux/glibc.
//!
//! - [`entmax`], [`sparsemax`], [`entmax15`], [`entmax_learnable`]: alpha-entmax over the last
//!   dimension (exact zeros), forward and closed-form backward.
//!
//! Every op has a CPU implementation for f32 and f64 and falls back to composed candle ops on
//! other dtypes and devices, so results never depend on which path ran. With the `cuda` feature
//! the retrieval, the sparse diffusion products and entmax have CUDA kernels (`kernels/*.cu`,
//! compiled to PTX by `build.rs`); the other ops take the composed path on CUDA devices.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let inf = f32::NEG_INFINITY;
//! let x = Tensor::new(&[[0f32, 0.], [inf, inf]], &Device::Cpu)?;
//! let p = hopfield_cuda::masked_softmax(&x)?;
//! assert_eq!(p.to_vec2::<f32>()?, vec![vec![0.5, 0.5], vec![0., 0.]]);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod affine;
mod alloc;
mod attention_energy;
#[cfg(feature = "cuda")]
mod cuda_view;
mod device;
mod entmax;
mod error;
mod et_step;
mod finite;
mod hopfield_energy;
mod linear;
mod matmul;
mod normalize;
pub mod retrieval;
mod rows;
mod scratch;
mod simd;
mod softmax;
pub mod sparse;
#[cfg(test)]
mod test_util;

pub use affine::{affine, affine_composed};
pub use alloc::tune_allocator;
pub use attention_energy::{
    attention_energy_grad, attention_energy_grad_composed, attention_scores,
};
pub use device::{DeviceChoice, UnknownDevice};
pub use entmax::{entmax, entmax15, entmax_composed, entmax_learnable, sparsemax};
pub use error::{
    bad_additive_values, expect_float, expect_logits_in_range, find_error, KernelError,
};
pub use et_step::{et_step, et_step_composed, EtStep};
pub use finite::all_finite;
pub use hopfield_energy::{
    hopfield_energy_grad, hopfield_energy_grad_composed, HopfieldEnergyKind,
};
pub use linear::{linear, linear_composed};
pub use normalize::{normalize, normalize_composed};
pub use scratch::release_scratch;
pub use simd::instruction_set;

pub use softmax::{masked_softmax, masked_softmax_composed};
