//! Fused softmax retrieval: `out = softmax(beta q k^T + mask) v` per (sample, head), streamed
//! over blocks of stored patterns with an online softmax (FlashAttention-style), so memory is
//! O(L d + S d), never O(L S).
//!
//! Layouts are the ones linear projections produce: queries `(N, L, H, hd)`, keys `(N, S, H, hd)`,
//! values `(N, S, H, pd)`, output `(N, L, H, pd)` (reshape to `(N, L, H*pd)` for an output
//! projection, free). Strided views are read in place: a head split of a projection, one third of
//! a packed q/k/v product, or a static input shared by every head (head stride 0) cost no copy.
//! Only the last dimension must have stride 1.
//!
//! Besides the output, the forward pass yields the log-sum-exp of each query row's logits,
//! `lse = log sum_j exp(beta q k_j + mask_j)` (`-inf` for a fully masked row): the backward pass
//! recomputes the association from it (FlashAttention-2), sharded memories merge on it, and the
//! Hopfield energy is `-lse / beta`. Both outputs are differentiable with respect to q, k and v.
//!
//! Semantics shared by every path (fused CPU, fused CUDA, [`retrieve_composed`]):
//! - `beta` is one value or one per head, a constant (no gradient);
//! - the mask is additive (`-inf` = masked), broadcastable to `(N, H, L, S)`, a constant;
//! - `zero_association` adds a zero stored pattern with logit 0 that is never masked (hflayers'
//!   `add_zero_association`): it takes softmax mass and retrieves nothing;
//! - a fully masked row has association zero: its output is 0 (never NaN) and its gradients are 0.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use hopfield_cuda::retrieval::{retrieve, Retrieval};
//! let dev = Device::Cpu;
//! let q = Tensor::randn(0f32, 1., (2, 5, 4, 16), &dev)?;   // (N, L, H, hd)
//! let k = Tensor::randn(0f32, 1., (2, 7, 4, 16), &dev)?;   // (N, S, H, hd)
//! let v = Tensor::randn(0f32, 1., (2, 7, 4, 8), &dev)?;    // (N, S, H, pd)
//! let out = retrieve(&q, &k, &v, &Retrieval::new(0.25))?;
//! assert_eq!(out.dims(), &[2, 5, 4, 8]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#[cfg(target_arch = "x86_64")]
mod avx512;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod fold;
mod op;
mod projected;

pub use fold::{
    fold_input_affines, fold_input_affines_composed, retrieve_projected_affine, InputAffines,
};
pub use projected::{retrieve_projected, Projections};

use crate::error::{
    expect_additive_mask, expect_float, expect_param, expect_same_dtype, KernelError,
};
use crate::softmax::masked_softmax;
use candle_core::{DType, Device, Result, Tensor, D};

/// Parameters of one retrieval besides its three inputs.
#[derive(Debug, Clone)]
pub struct Retrieval {
    /// Inverse temperature: one value for every head, or one per head.
    pub beta: Vec<f64>,
    /// Additive mask broadcastable to `(N, H, L, S)` (`-inf` = masked); no gradient.
    pub mask: Option<Tensor>,
    /// hflayers' `add_zero_association`: an extra zero pattern with logit 0, never masked.
    pub zero_association: bool,
}

impl Retrieval {
    /// One beta for every head, no mask.
    pub fn new(beta: f64) -> Self {
        Self {
            beta: vec![beta],
            mask: None,
            zero_association: false,
        }
    }

    /// One beta per head.
    pub fn with_head_betas(mut self, betas: Vec<f64>) -> Self {
        self.beta = betas;
        self
    }

    /// An additive mask broadcastable to `(N, H, L, S)`.
    pub fn with_mask(mut self, mask: Option<Tensor>) -> Self {
        self.mask = mask;
        self
    }

    /// hflayers' `add_zero_association`.
    pub fn with_zero_association(mut self, on: bool) -> Self {
        self.zero_association = on;
        self
    }
}

/// The sizes of one retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub n: usize,
    pub l: usize,
    pub s: usize,
    pub h: usize,
    pub hd: usize,
    pub pd: usize,
}

/// Which implementation [`retrieve`] and [`retrieve_with_lse`] use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrievalPath {
    /// The fused kernel (CPU f32/f64, CUDA when built with the `cuda` feature).
    Fused,
    /// [`retrieve_composed`]: candle ops, materialises the `(N, H, L, S)` association.
    Composed,
}

/// The path [`retrieve`] takes for tensors of this dtype on this device.
pub fn retrieval_path(dtype: DType, device: &candle_core::Device) -> RetrievalPath {
    if op::fused_supported(dtype, device) || is_half_on_cpu(dtype, Some(device)) {
        RetrievalPath::Fused
    } else {
        RetrievalPath::Composed
    }
}

/// Checks the shapes and returns the geometry, the per-head betas and the mask broadcast to
/// `(N, H, L, S)` in the inputs' dtype.
fn prepare(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cfg: &Retrieval,
) -> Result<(Geometry, Vec<f64>, Option<Tensor>)> {
    let (n, l, h, hd) = q
        .dims4()
        .map_err(|_| shape_error("query", "(N, L, H, hd)", q))?;
    let (nk, s, hk, hdk) = k
        .dims4()
        .map_err(|_| shape_error("key", "(N, S, H, hd)", k))?;
    let (nv, sv, hv, pd) = v
        .dims4()
        .map_err(|_| shape_error("value", "(N, S, H, pd)", v))?;
    if (nk, hk, hdk) != (n, h, hd) {
        return Err(shape(
            "key",
            format!(
                "(N, S, H, hd) = ({n}, S, {h}, {hd}) for query {:?}",
                q.dims()
            ),
            k,
        ));
    }
    if (nv, sv, hv) != (n, s, h) {
        return Err(shape(
            "value",
            format!("(N, S, H, pd) = ({n}, {s}, {h}, pd) for key {:?}", k.dims()),
            v,
        ));
    }
    expect_float("retrieval", "query", q)?;
    expect_same_dtype("retrieval", ("key", k), ("query", q))?;
    expect_same_dtype("retrieval", ("value", v), ("query", q))?;
    let (betas, mask) = betas_and_mask(Geometry { n, l, s, h, hd, pd }, q.dtype(), cfg)?;
    Ok((Geometry { n, l, s, h, hd, pd }, betas, mask))
}

/// The per-head betas and the mask broadcast to `(N, H, L, S)` in `dtype`, checked.
fn betas_and_mask(
    g: Geometry,
    dtype: DType,
    cfg: &Retrieval,
) -> Result<(Vec<f64>, Option<Tensor>)> {
    let Geometry { n, l, s, h, .. } = g;
    let betas = match cfg.beta.len() {
        1 => vec![cfg.beta[0]; h],
        x if x == h => cfg.beta.clone(),
        x => {
            return Err(KernelError::Shape {
                op: "retrieval",
                arg: "beta",
                expected: format!("1 value or one per head ({h})"),
                got: vec![x],
            }
            .into())
        }
    };
    for &b in &betas {
        // Representable in the dtype the logits are computed in (f32 for f16/bf16 on the CPU).
        let compute = if is_half_on_cpu(dtype, cfg.mask.as_ref().map(|m| m.device())) {
            DType::F32
        } else {
            dtype
        };
        expect_param(
            "retrieval",
            "beta",
            b,
            f64::NEG_INFINITY,
            compute,
            "finite and representable in the inputs' dtype",
        )?;
    }
    let mask = match &cfg.mask {
        Some(m) => {
            expect_additive_mask("retrieval", "mask", m)?;
            let m = m.detach().to_dtype(dtype)?;
            Some(m.broadcast_as((n, h, l, s)).map_err(|_| {
                shape(
                    "mask",
                    format!("broadcastable to (N, H, L, S) = ({n}, {h}, {l}, {s})"),
                    cfg.mask.as_ref().unwrap_or(&m),
                )
            })?)
        }
        None => None,
    };
    Ok((betas, mask))
}

/// f16 and bf16 on the CPU: the kernel computes in f32 (the logits of an f16 model overflow
/// f16's 65504 at realistic sizes, and f32 is also what the CPU computes fastest).
fn is_half_on_cpu(dtype: DType, device: Option<&Device>) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && device.is_none_or(Device::is_cpu)
}

/// The tensors in f32 (differentiable: gradients flow back in the original dtype).
fn upcast<const K: usize>(ts: [&Tensor; K]) -> Result<[Tensor; K]> {
    let mut out = Vec::with_capacity(K);
    for t in ts {
        expect_float("retrieval", "input", t)?;
        out.push(t.to_dtype(DType::F32)?);
    }
    out.try_into()
        .map_err(|_| candle_core::Error::Msg("retrieval: upcast arity".into()))
}

/// `KernelError::Shape` for an argument of the retrieval.
fn shape(arg: &'static str, expected: String, t: &Tensor) -> candle_core::Error {
    KernelError::Shape {
        op: "retrieval",
        arg,
        expected,
        got: t.dims().to_vec(),
    }
    .into()
}

fn shape_error(what: &'static str, expected: &str, t: &Tensor) -> candle_core::Error {
    shape(what, expected.to_string(), t)
}

/// `softmax(beta q k^T + mask) v` per (sample, head): `(N, L, H, hd)`, `(N, S, H, hd)`,
/// `(N, S, H, pd)` -> `(N, L, H, pd)`. Fused where [`retrieval_path`] says so, composed elsewhere;
/// differentiable with respect to q, k and v on every path.
pub fn retrieve(q: &Tensor, k: &Tensor, v: &Tensor, cfg: &Retrieval) -> Result<Tensor> {
    if is_half_on_cpu(q.dtype(), Some(q.device())) {
        let [q32, k32, v32] = upcast([q, k, v])?;
        return retrieve(&q32, &k32, &v32, cfg)?.to_dtype(q.dtype());
    }
    let (g, betas, mask) = prepare(q, k, v, cfg)?;
    let z = cfg.zero_association;
    if !op::fused_supported_for(q.dtype(), q.device(), &g) {
        Ok(composed(q, k, v, g, &betas, mask.as_ref(), z)?.0)
    } else if q.device().is_cpu() {
        op::fused_output(q, k, v, g, betas, mask, z)
    } else {
        // The GPU kernels return the flat [out | lse] form only.
        Ok(op::fused(q, k, v, g, betas, mask, z)?.0)
    }
}

/// [`retrieve`] and the log-sum-exp of each query row's logits, `(N, H, L)` (`-inf` for a fully
/// masked row). Both are differentiable.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{retrieve_with_lse, Retrieval};
/// let q = Tensor::new(&[[[[0f64]]]], &Device::Cpu)?;              // one query, logit 0 for both
/// let k = Tensor::new(&[[[[1f64]], [[2.]]]], &Device::Cpu)?;
/// let v = Tensor::new(&[[[[1f64]], [[3.]]]], &Device::Cpu)?;
/// let (out, lse) = retrieve_with_lse(&q, &k, &v, &Retrieval::new(1.0))?;
/// assert_eq!(out.flatten_all()?.to_vec1::<f64>()?, vec![2.0]);      // mean of the values
/// assert!((lse.flatten_all()?.to_vec1::<f64>()?[0] - 2f64.ln()).abs() < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn retrieve_with_lse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cfg: &Retrieval,
) -> Result<(Tensor, Tensor)> {
    if is_half_on_cpu(q.dtype(), Some(q.device())) {
        let [q32, k32, v32] = upcast([q, k, v])?;
        let (out, lse) = retrieve_with_lse(&q32, &k32, &v32, cfg)?;
        return Ok((out.to_dtype(q.dtype())?, lse.to_dtype(q.dtype())?));
    }
    let (g, betas, mask) = prepare(q, k, v, cfg)?;
    if op::fused_supported_for(q.dtype(), q.device(), &g) {
        op::fused(q, k, v, g, betas, mask, cfg.zero_association)
    } else {
        composed(q, k, v, g, &betas, mask.as_ref(), cfg.zero_association)
    }
}

/// Sizes of a packed `[q | k | v]` projection, see [`retrieve_packed`].
///
/// ```
/// use hopfield_cuda::retrieval::PackedSizes;
/// // 8 heads of 16 for queries and keys, values of 32 per head: 8 * (16 + 16 + 32) features.
/// assert_eq!(PackedSizes { heads: 8, hd: 16, pd: 32 }.features(), 512);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedSizes {
    /// Heads H.
    pub heads: usize,
    /// Query and key size per head.
    pub hd: usize,
    /// Value size per head.
    pub pd: usize,
}

impl PackedSizes {
    /// Features of one packed row: `H*hd + H*hd + H*pd`.
    pub fn features(&self) -> usize {
        self.heads * (2 * self.hd + self.pd)
    }
}

/// [`retrieve`] for self-association from one packed projection `qkv`,
/// `(N, L, H*hd + H*hd + H*pd)`: the columns hold the queries, the keys and the values, each
/// head-major (what one GEMM against stacked `[W_q; W_k; W_v]` produces), and every row is both
/// a query and a stored pattern (S = L). Returns the output as `(N, L, H*pd)`, the layout an
/// output projection reads. The kernel reads the three parts in place, and the gradient with
/// respect to `qkv` comes back as one tensor in the packed layout, so the packed GEMM's backward
/// sees one gradient instead of three zero-padded slices.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{retrieve, retrieve_packed, PackedSizes, Retrieval};
/// let sizes = PackedSizes { heads: 2, hd: 3, pd: 4 };
/// let qkv = Tensor::randn(0f64, 1., (2, 5, sizes.features()), &Device::Cpu)?;
/// let out = retrieve_packed(&qkv, sizes, &Retrieval::new(0.5))?;
/// let part = |from: usize, d: usize| qkv.narrow(2, from, 2 * d)?.reshape((2, 5, 2, d));
/// let (q, k, v) = (part(0, 3)?, part(6, 3)?, part(12, 4)?);
/// let expected = retrieve(&q, &k, &v, &Retrieval::new(0.5))?.reshape((2, 5, 8))?;
/// assert!((out - expected)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn retrieve_packed(qkv: &Tensor, sizes: PackedSizes, cfg: &Retrieval) -> Result<Tensor> {
    let (n, l, f) = qkv
        .dims3()
        .map_err(|_| shape_error("packed q/k/v", "(N, L, H*hd + H*hd + H*pd)", qkv))?;
    let PackedSizes { heads: h, hd, pd } = sizes;
    expect_float("retrieval", "packed q/k/v", qkv)?;
    if is_half_on_cpu(qkv.dtype(), Some(qkv.device())) {
        let [x] = upcast([qkv])?;
        return retrieve_packed(&x, sizes, cfg)?.to_dtype(qkv.dtype());
    }
    if f != sizes.features() || h == 0 {
        return Err(shape(
            "packed q/k/v",
            format!(
                "(N, L, {}): {} features for {h} heads of hd = {hd}, pd = {pd} (and heads >= 1)",
                sizes.features(),
                sizes.features()
            ),
            qkv,
        ));
    }
    let g = Geometry {
        n,
        l,
        s: l,
        h,
        hd,
        pd,
    };
    // The packed op is CPU-only; elsewhere the three views go through `retrieve`.
    if op::fused_supported(qkv.dtype(), qkv.device())
        && qkv.device().is_cpu()
        && qkv.stride().last() == Some(&1)
    {
        let (betas, mask) = betas_and_mask(g, qkv.dtype(), cfg)?;
        op::fused_packed(qkv, g, betas, mask, cfg.zero_association)
    } else {
        let part = |from: usize, d: usize| qkv.narrow(2, from, h * d)?.reshape((n, l, h, d));
        let (q, k, v) = (part(0, hd)?, part(h * hd, hd)?, part(2 * h * hd, pd)?);
        retrieve(&q, &k, &v, cfg)?.reshape((n, l, h * pd))
    }
}

/// The same function from candle ops: forms the `(N, H, L, S)` logits and association explicitly.
/// The reference the fused kernels are tested against, and the path for dtypes and devices
/// without a fused kernel.
pub fn retrieve_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cfg: &Retrieval,
) -> Result<(Tensor, Tensor)> {
    let (g, betas, mask) = prepare(q, k, v, cfg)?;
    composed(q, k, v, g, &betas, mask.as_ref(), cfg.zero_association)
}

/// Logits `(N, H, L, S')` (masked, with the zero pattern's column when asked) and their softmax.
fn composed_association(
    q: &Tensor,
    k: &Tensor,
    g: Geometry,
    betas: &[f64],
    mask: Option<&Tensor>,
    zero_association: bool,
) -> Result<(Tensor, Tensor)> {
    let dtype = q.dtype();
    let dev = q.device();
    let qh = q.transpose(1, 2)?.contiguous()?; // (N, H, L, hd)
    let kt = k.permute((0, 2, 3, 1))?.contiguous()?; // (N, H, hd, S)
    let beta = Tensor::new(betas, dev)?
        .to_dtype(dtype)?
        .reshape((1, g.h, 1, 1))?;
    let mut logits = qh.matmul(&kt)?.broadcast_mul(&beta)?;
    // The fused kernel reports NaN or +inf logits (overflow); so does this path.
    crate::expect_logits_in_range(&logits, q.dims())?;
    if let Some(m) = mask {
        logits = logits.broadcast_add(m)?;
    }
    if zero_association {
        let z = Tensor::zeros((g.n, g.h, g.l, 1), dtype, dev)?;
        logits = Tensor::cat(&[&logits, &z], 3)?;
    }
    let p = masked_softmax(&logits)?;
    Ok((logits, p))
}

fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: Geometry,
    betas: &[f64],
    mask: Option<&Tensor>,
    zero_association: bool,
) -> Result<(Tensor, Tensor)> {
    let dtype = q.dtype();
    let dev = q.device();
    if g.n * g.l == 0 || g.s == 0 {
        // Nothing to reduce over: no queries, or no stored patterns (every row fully masked,
        // lse -inf; with the zero pattern alone, lse 0). The output is zero either way.
        let out = Tensor::zeros((g.n, g.l, g.h, g.pd), dtype, dev)?;
        let lse_value = if zero_association {
            0.0
        } else {
            f64::NEG_INFINITY
        };
        let lse = Tensor::full(lse_value, (g.n, g.h, g.l), dev)?.to_dtype(dtype)?;
        return Ok((out, lse));
    }
    let vh = v.transpose(1, 2)?.contiguous()?; // (N, H, S, pd)
    let (logits, p) = composed_association(q, k, g, betas, mask, zero_association)?;
    let p = if zero_association {
        p.narrow(3, 0, g.s)?
    } else {
        p
    };
    let out = p.matmul(&vh)?.transpose(1, 2)?.contiguous()?;
    // As the fused kernel: NaN or inf among the values (0 * inf) is reported, not returned.
    if !crate::all_finite(&out)? {
        return Err(KernelError::Overflow {
            op: "retrieval",
            what: "the logits beta q k^T or the retrieved values",
            dtype,
            rows: out.dim(0)? * out.dim(1)?,
            shape: q.dims().to_vec(),
        }
        .into());
    }
    // lse = m + log(sum exp(x - m)); a fully masked row (sum 0) gets -inf with zero gradient.
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let finite = m.ne(f64::NEG_INFINITY)?;
    let m = finite.where_cond(&m, &m.zeros_like()?)?;
    let sum = logits.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?;
    let positive = sum.gt(0.0)?;
    let safe = positive.where_cond(&sum, &sum.ones_like()?)?;
    let lse = (safe.log()? + m)?;
    let ninf = Tensor::full(f64::NEG_INFINITY, lse.shape(), dev)?.to_dtype(dtype)?;
    let lse = positive.where_cond(&lse, &ninf)?.squeeze(3)?;
    Ok((out, lse))
}

/// Per (sample, head) Frobenius norm `||xi(a) - xi(b)||_F` of the change between the
/// associations of two query states `a` and `b`, both `(N, L, H, hd)`, against the same keys
/// `(N, S, H, hd)` under the same `cfg` (beta, mask, zero pattern). `lse_a` and `lse_b` are the
/// states' log-sum-exps `(N, H, L)` from [`retrieve_with_lse`]; the associations are recomputed
/// block by block from them and never formed. Returns `N * H` values, index `n * H + h`; no
/// gradient (it is a convergence test). This is the test of hflayers' iterated updates ("stop
/// when the association changed by at most eps").
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{association_change, retrieve_with_lse, Retrieval};
/// let dev = Device::Cpu;
/// let k = Tensor::randn(0f64, 1., (2, 6, 3, 4), &dev)?;
/// let a = Tensor::randn(0f64, 1., (2, 5, 3, 4), &dev)?;
/// let cfg = Retrieval::new(0.5);
/// let (b, lse_a) = retrieve_with_lse(&a, &k, &k, &cfg)?;   // one update step: b = xi(a) k
/// let (_, lse_b) = retrieve_with_lse(&b, &k, &k, &cfg)?;
/// let change = association_change(&b, &lse_b, &a, &lse_a, &k, &cfg)?;
/// assert_eq!(change.len(), 6);
/// assert!(association_change(&a, &lse_a, &a, &lse_a, &k, &cfg)?.iter().all(|c| *c < 1e-12));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn association_change(
    a: &Tensor,
    lse_a: &Tensor,
    b: &Tensor,
    lse_b: &Tensor,
    k: &Tensor,
    cfg: &Retrieval,
) -> Result<Vec<f64>> {
    let (g, betas, mask) = prepare(a, k, k, cfg)?;
    if b.dims() != a.dims() || b.dtype() != a.dtype() {
        return Err(KernelError::Shape {
            op: "association_change",
            arg: "b",
            expected: format!("the shape and dtype of `a`, {:?} {:?}", a.dims(), a.dtype()),
            got: b.dims().to_vec(),
        }
        .into());
    }
    for (name, lse) in [("lse_a", lse_a), ("lse_b", lse_b)] {
        if lse.dims() != [g.n, g.h, g.l] || lse.dtype() != a.dtype() {
            return Err(KernelError::Shape {
                op: "association_change",
                arg: name,
                expected: format!("(N, H, L) = ({}, {}, {}) in {:?}", g.n, g.h, g.l, a.dtype()),
                got: lse.dims().to_vec(),
            }
            .into());
        }
    }
    if op::fused_supported(a.dtype(), a.device()) && a.device().is_cpu() {
        let p = op::Params {
            g,
            betas,
            zero_association: cfg.zero_association,
        };
        op::association_change_cpu(&p, a, b, k, lse_a, lse_b, mask.as_ref())
    } else {
        association_change_composed(a, b, k, cfg)
    }
}

/// [`association_change`] from candle ops (both associations formed explicitly): the reference
/// the fused kernel is tested against.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{association_change_composed, Retrieval};
/// let k = Tensor::new(&[[[[1f64]], [[-1.]]]], &Device::Cpu)?;  // (1, 2, 1, 1)
/// let (a, b) = (Tensor::new(&[[[[0f64]]]], &Device::Cpu)?, Tensor::new(&[[[[10f64]]]], &Device::Cpu)?);
/// // xi(a) = (1/2, 1/2), xi(b) ~ (1, 0): the change is ~ sqrt(1/4 + 1/4).
/// let c = association_change_composed(&a, &b, &k, &Retrieval::new(1.0))?;
/// assert!((c[0] - 0.5f64.sqrt()).abs() < 1e-8);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn association_change_composed(
    a: &Tensor,
    b: &Tensor,
    k: &Tensor,
    cfg: &Retrieval,
) -> Result<Vec<f64>> {
    let (g, betas, mask) = prepare(a, k, k, cfg)?;
    let z = cfg.zero_association;
    let (_, pa) = composed_association(a, k, g, &betas, mask.as_ref(), z)?;
    let (_, pb) = composed_association(b, k, g, &betas, mask.as_ref(), z)?;
    (pa - pb)?
        .sqr()?
        .sum((2, 3))?
        .sqrt()?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

#[cfg(test)]
mod tests;
