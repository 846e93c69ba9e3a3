//! The modern Hopfield energy (Ramsauer et al. 2021, eq. 2) of state patterns against stored
//! patterns, per (sample, head, query), with its gradient and the update rule that descends it.
//!
//! For a state (query) `xi` and stored patterns `X = (x_1 .. x_S)` of one (sample, head):
//!
//! ```text
//! E(xi) = -1/beta * lse(beta X^T xi + mask)   the attraction to the stored patterns
//!         + 1/2 xi^T xi                       keeps the state bounded (the convex part)
//!         + 1/beta * log S'                   constant: S' = patterns taking part in the row
//!         + 1/2 M^2                           constant: M = largest stored-pattern norm
//! ```
//!
//! The two constants make `0 <= E <= 2 M^2` (without additive biases in the mask); they depend
//! on neither `xi` nor the association, so they change no gradient with respect to `xi`.
//! `dE/dxi = xi - X^T softmax(beta X^T xi + mask)`, and the Hopfield update
//! `xi <- X^T softmax(beta X^T xi)` (the layer's update step, keys as values) is the
//! concave-convex procedure on `E`: it never increases it.
//!
//! Conventions are the layer's: inputs are the *projected* state and stored patterns, heads-major
//! `(N, H, L, d)` and `(N, H, S, d)` (what `hopfield_core_forward`'s association sees), beta is one
//! per head, masks follow [`Masks`] (masked patterns leave the log-sum-exp and the count `S'`),
//! and `add_zero_association`'s zero pattern takes part in both (its norm is 0). A fully masked
//! row has no patterns: its energy is `1/2 |xi|^2 + 1/2 M^2` and its update retrieves zero, as
//! the layer's association does. `M` is taken over all patterns of the (sample, head), masked or
//! not, so it is one value per (sample, head).
//!
//! The sparse associations ([`Association`]: sparsemax, entmax-1.5, alpha-entmax; Hu et al.
//! 2023, "On Sparse Modern Hopfield Model") have energies of their own: the log-sum-exp is the
//! convex conjugate of the negative Shannon entropy, and alpha-entmax puts the Tsallis entropy
//! `H_a(p) = (1 - sum_j p_j^a) / (a (a - 1))` in its place:
//!
//! ```text
//! E(xi) = -1/beta * Omega*(z) + 1/2 xi^T xi + 1/beta * H_a(uniform over S') + 1/2 M^2,
//! z = beta X^T xi + mask,   Omega*(z) = max_p <p, z> + H_a(p) = <p, z> + H_a(p),  p = entmax_a(z)
//! ```
//!
//! `H_a(uniform over S') = (1 - S'^(1-a)) / (a (a - 1))` is the largest entropy, the constant that
//! keeps `E >= 0` as `log S'` does for softmax (its `a -> 1` limit; every term tends to the softmax
//! energy's). By Danskin's theorem `grad Omega* = p`, so `dE/dxi = xi - X^T p` and the update
//! `xi <- X^T entmax_a(beta X^T xi)` is again the concave-convex step: it never increases `E`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use hopfield_core::energy::{hopfield_energy, hopfield_update, EnergySpec};
//! use hopfield_core::Masks;
//! let dev = Device::Cpu;
//! let stored = Tensor::randn(0f64, 1., (2, 3, 10, 8), &dev)?; // (N, H, S, d)
//! let state = Tensor::randn(0f64, 1., (2, 3, 4, 8), &dev)?;   // (N, H, L, d)
//! let spec = EnergySpec::new(0.5);
//! let before = hopfield_energy(&state, &stored, &spec, Masks::default())?;   // (N, H, L)
//! let next = hopfield_update(&state, &stored, &spec, Masks::default())?;
//! let after = hopfield_energy(&next, &stored, &spec, Masks::default())?;
//! assert!((after - before)?.max_all()?.to_scalar::<f64>()? <= 1e-12);
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::association::Association;
use crate::error::{expect_float, HopfieldError};
use crate::forward::check_finite;
use crate::masks::{additive_mask, Masks};
use candle_core::{DType, Result, Tensor, D};
use hopfield_cuda::retrieval::{retrieve, retrieve_with_lse, Retrieval};

/// Everything besides the patterns and masks that fixes the energy: beta per head, the zero
/// pattern and the association.
///
/// ```
/// use hopfield_core::energy::EnergySpec;
/// let spec = EnergySpec::new(1.0).with_head_betas(vec![0.5, 2.0]).with_zero_association(true);
/// assert_eq!(spec.betas, vec![0.5, 2.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EnergySpec {
    /// Inverse temperature: one value for every head, or one per head; each finite and positive.
    pub betas: Vec<f64>,
    /// hflayers' `add_zero_association`: a zero stored pattern that is never masked.
    pub zero_association: bool,
    /// The association whose energy this is (softmax, or a sparse [`Association`]).
    pub association: Association,
}

impl EnergySpec {
    /// One beta for every head, no zero pattern, softmax association.
    pub fn new(beta: f64) -> Self {
        Self {
            betas: vec![beta],
            zero_association: false,
            association: Association::Softmax,
        }
    }

    /// The energy of an association with this configuration over `heads` heads: its per-head
    /// beta, its zero pattern and its association function.
    ///
    /// ```
    /// use hopfield_core::{energy::EnergySpec, CoreConfig, Scaling};
    /// let cfg = CoreConfig::default().with_scaling(Scaling::Scalar(0.25));
    /// assert_eq!(EnergySpec::from_config(&cfg, 2)?.betas, vec![0.25, 0.25]);
    /// # Ok::<(), hopfield_core::HopfieldError>(())
    /// ```
    pub fn from_config(
        cfg: &crate::CoreConfig,
        heads: usize,
    ) -> std::result::Result<Self, HopfieldError> {
        Ok(Self {
            betas: cfg.scaling.per_head(heads)?,
            zero_association: cfg.add_zero_association,
            association: cfg.association.clone(),
        })
    }

    /// One beta per head.
    pub fn with_head_betas(mut self, betas: Vec<f64>) -> Self {
        self.betas = betas;
        self
    }

    /// hflayers' `add_zero_association`.
    pub fn with_zero_association(mut self, on: bool) -> Self {
        self.zero_association = on;
        self
    }

    /// The association whose energy is computed.
    pub fn with_association(mut self, association: Association) -> Self {
        self.association = association;
        self
    }
}

/// The checked inputs of one energy evaluation.
struct Checked {
    /// `(N, L, H, d)` view of the state, what the retrieval kernel reads.
    q: Tensor,
    /// `(N, S, H, d)` view of the stored patterns.
    k: Tensor,
    /// Beta per head, `(1, H, 1)` in the inputs' dtype.
    beta: Tensor,
    /// The retrieval's parameters (betas, additive mask, zero pattern).
    retrieval: Retrieval,
    dims: (usize, usize, usize, usize),
}

fn check(xi: &Tensor, stored: &Tensor, spec: &EnergySpec, masks: Masks) -> Result<Checked> {
    expect_float("state pattern (xi)", xi)?;
    expect_float("stored pattern (X)", stored)?;
    let (n, h, l, d) = xi.dims4().map_err(|_| HopfieldError::Shape {
        arg: "state pattern (xi)",
        expected: "(N, H, L, d)".into(),
        got: xi.dims().to_vec(),
    })?;
    let (ns, hs, s, ds) = stored.dims4().map_err(|_| HopfieldError::Shape {
        arg: "stored pattern (X)",
        expected: format!("(N, H, S, d) = ({n}, {h}, S, {d})"),
        got: stored.dims().to_vec(),
    })?;
    if (ns, hs, ds) != (n, h, d) {
        return Err(HopfieldError::Mismatch {
            what: "N, H and d",
            lhs_arg: "state pattern (xi)",
            lhs: xi.dims().to_vec(),
            rhs_arg: "stored pattern (X)",
            rhs: stored.dims().to_vec(),
        }
        .into());
    }
    if stored.dtype() != xi.dtype() {
        return Err(HopfieldError::DtypeMismatch {
            arg: "stored pattern (X)",
            dtype: format!("{:?}", stored.dtype()),
            model: format!("{:?} (the state's)", xi.dtype()),
        }
        .into());
    }
    let betas = match spec.betas.len() {
        1 => vec![spec.betas[0]; h],
        x if x == h => spec.betas.clone(),
        x => {
            return Err(HopfieldError::PerHeadLength {
                field: "beta",
                heads: h,
                got: x,
            }
            .into())
        }
    };
    if let Some(b) = betas.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
        return Err(HopfieldError::Config {
            field: "beta",
            reason: format!("the energy needs a finite, positive beta per head, got {b}"),
        }
        .into());
    }
    spec.association.validate(h)?;
    check_finite("state pattern (xi)", xi)?;
    check_finite("stored pattern (X)", stored)?;
    let mask = additive_mask(&masks, (n, h, l, s), false, xi.dtype())?;
    let beta = Tensor::new(betas.as_slice(), xi.device())?
        .to_dtype(xi.dtype())?
        .reshape((1, h, 1))?;
    Ok(Checked {
        q: xi.transpose(1, 2)?,
        k: stored.transpose(1, 2)?,
        beta,
        retrieval: Retrieval::new(1.0)
            .with_head_betas(betas)
            .with_mask(mask)
            .with_zero_association(spec.zero_association),
        dims: (n, h, l, s),
    })
}

/// `S'` per row, `(N, H, L)`: the stored patterns that take part (mask above `-inf`), plus the
/// zero pattern.
fn participating(c: &Checked, dtype: DType) -> Result<Tensor> {
    let (n, h, l, s) = c.dims;
    let zero = f64::from(u8::from(c.retrieval.zero_association));
    let dev = c.q.device();
    match &c.retrieval.mask {
        None => Tensor::full((s as f64 + zero) as f32, (n, h, l), dev)?.to_dtype(dtype),
        Some(m) => {
            let kept = m
                .broadcast_as((n, h, l, s))?
                .ne(f64::NEG_INFINITY)?
                .to_dtype(dtype)?
                .sum(D::Minus1)?;
            kept + zero
        }
    }
}

/// The energy `E(xi)` of each state row against the stored patterns, `(N, H, L)`: state
/// `(N, H, L, d)`, stored patterns `(N, H, S, d)` (the projected, head-split patterns of the
/// layer). Differentiable with respect to both (candle autograd through the fused retrieval's
/// log-sum-exp); see the module docs for the terms.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::energy::{hopfield_energy, EnergySpec};
/// use hopfield_core::Masks;
/// // Stored patterns +1 and -1 in one dimension, the state at 0, beta 1:
/// // E = -log(e^0 + e^0) + 0 + log 2 + 1/2 = 1/2.
/// let x = Tensor::new(&[[[[1f64], [-1.]]]], &Device::Cpu)?;
/// let xi = Tensor::new(&[[[[0f64]]]], &Device::Cpu)?;
/// let e = hopfield_energy(&xi, &x, &EnergySpec::new(1.0), Masks::default())?;
/// assert!((e.flatten_all()?.to_vec1::<f64>()?[0] - 0.5).abs() < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_energy(
    xi: &Tensor,
    stored: &Tensor,
    spec: &EnergySpec,
    masks: Masks,
) -> Result<Tensor> {
    let c = check(xi, stored, spec, masks)?;
    match spec.association.head_alphas(c.dims.1) {
        None => softmax_energy(xi, stored, &c),
        Some(alphas) => sparse_energy(xi, stored, &c, &spec.association, &alphas),
    }
}

fn softmax_energy(xi: &Tensor, stored: &Tensor, c: &Checked) -> Result<Tensor> {
    let dtype = xi.dtype();
    let (_, lse) = retrieve_with_lse(&c.q, &c.k, &c.k, &c.retrieval)?;
    let count = participating(c, dtype)?;
    // A row without patterns has lse = -inf and log S' = -inf; both terms are dropped there
    // (where_cond also keeps the -inf out of the gradient).
    let some = count.gt(0.0)?;
    let zeros = count.zeros_like()?;
    let lse = some.where_cond(&lse, &zeros)?;
    let log_count = some.where_cond(&count.maximum(1.0)?.log()?, &zeros)?;
    let attraction = (log_count - lse)?.broadcast_div(&c.beta)?;
    let half_norm = (xi.sqr()?.sum(D::Minus1)? * 0.5)?;
    let m2 = stored.sqr()?.sum(D::Minus1)?.max_keepdim(D::Minus1)?; // (N, H, 1)
    (attraction + half_norm)?.broadcast_add(&(m2 * 0.5)?)
}

/// One Hopfield update of the state, `X^T softmax(beta X^T xi + mask)`, `(N, H, L, d)`: the
/// layer's update step (the stored patterns as values), with the spec's association in place of
/// softmax; it never increases [`hopfield_energy`]. Softmax runs on the fused retrieval kernel;
/// the sparse associations form the `(N, H, L, S)` association.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::energy::{hopfield_energy, hopfield_update, EnergySpec};
/// use hopfield_core::{Association, Masks};
/// let stored = Tensor::randn(0f64, 1., (1, 2, 12, 6), &Device::Cpu)?;
/// let state = Tensor::randn(0f64, 1., (1, 2, 3, 6), &Device::Cpu)?;
/// let spec = EnergySpec::new(2.0).with_association(Association::Sparsemax);
/// let e0 = hopfield_energy(&state, &stored, &spec, Masks::default())?;
/// let next = hopfield_update(&state, &stored, &spec, Masks::default())?;
/// let e1 = hopfield_energy(&next, &stored, &spec, Masks::default())?;
/// assert!((e1 - e0)?.max_all()?.to_scalar::<f64>()? <= 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_update(
    xi: &Tensor,
    stored: &Tensor,
    spec: &EnergySpec,
    masks: Masks,
) -> Result<Tensor> {
    let c = check(xi, stored, spec, masks)?;
    if spec.association.is_softmax() {
        return retrieve(&c.q, &c.k, &c.k, &c.retrieval)?.transpose(1, 2);
    }
    let (_, p) = sparse_association(xi, stored, &c, &spec.association)?;
    let s = c.dims.3;
    // The zero pattern's column retrieves nothing.
    p.narrow(3, 0, s)?
        .contiguous()?
        .matmul(&stored.contiguous()?)
}

/// The logits `z = beta X^T xi + mask` `(N, H, L, S')` (the zero pattern's column last, when
/// there is one) with masked entries set to 0, and the association `p` of `z` (0 where masked).
fn sparse_association(
    xi: &Tensor,
    stored: &Tensor,
    c: &Checked,
    association: &Association,
) -> Result<(Tensor, Tensor)> {
    let (n, h, l, _) = c.dims;
    let kt = stored.transpose(2, 3)?.contiguous()?;
    let mut z = xi
        .contiguous()?
        .matmul(&kt)?
        .broadcast_mul(&c.beta.unsqueeze(3)?)?;
    hopfield_cuda::expect_logits_in_range(&z, xi.dims())?;
    if let Some(m) = &c.retrieval.mask {
        z = z.broadcast_add(m)?;
    }
    if c.retrieval.zero_association {
        let zero = Tensor::zeros((n, h, l, 1), z.dtype(), z.device())?;
        z = Tensor::cat(&[&z, &zero], 3)?;
    }
    let p = association.apply(&z)?;
    // p is exactly 0 on masked entries; 0 stands in for their -inf in <p, z>.
    let z = z.ne(f64::NEG_INFINITY)?.where_cond(&z, &z.zeros_like()?)?;
    Ok((z, p))
}

/// `-Omega*(z)/beta + H_a(uniform)/beta + 1/2 |xi|^2 + 1/2 M^2` (module docs).
fn sparse_energy(
    xi: &Tensor,
    stored: &Tensor,
    c: &Checked,
    association: &Association,
    alphas: &[f64],
) -> Result<Tensor> {
    let dtype = xi.dtype();
    let (z, p) = sparse_association(xi, stored, c, association)?;
    let alpha = Tensor::new(alphas, xi.device())?
        .to_dtype(dtype)?
        .reshape((1, alphas.len(), 1))?;
    let norm = alpha.affine(1.0, -1.0)?.mul(&alpha)?; // a (a - 1)
    let inner = (&p * &z)?.sum(D::Minus1)?;
    // sum p^a over the support (p = 0 contributes 0, and no NaN gradient through log 0).
    let support = p.gt(0.0)?;
    let safe = support.where_cond(&p, &p.ones_like()?)?;
    let powered = safe.log()?.broadcast_mul(&alpha.unsqueeze(3)?)?.exp()?;
    let sum_pa = support
        .where_cond(&powered, &p.zeros_like()?)?
        .sum(D::Minus1)?;
    let entropy = sum_pa.affine(-1.0, 1.0)?.broadcast_div(&norm)?;
    let conjugate = (inner + entropy)?;
    let count = participating(c, dtype)?;
    let some = count.gt(0.0)?;
    // The largest entropy, of the uniform distribution over the S' patterns: (1 - S'^(1-a)) / (a (a-1)).
    let one_minus_a = alpha.affine(-1.0, 1.0)?;
    let max_entropy = count
        .maximum(1.0)?
        .log()?
        .broadcast_mul(&one_minus_a)?
        .exp()?
        .affine(-1.0, 1.0)?
        .broadcast_div(&norm)?;
    let zeros = count.zeros_like()?;
    let attraction = some
        .where_cond(&(max_entropy - conjugate)?, &zeros)?
        .broadcast_div(&c.beta)?;
    let half_norm = (xi.sqr()?.sum(D::Minus1)? * 0.5)?;
    let m2 = stored.sqr()?.sum(D::Minus1)?.max_keepdim(D::Minus1)?;
    (attraction + half_norm)?.broadcast_add(&(m2 * 0.5)?)
}

/// The gradient `dE/dxi = xi - X^T softmax(beta X^T xi + mask)` of [`hopfield_energy`] with
/// respect to the state, in closed form, `(N, H, L, d)` (`entmax` in place of `softmax` for the
/// sparse associations). So the update is a unit gradient
/// step: `hopfield_update(xi) = xi - dE/dxi`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::energy::{hopfield_energy_grad, EnergySpec};
/// use hopfield_core::Masks;
/// // At a state equidistant from +1 and -1 the attraction cancels: the gradient is xi = 0.
/// let x = Tensor::new(&[[[[1f64], [-1.]]]], &Device::Cpu)?;
/// let xi = Tensor::new(&[[[[0f64]]]], &Device::Cpu)?;
/// let g = hopfield_energy_grad(&xi, &x, &EnergySpec::new(4.0), Masks::default())?;
/// assert_eq!(g.flatten_all()?.to_vec1::<f64>()?, vec![0.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_energy_grad(
    xi: &Tensor,
    stored: &Tensor,
    spec: &EnergySpec,
    masks: Masks,
) -> Result<Tensor> {
    xi - hopfield_update(xi, stored, spec, masks)?
}

#[cfg(test)]
mod tests;
