//! The gradient of a dense-associative-memory energy over tokens (the Energy Transformer's
//! Hopfield module) as one graph node, with a closed-form backward.
//!
//! With memories `W` `(D, M)` and `h = x W` per token:
//! * ReLU: `E = -1/2 sum relu(beta h)^2`, `dE/dx = -beta relu(beta h) W^T`;
//! * softmax: `E = -1/beta sum_rows lse(beta h)`, `dE/dx = -softmax(beta h) W^T`.
//!
//! Composed, that is a product, a scale, an activation, a product and a scale, and training
//! through it doubles those nodes in candle's backward pass; each is a full-size temporary and a
//! wake-up of candle's thread pool, which on few cores competes with the GEMM threads. Here the
//! two products run on host buffers with the activation in between, and the backward is four
//! products and two elementwise passes:
//! ReLU (`u = beta h`, `r = relu(u)`, cotangent `C`): `Cw = C W`, `du = -beta Cw [u > 0]`,
//! `dx = beta du W^T`, `dW = -beta C^T r + beta x^T du`, `dbeta = -sum Cw r + sum du h`;
//! softmax (`P = softmax(beta h)`): `dS = P * (dP - rowsum(P dP))` with `dP = -C W`,
//! `dx = beta dS W^T`, `dW = -C^T P + beta x^T dS`, `dbeta = sum dS h`.
//! The backward itself is not differentiable (no third derivatives); the composed path is.

use crate::error::{expect_float, expect_same_dtype, KernelError};
use crate::matmul::{gemm_into, gemm_serial, Mat};
use crate::rows::{cpu_contiguous, rows_per_task, storage_slice};
use crate::softmax::{softmax_grad_rows, softmax_rows, Elem};
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// The interaction of a memory with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopfieldEnergyKind {
    /// `E = -1/2 sum relu(beta x W)^2` (the Energy Transformer's default).
    Relu,
    /// `E = -1/beta sum lse(beta x W)` (the modern Hopfield energy).
    Softmax,
}

/// `dE/dx` of the memory energy of tokens `x` `(N, D)` with memories `w` `(D, M)` and a single
/// `beta` (one element, any shape): see [`HopfieldEnergyKind`]. Differentiable in all three
/// inputs (first order). Fused on the CPU for f32 and f64, [`hopfield_energy_grad_composed`]
/// elsewhere; they agree to rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::{hopfield_energy_grad, HopfieldEnergyKind};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[1f64, -1.]], &dev)?;
/// let w = Tensor::new(&[[1f64, 0.], [0., 1.]], &dev)?;   // two memories, the unit vectors
/// let beta = Tensor::new(&[2f64], &dev)?;
/// // relu(2 * [1, -1]) = [2, 0]; -2 * [2, 0] W^T = [-4, 0]
/// let g = hopfield_energy_grad(&x, &w, &beta, HopfieldEnergyKind::Relu)?;
/// assert_eq!(g.to_vec2::<f64>()?, vec![vec![-4., 0.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_energy_grad(
    x: &Tensor,
    w: &Tensor,
    beta: &Tensor,
    kind: HopfieldEnergyKind,
) -> Result<Tensor> {
    check(x, w, beta)?;
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.elem_count() > 0
        && w.elem_count() > 0;
    if !fused {
        return hopfield_energy_grad_composed(x, w, beta, kind);
    }
    let b = beta.reshape(1)?;
    let g = x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b,
        HopfieldEnergyGrad {
            kind,
            saved: std::sync::Mutex::new(None),
        },
    )?;
    Ok(g)
}

/// [`hopfield_energy_grad`] from candle ops (any float dtype and device, differentiable to any
/// order): the reference the fused op is tested against.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::{hopfield_energy_grad_composed, HopfieldEnergyKind};
/// let x = Tensor::new(&[[0f64, 0.]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1f64, 0.], [0., 1.]], &Device::Cpu)?;
/// let beta = Tensor::new(1f64, &Device::Cpu)?;
/// // Equal scores: P = [1/2, 1/2], dE/dx = -P W^T.
/// let g = hopfield_energy_grad_composed(&x, &w, &beta, HopfieldEnergyKind::Softmax)?;
/// assert_eq!(g.to_vec2::<f64>()?, vec![vec![-0.5, -0.5]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hopfield_energy_grad_composed(
    x: &Tensor,
    w: &Tensor,
    beta: &Tensor,
    kind: HopfieldEnergyKind,
) -> Result<Tensor> {
    check(x, w, beta)?;
    if x.elem_count() == 0 || w.elem_count() == 0 {
        // No tokens, no features or no memories: nothing to sum, a zero gradient.
        return x.zeros_like();
    }
    let b = beta.reshape((1, 1))?;
    let u = x.matmul(w)?.broadcast_mul(&b)?;
    match kind {
        // The sign goes on the scalar beta, not on the (N, D) result.
        HopfieldEnergyKind::Relu => u.relu()?.matmul(&w.t()?)?.broadcast_mul(&b.neg()?),
        HopfieldEnergyKind::Softmax => crate::masked_softmax(&u)?.matmul(&w.t()?)?.neg(),
    }
}

pub(crate) fn check(x: &Tensor, w: &Tensor, beta: &Tensor) -> Result<()> {
    const OP: &str = "hopfield_energy_grad";
    expect_float(OP, "x", x)?;
    expect_same_dtype(OP, ("w", w), ("x", x))?;
    expect_same_dtype(OP, ("beta", beta), ("x", x))?;
    let shape = |arg: &'static str, expected: String, got: &[usize]| -> candle_core::Error {
        KernelError::Shape {
            op: OP,
            arg,
            expected,
            got: got.to_vec(),
        }
        .into()
    };
    let (_, d) = x
        .dims2()
        .map_err(|_| shape("x", "(N, D)".into(), x.dims()))?;
    match w.dims2() {
        Ok((dw, _)) if dw == d => {}
        _ => {
            return Err(shape(
                "w",
                format!("({d}, M) for x {:?}", x.dims()),
                w.dims(),
            ))
        }
    }
    if beta.elem_count() != 1 || beta.rank() > 1 {
        return Err(shape("beta", "() or (1)".into(), beta.dims()));
    }
    Ok(())
}

struct HopfieldEnergyGrad {
    kind: HopfieldEnergyKind,
    /// The scores `h = x W` of the forward pass, for the backward pass (which would otherwise
    /// repeat the largest product). The op lives as long as the graph node that needs it: an
    /// untracked result drops it, and its `h`, at once.
    saved: std::sync::Mutex<Option<Saved>>,
}

pub(crate) enum Saved {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// An element type whose scores the op can keep for its backward pass.
pub(crate) trait Keep: Elem + crate::scratch::Pooled {
    fn save(v: Vec<Self>) -> Saved;
    fn saved(s: &Saved) -> Option<&[Self]>;
}

macro_rules! keep {
    ($t:ty, $variant:ident) => {
        impl Keep for $t {
            fn save(v: Vec<Self>) -> Saved {
                Saved::$variant(v)
            }
            fn saved(s: &Saved) -> Option<&[Self]> {
                match s {
                    Saved::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
keep!(f32, F32);
keep!(f64, F64);

/// `h = x W` `(N, M)`.
fn scores<T: Elem>(x: &[T], w: &[T], n: usize, d: usize, m: usize) -> Vec<T> {
    let mut h = vec![T::zero(); n * m];
    gemm_into(
        &mut h,
        m,
        Mat::row_major(x, n, d, d),
        Mat::row_major(w, d, m, m),
        false,
    );
    h
}

/// The activation `a(beta h)` into `out` (ReLU or softmax per row); `false` when a softmax row
/// holds a NaN (the caller reports NaN, not a softmax of garbage). Infinite logits are defined as
/// in [`crate::masked_softmax`]; through the ReLU they reach the result, where callers see them.
fn activate<T: Elem>(h: &[T], out: &mut [T], m: usize, beta: T, kind: HopfieldEnergyKind) -> bool {
    let chunk = rows_per_task(m) * m;
    out.par_chunks_mut(chunk)
        .zip(h.par_chunks(chunk))
        .map(|(oc, hc)| activate_rows(hc, oc, m, beta, kind))
        .reduce(|| true, |a, b| a && b)
}

/// [`activate`] of a block of rows on the calling thread.
fn activate_rows<T: Elem>(
    h: &[T],
    out: &mut [T],
    m: usize,
    beta: T,
    kind: HopfieldEnergyKind,
) -> bool {
    let mut ok = true;
    match kind {
        HopfieldEnergyKind::Softmax => {
            let mut logits = vec![T::zero(); m];
            for (or, hr) in out.chunks_mut(m).zip(h.chunks(m)) {
                for (l, &v) in logits.iter_mut().zip(hr) {
                    *l = beta * v;
                }
                ok &= softmax_rows(&logits, or, m);
            }
        }
        HopfieldEnergyKind::Relu => {
            for (o, &v) in out.iter_mut().zip(h) {
                let u = beta * v;
                *o = if u > T::zero() { u } else { T::zero() };
            }
        }
    }
    ok
}

/// The forward pass of a block of `n` rows `x` on the calling thread (for callers that already
/// run one rayon task per block): `h = x W` into `h` `(n, M)`, `sign a(beta h)` into `a`, `dE/dx`
/// into `g` `(n, D)`; `false` as [`activate`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_rows<T: Elem>(
    x: &[T],
    w: &[T],
    beta: T,
    [n, d, m]: [usize; 3],
    kind: HopfieldEnergyKind,
    h: &mut [T],
    a: &mut [T],
    g: &mut [T],
) -> bool {
    let wm = Mat::row_major(w, d, m, m);
    gemm_serial(h, m, Mat::row_major(x, n, d, d), wm, false);
    let ok = activate_rows(h, a, m, beta, kind);
    let s = sign(beta, kind);
    a.iter_mut().for_each(|v| *v *= s);
    gemm_serial(g, d, Mat::row_major(a, n, m, m), wm.t(), false);
    ok
}

/// The backward pass of a block of `n` rows on the calling thread, given their scores `h` and
/// cotangent `c`: `sign a` into `a` and `beta du` into `du` (`(n, M)`, the factors of
/// `dW = C^T (sign a) + x^T (beta du)`, which the caller forms over all rows), `dx` into `dx`;
/// returns this block's share of `dbeta`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_rows<T: Elem>(
    w: &[T],
    beta: T,
    c: &[T],
    [n, d, m]: [usize; 3],
    kind: HopfieldEnergyKind,
    h: &[T],
    a: &mut [T],
    du: &mut [T],
    dx: &mut [T],
) -> T {
    let wm = Mat::row_major(w, d, m, m);
    activate_rows(h, a, m, beta, kind);
    gemm_serial(du, m, Mat::row_major(c, n, d, d), wm, false);
    let db = cotangent_rows(du, a, h, m, beta, kind);
    du.iter_mut().for_each(|v| *v *= beta);
    gemm_serial(dx, d, Mat::row_major(du, n, m, m), wm.t(), false);
    let s = sign(beta, kind);
    a.iter_mut().for_each(|v| *v *= s);
    db
}

/// `C W` in `g` turned in place into `du` (ReLU) or `dS` (softmax), the cotangent of `beta h`
/// over `beta`, for rows with activations `a` and scores `h`; returns their share of `dbeta`.
fn cotangent_rows<T: Elem>(
    g: &mut [T],
    a: &[T],
    h: &[T],
    m: usize,
    beta: T,
    kind: HopfieldEnergyKind,
) -> T {
    let mut db = T::zero();
    match kind {
        HopfieldEnergyKind::Relu => {
            for ((g, &r), &hv) in g.iter_mut().zip(a).zip(h) {
                // du = -beta Cw [u > 0]; dbeta = -sum Cw r + sum du h
                let du = if r > T::zero() { -beta * *g } else { T::zero() };
                db += du * hv - *g * r;
                *g = du;
            }
        }
        HopfieldEnergyKind::Softmax => {
            // dP = -C W; dS = P (dP - rowsum(P dP)); dbeta = sum dS h
            g.iter_mut().for_each(|v| *v = -*v);
            let dp = g.to_vec();
            softmax_grad_rows(a, &dp, g, m);
            for (&s, &hv) in g.iter().zip(h) {
                db += s * hv;
            }
        }
    }
    db
}

/// The factor in front of `a W^T` in `dE/dx`: `-beta` (ReLU) or `-1` (softmax).
fn sign<T: Elem>(beta: T, kind: HopfieldEnergyKind) -> T {
    match kind {
        HopfieldEnergyKind::Relu => -beta,
        HopfieldEnergyKind::Softmax => -T::one(),
    }
}

fn scale<T: Elem>(v: &mut [T], s: T, m: usize) {
    v.par_chunks_mut(rows_per_task(m) * m)
        .for_each(|c| c.iter_mut().for_each(|x| *x *= s));
}

pub(crate) fn forward<T: Elem>(
    x: &[T],
    w: &[T],
    beta: T,
    [n, d, m]: [usize; 3],
    kind: HopfieldEnergyKind,
) -> (Vec<T>, Vec<T>) {
    let h = scores(x, w, n, d, m);
    let mut a = vec![T::zero(); n * m];
    let ok = activate(&h, &mut a, m, beta, kind);
    scale(&mut a, sign(beta, kind), m);
    let mut g = vec![T::zero(); n * d];
    gemm_into(
        &mut g,
        d,
        Mat::row_major(&a, n, m, m),
        Mat::row_major(w, d, m, m).t(),
        false,
    );
    if !ok {
        g.fill(T::from_f64(f64::NAN));
    }
    (g, h)
}

/// `dW = c^T a + x^T du`, `(D, M)`, for rows `c`, `x` `(N, D)` and `a`, `du` `(N, M)`: the
/// memory weight's gradient once `a` carries the energy's sign and `du` its beta (the Energy
/// Transformer's fused step computes it from the same pieces, one task's rows at a time with
/// `gemm_serial`; over all rows, `gemm_into` splits the products over the pool).
pub(crate) fn weight_grad<T: Elem>(
    c: &[T],
    x: &[T],
    a: &[T],
    du: &[T],
    [n, d, m]: [usize; 3],
    gemm: fn(&mut [T], usize, Mat<T>, Mat<T>, bool),
) -> Vec<T> {
    let mut dw = vec![T::zero(); d * m];
    gemm(
        &mut dw,
        m,
        Mat::row_major(c, n, d, d).t(),
        Mat::row_major(a, n, m, m),
        false,
    );
    gemm(
        &mut dw,
        m,
        Mat::row_major(x, n, d, d).t(),
        Mat::row_major(du, n, m, m),
        true,
    );
    dw
}

/// `(dx, dW, dbeta)` for cotangent `c` `(N, D)`; `h` from the forward pass when kept.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Elem>(
    x: &[T],
    w: &[T],
    beta: T,
    c: &[T],
    [n, d, m]: [usize; 3],
    kind: HopfieldEnergyKind,
    h: Option<&[T]>,
) -> (Vec<T>, Vec<T>, T) {
    let recomputed;
    let h = match h {
        Some(h) if h.len() == n * m => h,
        _ => {
            recomputed = scores(x, w, n, d, m);
            &recomputed[..]
        }
    };
    let mut a = vec![T::zero(); n * m];
    activate(h, &mut a, m, beta, kind);
    // C W, turned in place into du (ReLU) or dS (softmax), the cotangent of beta h over beta.
    let mut du = scores(c, w, n, d, m);
    let chunk = rows_per_task(m) * m;
    let dbeta = du
        .par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk).zip(h.par_chunks(chunk)))
        .map(|(gc, (ac, hc))| cotangent_rows(gc, ac, hc, m, beta, kind))
        .collect::<Vec<T>>()
        .into_iter()
        .fold(T::zero(), |s, v| s + v);
    scale(&mut du, beta, m);
    let wm = Mat::row_major(w, d, m, m);
    let mut dx = vec![T::zero(); n * d];
    gemm_into(&mut dx, d, Mat::row_major(&du, n, m, m), wm.t(), false);
    // dW = sign C^T a + x^T (beta du)
    scale(&mut a, sign(beta, kind), m);
    (dx, weight_grad(c, x, &a, &du, [n, d, m], gemm_into), dbeta)
}

fn sizes(x: &Layout, w: &Layout) -> Result<[usize; 3]> {
    let (n, d) = x.shape().dims2()?;
    let (_, m) = w.shape().dims2()?;
    Ok([n, d, m])
}

fn grads<T: Keep>(
    [x, w, beta, c]: [&Tensor; 4],
    kind: HopfieldEnergyKind,
    saved: Option<&Saved>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = sizes(x.layout(), w.layout())?;
    let guards = [x, w, beta, c].map(|t| t.storage_and_layout());
    let b = storage_slice::<T>(&guards[2].0, guards[2].1, "hopfield_energy_grad")?[0];
    let (dx, dw, db) = backward::<T>(
        storage_slice(&guards[0].0, guards[0].1, "hopfield_energy_grad")?,
        storage_slice(&guards[1].0, guards[1].1, "hopfield_energy_grad")?,
        b,
        storage_slice(&guards[3].0, guards[3].1, "hopfield_energy_grad")?,
        dims,
        kind,
        saved.and_then(T::saved),
    );
    let dev = &candle_core::Device::Cpu;
    Ok((
        Tensor::from_vec(dx, x.shape(), dev)?,
        Tensor::from_vec(dw, w.shape(), dev)?,
        Tensor::from_vec(vec![db], beta.shape(), dev)?,
    ))
}

impl CustomOp3 for HopfieldEnergyGrad {
    fn name(&self) -> &'static str {
        "hopfield-energy-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        beta: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(lx, lw)?;
        fn run<T: Keep>(
            op: &HopfieldEnergyGrad,
            [x, w, beta]: [&[T]; 3],
            dims: [usize; 3],
        ) -> CpuStorage {
            let (g, h) = forward(x, w, beta[0], dims, op.kind);
            if let Ok(mut saved) = op.saved.lock() {
                *saved = Some(T::save(h));
            }
            T::to_cpu_storage_owned(g)
        }
        let out = match x.dtype() {
            DType::F32 => run::<f32>(
                self,
                [
                    cpu_contiguous(x, lx)?,
                    cpu_contiguous(w, lw)?,
                    cpu_contiguous(beta, lb)?,
                ],
                dims,
            ),
            DType::F64 => run::<f64>(
                self,
                [
                    cpu_contiguous(x, lx)?,
                    cpu_contiguous(w, lw)?,
                    cpu_contiguous(beta, lb)?,
                ],
                dims,
            ),
            other => candle_core::bail!(
                "hopfield_energy_grad: CPU op supports f32 and f64, got {other:?}"
            ),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = grad.contiguous()?;
        let (x, w, beta) = (x.contiguous()?, w.contiguous()?, beta.contiguous()?);
        let args = [&x, &w, &beta, &c];
        let saved = self.saved.lock().ok();
        let saved = saved.as_ref().and_then(|s| s.as_ref());
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => grads::<f32>(args, self.kind, saved)?,
            DType::F64 => grads::<f64>(args, self.kind, saved)?,
            other => candle_core::bail!(
                "hopfield_energy_grad: CPU op supports f32 and f64, got {other:?}"
            ),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};
    use rstest::rstest;

    /// Fused and composed agree on the gradient and on its backward (every input).
    #[rstest]
    #[case(7, 5, 9, HopfieldEnergyKind::Relu)]
    #[case(7, 5, 9, HopfieldEnergyKind::Softmax)]
    #[case(1, 3, 1, HopfieldEnergyKind::Softmax)]
    #[case(300, 16, 70, HopfieldEnergyKind::Relu)]
    #[case(300, 16, 70, HopfieldEnergyKind::Softmax)]
    fn fused_equals_composed(
        #[case] n: usize,
        #[case] d: usize,
        #[case] m: usize,
        #[case] kind: HopfieldEnergyKind,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1., (n, d), &dev)?;
        let w = Var::randn(0f64, 0.5, (d, m), &dev)?;
        let beta = Var::new(&[0.7f64], &dev)?;
        let cot = Tensor::randn(0f64, 1., (n, d), &dev)?;
        let fused = hopfield_energy_grad(&x, &w, &beta, kind)?;
        let composed = hopfield_energy_grad_composed(&x, &w, &beta, kind)?;
        assert!(max_diff(&fused, &composed) < 1e-12);
        let gf = (&fused * &cot)?.sum_all()?.backward()?;
        let gc = (&composed * &cot)?.sum_all()?.backward()?;
        for v in [&x, &w, &beta] {
            let (a, c) = (gf.get(v).expect("fused"), gc.get(v).expect("composed"));
            let scale = 1.0 + c.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(max_diff(a, c) < 1e-11 * scale, "{:?} {kind:?}", v.dims());
        }
        Ok(())
    }

    /// A 0-d beta (the softmax module's) gets a 0-d gradient.
    #[test]
    fn scalar_beta_keeps_its_shape() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (4, 3), &dev)?;
        let w = Tensor::randn(0f64, 1., (3, 5), &dev)?;
        let beta = Var::new(1.5f64, &dev)?;
        let g = hopfield_energy_grad(&x, &w, &beta, HopfieldEnergyKind::Softmax)?;
        let grads = g.sum_all()?.backward()?;
        assert_eq!(grads.get(&beta).expect("beta grad").dims(), &[] as &[usize]);
        Ok(())
    }

    #[test]
    fn overflow_and_nan_and_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1e200f64, 1.]], &dev)?;
        let w = Tensor::new(&[[1e200f64, 1.], [1., 1.]], &dev)?;
        let beta = Tensor::new(&[1f64], &dev)?;
        // Overflowing scores: through the ReLU they reach the result; a softmax of +inf logits is
        // defined (all mass on the infinite entry), as in `masked_softmax`.
        let relu = hopfield_energy_grad(&x, &w, &beta, HopfieldEnergyKind::Relu)?;
        assert!(!crate::all_finite(&relu)?);
        let soft = hopfield_energy_grad(&x, &w, &beta, HopfieldEnergyKind::Softmax)?;
        assert_eq!(soft.to_vec2::<f64>()?, vec![vec![-1e200, -1.]]);
        // NaN logits are never turned into a finite guess.
        let nan = Tensor::new(&[f64::NAN], &dev)?;
        let g = hopfield_energy_grad(&x, &w, &nan, HopfieldEnergyKind::Softmax)?;
        assert!(!crate::all_finite(&g)?);
        let e = hopfield_energy_grad(&x, &x, &beta, HopfieldEnergyKind::Relu).unwrap_err();
        assert!(e.to_string().contains("w"), "{e}");
        let e = hopfield_energy_grad(&x, &w, &x, HopfieldEnergyKind::Relu).unwrap_err();
        assert!(e.to_string().contains("beta"), "{e}");
        Ok(())
    }
}
