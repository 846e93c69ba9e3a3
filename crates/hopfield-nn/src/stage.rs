//! The one extension point of the [`Hopfield`](crate::Hopfield) pipeline: a [`PatternStage`]
//! runs between the input LayerNorms and the association core.
//!
//! The pipeline is: check and normalise the inputs, then the stage (which may replace the
//! patterns and may transform the association logits), then the core (projections, heads,
//! masks, update steps, output projection), then the module's layout and activation.
//! [`DiffusedHopfield`](crate::DiffusedHopfield) is this pipeline with diffusion as its stage;
//! [`Hopfield::forward_staged`](crate::Hopfield::forward_staged) runs it with any stage.

use candle_core::{Result, Tensor};
use hopfield_core::Masks;

/// The patterns the association core receives, batch-major: `stored` `(N, S, E)`, `state`
/// `(N, L, E)` and `projection` `(N, S, vdim)`.
#[derive(Debug, Clone)]
pub struct Patterns {
    /// Stored patterns (keys).
    pub stored: Tensor,
    /// State patterns (queries).
    pub state: Tensor,
    /// Pattern projections (values).
    pub projection: Tensor,
}

pub use hopfield_core::LogitTransform;

/// What a [`PatternStage`] hands on for one call.
pub struct Staged<R> {
    /// The patterns the core associates (same batch size and feature sizes as the stage's
    /// input; the core checks them again).
    pub patterns: Patterns,
    /// The logit transform of this call, if any. With one, the core forms the association
    /// explicitly (the fused retrieval never materialises the logits).
    pub logits: Option<Box<dyn LogitTransform>>,
    /// Whatever else the stage reports about the call (graphs, step counts, ...).
    pub report: R,
}

impl<R> Staged<R> {
    /// `patterns` unchanged, no logit transform.
    pub fn patterns(patterns: Patterns, report: R) -> Self {
        Self {
            patterns,
            logits: None,
            report,
        }
    }
}

/// A stage between the input LayerNorms and the association core: gets the normalised,
/// batch-major patterns and the call's masks, returns the patterns the core associates, an
/// optional [`LogitTransform`] and a report.
///
/// ```
/// use candle_core::{DType, Device, Result, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
/// use hopfield_nn::stage::{LogitTransform, PatternStage, Patterns, Staged};
///
/// /// Sharpens the association (as a larger beta would) and reports the stored patterns' count.
/// struct Sharpen;
/// struct Double;
/// impl LogitTransform for Double {
///     fn transform(&self, logits: &Tensor) -> Result<Tensor> {
///         logits * 2.0
///     }
/// }
/// impl PatternStage for Sharpen {
///     type Report = usize;
///     fn stage(&self, patterns: Patterns, _masks: Masks) -> Result<Staged<usize>> {
///         let s = patterns.stored.dim(1)?;
///         Ok(Staged { patterns, logits: Some(Box::new(Double)), report: s })
///     }
/// }
///
/// let map = VarMap::new();
/// let hopfield = Hopfield::new(HopfieldConfig::new(8),
///     VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let x = Tensor::randn(0f32, 1., (2, 5, 8), &Device::Cpu)?;
/// let (out, stored) = hopfield.forward_staged(HopfieldInput::Single(&x), &Sharpen, Masks::default(), false)?;
/// assert_eq!((out.output.dims(), stored), (&[2, 5, 8][..], 5));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait PatternStage {
    /// What the stage reports besides the module's output.
    type Report;

    /// The patterns (and logit transform) the core associates, from the normalised patterns.
    fn stage(&self, patterns: Patterns, masks: Masks) -> Result<Staged<Self::Report>>;
}
