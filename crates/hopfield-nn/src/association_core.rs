//! `HopfieldCore`: hflayers' association module (`hflayers.HopfieldCore`, the MultiheadAttention
//! analogue) holding the projection weights, without input LayerNorms.

use crate::stage::{LogitTransform, Patterns};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use hopfield_core::{
    hopfield_core_forward, hopfield_core_forward_mapped, hopfield_core_output,
    hopfield_core_output_shared, CoreConfig, CoreLayout, CoreOutput, CoreWeights, InputAffine,
    Masks,
};

/// The association core. Its weights live under the `association_core` prefix inside
/// [`Hopfield`](crate::Hopfield).
///
/// Like hflayers' `HopfieldCore`, its inputs are sequence-first (`(L, N, E)`), and its default
/// config applies no scaling (quirk Q13: the 1/sqrt(hd) default lives in `Hopfield`).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_core::{CoreConfig, CoreLayout, Masks};
/// use hopfield_nn::HopfieldCore;
/// let map = VarMap::new();
/// let core = HopfieldCore::new(CoreLayout::new(8, 2), CoreConfig::default(),
///     VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let x = Tensor::randn(0f32, 1., (5, 3, 8), &Device::Cpu)?; // (L, N, E)
/// let out = core.forward(&x, &x, &x, Masks::default(), false)?;
/// assert_eq!(out.output.dims(), &[5, 3, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HopfieldCore {
    weights: CoreWeights,
    config: CoreConfig,
}

impl HopfieldCore {
    /// Builds or loads the weights of `layout` under `vb`; `config` drives the association
    /// (its per-head settings must match the layout's heads).
    pub fn new(layout: CoreLayout, config: CoreConfig, vb: VarBuilder) -> Result<Self> {
        layout.validate_heads()?;
        config.validate(layout.num_heads)?;
        let weights = if layout.is_static_execution() {
            CoreWeights::none(layout)
        } else {
            CoreWeights::load(layout, vb)?
        };
        Ok(Self { weights, config })
    }

    /// The weights.
    pub fn weights(&self) -> &CoreWeights {
        &self.weights
    }

    /// The association's dynamics (its structure is the weights' layout).
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Batch-major association: `(N, L, E)`, `(N, S, kdim)`, `(N, S, vdim)`.
    pub fn forward_batch_major(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: Masks,
        train: bool,
    ) -> Result<CoreOutput> {
        hopfield_core_forward(query, key, value, &self.weights, &self.config, masks, train)
    }

    /// The output of [`forward_batch_major`](Self::forward_batch_major) alone, through the fused
    /// retrieval where it applies ([`hopfield_core_output`]).
    pub fn forward_output_batch_major(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: Masks,
        train: bool,
    ) -> Result<Tensor> {
        hopfield_core_output(query, key, value, &self.weights, &self.config, masks, train)
    }

    /// [`forward_output_batch_major`](Self::forward_output_batch_major) for self-association from
    /// one standardised input, the three input LayerNorms' affine parts given separately
    /// ([`hopfield_core_output_shared`]: one packed GEMM for the three projections).
    pub(crate) fn forward_output_shared(
        &self,
        z: &Tensor,
        affines: [InputAffine; 3],
        masks: Masks,
        train: bool,
    ) -> Result<Tensor> {
        hopfield_core_output_shared(z, affines, &self.weights, &self.config, masks, train)
    }

    /// [`forward_batch_major`](Self::forward_batch_major) on the patterns of the module's
    /// pipeline, with the logit transform of its stage if any (see
    /// [`PatternStage`](crate::stage::PatternStage)).
    pub(crate) fn associate(
        &self,
        patterns: &Patterns,
        logits: Option<&dyn LogitTransform>,
        masks: Masks,
        train: bool,
    ) -> Result<CoreOutput> {
        let Patterns {
            stored,
            state,
            projection,
        } = patterns;
        let Some(logits) = logits else {
            return self.forward_batch_major(state, stored, projection, masks, train);
        };
        hopfield_core_forward_mapped(
            state,
            stored,
            projection,
            &self.weights,
            &self.config,
            masks,
            train,
            Some(logits),
        )
    }

    /// The output of [`associate`](Self::associate) alone: without a logit transform through
    /// the fused retrieval where it applies ([`hopfield_core_output`]), so the association is
    /// never formed.
    pub(crate) fn associate_output(
        &self,
        patterns: &Patterns,
        logits: Option<&dyn LogitTransform>,
        masks: Masks,
        train: bool,
    ) -> Result<Tensor> {
        match logits {
            None => self.forward_output_batch_major(
                &patterns.state,
                &patterns.stored,
                &patterns.projection,
                masks,
                train,
            ),
            Some(_) => Ok(self.associate(patterns, logits, masks, train)?.output),
        }
    }

    /// Sequence-first association, as hflayers' `HopfieldCore.forward`: inputs `(L, N, E)`,
    /// `(S, N, kdim)`, `(S, N, vdim)`; the output is `(L, N, O)` (association and projected
    /// patterns stay batch-major).
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: Masks,
        train: bool,
    ) -> Result<CoreOutput> {
        let t = |x: &Tensor| x.transpose(0, 1);
        let mut out = self.forward_batch_major(&t(query)?, &t(key)?, &t(value)?, masks, train)?;
        out.output = out.output.transpose(0, 1)?;
        Ok(out)
    }
}
