//! `y = x W^T + b` as one graph node with its own backward pass.
//!
//! The composed form (reshape, matmul, broadcast add, reshape) is four autograd nodes, and candle's
//! backward pass materialises a zero tensor and an addition for the gradient of every node's
//! input: for a projection of a few thousand rows that is several full-size allocations (and their
//! page faults) per node. As one custom op only `x`, `W` and `b` receive gradients; the forward
//! pass is one GEMM accumulating onto the broadcast bias, and the bias gradient is a column sum
//! rather than candle's strided reduction.

use crate::error::{expect_float, expect_same_dtype, KernelError};
use crate::matmul::{column_sums, gemm_into, Mat};
use crate::rows::cpu_contiguous;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape,
    Tensor, WithDType,
};

/// `x W^T + b` over the last dimension of `x`: `x` is `(..., in)`, `w` `(out, in)` and `b`
/// `(out)`; the result is `(..., out)`. Differentiable in all three. Fused on the CPU (f32, f64),
/// composed from candle ops elsewhere; the two agree to rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[1f64, 2.]]], &dev)?;            // (1, 1, 2)
/// let w = Tensor::new(&[[1f64, 0.], [1., 1.], [0., 2.]], &dev)?;
/// let b = Tensor::new(&[0.5f64, 0., -1.], &dev)?;
/// let y = hopfield_cuda::linear(&x, &w, Some(&b))?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, vec![1.5, 3., 3.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    expect_float("linear", "x", x)?;
    expect_float("linear", "weight", w)?;
    expect_same_dtype("linear", ("weight", w), ("x", x))?;
    if let Some(b) = b {
        expect_same_dtype("linear", ("bias", b), ("x", x))?;
    }
    let shape = |arg: &'static str, expected: String, got: &[usize]| -> candle_core::Error {
        KernelError::Shape {
            op: "linear",
            arg,
            expected,
            got: got.to_vec(),
        }
        .into()
    };
    let (out, inp) = w
        .dims2()
        .map_err(|_| shape("weight", "(out, in)".into(), w.dims()))?;
    let dims = x.dims();
    if dims.last() != Some(&inp) {
        return Err(shape(
            "x",
            format!("(..., {inp}) for weight {:?}", w.dims()),
            dims,
        ));
    }
    if let Some(b) = b {
        if b.dims() != [out] {
            return Err(shape(
                "bias",
                format!("({out}) for weight {:?}", w.dims()),
                b.dims(),
            ));
        }
    }
    let fused = matches!(x.device(), candle_core::Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && b.is_none_or(|b| b.dtype() == x.dtype())
        && x.elem_count() > 0;
    if !fused {
        return linear_composed(x, w, b);
    }
    let x = x.contiguous()?;
    match b {
        Some(b) => x.apply_op3(w, &b.contiguous()?, Linear),
        None => x.apply_op2(w, Linear),
    }
}

/// [`linear`] from candle ops: the reference the fused op is tested against.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f64, 2.]], &Device::Cpu)?;
/// let w = Tensor::new(&[[3f64, 4.]], &Device::Cpu)?;
/// let y = hopfield_cuda::linear_composed(&x, &w, None)?;
/// assert_eq!(y.to_vec2::<f64>()?, vec![vec![11.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn linear_composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let inp = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out_dims)
}

struct Linear;

/// `dst (rows x out) = [bias broadcast +] x (rows x in, contiguous) W^T`, `W` any 2-D layout.
fn forward_typed<T: WithDType>(
    x: &[T],
    w: &[T],
    lw: &Layout,
    b: Option<&[T]>,
    rows: usize,
) -> Vec<T> {
    let (out, inp) = (lw.dims()[0], lw.dims()[1]);
    let st = lw.stride();
    let mut dst = match b {
        Some(b) => {
            let mut d = Vec::with_capacity(rows * out);
            for _ in 0..rows {
                d.extend_from_slice(b);
            }
            d
        }
        None => vec![T::zero(); rows * out],
    };
    let wt = Mat {
        data: &w[lw.start_offset()..],
        rows: inp,
        cols: out,
        rs: st[1],
        cs: st[0],
    };
    gemm_into(
        &mut dst,
        out,
        Mat::row_major(x, rows, inp, inp),
        wt,
        b.is_some(),
    );
    dst
}

fn cpu_forward(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (lx, lw) = (x.1, w.1);
    let (out, _) = lw.shape().dims2()?;
    let rows = lx.shape().elem_count() / lx.dims().last().copied().unwrap_or(1).max(1);
    let mut dims = lx.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = out;
    let storage = match x.0.dtype() {
        DType::F32 => {
            let bias = b.map(|(s, l)| cpu_contiguous::<f32>(s, l)).transpose()?;
            let xs = cpu_contiguous::<f32>(x.0, lx)?;
            f32::to_cpu_storage_owned(forward_typed(xs, w.0.as_slice()?, lw, bias, rows))
        }
        DType::F64 => {
            let bias = b.map(|(s, l)| cpu_contiguous::<f64>(s, l)).transpose()?;
            let xs = cpu_contiguous::<f64>(x.0, lx)?;
            f64::to_cpu_storage_owned(forward_typed(xs, w.0.as_slice()?, lw, bias, rows))
        }
        other => candle_core::bail!("linear: CPU op supports f32 and f64, got {other:?}"),
    };
    Ok((storage, Shape::from(dims)))
}

/// Column sums of the `(rows, out)` gradient: the bias gradient.
fn bias_grad(g: &Tensor) -> Result<Tensor> {
    let out = g.dims().last().copied().unwrap_or(1).max(1);
    let g = g.contiguous()?;
    let (s, l) = g.storage_and_layout();
    let cpu = match &*s {
        candle_core::Storage::Cpu(c) => c,
        _ => candle_core::bail!("linear: gradient not on the CPU"),
    };
    let cpu_dev = &candle_core::Device::Cpu;
    let v = match cpu.dtype() {
        DType::F32 => {
            let g = cpu_contiguous::<f32>(cpu, l)?;
            Tensor::new(column_sums(g, out), cpu_dev)?
        }
        DType::F64 => {
            let g = cpu_contiguous::<f64>(cpu, l)?;
            Tensor::new(column_sums(g, out), cpu_dev)?
        }
        other => candle_core::bail!("linear: CPU op supports f32 and f64, got {other:?}"),
    };
    Ok(v)
}

/// `dx = g W` and `dW = g^T x`, each only where its input takes part in autograd: candle asks a
/// custom op for every input's gradient and then adds it to a fresh zero tensor, so an untracked
/// input (the data a first layer reads) would cost a GEMM and two full-size passes for nothing.
/// The products run on the host slices (candle's matmul looks up the thread count on every call,
/// which on Linux without `RAYON_NUM_THREADS` set parses `/proc/cpuinfo`).
fn input_and_weight_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (want_x, want_w) = (x.track_op(), w.track_op());
    if !want_x && !want_w {
        return Ok((None, None));
    }
    let g = g.contiguous()?;
    let guards = [x, w, &g].map(|t| t.storage_and_layout());
    let cpu = |i: usize| -> Result<&CpuStorage> {
        match &*guards[i].0 {
            candle_core::Storage::Cpu(c) => Ok(c),
            _ => candle_core::bail!("linear: backward expects CPU tensors"),
        }
    };
    fn grads<T: WithDType>(
        x: &[T],
        w: &[T],
        lw: &Layout,
        g: &[T],
        want: (bool, bool),
    ) -> (Option<Vec<T>>, Option<Vec<T>>) {
        let (out, inp) = (lw.dims()[0], lw.dims()[1]);
        let rows = g.len() / out.max(1);
        let st = lw.stride();
        let wm = Mat {
            data: &w[lw.start_offset()..],
            rows: out,
            cols: inp,
            rs: st[0],
            cs: st[1],
        };
        let gm = Mat::row_major(g, rows, out, out);
        let dx = want.0.then(|| {
            let mut d = vec![T::zero(); rows * inp];
            gemm_into(&mut d, inp, gm, wm, false);
            d
        });
        let dw = want.1.then(|| {
            let mut d = vec![T::zero(); out * inp];
            gemm_into(
                &mut d,
                inp,
                gm.t(),
                Mat::row_major(x, rows, inp, inp),
                false,
            );
            d
        });
        (dx, dw)
    }
    let (lx, lw, lg) = (guards[0].1, guards[1].1, guards[2].1);
    let want = (want_x, want_w);
    fn to_tensors<T: WithDType>(
        d: (Option<Vec<T>>, Option<Vec<T>>),
        x: &Tensor,
        w: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = &candle_core::Device::Cpu;
        Ok((
            d.0.map(|v| Tensor::from_vec(v, x.shape(), dev))
                .transpose()?,
            d.1.map(|v| Tensor::from_vec(v, w.shape(), dev))
                .transpose()?,
        ))
    }
    match x.dtype() {
        DType::F32 => to_tensors(
            grads::<f32>(
                cpu_contiguous(cpu(0)?, lx)?,
                cpu(1)?.as_slice()?,
                lw,
                cpu_contiguous(cpu(2)?, lg)?,
                want,
            ),
            x,
            w,
        ),
        DType::F64 => to_tensors(
            grads::<f64>(
                cpu_contiguous(cpu(0)?, lx)?,
                cpu(1)?.as_slice()?,
                lw,
                cpu_contiguous(cpu(2)?, lg)?,
                want,
            ),
            x,
            w,
        ),
        other => candle_core::bail!("linear: CPU op supports f32 and f64, got {other:?}"),
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "hopfield-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_forward((x, lx), (w, lw), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        input_and_weight_grads(x, w, grad)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "hopfield-linear-bias"
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
        cpu_forward((x, lx), (w, lw), Some((b, lb)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = input_and_weight_grads(x, w, grad)?;
        let db = if b.track_op() {
            Some(bias_grad(grad)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};

    /// Fused and composed agree on values and on the gradients of x, W and b: 3-D input, a
    /// transposed (non-contiguous) weight, with and without bias, f64 and f32.
    #[test]
    fn fused_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            for bias in [true, false] {
                for transposed in [false, true] {
                    let x = Var::from_tensor(
                        &Tensor::randn(0f64, 1., (3, 70, 9), &dev)?.to_dtype(dtype)?,
                    )?;
                    let w = if transposed {
                        Var::from_tensor(&Tensor::randn(0f64, 1., (9, 5), &dev)?.to_dtype(dtype)?)?
                    } else {
                        Var::from_tensor(&Tensor::randn(0f64, 1., (5, 9), &dev)?.to_dtype(dtype)?)?
                    };
                    let wt = if transposed {
                        w.as_tensor().t()?
                    } else {
                        w.as_tensor().clone()
                    };
                    let b = Var::from_tensor(&Tensor::randn(0f64, 1., 5, &dev)?.to_dtype(dtype)?)?;
                    let bo = bias.then(|| b.as_tensor());
                    let cot = Tensor::randn(0f64, 1., (3, 70, 5), &dev)?.to_dtype(dtype)?;
                    let y1 = linear(x.as_tensor(), &wt, bo)?;
                    let y2 = linear_composed(x.as_tensor(), &wt, bo)?;
                    assert_eq!(y1.dims(), &[3, 70, 5]);
                    assert!(max_diff(&y1, &y2) < tol);
                    let g1 = (&y1 * &cot)?.sum_all()?.backward()?;
                    let g2 = (&y2 * &cot)?.sum_all()?.backward()?;
                    let mut vars = vec![&x, &w];
                    if bias {
                        vars.push(&b);
                    }
                    for v in vars {
                        let (a, c) = (
                            g1.get(v.as_tensor()).unwrap(),
                            g2.get(v.as_tensor()).unwrap(),
                        );
                        assert!(
                            max_diff(a, c) < tol,
                            "{dtype:?} bias {bias} transposed {transposed}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn shape_errors_name_the_sizes() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
        let err = linear(&x, &w, None).unwrap_err().to_string();
        assert!(
            err.contains("`x` must be (..., 5) for weight [4, 5], got [2, 3]"),
            "{err}"
        );
        let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let err = linear(&x, &w, Some(&b)).unwrap_err().to_string();
        assert!(err.contains("`bias` must be (4)"), "{err}");
    }
}
