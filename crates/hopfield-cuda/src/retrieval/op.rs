//! The fused retrieval as candle custom ops.
//!
//! A custom op has one output, so the forward op returns one flat tensor holding the output
//! `(N, L, H, pd)` followed by the log-sum-exp `(N, H, L)`; both halves are contiguous narrows of
//! it, so splitting costs nothing, and the gradient candle hands back for the flat tensor carries
//! the gradients of both. The backward op likewise returns `dq | dk | dv` flat.

use super::{cpu, Geometry};
use crate::error::KernelError;
use crate::rows::{cpu_contiguous, storage_slice};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, WithDType,
};
use std::sync::Mutex;

/// Where a 4-D input lives in its storage: element offset and strides of its four dims.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub offset: usize,
    pub strides: [usize; 4],
}

impl View {
    pub(crate) fn of(l: &Layout) -> Result<Self> {
        let st = l.stride();
        if st.len() != 4 {
            candle_core::bail!("retrieval: expected a 4-D input, got {:?}", l.dims());
        }
        Ok(Self {
            offset: l.start_offset(),
            strides: [st[0], st[1], st[2], st[3]],
        })
    }

    /// A contiguous `(_, d1, d2, d3)` tensor starting at element `offset`.
    pub(crate) fn contiguous(offset: usize, [d1, d2, d3]: [usize; 3]) -> Self {
        Self {
            offset,
            strides: [d1 * d2 * d3, d2 * d3, d3, 1],
        }
    }

    /// Element index of `[a, b, c, 0]`.
    #[inline(always)]
    pub(crate) fn at(&self, a: usize, b: usize, c: usize) -> usize {
        self.offset + a * self.strides[0] + b * self.strides[1] + c * self.strides[2]
    }
}

/// Everything a kernel needs besides the input data.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub g: Geometry,
    pub betas: Vec<f64>,
    pub zero_association: bool,
}

pub(crate) fn fused_supported(dtype: DType, device: &Device) -> bool {
    match device {
        Device::Cpu => matches!(dtype, DType::F32 | DType::F64),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => super::cuda::supported(dtype),
        _ => false,
    }
}

/// [`fused_supported`] for these sizes (the CUDA kernels take head sizes up to 128).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn fused_supported_for(dtype: DType, device: &Device, g: &Geometry) -> bool {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => super::cuda::supported(dtype) && super::cuda::geometry_supported(g),
        _ => fused_supported(dtype, device),
    }
}

/// Inputs whose last dim is not unit-stride are copied once; every other view is read in place.
fn unit_last(t: &Tensor) -> Result<Tensor> {
    if t.stride().last() == Some(&1) || t.dim(3)? <= 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

fn params(g: Geometry, betas: Vec<f64>, zero_association: bool) -> Params {
    Params {
        g,
        betas,
        zero_association,
    }
}

/// Output and log-sum-exp, both differentiable: the op's result is `[out | lse]` flat.
pub(crate) fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: Geometry,
    betas: Vec<f64>,
    mask: Option<Tensor>,
    zero_association: bool,
) -> Result<(Tensor, Tensor)> {
    let op = RetrievalFwd::new(params(g, betas, zero_association), mask, None);
    let flat = unit_last(q)?.apply_op3(&unit_last(k)?, &unit_last(v)?, op)?;
    let no = g.n * g.l * g.h * g.pd;
    let out = flat.narrow(0, 0, no)?.reshape((g.n, g.l, g.h, g.pd))?;
    let lse = flat
        .narrow(0, no, g.n * g.h * g.l)?
        .reshape((g.n, g.h, g.l))?;
    Ok((out, lse))
}

/// The output alone, `(N, L, H, pd)`, as the op's result: no narrow or reshape nodes after it,
/// each of which candle's backward pass would pay a zero tensor and an addition for.
pub(crate) fn fused_output(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: Geometry,
    betas: Vec<f64>,
    mask: Option<Tensor>,
    zero_association: bool,
) -> Result<Tensor> {
    let dims = Shape::from((g.n, g.l, g.h, g.pd));
    let op = RetrievalFwd::new(params(g, betas, zero_association), mask, Some(dims));
    unit_last(q)?.apply_op3(&unit_last(k)?, &unit_last(v)?, op)
}

pub(crate) struct RetrievalFwd {
    pub p: Params,
    /// Additive, `(N, H, L, S)` (possibly broadcast, stride 0), the inputs' dtype.
    pub mask: Option<Tensor>,
    /// `None`: the result is `[out | lse]` flat. `Some(shape)`: the result is the output alone in
    /// that shape, and the lse (which the backward pass needs) is kept in `lse`.
    out_shape: Option<Shape>,
    lse: Mutex<Option<Tensor>>,
}

impl RetrievalFwd {
    fn new(p: Params, mask: Option<Tensor>, out_shape: Option<Shape>) -> Self {
        Self {
            p,
            mask,
            out_shape,
            lse: Mutex::new(None),
        }
    }

    fn lse_slot(&self) -> Result<std::sync::MutexGuard<'_, Option<Tensor>>> {
        self.lse.lock().map_err(|_| {
            candle_core::Error::Msg("retrieval: the saved log-sum-exp is poisoned".into())
        })
    }

    /// Whether the result is the flat `[out | lse]` (the only form the CUDA kernels produce).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn flat_result(&self) -> bool {
        self.out_shape.is_none()
    }

    /// Shapes the kernel's flat `[out | lse]` into this op's result.
    fn finish<T: WithDType>(
        &self,
        (mut flat, overflowed): (Vec<T>, usize),
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.p.g;
        overflow_check(&self.p, overflowed, T::DTYPE)?;
        let no = g.n * g.l * g.h * g.pd;
        match &self.out_shape {
            None => {
                let len = flat.len();
                Ok((T::to_cpu_storage_owned(flat), Shape::from(len)))
            }
            Some(shape) => {
                let lse = flat.split_off(no);
                let lse = Tensor::from_vec(lse, (g.n, g.h, g.l), &Device::Cpu)?;
                *self.lse_slot()? = Some(lse);
                Ok((T::to_cpu_storage_owned(flat), shape.clone()))
            }
        }
    }

    /// What the backward pass reads: output, lse and their gradients, contiguous.
    fn saved(&self, res: &Tensor, grad: &Tensor) -> Result<RetrievalBwd> {
        let g = self.p.g;
        let (no, nl) = (g.n * g.l * g.h * g.pd, g.n * g.h * g.l);
        let (res, grad) = (res.contiguous()?, grad.contiguous()?);
        let (out, lse, d_out, d_lse) = match &self.out_shape {
            None => (
                res.narrow(0, 0, no)?,
                res.narrow(0, no, nl)?,
                grad.narrow(0, 0, no)?,
                Some(grad.narrow(0, no, nl)?),
            ),
            Some(_) => {
                let lse = self.lse_slot()?.clone();
                let lse = lse.ok_or_else(|| {
                    candle_core::Error::Msg("retrieval backward: no forward log-sum-exp".into())
                })?;
                (res, lse, grad, None)
            }
        };
        Ok(RetrievalBwd {
            p: self.p.clone(),
            mask: self.mask.clone(),
            out,
            lse,
            d_out,
            d_lse,
        })
    }
}

/// `Err(KernelError::Overflow)` when `overflowed` query rows had a NaN or `+inf` logit.
pub(crate) fn overflow_check(p: &Params, overflowed: usize, dtype: DType) -> Result<()> {
    if overflowed == 0 {
        return Ok(());
    }
    let g = p.g;
    Err(KernelError::Overflow {
        op: "retrieval",
        what: "the logits beta q k^T or the retrieved values",
        dtype,
        rows: overflowed,
        shape: vec![g.n, g.l, g.h, g.hd],
    }
    .into())
}

/// Runs `f` with the mask's CPU data and view, if any.
pub(crate) fn with_cpu_mask<R>(
    mask: &Option<Tensor>,
    f: impl FnOnce(Option<(&CpuStorage, View)>) -> Result<R>,
) -> Result<R> {
    match mask {
        None => f(None),
        Some(m) => {
            let (s, l) = m.storage_and_layout();
            match &*s {
                candle_core::Storage::Cpu(c) => f(Some((c, View::of(l)?))),
                _ => candle_core::bail!("retrieval: the mask is not on the CPU"),
            }
        }
    }
}

/// The three inputs' data as `T` (an error names a dtype that differs).
fn typed_inputs<T: candle_core::WithDType>(s: [&CpuStorage; 3]) -> Result<[&[T]; 3]> {
    Ok([
        s[0].as_slice::<T>()?,
        s[1].as_slice::<T>()?,
        s[2].as_slice::<T>()?,
    ])
}

/// The mask's data as `T` (the inputs' dtype, which `prepare` converted it to).
pub(crate) fn typed_mask<T: candle_core::WithDType>(
    mask: Option<(&CpuStorage, View)>,
) -> Result<Option<(&[T], View)>> {
    match mask {
        Some((m, vm)) => Ok(Some((m.as_slice::<T>()?, vm))),
        None => Ok(None),
    }
}

/// The forward kernel on CPU storages, whatever their (float) dtype.
fn forward_cpu(
    op: &RetrievalFwd,
    s: [&CpuStorage; 3],
    views: [View; 3],
) -> Result<(CpuStorage, Shape)> {
    with_cpu_mask(&op.mask, |mask| match s[0].dtype() {
        DType::F32 => op.finish(cpu::forward(
            &op.p,
            typed_inputs::<f32>(s)?,
            views,
            typed_mask(mask)?,
        )),
        DType::F64 => op.finish(cpu::forward(
            &op.p,
            typed_inputs::<f64>(s)?,
            views,
            typed_mask(mask)?,
        )),
        other => candle_core::bail!("retrieval: CPU kernel supports f32 and f64, got {other:?}"),
    })
}

/// The op named in errors of the backward pass.
const OP: &str = "retrieval backward";

/// Runs `f` on the backward pass's saved CPU data as `T`.
fn with_saved<T: WithDType, R>(
    op: &RetrievalBwd,
    f: impl FnOnce(&cpu::Saved<T>) -> Result<R>,
) -> Result<R> {
    let guards = [&op.out, &op.lse, &op.d_out].map(|t| t.storage_and_layout());
    let d_lse = op.d_lse.as_ref().map(|t| t.storage_and_layout());
    let saved = cpu::Saved {
        out: storage_slice(&guards[0].0, guards[0].1, OP)?,
        lse: storage_slice(&guards[1].0, guards[1].1, OP)?,
        d_out: storage_slice(&guards[2].0, guards[2].1, OP)?,
        d_lse: match &d_lse {
            Some((s, l)) => Some(storage_slice(s, l, OP)?),
            None => None,
        },
    };
    f(&saved)
}

/// The backward kernel on CPU storages: gradients written through `out_views` into a flat
/// buffer of `len` elements.
fn backward_cpu(
    op: &RetrievalBwd,
    s: [&CpuStorage; 3],
    views: [View; 3],
    out_views: [View; 3],
    len: usize,
) -> Result<(CpuStorage, Shape)> {
    let out = with_cpu_mask(&op.mask, |mask| match s[0].dtype() {
        DType::F32 => with_saved::<f32, _>(op, |sv| {
            let x = typed_inputs::<f32>(s)?;
            let out = cpu::backward(&op.p, x, views, typed_mask(mask)?, sv, out_views, len);
            Ok(f32::to_cpu_storage_owned(out))
        }),
        DType::F64 => with_saved::<f64, _>(op, |sv| {
            let x = typed_inputs::<f64>(s)?;
            let out = cpu::backward(&op.p, x, views, typed_mask(mask)?, sv, out_views, len);
            Ok(f64::to_cpu_storage_owned(out))
        }),
        other => candle_core::bail!("retrieval: CPU kernel supports f32 and f64, got {other:?}"),
    })?;
    Ok((out, Shape::from(len)))
}

impl CustomOp3 for RetrievalFwd {
    fn name(&self) -> &'static str {
        "hopfield-retrieval"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let views = [View::of(lq)?, View::of(lk)?, View::of(lv)?];
        forward_cpu(self, [q, k, v], views)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::forward(self, (q, lq), (k, lk), (v, lv))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.p.g;
        let op = self.saved(res, grad_res)?;
        let flat = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk, nv) = (
            g.n * g.l * g.h * g.hd,
            g.n * g.s * g.h * g.hd,
            g.n * g.s * g.h * g.pd,
        );
        // Only for inputs that take part in autograd (candle adds every returned gradient to a
        // fresh zero tensor).
        let part = |x: &Tensor, from: usize, len: usize, t: usize, d: usize| -> Result<_> {
            if x.track_op() {
                Ok(Some(flat.narrow(0, from, len)?.reshape((g.n, t, g.h, d))?))
            } else {
                Ok(None)
            }
        };
        Ok((
            part(q, 0, nq, g.l, g.hd)?,
            part(k, nq, nk, g.s, g.hd)?,
            part(v, nq + nk, nv, g.s, g.pd)?,
        ))
    }
}

/// FlashAttention-2 backward: recomputes the association block by block from q, k, v and the
/// forward's log-sum-exp; returns `dq | dk | dv` flat, each contiguous in its input's shape.
pub(crate) struct RetrievalBwd {
    pub p: Params,
    pub mask: Option<Tensor>,
    /// The forward's output, contiguous.
    pub out: Tensor,
    /// The forward's log-sum-exp `(N, H, L)`, contiguous.
    pub lse: Tensor,
    /// The output's gradient, contiguous.
    pub d_out: Tensor,
    /// The lse's gradient, where the lse is an output of the graph.
    pub d_lse: Option<Tensor>,
}

impl CustomOp3 for RetrievalBwd {
    fn name(&self) -> &'static str {
        "hopfield-retrieval-bwd"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let views = [View::of(lq)?, View::of(lk)?, View::of(lv)?];
        let g = self.p.g;
        let (nq, nk) = (g.n * g.l * g.h * g.hd, g.n * g.s * g.h * g.hd);
        let out_views = [
            View::contiguous(0, [g.l, g.h, g.hd]),
            View::contiguous(nq, [g.s, g.h, g.hd]),
            View::contiguous(nq + nk, [g.s, g.h, g.pd]),
        ];
        let len = nq + nk + g.n * g.s * g.h * g.pd;
        backward_cpu(self, [q, k, v], views, out_views, len)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::backward(self, (q, lq), (k, lk), (v, lv))
    }
}

/// Where the queries, keys and values of a packed `(N, L, H*hd + H*hd + H*pd)` projection sit:
/// three head-split views of the same rows.
fn packed_views(l: &Layout, g: &Geometry) -> Result<[View; 3]> {
    let st = l.stride();
    if st.len() != 3 || st[2] != 1 {
        candle_core::bail!(
            "retrieval: a packed q/k/v input must be (N, L, F) with unit-stride F, got {:?} strides {st:?}",
            l.dims()
        );
    }
    Ok(packed_views_at(l.start_offset(), [st[0], st[1]], g))
}

/// [`packed_views`] of a packed projection at element `offset` with sample and row strides `st`.
pub(crate) fn packed_views_at(offset: usize, st: [usize; 2], g: &Geometry) -> [View; 3] {
    let view = |col: usize, d: usize| View {
        offset: offset + col,
        strides: [st[0], st[1], d, 1],
    };
    [
        view(0, g.hd),
        view(g.h * g.hd, g.hd),
        view(2 * g.h * g.hd, g.pd),
    ]
}

/// The output alone, `(N, L, H*pd)`, the layout the output projection reads.
pub(crate) fn fused_packed(
    qkv: &Tensor,
    g: Geometry,
    betas: Vec<f64>,
    mask: Option<Tensor>,
    zero_association: bool,
) -> Result<Tensor> {
    let dims = Shape::from((g.n, g.l, g.h * g.pd));
    let op = RetrievalFwd::new(params(g, betas, zero_association), mask, Some(dims));
    qkv.apply_op1(RetrievalPackedFwd(op))
}

/// [`RetrievalFwd`] reading q, k and v from one packed projection; its gradient is one tensor
/// in the packed layout.
struct RetrievalPackedFwd(RetrievalFwd);

impl CustomOp1 for RetrievalPackedFwd {
    fn name(&self) -> &'static str {
        "hopfield-retrieval-packed"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let views = packed_views(l, &self.0.p.g)?;
        forward_cpu(&self.0, [x, x, x], views)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = RetrievalPackedBwd(self.0.saved(res, grad_res)?);
        Ok(Some(arg.apply_op1_no_bwd(&op)?.reshape(arg.shape())?))
    }
}

/// [`RetrievalBwd`] for [`RetrievalPackedFwd`]: `d[q | k | v]` in the packed layout, contiguous.
struct RetrievalPackedBwd(RetrievalBwd);

impl CustomOp1 for RetrievalPackedBwd {
    fn name(&self) -> &'static str {
        "hopfield-retrieval-packed-bwd"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0.p.g;
        let views = packed_views(l, &g)?;
        let f = 2 * g.h * g.hd + g.h * g.pd;
        let out_views = packed_views_at(0, [g.l * f, f], &g);
        backward_cpu(&self.0, [x, x, x], views, out_views, g.n * g.l * f)
    }
}

/// [`super::association_change`] on the CPU: reads the inputs in place (no op: the result is a
/// host vector without gradient).
pub(crate) fn association_change_cpu(
    p: &Params,
    a: &Tensor,
    b: &Tensor,
    k: &Tensor,
    lse_a: &Tensor,
    lse_b: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Vec<f64>> {
    let (a, b, k) = (unit_last(a)?, unit_last(b)?, unit_last(k)?);
    let (lse_a, lse_b) = (lse_a.contiguous()?, lse_b.contiguous()?);
    let guards = [&a, &k, &b, &lse_a, &lse_b].map(|t| t.storage_and_layout());
    let cpu = |i: usize| -> Result<&CpuStorage> {
        match &*guards[i].0 {
            candle_core::Storage::Cpu(c) => Ok(c),
            _ => candle_core::bail!("association_change: inputs not on the CPU"),
        }
    };
    let views = [
        View::of(guards[0].1)?,
        View::of(guards[1].1)?,
        View::of(guards[2].1)?,
    ];
    let s = [cpu(0)?, cpu(1)?, cpu(2)?];
    let (la, lb) = (cpu(3)?, cpu(4)?);
    with_cpu_mask(&mask.cloned(), |m| match s[0].dtype() {
        DType::F32 => Ok(cpu::association_change(
            p,
            typed_inputs::<f32>(s)?,
            views,
            typed_mask(m)?,
            cpu_contiguous(la, guards[3].1)?,
            cpu_contiguous(lb, guards[4].1)?,
        )),
        DType::F64 => Ok(cpu::association_change(
            p,
            typed_inputs::<f64>(s)?,
            views,
            typed_mask(m)?,
            cpu_contiguous(la, guards[3].1)?,
            cpu_contiguous(lb, guards[4].1)?,
        )),
        other => {
            candle_core::bail!("association_change: CPU kernel supports f32 and f64, got {other:?}")
        }
    })
}
