//! LayerNorm's affine part `y = x * weight + bias` over the last dimension, as one graph node.
//!
//! Composed, it is a `broadcast_mul` and a `broadcast_add`, each a candle elementwise op that
//! candle 0.11 runs on its own spinning thread pool from 64K elements on (a batch of 8 x 256
//! tokens of 64 features is 131K); next to rayon's workers on a 2-core machine that pool's barrier
//! wait was 23-28% of a DiffusedHopfield batch (`perf`, docs/dahn-performance.md), and the backward
//! pass adds more of them. As one op: one pass forward, one backward, on rayon.

use crate::error::{expect_float, KernelError};
use crate::rows::{cpu_contiguous, par_rows, rows_per_task, storage_slice, tracked_grads};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `x * weight + bias` over the last dimension (`weight` and `bias` of that size or scalars, each
/// optional: absent is 1 and 0). One fused graph node on the CPU for f32/f64, [`affine_composed`] elsewhere.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?;
/// let w = Tensor::new(&[10f64, 100.], &Device::Cpu)?;
/// let b = Tensor::new(&[1f64, 2.], &Device::Cpu)?;
/// let y = hopfield_cuda::affine(&x, Some(&w), Some(&b))?;
/// assert_eq!(y.to_vec2::<f64>()?, vec![vec![11., 202.], vec![31., 402.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn affine(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let dim = check(x, weight, bias)?;
    if weight.is_none() && bias.is_none() {
        return Ok(x.clone());
    }
    let per_feature = [weight, bias].iter().flatten().all(|t| t.dims() == [dim]);
    if !(x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64))
        || dim == 0
        || !per_feature
    {
        // A scalar weight or bias (the Energy Transformer's LayerNorm has one) broadcasts.
        return compose(x, weight, bias);
    }
    let ones;
    let zeros;
    let w = match weight {
        Some(w) => w,
        None => {
            ones = Tensor::ones(dim, x.dtype(), x.device())?;
            &ones
        }
    };
    let b = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(dim, x.dtype(), x.device())?;
            &zeros
        }
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Affine)
}

/// [`affine`] from candle ops: the reference the fused op is tested against.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.]], &Device::Cpu)?;
/// let b = Tensor::new(&[1f32, 1.], &Device::Cpu)?;
/// let y = hopfield_cuda::affine_composed(&x, None, Some(&b))?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![2., 3.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn affine_composed(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    check(x, weight, bias)?;
    compose(x, weight, bias)
}

/// [`affine_composed`] on checked arguments.
fn compose(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut y = x.clone();
    if let Some(w) = weight {
        y = y.broadcast_mul(w)?;
    }
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    Ok(y)
}

/// The last dimension, after checking `weight` and `bias` are vectors of that size in `x`'s dtype.
fn check(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<usize> {
    expect_float("affine", "x", x)?;
    let dim = x.dims().last().copied().unwrap_or(1);
    for (arg, t) in [("weight", weight), ("bias", bias)] {
        let Some(t) = t else { continue };
        if t.dims() != [dim] && t.elem_count() != 1 {
            return Err(KernelError::Shape {
                op: "affine",
                arg,
                expected: format!("({dim}) or a scalar for x {:?}", x.dims()),
                got: t.dims().to_vec(),
            }
            .into());
        }
        crate::error::expect_same_dtype("affine", (arg, t), ("x", x))?;
    }
    Ok(dim)
}

struct Affine;

impl Affine {
    fn forward<T: WithDType + Default>(x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        par_rows(x, w.len(), |xr, yr| {
            for (((y, &v), &wj), &bj) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *y = v * wj + bj;
            }
        })
    }

    /// `(dx, dw, db)`: `dx = d * w`, `dw = sum over rows of d * x`, `db = sum over rows of d`.
    fn backward<T: WithDType + Default>(x: &[T], w: &[T], d: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let dim = w.len();
        let dx = par_rows(d, dim, |dr, out| {
            for ((o, &g), &wj) in out.iter_mut().zip(dr).zip(w) {
                *o = g * wj;
            }
        });
        let chunk = rows_per_task(dim) * dim;
        let (dw, db) = x
            .par_chunks(chunk)
            .zip(d.par_chunks(chunk))
            .map(|(xc, dc)| {
                let (mut dw, mut db) = (vec![T::zero(); dim], vec![T::zero(); dim]);
                for (xr, dr) in xc.chunks_exact(dim).zip(dc.chunks_exact(dim)) {
                    for j in 0..dim {
                        dw[j] += dr[j] * xr[j];
                        db[j] += dr[j];
                    }
                }
                (dw, db)
            })
            .reduce(
                || (vec![T::zero(); dim], vec![T::zero(); dim]),
                |(mut a, mut b), (c, e)| {
                    a.iter_mut().zip(&c).for_each(|(a, &c)| *a += c);
                    b.iter_mut().zip(&e).for_each(|(b, &e)| *b += e);
                    (a, b)
                },
            );
        (dx, dw, db)
    }

    fn grads<T: WithDType + Default>(
        args: [&Tensor; 3],
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let grad = grad.contiguous()?;
        let guards = [args[0], args[1], &grad].map(|t| t.storage_and_layout());
        let data =
            |i: usize| -> Result<&[T]> { storage_slice(&guards[i].0, guards[i].1, "affine") };
        let (dx, dw, db) = Self::backward(data(0)?, data(1)?, data(2)?);
        tracked_grads(args, [dx, dw, db])
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "hopfield-affine"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match x.dtype() {
            DType::F32 => CpuStorage::F32(Self::forward::<f32>(
                cpu_contiguous(x, lx)?,
                cpu_contiguous(w, lw)?,
                cpu_contiguous(b, lb)?,
            )),
            DType::F64 => CpuStorage::F64(Self::forward::<f64>(
                cpu_contiguous(x, lx)?,
                cpu_contiguous(w, lw)?,
                cpu_contiguous(b, lb)?,
            )),
            other => candle_core::bail!("affine: CPU op supports f32 and f64, got {other:?}"),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = match x.dtype() {
            DType::F32 => Self::grads::<f32>([x, w, b], grad)?,
            DType::F64 => Self::grads::<f64>([x, w, b], grad)?,
            other => candle_core::bail!("affine: CPU op supports f32 and f64, got {other:?}"),
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_grads_match_finite_differences, max_diff, random_var as var};
    use candle_core::Device;

    /// Fused and composed agree on values and on every gradient, for both parts, either part
    /// alone, f32 and f64, and more rows than one rayon task takes.
    #[test]
    fn fused_matches_composed() -> Result<()> {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            for (with_w, with_b) in [(true, true), (true, false), (false, true)] {
                let x = var(&[3, 700, 24], dtype)?;
                let w = var(&[24], dtype)?;
                let b = var(&[24], dtype)?;
                let (wo, bo) = (with_w.then(|| w.as_tensor()), with_b.then(|| b.as_tensor()));
                let y1 = affine(x.as_tensor(), wo, bo)?;
                let y2 = affine_composed(x.as_tensor(), wo, bo)?;
                assert!(max_diff(&y1, &y2) < tol);
                let cot = Tensor::randn(0f64, 1., (3, 700, 24), &Device::Cpu)?.to_dtype(dtype)?;
                let g1 = (&y1 * &cot)?.sum_all()?.backward()?;
                let g2 = (&y2 * &cot)?.sum_all()?.backward()?;
                let mut vars = vec![&x];
                if with_w {
                    vars.push(&w);
                }
                if with_b {
                    vars.push(&b);
                }
                for v in vars {
                    let (a, r) = (
                        g1.get(v.as_tensor()).unwrap(),
                        g2.get(v.as_tensor()).unwrap(),
                    );
                    // The weight's gradient sums 2100 products: relative to its size in f32.
                    let scale = r
                        .abs()?
                        .max_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?;
                    assert!(
                        max_diff(a, r) < tol * scale.max(1.0),
                        "{dtype:?} {with_w} {with_b}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The gradient matches central finite differences (f64).
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = var(&[2, 3, 4], DType::F64)?;
        let w = var(&[4], DType::F64)?;
        let b = var(&[4], DType::F64)?;
        let cot = Tensor::randn(0f64, 1., (2, 3, 4), &Device::Cpu)?;
        let loss = |t: [&Tensor; 3]| (affine(t[0], Some(t[1]), Some(t[2]))? * &cot)?.sum_all();
        assert_grads_match_finite_differences([&x, &w, &b], loss, 1e-7)
    }

    /// A scalar weight and bias broadcast over the features, as candle's composed ops do.
    #[test]
    fn scalar_parts_broadcast() -> Result<()> {
        let x = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?;
        let (w, b) = (
            Tensor::new(2f64, &Device::Cpu)?,
            Tensor::new(&[1f64], &Device::Cpu)?,
        );
        let y = affine(&x, Some(&w), Some(&b))?;
        assert_eq!(y.to_vec2::<f64>()?, vec![vec![3., 5.], vec![7., 9.]]);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_typed_errors_naming_the_sizes() -> Result<()> {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?;
        let w = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
        let err = affine(&x, Some(&w), None).unwrap_err().to_string();
        assert!(err.contains("(4)") && err.contains("[3]"), "{err}");
        Ok(())
    }
}
