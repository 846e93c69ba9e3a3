//! Masked softmax over the last dimension as a custom op with a backward pass.

use crate::error::{expect_float, KernelError};
use crate::rows::{contiguous, rows_per_task};
use crate::simd::wide;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape,
    Tensor, D,
};
use rayon::prelude::*;

pub(crate) trait Float:
    Copy + Send + Sync + PartialOrd + std::ops::Mul<Output = Self> + std::ops::Sub<Output = Self>
{
    const NEG_INF: Self;
    const ZERO: Self;
    const ONE: Self;
    fn exp(self) -> Self;
    fn add(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn from_usize(n: usize) -> Self;
    fn is_nan(self) -> bool;
}

/// `exp` for f32 in a form the compiler vectorises (libm's `expf` is a scalar call and dominated
/// the softmax): Cody-Waite range reduction `x = n ln2 + r` with round-to-nearest by the
/// 1.5 * 2^23 trick (no `floor`, which is a libm call without SSE4.1), Cephes' degree-6
/// polynomial, and `2^n` built in the exponent bits. Relative error below 2e-7 (about 1 ulp);
/// inputs below ln(f32::MIN_POSITIVE), `-inf` included, give exactly 0, as masked logits must.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    exp_f32_with::<false>(x)
}

/// `a * b + c`: one hardware FMA where the caller is compiled with `fma` (`FMA`), the plain
/// two operations elsewhere (where `mul_add` would be a slow library call).
#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// [`exp_f32`] with the range reduction and the polynomial as fused multiply-adds when `FMA`
/// (half the instructions; the same accuracy bound, last-bit differences from the plain form).
#[inline(always)]
#[allow(clippy::manual_clamp)] // see the comment at the max/min below
pub(crate) fn exp_f32_with<const FMA: bool>(x: f32) -> f32 {
    const LO: f32 = -87.336_54;
    const HI: f32 = 88.722_83;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // max/min rather than clamp (which asserts), so the loop stays vectorisable.
    let xc = x.max(LO).min(HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = fma::<FMA>(-n, C2, fma::<FMA>(-n, C1, xc));
    let r2 = r * r;
    let mut y = 1.987_569_1e-4_f32;
    y = fma::<FMA>(y, r, 1.398_199_9e-3);
    y = fma::<FMA>(y, r, 8.333_452e-3);
    y = fma::<FMA>(y, r, 4.166_579_6e-2);
    y = fma::<FMA>(y, r, 1.666_666_5e-1);
    y = fma::<FMA>(y, r, 0.5);
    y = fma::<FMA>(y, r2, r) + 1.0;
    // The integer n sits in the low mantissa bits of t (whose ulp is 1): integer arithmetic on
    // the bits gives it exactly, where `n as i32` (a saturating conversion) cost a quarter of the
    // retrieval kernel's time.
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let pow2 = f32::from_bits(((ni + 127) << 23) as u32);
    if x < LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y * pow2
    }
}

macro_rules! float {
    ($t:ty, $exp:expr) => {
        impl Float for $t {
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
float!(f32, exp_f32);
float!(f64, f64::exp);

/// The element types of the host kernels built on these rows (f32, f64): candle's arithmetic and
/// this module's row operations.
pub(crate) trait Elem:
    candle_core::WithDType + Float + std::ops::Neg<Output = Self> + Into<f64>
{
}
impl Elem for f32 {}
impl Elem for f64 {}

/// Independent accumulators for row reductions: a single running max or sum is a serial
/// dependency chain (floating-point addition is not reassociated by the compiler), eight lanes
/// let the loop vectorise.
const LANES: usize = 8;

#[inline(always)]
fn row_max<T: Float>(src: &[T]) -> T {
    let mut acc = [T::NEG_INF; LANES];
    let chunks = src.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            if v > *a {
                *a = v;
            }
        }
    }
    let mut max = T::NEG_INF;
    for &v in acc.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    max
}

#[inline(always)]
fn row_dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s = s.add(p * q);
        }
    }
    let mut sum = T::ZERO;
    for &v in &acc {
        sum = sum.add(v);
    }
    for (&p, &q) in ra.iter().zip(rb) {
        sum = sum.add(p * q);
    }
    sum
}

#[inline(always)]
fn row_sum<T: Float>(a: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (s, &v) in acc.iter_mut().zip(c) {
            *s = s.add(v);
        }
    }
    let mut sum = T::ZERO;
    for &v in acc.iter().chain(rest) {
        sum = sum.add(v);
    }
    sum
}

/// One row; `false` when it holds a NaN (the row's output is then unspecified).
#[inline(always)]
fn softmax_row<T: Float>(src: &[T], dst: &mut [T]) -> bool {
    let max = row_max(src);
    if max == T::NEG_INF {
        // Fully masked: no pattern may be retrieved. (A NaN is not a mask: `row_max` skips
        // NaNs, so a row of NaNs and -infs lands here and is reported.)
        dst.iter_mut().for_each(|d| *d = T::ZERO);
        return src.iter().all(|&s| s == T::NEG_INF);
    }
    if max == T::ZERO - T::NEG_INF {
        // +inf logits: the limit of the softmax shares the mass equally among them.
        let count = src.iter().filter(|&&s| s == max).count();
        let share = T::ONE.div(T::from_usize(count));
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = if s == max { share } else { T::ZERO };
        }
        return !src.iter().any(|s| s.is_nan());
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = (s - max).exp();
    }
    let sum = row_sum(dst);
    let inv = T::ONE.div(sum);
    dst.iter_mut().for_each(|d| *d = *d * inv);
    // exp(NaN - max) is NaN, so a NaN anywhere in the row makes the sum NaN.
    !sum.is_nan()
}

/// `p * (g - sum(p * g))` per row.
#[inline(always)]
fn softmax_grad_row<T: Float>(p: &[T], g: &[T], dst: &mut [T]) {
    let dot = row_dot(p, g);
    for ((d, &a), &b) in dst.iter_mut().zip(p).zip(g) {
        *d = a * (b - dot);
    }
}

/// The rows of one task, in an AVX2+FMA build where the CPU has them ([`wide`]): the default
/// target only allows 4-wide SSE2, and the row loops are compute-bound on `exp`.
pub(crate) fn softmax_rows<T: Float>(src: &[T], dst: &mut [T], dim: usize) -> bool {
    wide(
        #[inline(always)]
        || {
            let mut ok = true;
            for (dr, sr) in dst.chunks_mut(dim).zip(src.chunks(dim)) {
                ok &= softmax_row(sr, dr);
            }
            ok
        },
    )
}

/// The softmax of every row, or `None` when some row holds a NaN.
fn map_rows<T: Float>(src: &[T], dim: usize) -> Option<Vec<T>> {
    let mut dst = vec![T::ZERO; src.len()];
    if dim == 0 || src.is_empty() {
        // Rows of no elements (an empty memory): nothing to compute, and no zero-size chunks.
        return Some(dst);
    }
    let chunk = rows_per_task(dim) * dim;
    let ok = dst
        .par_chunks_mut(chunk)
        .zip(src.par_chunks(chunk))
        .map(|(d, s)| softmax_rows(s, d, dim))
        .reduce(|| true, |a, b| a && b);
    ok.then_some(dst)
}

/// `dst = p * (g - sum(p g))` for the rows of one task, in an AVX2+FMA build where the CPU has
/// them ([`wide`]).
pub(crate) fn softmax_grad_rows<T: Float>(p: &[T], g: &[T], dst: &mut [T], dim: usize) {
    wide(
        #[inline(always)]
        || {
            for ((dr, pr), gr) in dst.chunks_mut(dim).zip(p.chunks(dim)).zip(g.chunks(dim)) {
                softmax_grad_row(pr, gr, dr);
            }
        },
    )
}

fn grad_rows<T: Float>(p: &[T], g: &[T], dim: usize) -> Vec<T> {
    let mut dst = vec![T::ZERO; p.len()];
    if dim == 0 || p.is_empty() {
        return dst;
    }
    let chunk = rows_per_task(dim) * dim;
    dst.par_chunks_mut(chunk)
        .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(d, (pc, gc))| softmax_grad_rows(pc, gc, d, dim));
    dst
}

struct MaskedSoftmax;

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "hopfield-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dim = l.dims().last().copied().unwrap_or(1);
        let nan = || KernelError::Values {
            op: "masked_softmax",
            arg: "logits",
            shape: l.dims().to_vec(),
            what: "NaN",
        };
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(map_rows(contiguous(v, l)?, dim).ok_or_else(nan)?)
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(map_rows(contiguous(v, l)?, dim).ok_or_else(nan)?)
            }
            other => candle_core::bail!("masked_softmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2(&grad_res.contiguous()?, SoftmaxGrad)?))
    }
}

/// The softmax backward `p * (g - sum(p g))` as one op; its own backward is composed, so
/// second-order gradients still work.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "hopfield-masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        lp: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = lp.dims().last().copied().unwrap_or(1);
        let out = match (p, g) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                CpuStorage::F32(grad_rows(contiguous(p, lp)?, contiguous(g, lg)?, dim))
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                CpuStorage::F64(grad_rows(contiguous(p, lp)?, contiguous(g, lg)?, dim))
            }
            _ => candle_core::bail!("masked_softmax backward: unsupported dtypes"),
        };
        Ok((out, lp.shape().clone()))
    }

    fn bwd(
        &self,
        p: &Tensor,
        g: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // r = p*g - p*s with s = sum(p*g): dr/dp . u = u*g - u*s - p*sum(u*g)... written out:
        let s = (p * g)?.sum_keepdim(D::Minus1)?;
        let u = grad_res;
        let ug = (u * g)?;
        let up = (u * p)?;
        let d_p =
            ((&ug - u.broadcast_mul(&s)?)? - g.broadcast_mul(&up.sum_keepdim(D::Minus1)?)?)?;
        let d_g = (&up - p.broadcast_mul(&up.sum_keepdim(D::Minus1)?)?)?;
        Ok((Some(d_p), Some(d_g)))
    }
}

/// Softmax over the last dimension; rows whose entries are all `-inf` become zeros (with zero
/// gradient) instead of NaN. One fused pass per row on the CPU for f32/f64 contiguous inputs;
/// otherwise [`masked_softmax_composed`].
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[[1f64, 2., 3.]], &Device::Cpu)?;
/// let p = hopfield_cuda::masked_softmax(x.as_tensor())?;
/// let g = p.narrow(1, 2, 1)?.sum_all()?.backward()?;
/// let p2 = p.to_vec2::<f64>()?[0][2];
/// assert!((g.get(&x).unwrap().to_vec2::<f64>()?[0][2] - p2 * (1. - p2)).abs() < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn masked_softmax(x: &Tensor) -> Result<Tensor> {
    expect_float("masked_softmax", "logits", x)?;
    let fused = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
    if fused {
        x.contiguous()?.apply_op1(MaskedSoftmax)
    } else {
        masked_softmax_composed(x)
    }
}

/// The same function from composed candle ops (any float dtype and device), with the same
/// semantics: NaN is an error, rows of `-inf` give zeros, and `+inf` entries share their row's
/// mass equally.
pub fn masked_softmax_composed(logits: &Tensor) -> Result<Tensor> {
    expect_float("masked_softmax", "logits", logits)?;
    if logits.elem_count() == 0 {
        return Ok(logits.clone());
    }
    if logits
        .ne(logits)?
        .flatten_all()?
        .max(0)?
        .to_scalar::<u8>()?
        != 0
    {
        return Err(KernelError::Values {
            op: "masked_softmax",
            arg: "logits",
            shape: logits.dims().to_vec(),
            what: "NaN",
        }
        .into());
    }
    // The max is a constant shift (softmax is invariant to it), so it carries no gradient.
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let finite = m.ne(f64::NEG_INFINITY)?.mul(&m.ne(f64::INFINITY)?)?;
    let m = finite.where_cond(&m, &m.zeros_like()?)?;
    let e = logits.broadcast_sub(&m)?.exp()?;
    // Rows with +inf entries: the limit puts equal mass on those entries (and none elsewhere).
    let is_inf = logits.eq(f64::INFINITY)?;
    let inf_rows = is_inf
        .max_keepdim(D::Minus1)?
        .broadcast_as(logits.shape())?;
    let e = inf_rows.where_cond(&is_inf.to_dtype(logits.dtype())?, &e)?;
    let s = e.sum_keepdim(D::Minus1)?;
    let positive = s.gt(0.0)?;
    let s = positive.where_cond(&s, &s.ones_like()?)?;
    e.broadcast_div(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn fused_equals_composed_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let inf = f64::NEG_INFINITY;
        let mask = Tensor::new(&[[0f64, inf, 0., 0., inf], [inf, inf, inf, inf, inf]], &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f64, 2., (3, 2, 5), &dev)?)?;
        let cot = Tensor::randn(0f64, 1., (3, 2, 5), &dev)?;
        let run = |f: fn(&Tensor) -> Result<Tensor>| -> Result<(Tensor, Tensor)> {
            let p = f(&x.as_tensor().broadcast_add(&mask)?)?;
            let g = (&p * &cot)?.sum_all()?.backward()?;
            Ok((p, g.get(x.as_tensor()).unwrap().clone()))
        };
        let (p1, g1) = run(masked_softmax)?;
        let (p2, g2) = run(masked_softmax_composed)?;
        assert!(max_diff(&p1, &p2) < 1e-15);
        assert!(max_diff(&g1, &g2) < 1e-15);
        let row = p1.get(0)?.get(1)?.to_vec1::<f64>()?;
        assert_eq!(row, vec![0.0; 5]);
        Ok(())
    }

    #[test]
    fn backward_op_is_differentiable() -> Result<()> {
        // The fused backward's own backward (second-order training) against composed ops.
        let dev = Device::Cpu;
        let p = Var::from_tensor(&candle_nn::ops::softmax_last_dim(&Tensor::randn(
            0f64,
            1.,
            (2, 6),
            &dev,
        )?)?)?;
        let g = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 6), &dev)?)?;
        let u = Tensor::randn(0f64, 1., (2, 6), &dev)?;
        let (pt, gt) = (p.as_tensor(), g.as_tensor());
        let fused = pt.apply_op2(gt, SoftmaxGrad)?;
        let composed = (pt * (gt.broadcast_sub(&(pt * gt)?.sum_keepdim(D::Minus1)?))?)?;
        assert!(max_diff(&fused, &composed) < 1e-15);
        let a = (&fused * &u)?.sum_all()?.backward()?;
        let b = (&composed * &u)?.sum_all()?.backward()?;
        for v in [pt, gt] {
            assert!(max_diff(a.get(v).unwrap(), b.get(v).unwrap()) < 1e-14);
        }
        Ok(())
    }

    /// A softmax over zero stored patterns (an empty memory) is an empty tensor, forward and
    /// backward, not a panic; so is a standardisation over zero features.
    #[test]
    fn empty_rows_give_empty_results() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let x = candle_core::Var::from_tensor(&Tensor::zeros((3, 2, 0), dtype, &Device::Cpu)?)?;
            let p = masked_softmax(x.as_tensor())?;
            assert_eq!(p.dims(), &[3, 2, 0]);
            let g = p.sum_all()?.backward()?;
            assert_eq!(g.get(x.as_tensor()).unwrap().dims(), &[3, 2, 0]);
            let z = crate::normalize(x.as_tensor(), 1e-5)?;
            assert_eq!(z.dims(), &[3, 2, 0]);
        }
        Ok(())
    }

    #[test]
    fn fast_exp_is_accurate_and_exact_at_the_edges() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 2e-7, "max relative error {worst}");
        // The FMA form (what the retrieval kernels' FMA builds run; plain mul_add here, exact
        // either way) meets the same bound.
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32_with::<true>(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 2e-7, "FMA form: max relative error {worst}");
        assert_eq!(exp_f32_with::<true>(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32_with::<true>(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn f32_matches_candle_softmax() -> Result<()> {
        let x = Tensor::randn(0f32, 3., (4, 7, 33), &Device::Cpu)?;
        let a = masked_softmax(&x)?;
        let b = candle_nn::ops::softmax_last_dim(&x)?;
        assert!(max_diff(&a, &b) < 1e-6);
        Ok(())
    }

    /// +inf logits share their row's mass equally (fused and composed agree), NaN is a typed
    /// error (a row of NaNs is not "fully masked"), and integer logits are an error, not a panic.
    #[test]
    fn infinities_nans_and_integers() -> Result<()> {
        let dev = Device::Cpu;
        let (inf, ninf) = (f64::INFINITY, f64::NEG_INFINITY);
        let x = Tensor::new(&[[inf, 0., inf], [1., ninf, inf], [ninf, ninf, ninf]], &dev)?;
        let want = vec![vec![0.5, 0., 0.5], vec![0., 0., 1.], vec![0., 0., 0.]];
        assert_eq!(masked_softmax(&x)?.to_vec2::<f64>()?, want);
        assert_eq!(masked_softmax_composed(&x)?.to_vec2::<f64>()?, want);
        for row in [[f64::NAN, 0.], [f64::NAN, ninf]] {
            let x = Tensor::new(&[row], &dev)?;
            for r in [masked_softmax(&x), masked_softmax_composed(&x)] {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("contains NaN"), "{e}");
            }
        }
        let ids = Tensor::new(&[[1u32, 0]], &dev)?;
        assert!(masked_softmax(&ids)
            .unwrap_err()
            .to_string()
            .contains("U32"));
        Ok(())
    }
}
