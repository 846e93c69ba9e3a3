//! `hopfield_core_forward`: the walk of one association from its inputs to its output:
//! validation and projections (`prepare`), heads (`heads.rs`), masks ([`crate::masks`]), the
//! association and its iterated updates (`update.rs`, explicit and fused), dropout and the
//! output projection.
//!
//! Everything is batch-major (`(N, L, E)` in, `(N, L, O)` out); the modules in `hopfield-nn`
//! handle hflayers' `batch_first=False` layout around it.

use crate::config::CoreConfig;
use crate::error::{expect_float, expect_shape, HopfieldError};
use crate::heads::{heads_major, project, split_heads};
use crate::masks::additive_mask;
pub use crate::masks::Masks;
use crate::ops::{layer_norm, linear};
use crate::update::{explicit_updates, fused_update_steps};
use crate::weights::CoreWeights;
use candle_core::{DType, Result, Tensor};
use hopfield_cuda::retrieval::{retrieval_path, retrieve, Retrieval, RetrievalPath};
use std::sync::atomic::{AtomicBool, Ordering};

/// Result of one association.
#[derive(Debug, Clone)]
pub struct CoreOutput {
    /// `(N, L, O)`, or `(N, L, H*pd)` without output projection.
    pub output: Tensor,
    /// The softmax association xi of the last update step, before dropout, `(N, H, L, S)`
    /// (`S+1` with `add_zero_association`).
    pub association: Tensor,
    /// The projected pattern projections (values), `(N, H, S, pd)`.
    pub projected: Tensor,
    /// Update steps run after the first association, per (sample, head), index `n*H + h`.
    pub steps_run: Vec<usize>,
    /// False only if "until convergence" stopped at the cap (with [`crate::OnNoConvergence::Stop`]).
    pub converged: bool,
}

pub(crate) fn check_finite(arg: &'static str, x: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(HopfieldError::NonFinite { arg }.into())
    }
}

/// The association of hflayers' `hopfield_core_forward`, batch-major.
///
/// `query` (state patterns) is `(N, L, E)`, `key` (stored patterns) `(N, S, kdim)` and `value`
/// (pattern projections) `(N, S, vdim)`; a static input has the per-head size instead (`hd` for
/// queries and keys, `pd` for values) and is shared by all heads of its sample.
///
/// Semantics: `q, k, v` are projected (and split into heads), optionally LayerNorm-ed in
/// Hopfield space; then `xi = softmax(beta q k^T + mask)`, and each update step replaces the state
/// by `xi k` (not re-projected) and associates again, per (sample, head), until
/// `update_steps_max` steps ran or the association changed by at most `update_steps_eps`
/// (Frobenius norm). Dropout (training only) acts on the final association; the output is
/// `xi v`, heads concatenated, then the output projection. A fully masked row has an all-zero
/// association, so it retrieves the zero vector (then the output projection's bias), never NaN.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_core::{hopfield_core_forward, CoreConfig, CoreLayout, CoreWeights, Masks, Scaling};
/// let dev = Device::Cpu;
/// let map = VarMap::new();
/// let w = CoreWeights::load(CoreLayout::new(8, 2), VarBuilder::from_varmap(&map, DType::F32, &dev))?;
/// let x = Tensor::randn(0f32, 1., (3, 5, 8), &dev)?;
/// let cfg = CoreConfig::default().with_scaling(Scaling::Scalar(0.5));
/// let out = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
/// assert_eq!(out.output.dims(), &[3, 5, 8]);
/// assert_eq!(out.association.dims(), &[3, 2, 5, 5]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_core_forward(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    weights: &CoreWeights,
    cfg: &CoreConfig,
    masks: Masks,
    train: bool,
) -> Result<CoreOutput> {
    hopfield_core_forward_mapped(query, key, value, weights, cfg, masks, train, None)
}

static FUSED: AtomicBool = AtomicBool::new(true);

/// Switches the fused retrieval of [`hopfield_core_output`] on (the default) or off for the whole
/// process. Off, every call takes the explicit path of [`hopfield_core_forward`]; results agree
/// to rounding either way, so this exists for testing and benchmarking the two against each other.
pub fn set_fused_retrieval(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether [`hopfield_core_output`] may use the fused retrieval (see [`set_fused_retrieval`]).
pub fn fused_retrieval_enabled() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// The head count of `weights`, with `cfg` checked against it (one entry per head in every
/// per-head setting). Of the layout only the head count is checked here: loaded weights come from
/// a validated layout, and a pure static one ([`CoreWeights::none`]) has no sizes of its own.
pub(crate) fn validated_heads(weights: &CoreWeights, cfg: &CoreConfig) -> Result<usize> {
    let layout = &weights.layout;
    layout.validate_heads()?;
    cfg.validate(layout.num_heads)?;
    Ok(layout.num_heads)
}

/// Whether this call can take the fused path: a softmax association, no dropout on the
/// association in training (it acts on the materialised association) and a dtype/device with a
/// fused kernel.
pub(crate) fn fused_applies(cfg: &CoreConfig, train: bool, query: &Tensor) -> Result<bool> {
    // The fused kernel computes a softmax: other association functions take the explicit path.
    if !fused_retrieval_enabled() || (train && cfg.dropout > 0.0) || !cfg.association.is_softmax() {
        return Ok(false);
    }
    Ok(retrieval_path(query.dtype(), query.device()) == RetrievalPath::Fused)
}

/// Whether any of the `heads` heads runs update steps after the first association.
pub(crate) fn has_update_steps(cfg: &CoreConfig, heads: usize) -> Result<bool> {
    Ok(cfg
        .update_steps_max
        .per_head(heads)?
        .iter()
        .any(|m| *m != Some(0)))
}

/// The output of [`hopfield_core_forward`] alone, `(N, L, O)`: what `Module::forward` needs.
///
/// Where it can (see [`set_fused_retrieval`]; no association dropout in training, CPU f32/f64 or
/// a CUDA build), this runs the fused retrieval kernel of [`hopfield_cuda::retrieval`] on the
/// head-split projections in place: the `(N, H, L, S)` association is never formed. Update steps
/// run on the same kernel (the state update is a retrieval with the keys as values) and their
/// convergence test on [`hopfield_cuda::retrieval::association_change`]. Otherwise it is the explicit path. Same semantics
/// and gradients either way.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_core::{hopfield_core_forward, hopfield_core_output, CoreConfig, CoreLayout, CoreWeights, Masks, Scaling};
/// let dev = Device::Cpu;
/// let map = VarMap::new();
/// let w = CoreWeights::load(CoreLayout::new(8, 2), VarBuilder::from_varmap(&map, DType::F64, &dev))?;
/// let x = Tensor::randn(0f64, 1., (3, 5, 8), &dev)?;
/// let cfg = CoreConfig::default().with_scaling(Scaling::Scalar(0.5));
/// let fused = hopfield_core_output(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
/// let explicit = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false)?.output;
/// assert!((fused - explicit)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_core_output(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    weights: &CoreWeights,
    cfg: &CoreConfig,
    masks: Masks,
    train: bool,
) -> Result<Tensor> {
    let heads = validated_heads(weights, cfg)?;
    if !fused_applies(cfg, train, query)? {
        return Ok(hopfield_core_forward_mapped(
            query, key, value, weights, cfg, masks, train, None,
        )?
        .output);
    }
    let Prepared {
        q,
        k,
        v,
        n,
        l,
        s,
        pd,
        ..
    } = prepare(query, key, value, weights, cfg)?;
    let spec = retrieval_spec(cfg, &masks, (n, heads, l, s), query.dtype())?;
    let q = if has_update_steps(cfg, heads)? {
        fused_update_steps(&q, &k, &spec, cfg)?
    } else {
        q
    };
    let out = retrieve(&q, &k, &v, &spec)?.reshape((n, l, heads * pd))?;
    match &weights.out_proj_weight {
        Some(w) => linear(&out, w, weights.out_proj_bias.as_ref()),
        None => Ok(out),
    }
}

/// The fused retrieval's parameters for this configuration and these masks: per-head beta, the
/// additive mask broadcastable to `dims` = `(N, H, L, S)`, the zero pattern.
pub(crate) fn retrieval_spec(
    cfg: &CoreConfig,
    masks: &Masks,
    dims: (usize, usize, usize, usize),
    dtype: DType,
) -> Result<Retrieval> {
    Ok(Retrieval::new(1.0)
        .with_head_betas(cfg.scaling.per_head(dims.1)?)
        .with_mask(additive_mask(masks, dims, false, dtype)?)
        .with_zero_association(cfg.add_zero_association))
}

/// A transform of the association logits `beta q k^T`, `(N, H, L, S')`, applied at every update
/// step before the masks and the softmax (e.g. diffusion of the logits over a graph of the stored
/// patterns, as `hopfield-nn`'s `DiffusedHopfield` does). `S'` counts the zero pattern of
/// `add_zero_association`, so a transform that acts on the stored patterns leaves the last column
/// alone when `S' > S`. Must keep the shape.
///
/// ```
/// use candle_core::{Result, Tensor};
/// use hopfield_core::LogitTransform;
/// /// Sharpens every association as if beta were doubled.
/// struct Double;
/// impl LogitTransform for Double {
///     fn transform(&self, logits: &Tensor) -> Result<Tensor> {
///         logits * 2.0
///     }
/// }
/// let l = Tensor::new(&[1f64, -1.], &candle_core::Device::Cpu)?;
/// assert_eq!(Double.transform(&l)?.to_vec1::<f64>()?, vec![2., -2.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait LogitTransform {
    /// The transformed logits.
    fn transform(&self, logits: &Tensor) -> Result<Tensor>;
}

/// [`hopfield_core_forward`] with an optional [`LogitTransform`] (the explicit association path:
/// the transform needs the logits).
#[allow(clippy::too_many_arguments)]
pub fn hopfield_core_forward_mapped(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    weights: &CoreWeights,
    cfg: &CoreConfig,
    masks: Masks,
    train: bool,
    logits: Option<&dyn LogitTransform>,
) -> Result<CoreOutput> {
    let Prepared {
        q,
        k,
        v,
        n,
        l,
        s,
        hd,
        pd,
    } = prepare(query, key, value, weights, cfg)?;
    let heads = weights.layout.num_heads;
    let dtype = query.dtype();
    let dev = query.device();
    let (q, mut k, mut v) = (heads_major(&q)?, heads_major(&k)?, heads_major(&v)?);
    let mask = additive_mask(&masks, (n, heads, l, s), cfg.add_zero_association, dtype)?;
    if cfg.add_zero_association {
        k = Tensor::cat(&[&k, &Tensor::zeros((n, heads, 1, hd), dtype, dev)?], 2)?;
        v = Tensor::cat(&[&v, &Tensor::zeros((n, heads, 1, pd), dtype, dev)?], 2)?;
    }
    let (xi, schedule) = explicit_updates(&q, &k, mask.as_ref(), cfg, logits)?;

    let a = if train && cfg.dropout > 0.0 {
        crate::rng::dropout(&xi, cfg.dropout)?
    } else {
        xi.clone()
    };
    let out = a.matmul(&v)?.transpose(1, 2)?.reshape((n, l, heads * pd))?;
    let out = match &weights.out_proj_weight {
        Some(w) => linear(&out, w, weights.out_proj_bias.as_ref())?,
        None => out,
    };
    Ok(CoreOutput {
        output: out,
        association: xi,
        projected: v,
        converged: schedule.converged(),
        steps_run: schedule.steps_run,
    })
}

/// Projected, head-split (and Hopfield-space normalised) inputs as `(N, T, H, d)` views, with
/// their sizes.
struct Prepared {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    n: usize,
    l: usize,
    s: usize,
    hd: usize,
    pd: usize,
}

/// Validation, projections, head split and Hopfield-space LayerNorm: everything before the
/// association, shared by the explicit and the fused path.
fn prepare(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    weights: &CoreWeights,
    cfg: &CoreConfig,
) -> Result<Prepared> {
    let heads = validated_heads(weights, cfg)?;
    let layout = &weights.layout;
    let (qs, ks, vs) = (
        layout.query_as_static,
        layout.key_as_static,
        layout.value_as_static,
    );
    // Pure static retrieval has no sizes of its own: they come from the inputs.
    let hd = if qs && ks {
        query.dims().last().copied().unwrap_or(0)
    } else {
        layout.head_dim
    };
    let pd = if vs && layout.out_dim.is_none() && !layout.value_through_key() {
        value.dims().last().copied().unwrap_or(0)
    } else {
        layout.pattern_dim
    };
    expect_float("state pattern (query)", query)?;
    expect_float("stored pattern (key)", key)?;
    expect_float("pattern projection (value)", value)?;
    let q_in = if qs { hd } else { layout.embed_dim };
    let k_in = if ks { hd } else { layout.kdim };
    let v_in = if vs && !layout.value_through_key() {
        pd
    } else {
        layout.vdim
    };
    expect_shape(
        "state pattern (query)",
        query.dims(),
        &[None, None, Some(q_in)],
        || format!("(N, L, {q_in})"),
    )?;
    expect_shape(
        "stored pattern (key)",
        key.dims(),
        &[None, None, Some(k_in)],
        || format!("(N, S, {k_in})"),
    )?;
    expect_shape(
        "pattern projection (value)",
        value.dims(),
        &[None, None, Some(v_in)],
        || format!("(N, S, {v_in})"),
    )?;
    let (n, l, _) = query.dims3()?;
    let s = key.dim(1)?;
    if key.dim(0)? != n || value.dim(0)? != n {
        return Err(HopfieldError::Mismatch {
            what: "batch size N",
            lhs_arg: "state pattern",
            lhs: query.dims().to_vec(),
            rhs_arg: if key.dim(0)? != n {
                "stored pattern"
            } else {
                "pattern projection"
            },
            rhs: if key.dim(0)? != n {
                key.dims().to_vec()
            } else {
                value.dims().to_vec()
            },
        }
        .into());
    }
    if value.dim(1)? != s {
        return Err(HopfieldError::Mismatch {
            what: "number of stored patterns S",
            lhs_arg: "stored pattern",
            lhs: key.dims().to_vec(),
            rhs_arg: "pattern projection",
            rhs: value.dims().to_vec(),
        }
        .into());
    }
    check_finite("state pattern (query)", query)?;
    check_finite("stored pattern (key)", key)?;
    check_finite("pattern projection (value)", value)?;

    let [pq, pk, pv] = weights.projections()?;
    let mut q = project(query, &pq, heads)?;
    let mut k = project(key, &pk, heads)?;
    let v = if layout.value_through_key() {
        let through_k = linear(
            value,
            pk.weight.as_ref().expect("key projection"),
            pk.bias.as_ref(),
        )?;
        // A static value stops there (H*hd features, hd per head).
        match pv.weight {
            None => split_heads(&through_k, heads)?,
            Some(_) => project(&through_k, &pv, heads)?,
        }
    } else {
        project(value, &pv, heads)?
    };
    if cfg.normalize_pattern {
        let (w, b) = (weights.p_norm_weight.as_ref(), weights.p_norm_bias.as_ref());
        q = layer_norm(&q.contiguous()?, w, b, cfg.normalize_pattern_eps)?;
        k = layer_norm(&k.contiguous()?, w, b, cfg.normalize_pattern_eps)?;
    }
    Ok(Prepared {
        q,
        k,
        v,
        n,
        l,
        s,
        hd,
        pd,
    })
}

/// The projected, head-split (and Hopfield-space normalised) state and stored patterns of an
/// association, heads-major: `(N, H, L, hd)` and `(N, H, S, hd)`. The space the association
/// `softmax(beta q k^T)` and its energy ([`crate::energy`]) live in; same checks as
/// [`hopfield_core_forward`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_core::forward::projected_state_and_stored;
/// use hopfield_core::{CoreConfig, CoreLayout, CoreWeights};
/// let map = VarMap::new();
/// let w = CoreWeights::load(CoreLayout::new(8, 2), VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let x = Tensor::randn(0f32, 1., (3, 5, 8), &Device::Cpu)?;
/// let (q, k) = projected_state_and_stored(&x, &x, &x, &w, &CoreConfig::default())?;
/// assert_eq!((q.dims(), k.dims()), (&[3, 2, 5, 4][..], &[3, 2, 5, 4][..]));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn projected_state_and_stored(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    weights: &CoreWeights,
    cfg: &CoreConfig,
) -> Result<(Tensor, Tensor)> {
    let p = prepare(query, key, value, weights, cfg)?;
    Ok((heads_major(&p.q)?, heads_major(&p.k)?))
}
