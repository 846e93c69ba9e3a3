//! Self-association from one input, as one packed GEMM.
//!
//! In hflayers' `Hopfield(input)` the query (state), key (stored) and value (projection) all come
//! from the same tensor, each through its own input LayerNorm and its own projection. The three
//! LayerNorms share one standardisation `z`; what differs is only each LayerNorm's affine part,
//! and an affine map followed by a linear map is one linear map:
//! `(z * g + b) W^T + c = z (W diag(g))^T + (W b + c)`. So the three projections become one GEMM
//! of `z` against stacked weights with the affine maps folded in (one graph node,
//! [`hopfield_cuda::retrieval::fold_input_affines`]), and the fused retrieval reads queries, keys and values
//! from that one product in place ([`hopfield_cuda::retrieval::retrieve_packed`]), handing back
//! one gradient for it. With an output projection, the packed GEMM, the retrieval and the output
//! projection are one graph node ([`hopfield_cuda::retrieval::retrieve_projected`]), so the two
//! largest intermediates never become tensors that candle's backward pass would zero-fill and
//! add into. Same values as the three separate paths up to rounding; gradients reach the
//! projection weights and the LayerNorm parameters through the (small) folded weights.

use crate::config::CoreConfig;
use crate::error::{expect_float, expect_shape};
use crate::forward::{
    check_finite, fused_applies, has_update_steps, hopfield_core_output, retrieval_spec,
    validated_heads, Masks,
};
use crate::ops::linear;
use crate::weights::{CoreWeights, InProjection};
use candle_core::{Result, Tensor};
use hopfield_cuda::retrieval::{
    fold_input_affines, retrieve_packed, retrieve_projected_affine, PackedSizes, Projections,
};

/// The affine part of an input LayerNorm, `z * weight + bias`, over the last dimension; either
/// part may be absent (`InputAffine::default()` is the identity).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::InputAffine;
/// let g = Tensor::new(&[2f32, 3.], &Device::Cpu)?;
/// let affine = InputAffine { weight: Some(&g), bias: None };
/// assert!(affine.weight.is_some() && InputAffine::default().bias.is_none());
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct InputAffine<'a> {
    /// Per-feature scale (`nn.LayerNorm.weight`).
    pub weight: Option<&'a Tensor>,
    /// Per-feature shift (`nn.LayerNorm.bias`).
    pub bias: Option<&'a Tensor>,
}

impl InputAffine<'_> {
    /// `z * weight + bias` (the parts present).
    pub fn apply(&self, z: &Tensor) -> Result<Tensor> {
        hopfield_cuda::affine(z, self.weight, self.bias)
    }
}

/// [`hopfield_core_output`] for self-association from one standardised input `z`, `(N, L, E)`:
/// the query is `affines[0](z)`, the key `affines[1](z)` and the value `affines[2](z)`.
///
/// Where the fused retrieval applies without update steps and all three inputs are projected (no
/// static inputs, no `value_as_connected`, no Hopfield-space LayerNorm), this runs one GEMM for the three
/// projections and the packed retrieval (see the module docs); otherwise it applies the three
/// affine maps and calls [`hopfield_core_output`]. With an output projection the three steps
/// (packed projection, retrieval, output projection) are one graph node
/// ([`hopfield_cuda::retrieval::retrieve_projected`]). Same results either way.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_core::{hopfield_core_output, hopfield_core_output_shared, CoreConfig, CoreLayout, CoreWeights, InputAffine, Masks, Scaling};
/// let dev = Device::Cpu;
/// let map = VarMap::new();
/// let w = CoreWeights::load(CoreLayout::new(8, 2), VarBuilder::from_varmap(&map, DType::F64, &dev))?;
/// let z = Tensor::randn(0f64, 1., (3, 5, 8), &dev)?;
/// let (g, b) = (Tensor::randn(0f64, 1., 8, &dev)?, Tensor::randn(0f64, 1., 8, &dev)?);
/// let affine = InputAffine { weight: Some(&g), bias: Some(&b) };
/// let cfg = CoreConfig::default().with_scaling(Scaling::Scalar(0.5));
/// let packed = hopfield_core_output_shared(&z, [affine; 3], &w, &cfg, Masks::default(), false)?;
/// let x = z.broadcast_mul(&g)?.broadcast_add(&b)?;
/// let separate = hopfield_core_output(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
/// assert!((packed - separate)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_core_output_shared(
    z: &Tensor,
    affines: [InputAffine; 3],
    weights: &CoreWeights,
    cfg: &CoreConfig,
    masks: Masks,
    train: bool,
) -> Result<Tensor> {
    let heads = validated_heads(weights, cfg)?;
    let layout = &weights.layout;
    let e = layout.embed_dim;
    let projections = weights.projections()?;
    // Every input projected (weights present); `None` where the weights lack one.
    let in_weights: Option<Vec<&Tensor>> = projections.iter().map(|p| p.weight.as_ref()).collect();
    let packable = fused_applies(cfg, train, z)?
        && in_weights.is_some()
        && !has_update_steps(cfg, heads)?
        && !(layout.query_as_static || layout.key_as_static || layout.value_as_static)
        && !layout.value_as_connected
        && !cfg.normalize_pattern
        && layout.kdim == e
        && layout.vdim == e
        && z.rank() == 3;
    let (true, Some(in_weights)) = (packable, in_weights) else {
        let [q, k, v] = [
            affines[0].apply(z)?,
            affines[1].apply(z)?,
            affines[2].apply(z)?,
        ];
        return hopfield_core_output(&q, &k, &v, weights, cfg, masks, train);
    };
    expect_shape("input", z.dims(), &[None, None, Some(e)], || {
        format!("(N, L, {e})")
    })?;
    expect_float("input", z)?;
    check_finite("input", z)?;
    let (n, l, _) = z.dims3()?;
    let (hd, pd) = (layout.head_dim, layout.pattern_dim);
    let (w, b) = packed_in_projection(weights, &projections, &in_weights)?;
    let fold = hopfield_cuda::retrieval::InputAffines {
        rows: [heads * hd, heads * hd, heads * pd],
        weight: affines.map(|a| a.weight),
        bias: affines.map(|a| a.bias),
    };
    let spec = retrieval_spec(cfg, &masks, (n, heads, l, l), z.dtype())?;
    let sizes = PackedSizes { heads, hd, pd };
    match &weights.out_proj_weight {
        Some(w_out) => {
            let proj = Projections {
                w_in: &w,
                b_in: b.as_ref(),
                w_out,
                b_out: weights.out_proj_bias.as_ref(),
            };
            retrieve_projected_affine(z, proj, &fold, sizes, &spec)
        }
        None => {
            let wb = fold_input_affines(&w, b.as_ref(), &fold)?;
            let (w, b) = (wb.narrow(1, 0, e)?, wb.narrow(1, e, 1)?.squeeze(1)?);
            retrieve_packed(&linear(z, &w, Some(&b))?, sizes, &spec)
        }
    }
}

/// The packed input projection `(W_in, b_in)` with rows `[q | k | v]` (no part static): hflayers'
/// `in_proj_weight` and `in_proj_bias` as they are where the weights are packed (no copy, no
/// graph node), else the three projections stacked, absent bias parts as zeros.
fn packed_in_projection(
    weights: &CoreWeights,
    projections: &[crate::weights::Projection; 3],
    in_weights: &[&Tensor],
) -> Result<(Tensor, Option<Tensor>)> {
    if let InProjection::Packed(Some(w)) = &weights.in_proj {
        return Ok((w.clone(), weights.in_proj_bias.clone()));
    }
    let w = Tensor::cat(in_weights, 0)?;
    let b = if projections.iter().any(|p| p.bias.is_some()) {
        let parts = projections
            .iter()
            .zip(in_weights)
            .map(|(p, w)| match &p.bias {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device()),
            })
            .collect::<Result<Vec<_>>>()?;
        Some(Tensor::cat(&parts, 0)?)
    } else {
        None
    };
    Ok((w, b))
}
