//! The fused retrieval as candle custom ops.
//!
//! A custom op has one output, so the forward op returns one flat tensor holding the output
//! `(N, L, H, pd)` followed by the log-sum-exp `(N, H, L)`; both halves are contiguous narrows of
//! it, so splitting costs nothing, and the gradient candle hands back for the flat tensor carries
//! the gradients of both. The backward op likewise returns `dq | dk | dv` flat.

use super::{cpu, Geometry};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, WithDType,
};

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

/// Inputs whose last dim is not unit-stride are copied once; every other view is read in place.
fn unit_last(t: &Tensor) -> Result<Tensor> {
    if t.stride().last() == Some(&1) || t.dim(3)? <= 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

pub(crate) fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: Geometry,
    betas: Vec<f64>,
    mask: Option<Tensor>,
    zero_association: bool,
) -> Result<(Tensor, Tensor)> {
    let op = RetrievalFwd {
        p: Params {
            g,
            betas,
            zero_association,
        },
        mask,
    };
    let flat = unit_last(q)?.apply_op3(&unit_last(k)?, &unit_last(v)?, op)?;
    let no = g.n * g.l * g.h * g.pd;
    let out = flat.narrow(0, 0, no)?.reshape((g.n, g.l, g.h, g.pd))?;
    let lse = flat
        .narrow(0, no, g.n * g.h * g.l)?
        .reshape((g.n, g.h, g.l))?;
    Ok((out, lse))
}

pub(crate) struct RetrievalFwd {
    pub p: Params,
    /// Additive, `(N, H, L, S)` (possibly broadcast, stride 0), the inputs' dtype.
    pub mask: Option<Tensor>,
}

/// Runs `f` with the mask's CPU data and view, if any.
fn with_cpu_mask<R>(
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
fn typed_mask<T: candle_core::WithDType>(
    mask: Option<(&CpuStorage, View)>,
) -> Result<Option<(&[T], View)>> {
    match mask {
        Some((m, vm)) => Ok(Some((m.as_slice::<T>()?, vm))),
        None => Ok(None),
    }
}

/// The forward kernel on CPU storages, whatever their (float) dtype.
fn forward_cpu(
    p: &Params,
    mask: &Option<Tensor>,
    s: [&CpuStorage; 3],
    views: [View; 3],
) -> Result<(CpuStorage, Shape)> {
    let g = p.g;
    let len = g.n * g.l * g.h * g.pd + g.n * g.h * g.l;
    let out = with_cpu_mask(mask, |mask| match s[0].dtype() {
        DType::F32 => {
            let out = cpu::forward(p, typed_inputs::<f32>(s)?, views, typed_mask(mask)?);
            Ok(f32::to_cpu_storage_owned(out))
        }
        DType::F64 => {
            let out = cpu::forward(p, typed_inputs::<f64>(s)?, views, typed_mask(mask)?);
            Ok(f64::to_cpu_storage_owned(out))
        }
        other => candle_core::bail!("retrieval: CPU kernel supports f32 and f64, got {other:?}"),
    })?;
    Ok((out, Shape::from(len)))
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
    let (rs, rl) = op.res.storage_and_layout();
    let (gs, gl) = op.grad.storage_and_layout();
    let (rs, gs) = match (&*rs, &*gs) {
        (candle_core::Storage::Cpu(r), candle_core::Storage::Cpu(g)) => (r, g),
        _ => candle_core::bail!("retrieval backward: result and gradient not on the CPU"),
    };
    let out = with_cpu_mask(&op.mask, |mask| match s[0].dtype() {
        DType::F32 => {
            let (res, grad) = (cpu_slice(rs, rl)?, cpu_slice(gs, gl)?);
            let x = typed_inputs::<f32>(s)?;
            let out = cpu::backward(
                &op.p,
                x,
                views,
                typed_mask(mask)?,
                res,
                grad,
                out_views,
                len,
            );
            Ok(f32::to_cpu_storage_owned(out))
        }
        DType::F64 => {
            let (res, grad) = (cpu_slice(rs, rl)?, cpu_slice(gs, gl)?);
            let x = typed_inputs::<f64>(s)?;
            let out = cpu::backward(
                &op.p,
                x,
                views,
                typed_mask(mask)?,
                res,
                grad,
                out_views,
                len,
            );
            Ok(f64::to_cpu_storage_owned(out))
        }
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
        forward_cpu(&self.p, &self.mask, [q, k, v], views)
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
        let op = RetrievalBwd {
            p: self.p.clone(),
            mask: self.mask.clone(),
            res: res.contiguous()?,
            grad: grad_res.contiguous()?,
        };
        let flat = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk, nv) = (
            g.n * g.l * g.h * g.hd,
            g.n * g.s * g.h * g.hd,
            g.n * g.s * g.h * g.pd,
        );
        let dq = flat.narrow(0, 0, nq)?.reshape((g.n, g.l, g.h, g.hd))?;
        let dk = flat.narrow(0, nq, nk)?.reshape((g.n, g.s, g.h, g.hd))?;
        let dv = flat
            .narrow(0, nq + nk, nv)?
            .reshape((g.n, g.s, g.h, g.pd))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// FlashAttention-2 backward: recomputes the association block by block from q, k, v and the
/// forward's log-sum-exp; returns `dq | dk | dv` flat, each contiguous in its input's shape.
pub(crate) struct RetrievalBwd {
    pub p: Params,
    pub mask: Option<Tensor>,
    /// The forward's flat result (output | lse), contiguous.
    pub res: Tensor,
    /// The gradient of the flat result, contiguous.
    pub grad: Tensor,
}

fn cpu_slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let v = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("retrieval backward: result and gradient must be contiguous"),
    }
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
    let o = l.start_offset();
    let view = |col: usize, d: usize| View {
        offset: o + col,
        strides: [st[0], st[1], d, 1],
    };
    Ok([
        view(0, g.hd),
        view(g.h * g.hd, g.hd),
        view(2 * g.h * g.hd, g.pd),
    ])
}

pub(crate) fn fused_packed(
    qkv: &Tensor,
    g: Geometry,
    betas: Vec<f64>,
    mask: Option<Tensor>,
    zero_association: bool,
) -> Result<(Tensor, Tensor)> {
    let op = RetrievalPackedFwd(RetrievalFwd {
        p: Params {
            g,
            betas,
            zero_association,
        },
        mask,
    });
    let flat = qkv.apply_op1(op)?;
    let no = g.n * g.l * g.h * g.pd;
    let out = flat.narrow(0, 0, no)?.reshape((g.n, g.l, g.h, g.pd))?;
    let lse = flat
        .narrow(0, no, g.n * g.h * g.l)?
        .reshape((g.n, g.h, g.l))?;
    Ok((out, lse))
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
        forward_cpu(&self.0.p, &self.0.mask, [x, x, x], views)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = RetrievalPackedBwd(RetrievalBwd {
            p: self.0.p.clone(),
            mask: self.0.mask.clone(),
            res: res.contiguous()?,
            grad: grad_res.contiguous()?,
        });
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
        let out = |col: usize, d: usize| View {
            offset: col,
            strides: [g.l * f, f, d, 1],
        };
        let out_views = [
            out(0, g.hd),
            out(g.h * g.hd, g.hd),
            out(2 * g.h * g.hd, g.pd),
        ];
        backward_cpu(&self.0, [x, x, x], views, out_views, g.n * g.l * f)
    }
}
