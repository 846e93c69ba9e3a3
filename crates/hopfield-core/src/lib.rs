//! # hopfield-core
//!
//! The functional modern-Hopfield association kernel, the Rust counterpart of hflayers'
//! `hopfield_core_forward` ("Hopfield Networks is All You Need", Ramsauer et al., ICLR 2021):
//! q/k/v projections (packed or separate), heads, scaling, iterated updates until a step budget
//! or convergence, masks, `add_zero_association`, and dropout on the final association.
//!
//! It works on any float dtype and device Candle supports, is differentiable end to end with
//! candle's autograd (no fused forward-only ops), and reports bad input as a typed
//! [`HopfieldError`] instead of panicking or returning NaN. The modules built on it
//! (`Hopfield`, `HopfieldPooling`, `HopfieldLayer`, ...) live in `hopfield-nn`.
//!
//! Deliberate differences from hflayers (each documented where it applies; the quirk ids are those
//! of `docs/design/hflayers-quirks.md`): static inputs never
//! mix samples (Q3/Q4), per-head scaling is per head (Q2), convergence is decided per sample and
//! head (Q11), "until convergence" has a hard cap ([`CoreConfig::max_convergence_steps`]), and a
//! fully masked row yields an all-zero association rather than NaN.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use hopfield_core::{hopfield_core_forward, CoreConfig, CoreLayout, CoreWeights, Masks, UpdateSteps};
//! let dev = Device::Cpu;
//! let map = VarMap::new();
//! let weights = CoreWeights::load(CoreLayout::new(16, 4), VarBuilder::from_varmap(&map, DType::F32, &dev))?;
//! let x = Tensor::randn(0f32, 1., (2, 10, 16), &dev)?;
//! let cfg = CoreConfig::default().with_update_steps_max(UpdateSteps::Max(2));
//! let out = hopfield_core_forward(&x, &x, &x, &weights, &cfg, Masks::default(), false)?;
//! assert_eq!(out.output.dims(), &[2, 10, 16]);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod association;
pub mod config;
pub mod energy;
pub mod error;
pub mod forward;
mod heads;
pub mod masks;
pub mod ops;
pub mod rng;
pub mod self_association;
pub mod sharded;
mod steps;
mod update;
pub mod weights;

pub use association::{Association, LearnableAlpha};
pub use config::{CoreConfig, OnNoConvergence, Scaling, StepsEps, UpdateSteps};
pub use error::HopfieldError;
pub use forward::{
    fused_retrieval_enabled, hopfield_core_forward, hopfield_core_forward_mapped,
    hopfield_core_output, set_fused_retrieval, CoreOutput, LogitTransform,
};
pub use masks::Masks;
pub use self_association::{hopfield_core_output_shared, InputAffine};
pub use weights::{checked_param, CoreLayout, CoreWeights, InProjection};
