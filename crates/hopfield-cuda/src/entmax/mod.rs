//! alpha-entmax over the last dimension (Peters, Niculae & Martins 2019): the sparse
//! generalisations of softmax that give stored patterns an association weight of exactly zero.
//!
//! `entmax_alpha(z)_i = [(alpha - 1) z_i - tau]_+ ^ (1 / (alpha - 1))`, with the threshold `tau`
//! chosen so that the row sums to 1. `alpha = 1` is softmax (routed to [`masked_softmax`]),
//! `alpha = 2` is sparsemax (Martins & Astudillo 2016), `alpha = 1.5` is entmax-1.5.
//!
//! Forward, per row (in f64 whatever the dtype, rows in parallel with rayon):
//! - sparsemax and entmax-1.5 are **exact**: sort the row, find the support size from the sorted
//!   prefix sums (and prefix sums of squares for 1.5), which gives `tau` in closed form; the
//!   algorithms of the `entmax` package (Peters et al.).
//! - any other alpha in (1, 2) bisects `tau` in `[max - 1, max - (1/n)^(alpha - 1)]` (where the
//!   row sums to at least / at most 1) until the interval stops shrinking in f64 (about 55
//!   halvings), then divides by the sum, as the `entmax` package's `entmax_bisect` does with a
//!   fixed 50 halvings.
//!
//! On CUDA (feature `cuda`) the same forward and backward run as kernels (`kernels/entmax.cu`,
//! see [`cuda`](self::cuda)): one block per row, bisection on `tau` with the same bracket and
//! stopping rule in the element's compute type (f32, or f64 for f64), and for sparsemax and
//! entmax-1.5 the closed-form `tau` from the support the bisection finds.
//!
//! Entries at or below the threshold are exactly 0; `-inf` logits are masked (exactly 0, zero
//! gradient) and a fully masked row is all zeros, as in [`masked_softmax`]. NaN and `+inf` logits
//! are typed errors ([`KernelError::Values`]).
//!
//! Backward, the closed-form Jacobian-vector products: with `s = p^(2 - alpha)` on the support
//! (0 elsewhere), `dz = s g - s (sum s g) / (sum s)`; for a learnable alpha (per row, e.g. per
//! head) `dalpha = sum_i g_i [(p_i - s~_i) / (alpha - 1)^2 - (p_i ln p_i - s~_i H) / (alpha - 1)]`
//! with `s~ = s / sum s` and `H = sum p ln p` (Peters et al. 2019, Prop. 2 / the `entmax`
//! package's `EntmaxBisectFunction`).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let z = Tensor::new(&[[3f32, 1., 0.2]], &Device::Cpu)?;
//! // sparsemax puts all the mass on the clear winner; softmax would give every entry some.
//! assert_eq!(hopfield_cuda::sparsemax(&z)?.to_vec2::<f32>()?, vec![vec![1., 0., 0.]]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::error::{expect_float, KernelError};
use crate::rows::{contiguous, rows_per_task};
use crate::softmax::masked_softmax;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
mod cuda;

/// What a row holds that entmax cannot take.
const BAD_LOGITS: &str = "NaN or +inf (entmax takes finite logits; -inf masks an entry)";

/// The typed error for logits of this shape holding NaN or `+inf` (every path returns it).
fn bad_logits(shape: &[usize]) -> candle_core::Error {
    KernelError::Values {
        op: "entmax",
        arg: "logits",
        shape: shape.to_vec(),
        what: BAD_LOGITS,
    }
    .into()
}

/// The threshold of sparsemax on `x` sorted in decreasing order (finite entries only): the
/// largest `k` with `1 + k x_k > sum_{j <= k} x_j` is the support size, and
/// `tau = (sum_{j <= k} x_j - 1) / k`.
fn sparsemax_tau(sorted: &[f64]) -> f64 {
    let (mut cum, mut tau) = (0.0, sorted[0] - 1.0);
    for (k, &x) in sorted.iter().enumerate() {
        cum += x;
        let k = (k + 1) as f64;
        if 1.0 + k * x > cum {
            tau = (cum - 1.0) / k;
        } else {
            break;
        }
    }
    tau
}

/// The threshold of entmax-1.5 on `x = z / 2` sorted in decreasing order: for a support of size
/// `k`, `sum_{j<=k} (x_j - tau)^2 = 1` gives `tau_k = mean_k - sqrt((1 - k var_k) / k)`; the
/// support size is the number of `k` with `tau_k <= x_k` (the `entmax` package's `_entmax_threshold_and_support`).
fn entmax15_tau(sorted: &[f64]) -> f64 {
    let (mut cum, mut cum_sq) = (0.0, 0.0);
    let mut taus = Vec::with_capacity(sorted.len());
    let mut support = 0usize;
    for (k, &x) in sorted.iter().enumerate() {
        cum += x;
        cum_sq += x * x;
        let rho = (k + 1) as f64;
        let mean = cum / rho;
        let ss = rho * (cum_sq / rho - mean * mean);
        let delta = ((1.0 - ss) / rho).max(0.0);
        let tau = mean - delta.sqrt();
        if tau <= x {
            support += 1;
        }
        taus.push(tau);
    }
    taus[support.max(1) - 1]
}

/// `sum_i [x_i - tau]_+^e` over the finite entries.
fn mass(x: &[f64], tau: f64, e: f64) -> f64 {
    x.iter()
        .map(|&v| if v > tau { (v - tau).powf(e) } else { 0.0 })
        .sum()
}

/// The threshold for a general alpha in (1, 2) on `x = (alpha - 1) (z - max z)` (the entries
/// above -1 only): bisection between `-1` (the maximum alone has mass 1) and `-(1/n)^(alpha - 1)`
/// (every entry has mass at most 1/n) until the midpoint equals an end in f64. `x` keeps only the
/// entries above the threshold found.
fn bisect_tau(x: &mut Vec<f64>, alpha: f64) -> f64 {
    let e = 1.0 / (alpha - 1.0);
    let (mut lo, mut hi) = (-1.0, -(1.0 / x.len() as f64).powf(alpha - 1.0));
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if mass(x, mid, e) >= 1.0 {
            lo = mid;
            // Entries at or below the threshold have no mass from here on.
            x.retain(|v| *v > lo);
        } else {
            hi = mid;
        }
    }
    lo
}

/// One row: `false` when it holds NaN or `+inf`. `buf` is scratch of the row's length.
fn entmax_row<T: WithDType>(src: &[T], dst: &mut [T], alpha: f64, buf: &mut Vec<f64>) -> bool {
    buf.clear();
    let mut max = f64::NEG_INFINITY;
    for &v in src {
        let v = v.to_f64();
        if v.is_nan() || v == f64::INFINITY {
            return false;
        }
        if v > max {
            max = v;
        }
    }
    if max == f64::NEG_INFINITY {
        // Fully masked (or empty): nothing may be retrieved.
        dst.iter_mut().for_each(|d| *d = T::zero());
        return true;
    }
    // Shift by the max (every entmax is shift-invariant) and scale by (alpha - 1): the
    // threshold problems above are stated for x = (alpha - 1) (z - max).
    let a1 = alpha - 1.0;
    // The threshold is at least -1 (the maximum alone has mass 1 there), so only entries above
    // -1 can be in the support: the rest never enter the sort or the bisection (for a sharp row
    // that leaves a handful of the S entries).
    buf.extend(
        src.iter()
            .map(|v| a1 * (v.to_f64() - max))
            .filter(|x| *x > -1.0),
    );
    let exact = alpha == 2.0 || alpha == 1.5;
    let tau = if exact {
        buf.sort_unstable_by(|a, b| b.total_cmp(a));
        if alpha == 2.0 {
            sparsemax_tau(buf)
        } else {
            entmax15_tau(buf)
        }
    } else {
        bisect_tau(buf, alpha)
    };
    let e = 1.0 / a1;
    let p = |v: T| {
        let d = a1 * (v.to_f64() - max) - tau;
        if d <= 0.0 {
            0.0
        } else if alpha == 2.0 {
            d
        } else if alpha == 1.5 {
            d * d
        } else {
            d.powf(e)
        }
    };
    // The exact thresholds give rows that sum to 1 up to rounding; bisection's leaves an error of
    // its last interval, removed by normalising (as the `entmax` package does).
    let norm = if exact {
        1.0
    } else {
        buf.iter().map(|&x| mass(&[x], tau, e)).sum::<f64>()
    };
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = T::from_f64(p(v) / norm);
    }
    true
}

/// `s = p^(2 - alpha)` on the support, 0 elsewhere.
#[inline(always)]
fn support_weight(p: f64, alpha: f64) -> f64 {
    if p <= 0.0 {
        0.0
    } else if alpha == 2.0 {
        1.0
    } else if alpha == 1.5 {
        p.sqrt()
    } else {
        p.powf(2.0 - alpha)
    }
}

/// `dz = s g - s (sum s g) / (sum s)` for one row.
fn grad_row<T: WithDType>(p: &[T], g: &[T], dst: &mut [T], alpha: f64) {
    let (mut ss, mut sg) = (0.0, 0.0);
    for (&pi, &gi) in p.iter().zip(g) {
        let s = support_weight(pi.to_f64(), alpha);
        ss += s;
        sg += s * gi.to_f64();
    }
    let c = if ss > 0.0 { sg / ss } else { 0.0 };
    for ((d, &pi), &gi) in dst.iter_mut().zip(p).zip(g) {
        let s = support_weight(pi.to_f64(), alpha);
        *d = T::from_f64(s * (gi.to_f64() - c));
    }
}

/// `dalpha` of one row (see the module docs); 0 for a fully masked row.
fn alpha_grad_row<T: WithDType>(p: &[T], g: &[T], alpha: f64) -> f64 {
    let (mut ss, mut ent) = (0.0, 0.0);
    for &pi in p {
        let pi = pi.to_f64();
        if pi > 0.0 {
            ss += support_weight(pi, alpha);
            ent += pi * pi.ln();
        }
    }
    if ss <= 0.0 {
        return 0.0;
    }
    let a1 = alpha - 1.0;
    p.iter()
        .zip(g)
        .map(|(&pi, &gi)| {
            let pi = pi.to_f64();
            if pi <= 0.0 {
                return 0.0;
            }
            let st = support_weight(pi, alpha) / ss;
            gi.to_f64() * ((pi - st) / (a1 * a1) - (pi * pi.ln() - st * ent) / a1)
        })
        .sum()
}

/// Rows in parallel: `f(row index, src row, dst row)`; `false` if any call returned `false`.
fn par_rows_indexed<T: WithDType>(
    src: &[T],
    dim: usize,
    out_dim: usize,
    f: impl Fn(usize, &[T], &mut [T], &mut Vec<f64>) -> bool + Sync,
) -> Option<Vec<T>> {
    let rows = src.len().checked_div(dim).unwrap_or(0);
    let mut dst = vec![T::zero(); rows * out_dim];
    if rows == 0 || out_dim == 0 {
        return Some(dst);
    }
    let per = rows_per_task(dim);
    let ok = dst
        .par_chunks_mut(per * out_dim)
        .enumerate()
        .map(|(c, d)| {
            let mut buf = Vec::with_capacity(dim);
            let mut ok = true;
            for (i, dr) in d.chunks_mut(out_dim).enumerate() {
                let r = c * per + i;
                ok &= f(r, &src[r * dim..(r + 1) * dim], dr, &mut buf);
            }
            ok
        })
        .reduce(|| true, |a, b| a && b);
    ok.then_some(dst)
}

/// The per-row alphas of `alpha` (`(..., 1)`, one per row of the logits) as f64.
fn alphas(s: &CpuStorage, l: &Layout) -> Result<Vec<f64>> {
    Ok(match s {
        CpuStorage::F32(v) => contiguous(v, l)?.iter().map(|&a| a as f64).collect(),
        CpuStorage::F64(v) => contiguous(v, l)?.to_vec(),
        other => candle_core::bail!("entmax: unsupported alpha dtype {:?}", other.dtype()),
    })
}

/// The forward op: logits `(..., n)` and per-row alphas `(..., 1)`; `learn_alpha` says whether
/// the backward computes `dalpha` (a fixed alpha is a constant tensor).
struct Entmax {
    learn_alpha: bool,
}

impl CustomOp2 for Entmax {
    fn name(&self) -> &'static str {
        "hopfield-entmax"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        a: &CpuStorage,
        la: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = l.dims().last().copied().unwrap_or(1);
        let al = alphas(a, la)?;
        let bad = || bad_logits(l.dims());
        fn run<T: WithDType>(v: &[T], dim: usize, al: &[f64]) -> Option<Vec<T>> {
            par_rows_indexed(v, dim, dim, |r, s, d, buf| entmax_row(s, d, al[r], buf))
        }
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(run(contiguous(v, l)?, dim, &al).ok_or_else(bad)?)
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(run(contiguous(v, l)?, dim, &al).ok_or_else(bad)?)
            }
            other => candle_core::bail!("entmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward((s, l), (a, la))
    }

    fn bwd(
        &self,
        _logits: &Tensor,
        alpha: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let dz = res.apply_op3(&g, alpha, EntmaxGrad)?;
        let da = if self.learn_alpha {
            Some(res.apply_op3(&g, alpha, EntmaxAlphaGrad)?)
        } else {
            None
        };
        Ok((Some(dz), da))
    }
}

/// The backward `dz = s g - s (sum s g) / (sum s)` as one op (p, g, alpha per row). Its own
/// backward (second order) is composed; alpha is treated as a constant there.
struct EntmaxGrad;

impl CustomOp3 for EntmaxGrad {
    fn name(&self) -> &'static str {
        "hopfield-entmax-grad"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        lp: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        a: &CpuStorage,
        la: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = lp.dims().last().copied().unwrap_or(1);
        let al = alphas(a, la)?;
        fn run<T: WithDType>(p: &[T], g: &[T], dim: usize, al: &[f64]) -> Vec<T> {
            par_rows_indexed(p, dim, dim, |r, pr, d, _| {
                grad_row(pr, &g[r * dim..(r + 1) * dim], d, al[r]);
                true
            })
            .unwrap_or_default()
        }
        let out = match (p, g) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                CpuStorage::F32(run(contiguous(p, lp)?, contiguous(g, lg)?, dim, &al))
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                CpuStorage::F64(run(contiguous(p, lp)?, contiguous(g, lg)?, dim, &al))
            }
            _ => candle_core::bail!("entmax backward: unsupported dtypes"),
        };
        Ok((out, lp.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &candle_core::CudaStorage,
        lp: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward((p, lp), (g, lg), (a, la), cuda::Grad::Logits)
    }

    fn bwd(
        &self,
        p: &Tensor,
        g: &Tensor,
        alpha: &Tensor,
        _res: &Tensor,
        u: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // r = s (g - c), c = sum(s g) / sum(s). With w = sum(u s) / sum(s):
        // dr/dg . u = s (u - w) and dr/ds . u = (g - c)(u - w); ds/dp = (2 - alpha) p^(1 - alpha)
        // on the support.
        let alpha = alpha.broadcast_as(p.shape())?;
        let on = p.gt(0.0)?;
        let zeros = p.zeros_like()?;
        let safe_p = on.where_cond(p, &p.ones_like()?)?;
        let two_minus = (alpha.neg()? + 2.0)?;
        let s = on.where_cond(&safe_p.log()?.mul(&two_minus)?.exp()?, &zeros)?;
        let ss = s.sum_keepdim(D::Minus1)?;
        let ss = ss.gt(0.0)?.where_cond(&ss, &ss.ones_like()?)?;
        let c = (&s * g)?.sum_keepdim(D::Minus1)?.div(&ss)?;
        let w = (&s * u)?.sum_keepdim(D::Minus1)?.div(&ss)?;
        let u_w = u.broadcast_sub(&w)?;
        let d_g = (&s * &u_w)?;
        let ds_dp = on.where_cond(
            &(safe_p.log()?.mul(&(&two_minus - 1.0)?)?.exp()? * &two_minus)?,
            &zeros,
        )?;
        let d_p = (g.broadcast_sub(&c)? * u_w)?.mul(&ds_dp)?;
        Ok((Some(d_p), Some(d_g), None))
    }
}

/// `dalpha` per row `(..., 1)` from (p, g, alpha per row).
struct EntmaxAlphaGrad;

impl CustomOp3 for EntmaxAlphaGrad {
    fn name(&self) -> &'static str {
        "hopfield-entmax-alpha-grad"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        lp: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        a: &CpuStorage,
        la: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = lp.dims().last().copied().unwrap_or(1);
        let al = alphas(a, la)?;
        fn run<T: WithDType>(p: &[T], g: &[T], dim: usize, al: &[f64]) -> Vec<T> {
            par_rows_indexed(p, dim, 1, |r, pr, d, _| {
                d[0] = T::from_f64(alpha_grad_row(pr, &g[r * dim..(r + 1) * dim], al[r]));
                true
            })
            .unwrap_or_default()
        }
        let out = match (p, g) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                CpuStorage::F32(run(contiguous(p, lp)?, contiguous(g, lg)?, dim, &al))
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                CpuStorage::F64(run(contiguous(p, lp)?, contiguous(g, lg)?, dim, &al))
            }
            _ => candle_core::bail!("entmax alpha backward: unsupported dtypes"),
        };
        Ok((out, la.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &candle_core::CudaStorage,
        lp: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward((p, lp), (g, lg), (a, la), cuda::Grad::Alpha)
    }
}

/// `Err(KernelError::Param)` unless alpha is in `[1, 2]` (1: softmax).
fn expect_alpha(alpha: f64) -> Result<()> {
    if (1.0..=2.0).contains(&alpha) {
        Ok(())
    } else {
        Err(KernelError::Param {
            op: "entmax",
            name: "alpha",
            expected: "in [1, 2] (1: softmax, 1.5: entmax-1.5, 2: sparsemax)",
            value: alpha,
        }
        .into())
    }
}

/// The shape of one alpha per row: the logits' dims with the last one set to 1.
fn row_shape(logits: &Tensor) -> Vec<usize> {
    let mut dims = logits.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = 1;
    }
    dims
}

/// alpha-entmax over the last dimension with a fixed `alpha` in `[1, 2]`: `1` is
/// [`masked_softmax`], `1.5` entmax-1.5 and `2` sparsemax (both exact, sort-based), anything
/// between is bisection to f64 precision (see the module docs). `-inf` entries get exactly 0 and
/// a fully masked row is all zeros; NaN/`+inf` logits and an alpha outside `[1, 2]` are typed
/// errors. Fused on the CPU for f32/f64 (rows in parallel) and, with the `cuda` feature, on a GPU
/// for f32/f64/f16/bf16; [`entmax_composed`] elsewhere.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let z = Var::new(&[[1f64, 0.8, -1.]], &Device::Cpu)?;
/// let p = hopfield_cuda::entmax(z.as_tensor(), 1.5)?;
/// let v = p.to_vec2::<f64>()?;
/// assert_eq!(v[0][2], 0.0); // the third pattern is out of the support
/// assert!((v[0].iter().sum::<f64>() - 1.0).abs() < 1e-12);
/// // The gradient of an entry out of the support is exactly 0 as well.
/// let g = p.narrow(1, 0, 1)?.sum_all()?.backward()?;
/// assert_eq!(g.get(&z).unwrap().to_vec2::<f64>()?[0][2], 0.0);
/// assert!(hopfield_cuda::entmax(z.as_tensor(), 2.5).is_err());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn entmax(logits: &Tensor, alpha: f64) -> Result<Tensor> {
    expect_float("entmax", "logits", logits)?;
    expect_alpha(alpha)?;
    if alpha == 1.0 {
        return masked_softmax(logits);
    }
    let a = Tensor::full(alpha, row_shape(logits), logits.device())?.to_dtype(logits.dtype())?;
    apply(logits, &a, false)
}

/// Sparsemax (`alpha = 2`, Martins & Astudillo 2016): the Euclidean projection of each row onto
/// the probability simplex; see [`entmax`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let z = Tensor::new(&[[0.5f64, 0.1, -2.]], &Device::Cpu)?;
/// let p = hopfield_cuda::sparsemax(&z)?.to_vec2::<f64>()?;
/// assert!((p[0][0] - 0.7).abs() < 1e-15 && (p[0][1] - 0.3).abs() < 1e-15);
/// assert_eq!(p[0][2], 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn sparsemax(logits: &Tensor) -> Result<Tensor> {
    entmax(logits, 2.0)
}

/// entmax-1.5 (exact, sort-based); see [`entmax`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let z = Tensor::new(&[[0f32, 0.]], &Device::Cpu)?;
/// assert_eq!(hopfield_cuda::entmax15(&z)?.to_vec2::<f32>()?, vec![vec![0.5, 0.5]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn entmax15(logits: &Tensor) -> Result<Tensor> {
    entmax(logits, 1.5)
}

/// alpha-entmax with alpha a tensor, differentiable in it: one alpha per row, `alpha`
/// broadcastable to the logits' shape with the last dim 1 (e.g. `(1, H, 1, 1)` for one alpha per
/// head of `(N, H, L, S)` logits). Values must lie in `(1, 2]` (the softmax limit alpha = 1 has
/// no finite alpha gradient; keep a learnable alpha away from it, e.g. `1 + sigmoid(raw)`).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let z = Tensor::new(&[[1f64, 0.5, -1.]], &Device::Cpu)?;
/// let alpha = Var::new(&[[1.3f64]], &Device::Cpu)?;
/// let p = hopfield_cuda::entmax_learnable(&z, alpha.as_tensor())?;
/// let g = p.narrow(1, 0, 1)?.sum_all()?.backward()?;
/// assert!(g.get(&alpha).is_some());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn entmax_learnable(logits: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    expect_float("entmax", "logits", logits)?;
    expect_float("entmax", "alpha", alpha)?;
    let shape = row_shape(logits);
    let a = alpha
        .to_dtype(logits.dtype())?
        .broadcast_as(shape.as_slice())
        .map_err(|_| KernelError::Shape {
            op: "entmax",
            arg: "alpha",
            expected: format!("broadcastable to {shape:?} (one alpha per row)"),
            got: alpha.dims().to_vec(),
        })?;
    let vals = a.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    if let Some(bad) = vals.iter().find(|a| !(**a > 1.0 && **a <= 2.0)) {
        return Err(KernelError::Param {
            op: "entmax",
            name: "alpha",
            expected: "in (1, 2] for a learnable alpha",
            value: *bad,
        }
        .into());
    }
    apply(logits, &a.contiguous()?, true)
}

/// Whether the fused op takes these logits: f32/f64 on the CPU; with the `cuda` feature, f32,
/// f64, f16 and bf16 on a GPU, non-empty and within the kernels' grid limits.
fn fused_supported(logits: &Tensor) -> bool {
    match logits.device() {
        candle_core::Device::Cpu => matches!(logits.dtype(), DType::F32 | DType::F64),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => cuda::supported(logits.dtype(), logits.dims()),
        _ => false,
    }
}

fn apply(logits: &Tensor, alpha_rows: &Tensor, learn_alpha: bool) -> Result<Tensor> {
    if logits.dims().is_empty() {
        return Err(KernelError::Shape {
            op: "entmax",
            arg: "logits",
            expected: "at least one dimension (rows over the last)".into(),
            got: vec![],
        }
        .into());
    }
    if fused_supported(logits) {
        logits
            .contiguous()?
            .apply_op2(&alpha_rows.contiguous()?, Entmax { learn_alpha })
    } else {
        entmax_composed(logits, alpha_rows)
    }
}

/// The same function from composed candle ops (any float dtype and device; the reference the
/// fused op is tested against): bisection on `tau` with 64 halvings for every alpha (sparsemax
/// and entmax-1.5 included), then `p / sum p`. The result carries the exact first-order
/// gradients of the module docs (for logits and alpha) through a linearisation around the
/// detached solution; it is not twice differentiable. `alpha`: one per row, broadcastable to the
/// logits' shape with the last dim 1, values in `(1, 2]`.
pub fn entmax_composed(logits: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    expect_float("entmax", "logits", logits)?;
    if logits.elem_count() == 0 {
        return Ok(logits.clone());
    }
    let (dtype, shape) = (logits.dtype(), logits.shape());
    let bad = logits
        .ne(logits)?
        .to_dtype(DType::F32)?
        .add(&logits.eq(f64::INFINITY)?.to_dtype(DType::F32)?)?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    if bad != 0.0 {
        return Err(bad_logits(logits.dims()));
    }
    let rows = row_shape(logits);
    let a = alpha.to_dtype(dtype)?.broadcast_as(rows.as_slice())?;
    let a_det = a.detach();
    let z = logits.detach();
    let masked = z.eq(f64::NEG_INFINITY)?;
    let m = z.max_keepdim(D::Minus1)?;
    let m = m.ne(f64::NEG_INFINITY)?.where_cond(&m, &m.zeros_like()?)?;
    let a1 = (&a_det - 1.0)?;
    let x = z.broadcast_sub(&m)?.broadcast_mul(&a1)?;
    let e = a1.recip()?;
    let n = masked
        .eq(0u8)?
        .to_dtype(dtype)?
        .sum_keepdim(D::Minus1)?
        .maximum(1.0)?;
    // [x - tau]_+^e; ln 0 = -inf makes the power exactly 0 off the support.
    let power = |tau: &Tensor| -> Result<Tensor> {
        x.broadcast_sub(tau)?
            .relu()?
            .log()?
            .broadcast_mul(&e)?
            .exp()
    };
    let mut lo = (a1.zeros_like()? - 1.0)?;
    let mut hi = n.recip()?.log()?.mul(&a1)?.exp()?.neg()?;
    for _ in 0..64 {
        let mid = ((&lo + &hi)? * 0.5)?;
        let above = power(&mid)?.sum_keepdim(D::Minus1)?.ge(1.0)?;
        lo = above.where_cond(&mid, &lo)?;
        hi = above.where_cond(&hi, &mid)?;
    }
    let p = power(&lo)?;
    let sum = p.sum_keepdim(D::Minus1)?;
    let sum = sum.gt(0.0)?.where_cond(&sum, &sum.ones_like()?)?;
    let p = p.broadcast_div(&sum)?;

    // First-order gradients: p + J (z - z0) + dp/dalpha (alpha - alpha0), all of value 0.
    let on = p.gt(0.0)?;
    let zeros = p.zeros_like()?;
    let safe_p = on.where_cond(&p, &p.ones_like()?)?;
    let s = on.where_cond(
        &safe_p.log()?.broadcast_mul(&(a_det.neg()? + 2.0)?)?.exp()?,
        &zeros,
    )?;
    let ss = s.sum_keepdim(D::Minus1)?;
    let ss = ss.gt(0.0)?.where_cond(&ss, &ss.ones_like()?)?;
    let z_fin = masked.where_cond(&logits.zeros_like()?, logits)?;
    let dz = (&z_fin - z_fin.detach())?;
    let j_dz =
        (&s * dz)?.broadcast_sub(&s.broadcast_mul(&dz_sum(&s, &z_fin)?)?.broadcast_div(&ss)?)?;
    let plogp = on.where_cond(&(&p * safe_p.log()?)?, &zeros)?;
    let ent = plogp.sum_keepdim(D::Minus1)?;
    let st = s.broadcast_div(&ss)?;
    let dp_da = ((&p - &st)?.broadcast_div(&a1.sqr()?)?
        - (plogp - st.broadcast_mul(&ent)?)?.broadcast_div(&a1)?)?;
    let da = (&a - &a_det)?;
    let out = ((p + j_dz)? + dp_da.broadcast_mul(&da)?)?;
    debug_assert_eq!(out.shape(), shape);
    Ok(out)
}

/// `sum_j s_j (z_j - z0_j)` per row (a zero value that carries the gradient).
fn dz_sum(s: &Tensor, z: &Tensor) -> Result<Tensor> {
    (s * (z - z.detach())?)?.sum_keepdim(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};
    use rstest::rstest;

    fn rows(p: &Tensor) -> Vec<Vec<f64>> {
        p.to_dtype(DType::F64)
            .unwrap()
            .flatten_to(D::Minus2)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap()
    }

    /// Hand-computed cases: sparsemax of (0.5, 0.1, -2) is the projection (0.7, 0.3, 0);
    /// entmax-1.5 of (1, 0.8, -1): x = z / 2, support {1, 2}, tau from a quadratic.
    #[test]
    fn hand_computed_values() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[0.5f64, 0.1, -2.]], &dev)?;
        let p = rows(&sparsemax(&z)?);
        assert!((p[0][0] - 0.7).abs() < 1e-15 && (p[0][1] - 0.3).abs() < 1e-15);
        assert_eq!(p[0][2], 0.0);
        let z = Tensor::new(&[[1f64, 0.8, -1.]], &dev)?;
        // (0.5 - t)^2 + (0.4 - t)^2 = 1 with t = 0.45 - u: 2 u^2 + 0.005 = 1.
        let t = 0.45 - 0.4975f64.sqrt();
        let want = [(0.5 - t).powi(2), (0.4 - t).powi(2), 0.0];
        let p = rows(&entmax15(&z)?);
        for (a, b) in p[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-14, "{p:?} vs {want:?}");
        }
        assert_eq!(p[0][2], 0.0);
        Ok(())
    }

    /// Rows sum to 1, entries are in [0, 1], zeros are exact, and the fused op matches the
    /// composed bisection for every alpha, f64 and f32.
    #[rstest]
    #[case(2.0)]
    #[case(1.5)]
    #[case(1.25)]
    #[case(1.7)]
    #[case(1.05)]
    fn fused_matches_composed(#[case] alpha: f64) -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f64, 2., (3, 4, 37), &dev)?;
        let p = entmax(&z, alpha)?;
        let a = Tensor::new(&[alpha], &dev)?.reshape((1, 1, 1))?;
        let q = entmax_composed(&z, &a)?;
        assert!(max_diff(&p, &q) < 1e-9, "{}", max_diff(&p, &q));
        for r in rows(&p) {
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(r.iter().all(|v| (0.0..=1.0).contains(v)));
            if alpha >= 1.5 {
                assert!(r.contains(&0.0), "no exact zero in {r:?}");
            }
        }
        let p32 = entmax(&z.to_dtype(DType::F32)?, alpha)?;
        assert!(max_diff(&p32.to_dtype(DType::F64)?, &p) < 1e-6);
        Ok(())
    }

    /// Many entries are exactly zero for a peaked row, so the sparse modes really are sparse.
    #[test]
    fn sparse_modes_are_sparse() -> Result<()> {
        let z = (Tensor::randn(0f32, 1., (8, 200), &Device::Cpu)? * 4.0)?;
        for alpha in [1.5, 2.0, 1.3] {
            let zeros: usize = rows(&entmax(&z, alpha)?)
                .iter()
                .map(|r| r.iter().filter(|v| **v == 0.0).count())
                .sum();
            assert!(zeros > 8 * 150, "alpha {alpha}: only {zeros} zeros");
        }
        // Softmax (alpha = 1) has no exact zeros at these logits.
        let soft = rows(&entmax(&z, 1.0)?);
        assert!(soft.iter().flatten().all(|v| *v > 0.0));
        Ok(())
    }

    /// The ends of the alpha range: 1 is exactly the softmax, 2 the sparsemax; alpha near 2 and
    /// near 1.5 by bisection come close to the exact ones.
    #[test]
    fn alpha_limits() -> Result<()> {
        let z = Tensor::randn(0f64, 1., (5, 9), &Device::Cpu)?;
        assert_eq!(rows(&entmax(&z, 1.0)?), rows(&masked_softmax(&z)?));
        assert!(max_diff(&entmax(&z, 2.0 - 1e-9)?, &sparsemax(&z)?) < 1e-7);
        assert!(max_diff(&entmax(&z, 1.5 + 1e-9)?, &entmax15(&z)?) < 1e-7);
        assert!(max_diff(&entmax(&z, 1.0 + 1e-3)?, &masked_softmax(&z)?) < 1e-2);
        Ok(())
    }

    /// The gradient with respect to the logits against central finite differences (f64), for
    /// the exact and the bisection alphas, masked entries included.
    #[rstest]
    #[case(2.0)]
    #[case(1.5)]
    #[case(1.3)]
    fn logit_gradient_matches_finite_differences(#[case] alpha: f64) -> Result<()> {
        let dev = Device::Cpu;
        let ninf = f64::NEG_INFINITY;
        let base = vec![0.9, 0.3, 0.75, -0.2, ninf, 0.5];
        let w = Tensor::new(&[0.3f64, -1.2, 0.7, 2.0, 1.0, -0.4], &dev)?;
        let f = |v: &[f64]| -> Result<f64> {
            let z = Tensor::new(v, &dev)?;
            (entmax(&z, alpha)? * &w)?.sum_all()?.to_scalar::<f64>()
        };
        let z = Var::new(base.as_slice(), &dev)?;
        for fwd in [
            entmax as fn(&Tensor, f64) -> Result<Tensor>,
            |z: &Tensor, a: f64| entmax_composed(z, &Tensor::new(&[a], z.device())?),
        ] {
            let g = (fwd(z.as_tensor(), alpha)? * &w)?.sum_all()?.backward()?;
            let g = g.get(&z).unwrap().to_vec1::<f64>()?;
            let h = 1e-6;
            for i in 0..base.len() {
                if base[i] == ninf {
                    assert_eq!(g[i], 0.0);
                    continue;
                }
                let (mut up, mut dn) = (base.clone(), base.clone());
                up[i] += h;
                dn[i] -= h;
                let fd = (f(&up)? - f(&dn)?) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 1e-6,
                    "alpha {alpha} i {i}: {fd} vs {}",
                    g[i]
                );
            }
        }
        Ok(())
    }

    /// d/dalpha against finite differences (f64), fused and composed, per row.
    #[rstest]
    #[case(1.3)]
    #[case(1.5)]
    #[case(1.8)]
    fn alpha_gradient_matches_finite_differences(#[case] alpha: f64) -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(
            &[[0.9f64, 0.3, 0.75, -0.2, 0.5], [1., 1.1, -3., 0., 0.2]],
            &dev,
        )?;
        let w = Tensor::new(
            &[[0.3f64, -1.2, 0.7, 2.0, 1.0], [1., 0., -1., 2., 0.5]],
            &dev,
        )?;
        let f = |a: f64| -> Result<f64> { (entmax(&z, a)? * &w)?.sum_all()?.to_scalar::<f64>() };
        let h = 1e-6;
        let fd = (f(alpha + h)? - f(alpha - h)?) / (2.0 * h);
        for composed in [false, true] {
            let a = Var::new(&[[alpha], [alpha]], &dev)?;
            let p = if composed {
                entmax_composed(&z, a.as_tensor())?
            } else {
                entmax_learnable(&z, a.as_tensor())?
            };
            let g = (p * &w)?.sum_all()?.backward()?;
            let g = g.get(&a).unwrap().to_vec2::<f64>()?;
            let got = g[0][0] + g[1][0];
            assert!(
                (fd - got).abs() < 1e-5,
                "alpha {alpha} composed {composed}: {fd} vs {got}"
            );
        }
        // One alpha shared by both rows (broadcast): the gradient sums over rows.
        let a = Var::new(&[[alpha]], &dev)?;
        let g = (entmax_learnable(&z, a.as_tensor())? * &w)?
            .sum_all()?
            .backward()?;
        let got = g.get(&a).unwrap().to_vec2::<f64>()?[0][0];
        assert!((fd - got).abs() < 1e-5);
        Ok(())
    }

    /// Second order: the backward op's own backward against composed autograd of the JVP.
    #[test]
    fn backward_op_is_differentiable() -> Result<()> {
        let dev = Device::Cpu;
        let alpha = 1.4;
        let p = entmax(&Tensor::randn(0f64, 2., (2, 7), &dev)?, alpha)?;
        let p = Var::from_tensor(&p)?;
        let g = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 7), &dev)?)?;
        let u = Tensor::randn(0f64, 1., (2, 7), &dev)?;
        let a = Tensor::full(alpha, (2, 1), &dev)?;
        let (pt, gt) = (p.as_tensor(), g.as_tensor());
        let fused = pt.apply_op3(gt, &a, EntmaxGrad)?;
        let on = pt.gt(0.0)?;
        let s = on.where_cond(&pt.maximum(1e-300)?.powf(2.0 - alpha)?, &pt.zeros_like()?)?;
        let c = (&s * gt)?
            .sum_keepdim(1)?
            .broadcast_div(&s.sum_keepdim(1)?)?;
        let composed = (&s * gt.broadcast_sub(&c)?)?;
        assert!(max_diff(&fused, &composed) < 1e-14);
        let x = (&fused * &u)?.sum_all()?.backward()?;
        let y = (&composed * &u)?.sum_all()?.backward()?;
        for v in [pt, gt] {
            assert!(max_diff(x.get(v).unwrap(), y.get(v).unwrap()) < 1e-12);
        }
        Ok(())
    }

    /// Masks: -inf entries are exactly 0, a fully masked row is all zeros with zero gradient,
    /// empty rows are empty.
    #[test]
    fn masks_and_empty_rows() -> Result<()> {
        let dev = Device::Cpu;
        let ninf = f32::NEG_INFINITY;
        let z = Var::new(&[[0.1f32, ninf, 0.3], [ninf, ninf, ninf]], &dev)?;
        for alpha in [1.5, 2.0, 1.2] {
            let p = entmax(z.as_tensor(), alpha)?;
            let v = p.to_vec2::<f32>()?;
            assert_eq!(v[0][1], 0.0);
            assert_eq!(v[1], vec![0.0; 3]);
            let g = (p * Tensor::new(&[[1f32, 2., 3.], [1., 2., 3.]], &dev)?)?
                .sum_all()?
                .backward()?;
            assert_eq!(g.get(&z).unwrap().to_vec2::<f32>()?[1], vec![0.0; 3]);
            let c = entmax_composed(z.as_tensor(), &Tensor::new(&[[alpha as f32]], &dev)?)?;
            assert!(max_diff(&c, &entmax(z.as_tensor(), alpha)?) < 1e-6);
        }
        let e = Tensor::zeros((3, 0), DType::F32, &dev)?;
        assert_eq!(sparsemax(&e)?.dims(), &[3, 0]);
        Ok(())
    }

    /// NaN and +inf logits, an alpha out of range, integer logits and a scalar are typed errors.
    #[test]
    fn bad_inputs_are_typed_errors() -> Result<()> {
        let dev = Device::Cpu;
        for v in [f64::NAN, f64::INFINITY] {
            let z = Tensor::new(&[[0f64, v]], &dev)?;
            for r in [
                entmax(&z, 1.5),
                entmax(&z, 1.3),
                entmax_composed(&z, &Tensor::new(&[1.5f64], &dev)?),
            ] {
                let e = r.unwrap_err();
                assert!(
                    matches!(KernelError::find(&e), Some(KernelError::Values { .. })),
                    "{e}"
                );
            }
        }
        let z = Tensor::new(&[[0f64, 1.]], &dev)?;
        for a in [0.5, 2.5, f64::NAN] {
            let e = entmax(&z, a).unwrap_err();
            assert!(
                matches!(KernelError::find(&e), Some(KernelError::Param { .. })),
                "{e}"
            );
        }
        let e = entmax_learnable(&z, &Tensor::new(&[1f64], &dev)?).unwrap_err();
        assert!(e.to_string().contains("(1, 2]"), "{e}");
        let e = entmax_learnable(&z, &Tensor::new(&[1.5f64, 1.5, 1.5], &dev)?).unwrap_err();
        assert!(
            matches!(KernelError::find(&e), Some(KernelError::Shape { .. })),
            "{e}"
        );
        let ids = Tensor::new(&[[1u32, 0]], &dev)?;
        assert!(sparsemax(&ids).unwrap_err().to_string().contains("U32"));
        assert!(sparsemax(&Tensor::new(1f64, &dev)?).is_err());
        Ok(())
    }
}
