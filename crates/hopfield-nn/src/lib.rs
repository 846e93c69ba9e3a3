//! # hopfield-nn
//!
//! Modern Hopfield network modules on Candle, the Rust counterparts of hflayers'
//! (`ml-jku/hopfield-layers`, "Hopfield Networks is All You Need") `Hopfield`, `HopfieldPooling`,
//! `HopfieldLayer`, `HopfieldCore`, `HopfieldEncoderLayer` and `HopfieldDecoderLayer`.
//!
//! Every module is built from a `candle_nn::VarBuilder` with the same parameter paths as
//! hflayers' `state_dict`, so a checkpoint saved from PyTorch with
//! `safetensors.torch.save_file(model.state_dict(), path)` loads directly (see [`checkpoint`]),
//! and `VarMap::save` writes files PyTorch loads back. Configurations are plain structs with
//! hflayers' argument names and defaults, also readable from hflayers' constructor kwargs as JSON.
//!
//! This crate holds the modules only. The tooling around them lives in the `hopfield-examples`
//! package: the conformance runner that replays the PyTorch reference cases
//! (`hopfield_examples::conformance`, binary `conformance`) and hflayers' synthetic demo data
//! sets (`hopfield_examples::data`).
//!
//! ```
//! use candle_core::{DType, Device, ModuleT, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use hopfield_nn::{Hopfield, HopfieldConfig};
//! let map = VarMap::new();
//! let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
//! let hopfield = Hopfield::new(HopfieldConfig::new(32).with_num_heads(4).with_update_steps_max(Some(2)), vb)?;
//! let y = hopfield.forward_t(&Tensor::randn(0f32, 1., (8, 20, 32), &Device::Cpu)?, false)?;
//! assert_eq!(y.dims(), &[8, 20, 32]);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod activation;
pub mod association_core;
pub mod checkpoint;
pub mod classical;
pub mod config;
pub mod diffused;
pub mod energy;
pub mod hopfield;
pub mod layer;
pub mod norm;
pub mod pooling;
mod retrieval_energy;
pub mod stage;
pub mod transformer;

pub use activation::Activation;
pub use association_core::HopfieldCore;
pub use config::HopfieldConfig;
pub use diffused::{DiffusedHopfield, DiffusedHopfieldConfig, DiffusedOutput, GraphScope, Graphs};
pub use hopfield::{Hopfield, HopfieldInput, HopfieldOutput};
pub use hopfield_core::{
    fused_retrieval_enabled, set_fused_retrieval, Association, HopfieldError, Masks,
    OnNoConvergence, Scaling, StepsEps, UpdateSteps,
};
pub use layer::{HopfieldLayer, HopfieldLayerConfig};
pub use norm::LayerNorm;
pub use pooling::{HopfieldPooling, HopfieldPoolingConfig};
pub use stage::{LogitTransform, PatternStage, Patterns, Staged};
pub use transformer::{
    DecoderMasks, HopfieldDecoderLayer, HopfieldEncoderLayer, TransformerLayerConfig,
};
