//! The association's weights: q/k/v projections (packed or separate), their biases, the output
//! projection and the Hopfield-space LayerNorm, under hflayers' `HopfieldCore` state_dict names.

use crate::error::{check_alloc, HopfieldError};
use candle_core::{Result, Shape, Tensor};
use candle_nn::{init::Init, VarBuilder};

const PROJ_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// The structure of one association: sizes, heads and which inputs are projected, i.e. everything
/// that decides which weights exist and their shapes (hflayers `HopfieldCore.__init__`). How the
/// association runs on it is [`CoreConfig`](crate::CoreConfig)'s.
///
/// ```
/// use hopfield_core::CoreLayout;
/// let l = CoreLayout::new(64, 4);
/// assert_eq!((l.head_dim, l.pattern_dim, l.out_dim), (16, 16, Some(64)));
/// assert!(l.packed());
/// // A static query is used as it arrives (per-head size, no query weights).
/// let l = CoreLayout { query_as_static: true, ..l };
/// l.validate()?;
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CoreLayout {
    /// Number of heads H.
    pub num_heads: usize,
    /// Feature size of the state patterns (queries), E.
    pub embed_dim: usize,
    /// Feature size of the stored patterns (keys).
    pub kdim: usize,
    /// Feature size of the pattern projections (values).
    pub vdim: usize,
    /// Per-head association size hd.
    pub head_dim: usize,
    /// Per-head value size pd.
    pub pattern_dim: usize,
    /// Output size O, `None` when the output projection is disabled (output is H*pd).
    pub out_dim: Option<usize>,
    /// Whether `pattern_dim` was given explicitly (forces separate q/k/v weights, as in hflayers).
    pub pattern_dim_given: bool,
    /// Biases on the projections and on the output projection.
    pub bias: bool,
    /// Creates (unused) `bias_k`/`bias_v`, hflayers' `concat_bias_pattern` (quirk Q1).
    pub add_bias_kv: bool,
    /// The stored patterns (keys) are used as they are, without projection: they arrive with the
    /// per-head size hd and every head of their sample shares them.
    pub key_as_static: bool,
    /// The state patterns (queries) are used as they are (size hd, shared by the heads).
    pub query_as_static: bool,
    /// The pattern projections (values) are used as they are (size pd, shared by the heads).
    pub value_as_static: bool,
    /// The pattern projections go through the key projection first:
    /// `v = W_V (W_K x + b_k) + b_v` (so `v_proj_weight` takes H*hd inputs), or `W_K x + b_k`
    /// when they are also static (only while the key is projected: with a static key they are
    /// used as they are).
    pub value_as_connected: bool,
    /// Affine Hopfield-space LayerNorm (`p_norm_weight`, `p_norm_bias`).
    pub normalize_pattern_affine: bool,
}

impl CoreLayout {
    /// Self-association layout: `embed_dim` everywhere, `embed_dim / num_heads` per head.
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        let hd = embed_dim / num_heads.max(1);
        Self {
            num_heads,
            embed_dim,
            kdim: embed_dim,
            vdim: embed_dim,
            head_dim: hd,
            pattern_dim: hd,
            out_dim: Some(embed_dim),
            pattern_dim_given: false,
            bias: true,
            add_bias_kv: false,
            key_as_static: false,
            query_as_static: false,
            value_as_static: false,
            value_as_connected: false,
            normalize_pattern_affine: false,
        }
    }

    /// hflayers' `_qkv_same_embed_dim`: one packed `in_proj_weight` instead of q/k/v weights.
    pub fn packed(&self) -> bool {
        self.kdim == self.embed_dim
            && self.vdim == self.embed_dim
            && !self.pattern_dim_given
            && !self.value_as_connected
    }

    /// H * hd.
    pub fn vh(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// H * pd.
    pub fn vp(&self) -> usize {
        self.num_heads * self.pattern_dim
    }

    /// Whether the pattern projection (value) goes through the key projection.
    pub fn value_through_key(&self) -> bool {
        self.value_as_connected && !self.key_as_static
    }

    /// The feature size the pattern projection (value) input must have: pd for a static value
    /// used as it is, vdim when it is projected (by its own projection or the key's).
    pub fn value_input_dim(&self) -> usize {
        if self.value_as_static && !self.value_through_key() {
            self.pattern_dim
        } else {
            self.vdim
        }
    }

    /// Whether every input is static and nothing has weights (pure retrieval).
    pub fn is_static_execution(&self) -> bool {
        self.key_as_static
            && self.query_as_static
            && self.value_as_static
            && !self.value_as_connected
            && !self.normalize_pattern_affine
            && self.out_dim.is_none()
    }

    /// Checks the head count alone: all that a pure static retrieval (which takes its sizes from
    /// its inputs) has of its own to check.
    pub fn validate_heads(&self) -> std::result::Result<(), HopfieldError> {
        if self.num_heads == 0 {
            return Err(HopfieldError::Config {
                field: "num_heads",
                reason: "must be >= 1".into(),
            });
        }
        Ok(())
    }

    /// Checks the head count, the sizes and the flag combinations.
    pub fn validate(&self) -> std::result::Result<(), HopfieldError> {
        let cfg = |field, reason: &str| HopfieldError::Config {
            field,
            reason: reason.to_string(),
        };
        self.validate_heads()?;
        // hflayers asserts both; pattern_size = 0 it accepts (the output is out_proj.bias).
        if self.head_dim == 0 {
            return Err(cfg("hidden_size", "must be >= 1"));
        }
        if self.out_dim == Some(0) {
            return Err(cfg(
                "output_size",
                "must be >= 1 (or disable_out_projection)",
            ));
        }
        // H*hd, H*pd and the packed row count 2*H*hd + H*pd must exist as numbers before any
        // weight is sized from them.
        let rows = self
            .num_heads
            .checked_mul(self.head_dim)
            .and_then(|vh| vh.checked_mul(2))
            .zip(self.num_heads.checked_mul(self.pattern_dim))
            .and_then(|(a, b)| a.checked_add(b));
        if rows.is_none() {
            return Err(HopfieldError::Config {
                field: "num_heads/hidden_size/pattern_size",
                reason: format!(
                    "{} heads of {} (values {}) overflow the projection sizes",
                    self.num_heads, self.head_dim, self.pattern_dim
                ),
            });
        }
        if self.value_as_connected && !self.key_as_static {
            // A static value still goes through the key projection (hflayers), so each head's
            // value has hd features.
            if self.value_as_static && self.pattern_dim != self.head_dim {
                return Err(HopfieldError::Config {
                    field: "pattern_size",
                    reason: format!(
                        "a connected static pattern projection has hidden_size = {} features per \
                         head, got pattern_size {}",
                        self.head_dim, self.pattern_dim
                    ),
                });
            }
            if self.kdim != self.vdim {
                return Err(HopfieldError::Config {
                    field: "pattern_projection_as_connected",
                    reason: format!(
                        "needs stored_pattern_size == pattern_projection_size, got {} and {}",
                        self.kdim, self.vdim
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `vb.get_with_hints(shape, name, init)` after [`check_alloc`]: a tensor whose configured size
/// cannot be allocated is a typed error naming it, not an abort of the process. Every weight of
/// this crate's and hopfield-nn's modules comes through here.
///
/// ```
/// use candle_core::DType;
/// use candle_nn::{Init, VarBuilder, VarMap};
/// let map = VarMap::new();
/// let vb = VarBuilder::from_varmap(&map, DType::F32, &candle_core::Device::Cpu);
/// let w = hopfield_core::checked_param(&vb, (2, 3), "w", Init::Const(1.0))?;
/// assert_eq!(w.dims(), &[2, 3]);
/// assert!(hopfield_core::checked_param(&vb, (1usize << 40, 1usize << 40), "huge", Init::Const(0.0)).is_err());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn checked_param<S: Into<Shape>>(
    vb: &VarBuilder,
    shape: S,
    name: &str,
    init: Init,
) -> Result<Tensor> {
    let shape = shape.into();
    let full = match vb.prefix() {
        p if p.is_empty() => name.to_string(),
        p => format!("{p}.{name}"),
    };
    check_alloc(&full, shape.dims(), vb.dtype())?;
    // A tensor without elements has nothing to initialise, and fan-scaled inits divide by a
    // fan of 0 (candle's randn then fails on an infinite deviation; torch skips the init).
    let init = if shape.elem_count() == 0 {
        Init::Const(0.0)
    } else {
        init
    };
    // Seeded (crate::rng): a tensor the builder creates (not one it loads) gets its random
    // initial values from the seeded generator, written into the new variable in place.
    if !vb.contains_tensor(name) && shape.rank() > 0 {
        if let Some(values) = crate::rng::seeded_init(&init, &shape, vb.dtype(), vb.device())? {
            let t = vb.get_with_hints(shape, name, Init::Const(0.0))?;
            t.slice_set(&values, 0, 0)?;
            return Ok(t);
        }
    }
    vb.get_with_hints(shape, name, init)
}

/// The q/k/v projection weights.
#[derive(Debug, Clone)]
pub enum InProjection {
    /// `in_proj_weight`, rows `[q | k | v]`, static parts left out.
    Packed(Option<Tensor>),
    /// `q_proj_weight`, `k_proj_weight`, `v_proj_weight` (each absent when static).
    Separate {
        /// `(H*hd, E)`.
        q: Option<Tensor>,
        /// `(H*hd, kdim)`.
        k: Option<Tensor>,
        /// `(H*pd, kdim-projected or vdim)`.
        v: Option<Tensor>,
    },
}

/// All weights of one association core.
#[derive(Debug, Clone)]
pub struct CoreWeights {
    /// The layout they were built for.
    pub layout: CoreLayout,
    /// q/k/v projections.
    pub in_proj: InProjection,
    /// `in_proj_bias`: `[q (H*hd) | k (H*hd) | v (H*pd)]`, q and k parts absent when static.
    pub in_proj_bias: Option<Tensor>,
    /// `bias_k` (loaded for compatibility, never used: hflayers quirk Q1).
    pub bias_k: Option<Tensor>,
    /// `bias_v` (loaded for compatibility, never used: hflayers quirk Q1).
    pub bias_v: Option<Tensor>,
    /// `out_proj.weight`.
    pub out_proj_weight: Option<Tensor>,
    /// `out_proj.bias`.
    pub out_proj_bias: Option<Tensor>,
    /// `p_norm_weight` (Hopfield-space LayerNorm).
    pub p_norm_weight: Option<Tensor>,
    /// `p_norm_bias`.
    pub p_norm_bias: Option<Tensor>,
}

/// The projection of one input.
pub(crate) struct Projection {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl CoreWeights {
    /// Builds (or loads, depending on the `VarBuilder`) the weights of `layout` under `vb`, with
    /// hflayers' names and initialisation.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_core::{CoreLayout, CoreWeights};
    /// let map = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    /// let w = CoreWeights::load(CoreLayout::new(8, 2), vb)?;
    /// assert!(map.data().lock().unwrap().contains_key("in_proj_weight"));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn load(layout: CoreLayout, vb: VarBuilder) -> Result<Self> {
        layout.validate()?;
        let (qs, ks, vs) = (
            layout.query_as_static,
            layout.key_as_static,
            layout.value_as_static,
        );
        let (e, vh, vp) = (layout.embed_dim, layout.vh(), layout.vp());
        let p_norm = |name: &str, init| -> Result<Option<Tensor>> {
            if layout.normalize_pattern_affine {
                checked_param(&vb, layout.head_dim, name, init).map(Some)
            } else {
                Ok(None)
            }
        };
        let p_norm_weight = p_norm("p_norm_weight", Init::Const(1.0))?;
        let p_norm_bias = p_norm("p_norm_bias", Init::Const(0.0))?;
        let any_projected = !(qs && ks && vs);
        let in_proj = if layout.packed() {
            let rows = usize::from(!qs) * vh + usize::from(!ks) * vh + usize::from(!vs) * vp;
            InProjection::Packed(if any_projected {
                Some(checked_param(&vb, (rows, e), "in_proj_weight", PROJ_INIT)?)
            } else {
                None
            })
        } else {
            let v_in = if layout.value_through_key() {
                vh
            } else {
                layout.vdim
            };
            InProjection::Separate {
                q: (!qs)
                    .then(|| checked_param(&vb, (vh, e), "q_proj_weight", PROJ_INIT))
                    .transpose()?,
                k: (!ks)
                    .then(|| checked_param(&vb, (vh, layout.kdim), "k_proj_weight", PROJ_INIT))
                    .transpose()?,
                v: (!vs)
                    .then(|| checked_param(&vb, (vp, v_in), "v_proj_weight", PROJ_INIT))
                    .transpose()?,
            }
        };
        let in_proj_bias = if layout.bias && any_projected {
            let len = usize::from(!qs) * vh + usize::from(!ks) * vh + vp;
            Some(checked_param(&vb, len, "in_proj_bias", Init::Const(0.0))?)
        } else {
            None
        };
        let (bias_k, bias_v) = if layout.add_bias_kv {
            (
                (!ks)
                    .then(|| checked_param(&vb, (1, 1, vh), "bias_k", PROJ_INIT))
                    .transpose()?,
                (!vs)
                    .then(|| checked_param(&vb, (1, 1, vh), "bias_v", PROJ_INIT))
                    .transpose()?,
            )
        } else {
            (None, None)
        };
        let (out_proj_weight, out_proj_bias) = match layout.out_dim {
            Some(o) => {
                let op = vb.pp("out_proj");
                let w = checked_param(&op, (o, vp), "weight", PROJ_INIT)?;
                let b = if layout.bias {
                    Some(checked_param(&op, o, "bias", Init::Const(0.0))?)
                } else {
                    None
                };
                (Some(w), b)
            }
            None => (None, None),
        };
        Ok(Self {
            layout,
            in_proj,
            in_proj_bias,
            bias_k,
            bias_v,
            out_proj_weight,
            out_proj_bias,
            p_norm_weight,
            p_norm_bias,
        })
    }

    /// Weights of a pure static retrieval (no parameters at all).
    pub fn none(layout: CoreLayout) -> Self {
        Self {
            layout,
            in_proj: InProjection::Separate {
                q: None,
                k: None,
                v: None,
            },
            in_proj_bias: None,
            bias_k: None,
            bias_v: None,
            out_proj_weight: None,
            out_proj_bias: None,
            p_norm_weight: None,
            p_norm_bias: None,
        }
    }

    /// The dtype of the weights (`None` for a parameter-free core).
    pub fn dtype(&self) -> Option<candle_core::DType> {
        let from_proj = match &self.in_proj {
            InProjection::Packed(w) => w.as_ref().map(|w| w.dtype()),
            InProjection::Separate { q, k, v } => {
                q.as_ref().or(k.as_ref()).or(v.as_ref()).map(|w| w.dtype())
            }
        };
        from_proj.or_else(|| self.out_proj_weight.as_ref().map(|w| w.dtype()))
    }

    /// The (weight, bias) of the query, key and value projections, sliced as hflayers does.
    pub(crate) fn projections(&self) -> Result<[Projection; 3]> {
        let l = &self.layout;
        let (vh, vp) = (l.vh(), l.vp());
        let (qs, ks) = (l.query_as_static, l.key_as_static);
        // Bias offsets advance only over the non-static q and k parts; the v part is the rest.
        let mut off = 0;
        let mut take = |is_static: bool, len: usize| -> Result<Option<Tensor>> {
            if is_static {
                return Ok(None);
            }
            let b = match &self.in_proj_bias {
                Some(b) => Some(b.narrow(0, off, len)?),
                None => None,
            };
            off += len;
            Ok(b)
        };
        let bq = take(qs, vh)?;
        let bk = take(ks, vh)?;
        let bv = take(false, vp)?;
        let (wq, wk, wv) = match &self.in_proj {
            InProjection::Packed(Some(w)) => {
                let mut row = 0;
                let mut rows = |is_static: bool, len: usize| -> Result<Option<Tensor>> {
                    if is_static {
                        return Ok(None);
                    }
                    let r = w.narrow(0, row, len)?;
                    row += len;
                    Ok(Some(r))
                };
                let q = rows(qs, vh)?;
                let k = rows(ks, vh)?;
                let v = rows(l.value_as_static, vp)?;
                (q, k, v)
            }
            InProjection::Packed(None) => (None, None, None),
            InProjection::Separate { q, k, v } => (q.clone(), k.clone(), v.clone()),
        };
        Ok([
            Projection {
                weight: wq,
                bias: bq,
            },
            Projection {
                weight: wk,
                bias: bk,
            },
            Projection {
                weight: wv,
                bias: bv,
            },
        ])
    }
}
