//! Self-association with its projections as one graph node: packed q/k/v projection, retrieval,
//! output projection.
//!
//! Candle's backward pass gives every input of every node a fresh zero tensor and adds the
//! node's gradient into it. The q/k/v product and the retrieval output are the two largest
//! tensors of a Hopfield layer, so as separate nodes (linear, packed retrieval, linear) their
//! gradients cost two full-size allocations, a memset and an addition each, plus the page
//! faults of fresh memory (`perf`: a fifth of the small benchmark shape's forward+backward). As
//! one node, only the layer's input and the (small) weights receive gradients from candle; the
//! intermediates and their gradients live in reused scratch buffers ([`crate::scratch`]).

use super::cpu::{self, Float, Saved};
use super::op::{overflow_check, packed_views_at, with_cpu_mask, Params};
use super::{betas_and_mask, retrieve_packed, Geometry, PackedSizes, Retrieval};
use crate::linear::linear;
use crate::matmul::{column_sums, gemm_into, Mat};
use crate::rows::{cpu_contiguous, storage_slice};
use crate::scratch::{self, Pooled};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, WithDType};
use std::sync::Mutex;

/// The projections around a self-association retrieval, PyTorch's `nn.Linear` convention
/// (`y = x W^T + b`).
#[derive(Debug, Clone, Copy)]
pub struct Projections<'a> {
    /// Stacked `[W_q; W_k; W_v]`, `(H*hd + H*hd + H*pd, E)`.
    pub w_in: &'a Tensor,
    /// Stacked `[b_q; b_k; b_v]`, `(H*hd + H*hd + H*pd)`.
    pub b_in: Option<&'a Tensor>,
    /// Output projection, `(O, H*pd)`.
    pub w_out: &'a Tensor,
    /// Output bias, `(O)`.
    pub b_out: Option<&'a Tensor>,
}

/// `linear(retrieve_packed(linear(z, W_in, b_in)), W_out, b_out)`: self-association of `z`,
/// `(N, L, E)`, with queries, keys and values from one packed projection and the heads' outputs
/// through the output projection, `(N, L, O)`. Differentiable in `z` and the four weights.
///
/// On the CPU (f32, f64) this is one fused graph node whose intermediates never become tensors
/// (see the module docs); elsewhere it is the three composed steps. The two agree to rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::linear;
/// use hopfield_cuda::retrieval::{retrieve_packed, retrieve_projected, PackedSizes, Projections, Retrieval};
/// let dev = Device::Cpu;
/// let sizes = PackedSizes { heads: 2, hd: 3, pd: 4 };
/// let z = Tensor::randn(0f64, 1., (2, 5, 6), &dev)?;
/// let w_in = Tensor::randn(0f64, 1., (sizes.features(), 6), &dev)?;
/// let w_out = Tensor::randn(0f64, 1., (6, 8), &dev)?;
/// let b_out = Tensor::randn(0f64, 1., 6, &dev)?;
/// let proj = Projections { w_in: &w_in, b_in: None, w_out: &w_out, b_out: Some(&b_out) };
/// let cfg = Retrieval::new(0.5);
/// let y = retrieve_projected(&z, proj, sizes, &cfg)?;
/// let steps = linear(&retrieve_packed(&linear(&z, &w_in, None)?, sizes, &cfg)?, &w_out, Some(&b_out))?;
/// assert!((y - steps)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn retrieve_projected(
    z: &Tensor,
    proj: Projections,
    sizes: PackedSizes,
    cfg: &Retrieval,
) -> Result<Tensor> {
    if !validate(z, &proj, sizes)? {
        let qkv = linear(z, proj.w_in, proj.b_in)?;
        let out = retrieve_packed(&qkv, sizes, cfg)?;
        return linear(&out, proj.w_out, proj.b_out);
    }
    let wb_in = with_bias(proj.w_in, proj.b_in)?;
    fused(z, &wb_in, proj, sizes, cfg)
}

/// [`retrieve_projected`] with the packed input projection given as `[W_in | b_in]`, `(F, E + 1)`
/// (what [`super::fold_input_affines`] builds); `proj.w_in` and `proj.b_in` are only checked
/// against `z`.
pub(crate) fn retrieve_projected_wb(
    z: &Tensor,
    wb_in: &Tensor,
    e: usize,
    proj: Projections,
    sizes: PackedSizes,
    cfg: &Retrieval,
) -> Result<Tensor> {
    if !validate(z, &proj, sizes)? {
        let w = wb_in.narrow(1, 0, e)?;
        let b = wb_in.narrow(1, e, 1)?.squeeze(1)?;
        let qkv = linear(z, &w, Some(&b))?;
        let out = retrieve_packed(&qkv, sizes, cfg)?;
        return linear(&out, proj.w_out, proj.b_out);
    }
    fused(z, wb_in, proj, sizes, cfg)
}

/// The bias as one more column of its weight (zeros where absent), so that the fused op has three
/// inputs and each bias gradient is a column of its weight's.
fn with_bias(w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let b = match b {
        Some(b) => b.unsqueeze(1)?,
        None => Tensor::zeros((w.dim(0)?, 1), w.dtype(), w.device())?,
    };
    Tensor::cat(&[w, &b], 1)
}

/// Checks the shapes and dtypes of `z` and the projections; whether the fused CPU op applies.
fn validate(z: &Tensor, proj: &Projections, sizes: PackedSizes) -> Result<bool> {
    let (n, l, e) = z
        .dims3()
        .map_err(|_| super::shape_error("input", "(N, L, E)", z))?;
    let f = sizes.features();
    let pw = sizes.heads * sizes.pd;
    let want = |t: &Tensor, what: &'static str, dims: &[usize]| -> Result<()> {
        if t.dims() != dims {
            return Err(crate::KernelError::Shape {
                op: "retrieve_projected",
                arg: what,
                expected: format!(
                    "{dims:?} for input {:?} and {} heads of hd = {}, pd = {}",
                    z.dims(),
                    sizes.heads,
                    sizes.hd,
                    sizes.pd
                ),
                got: t.dims().to_vec(),
            }
            .into());
        }
        crate::error::expect_same_dtype("retrieve_projected", (what, t), ("input", z))?;
        Ok(())
    };
    want(proj.w_in, "w_in", &[f, e])?;
    if let Some(b) = proj.b_in {
        want(b, "b_in", &[f])?;
    }
    let o = proj.w_out.dim(0).unwrap_or(0);
    want(proj.w_out, "w_out", &[o, pw])?;
    if let Some(b) = proj.b_out {
        want(b, "b_out", &[o])?;
    }
    Ok(z.device().is_cpu()
        && matches!(z.dtype(), DType::F32 | DType::F64)
        && sizes.heads > 0
        && n * l * e * f * o > 0)
}

/// The fused CPU op on `[W_in | b_in]` and the output projection.
fn fused(
    z: &Tensor,
    wb_in: &Tensor,
    proj: Projections,
    sizes: PackedSizes,
    cfg: &Retrieval,
) -> Result<Tensor> {
    let (n, l, e) = z.dims3()?;
    let f = sizes.features();
    let pw = sizes.heads * sizes.pd;
    let o = proj.w_out.dim(0)?;
    let g = Geometry {
        n,
        l,
        s: l,
        h: sizes.heads,
        hd: sizes.hd,
        pd: sizes.pd,
    };
    let (betas, mask) = betas_and_mask(g, z.dtype(), cfg)?;
    let wb_out = with_bias(proj.w_out, proj.b_out)?;
    let keep = z.track_op() || wb_in.track_op() || wb_out.track_op();
    let op = Projected {
        p: Params {
            g,
            betas,
            zero_association: cfg.zero_association,
        },
        mask,
        sizes: Sizes { e, f, pw, o },
        keep,
        saved: Mutex::new(None),
    };
    z.contiguous()?.apply_op3(wb_in, &wb_out, op)
}

/// Row sizes: input E, packed features F, retrieval output H*pd, output O.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    e: usize,
    f: usize,
    pw: usize,
    o: usize,
}

/// The forward pass's intermediates, kept for the backward pass: the packed projection and the
/// retrieval's `[out | lse]`.
enum Buffers {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
}

/// Element types of the fused op.
trait Elem: Float + WithDType + Pooled {
    fn wrap(qkv: Vec<Self>, flat: Vec<Self>) -> Buffers;
    fn unwrap(b: &Buffers) -> Option<(&[Self], &[Self])>;
}

impl Elem for f32 {
    fn wrap(qkv: Vec<Self>, flat: Vec<Self>) -> Buffers {
        Buffers::F32(qkv, flat)
    }
    fn unwrap(b: &Buffers) -> Option<(&[Self], &[Self])> {
        match b {
            Buffers::F32(a, b) => Some((a, b)),
            Buffers::F64(..) => None,
        }
    }
}

impl Elem for f64 {
    fn wrap(qkv: Vec<Self>, flat: Vec<Self>) -> Buffers {
        Buffers::F64(qkv, flat)
    }
    fn unwrap(b: &Buffers) -> Option<(&[Self], &[Self])> {
        match b {
            Buffers::F64(a, b) => Some((a, b)),
            Buffers::F32(..) => None,
        }
    }
}

struct Projected {
    p: Params,
    /// Additive `(N, H, L, L)` (possibly broadcast), the input's dtype.
    mask: Option<Tensor>,
    sizes: Sizes,
    /// Whether a backward pass may come (some input is tracked): then the intermediates are
    /// kept until the op is dropped; otherwise they go back to the pool at once.
    keep: bool,
    saved: Mutex<Option<Buffers>>,
}

impl Drop for Projected {
    fn drop(&mut self) {
        match self.saved.get_mut().ok().and_then(Option::take) {
            Some(Buffers::F32(a, b)) => {
                scratch::give(a);
                scratch::give(b);
            }
            Some(Buffers::F64(a, b)) => {
                scratch::give(a);
                scratch::give(b);
            }
            None => {}
        }
    }
}

/// Column `c` of a row-major matrix with row stride `ld`.
fn column<T: Copy>(m: &[T], rows: usize, ld: usize, c: usize) -> Vec<T> {
    (0..rows).map(|i| m[i * ld + c]).collect()
}

impl Projected {
    /// The packed input bias `[b_q | b_k | b_v]` split into the kernel's three biases.
    fn bias<'a, T>(&self, b_in: &'a [T]) -> cpu::Bias<'a, T> {
        let qk = self.sizes.f - self.p.g.h * self.p.g.pd;
        let (q, k) = (&b_in[..qk / 2], &b_in[qk / 2..qk]);
        [Some(q), Some(k), Some(&b_in[qk..])]
    }

    fn views(&self) -> [super::op::View; 3] {
        let g = &self.p.g;
        packed_views_at(0, [g.l * self.sizes.f, self.sizes.f], g)
    }

    fn forward<T: Elem>(&self, z: &[T], wb_in: &[T], wb_out: &[T]) -> Result<Vec<T>> {
        let g = self.p.g;
        let Sizes { e, f, pw, o } = self.sizes;
        let m = g.n * g.l;
        // The input bias is added as the kernel loads q, k and v (see `cpu::Bias`).
        let mut qkv = scratch::take::<T>(m * f);
        let w_in = Mat::row_major(wb_in, f, e, e + 1);
        gemm_into(&mut qkv, f, Mat::row_major(z, m, e, e), w_in.t(), false);
        let b_in = column(wb_in, f, e + 1, e);
        let no = m * pw;
        let mut flat = scratch::take::<T>(no + g.n * g.h * g.l);
        let views = self.views();
        let overflowed = with_cpu_mask(&self.mask, |mask| {
            let mask = super::op::typed_mask::<T>(mask)?;
            Ok(cpu::forward_into(
                &self.p,
                [&qkv, &qkv, &qkv],
                views,
                mask,
                self.bias(&b_in),
                &mut flat,
            ))
        })?;
        if let Err(e) = overflow_check(&self.p, overflowed, T::DTYPE) {
            scratch::give(qkv);
            scratch::give(flat);
            return Err(e);
        }
        let b_out = column(wb_out, o, pw + 1, pw);
        // Every row starts as the output bias, set by the task that owns it (no serial zeroing).
        let mut y = crate::rows::par_vec(m * o, o.max(1) * 64, |_, c: &mut [T]| {
            c.chunks_exact_mut(o.max(1))
                .for_each(|row| row.copy_from_slice(&b_out));
        });
        let w_out = Mat::row_major(wb_out, o, pw, pw + 1);
        gemm_into(&mut y, o, Mat::row_major(&flat, m, pw, pw), w_out.t(), true);
        if self.keep {
            *self.saved_slot()? = Some(T::wrap(qkv, flat));
        } else {
            scratch::give(qkv);
            scratch::give(flat);
        }
        Ok(y)
    }

    fn saved_slot(&self) -> Result<std::sync::MutexGuard<'_, Option<Buffers>>> {
        self.saved.lock().map_err(|_| {
            candle_core::Error::Msg(
                "retrieve_projected: the saved intermediates are poisoned".into(),
            )
        })
    }

    /// `(dz, d[W_in | b_in], d[W_out | b_out])`, each where `want` says its input is tracked.
    fn backward<T: Elem>(
        &self,
        z: &[T],
        wb_in: &[T],
        wb_out: &[T],
        grad: &[T],
        want: [bool; 3],
    ) -> Result<[Option<Vec<T>>; 3]> {
        let g = self.p.g;
        let Sizes { e, f, pw, o } = self.sizes;
        let m = g.n * g.l;
        let no = m * pw;
        let slot = self.saved_slot()?;
        let Some((qkv, flat)) = slot.as_ref().and_then(T::unwrap) else {
            candle_core::bail!("retrieve_projected backward: no saved forward intermediates")
        };
        let gy = Mat::row_major(grad, m, o, o);
        let out = Mat::row_major(&flat[..no], m, pw, pw);
        let d_wb_out = want[2].then(|| {
            let mut d = vec![T::zero(); o * (pw + 1)];
            gemm_into(&mut d, pw + 1, gy.t(), out, false);
            for (i, s) in column_sums(grad, o).into_iter().enumerate() {
                d[i * (pw + 1) + pw] = s;
            }
            d
        });
        let mut d_out = scratch::take::<T>(no);
        gemm_into(
            &mut d_out,
            pw,
            gy,
            Mat::row_major(wb_out, o, pw, pw + 1),
            false,
        );
        let mut d_qkv = scratch::take::<T>(m * f);
        let views = self.views();
        let b_in = column(wb_in, f, e + 1, e);
        let saved = Saved {
            out: &flat[..no],
            lse: &flat[no..],
            d_out: &d_out,
            d_lse: None,
        };
        with_cpu_mask(&self.mask, |mask| {
            let mask = super::op::typed_mask::<T>(mask)?;
            cpu::backward_into(
                &self.p,
                [qkv, qkv, qkv],
                views,
                mask,
                self.bias(&b_in),
                &saved,
                views,
                &mut d_qkv,
            );
            Ok(())
        })?;
        scratch::give(d_out);
        let dq = Mat::row_major(&d_qkv[..], m, f, f);
        let d_wb_in = want[1].then(|| {
            let mut d = vec![T::zero(); f * (e + 1)];
            gemm_into(&mut d, e + 1, dq.t(), Mat::row_major(z, m, e, e), false);
            for (i, s) in column_sums(&d_qkv, f).into_iter().enumerate() {
                d[i * (e + 1) + e] = s;
            }
            d
        });
        let dz = want[0].then(|| {
            let mut d = vec![T::zero(); m * e];
            gemm_into(&mut d, e, dq, Mat::row_major(wb_in, f, e, e + 1), false);
            d
        });
        scratch::give(d_qkv);
        Ok([dz, d_wb_in, d_wb_out])
    }
}

impl Projected {
    /// The gradients of the op's three inputs as tensors (`None` for untracked inputs).
    fn grads<T: Elem>(&self, args: [&Tensor; 3], grad: &Tensor) -> Result<[Option<Tensor>; 3]> {
        let want = args.map(Tensor::track_op);
        let grad = grad.contiguous()?;
        let guards = [args[0], args[1], args[2], &grad].map(|t| t.storage_and_layout());
        let data = |i: usize| -> Result<&[T]> {
            storage_slice(&guards[i].0, guards[i].1, "retrieve_projected")
        };
        let grads = self.backward::<T>(data(0)?, data(1)?, data(2)?, data(3)?, want)?;
        let mut out = [None, None, None];
        for ((slot, d), arg) in out.iter_mut().zip(grads).zip(args) {
            if let Some(d) = d {
                *slot = Some(Tensor::from_vec(d, arg.shape(), &Device::Cpu)?);
            }
        }
        Ok(out)
    }
}

impl CustomOp3 for Projected {
    fn name(&self) -> &'static str {
        "hopfield-retrieval-projected"
    }

    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        lz: &Layout,
        wi: &CpuStorage,
        lwi: &Layout,
        wo: &CpuStorage,
        lwo: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = Shape::from((self.p.g.n, self.p.g.l, self.sizes.o));
        let storage = match z.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(self.forward::<f32>(
                cpu_contiguous(z, lz)?,
                cpu_contiguous(wi, lwi)?,
                cpu_contiguous(wo, lwo)?,
            )?),
            DType::F64 => f64::to_cpu_storage_owned(self.forward::<f64>(
                cpu_contiguous(z, lz)?,
                cpu_contiguous(wi, lwi)?,
                cpu_contiguous(wo, lwo)?,
            )?),
            other => {
                candle_core::bail!("retrieve_projected: CPU op supports f32 and f64, got {other:?}")
            }
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        z: &Tensor,
        wb_in: &Tensor,
        wb_out: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let args = [z, wb_in, wb_out];
        let [dz, dwi, dwo] = match z.dtype() {
            DType::F32 => self.grads::<f32>(args, grad)?,
            DType::F64 => self.grads::<f64>(args, grad)?,
            other => {
                candle_core::bail!("retrieve_projected: CPU op supports f32 and f64, got {other:?}")
            }
        };
        Ok((dz, dwi, dwo))
    }
}
