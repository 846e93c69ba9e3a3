//! The gradient of the Energy Transformer's attention energy as one graph node, with a
//! closed-form backward (the energy's Hessian-vector product) for training through the descent.
//!
//! The energy of tokens `x` `(B, L, D)` with per-head projections `Wq_h`, `Wk_h` `(Z, D)` is
//! `E = -sum_h 1/beta_h sum_{b, A} log sum_B exp(beta_h q_A . k_B)`, `q = x Wq_h^T`, `k = x Wk_h^T`,
//! and its gradient `dE/dx = -sum_h (P k) Wq_h + (P^T q) Wk_h` with `P` the row softmax of the
//! scaled scores: a softmax-retrieval row pass and column pass. As composed candle ops that is
//! about twenty graph nodes per step, each a fresh temporary and a wake-up of the thread pool, and
//! at the Energy Transformer's sizes (tens of tokens, head dims of 32) those costs, not the FLOPs,
//! dominate. Here each sample (or, for small batches, each group of a sample's heads, so that
//! every thread has work) is one rayon task whose products run on the calling thread over
//! buffers that stay in cache: the packed projections `[q_h | k_h]` of the task's heads are one
//! product, and so is its share of `dE/dx`.
//!
//! The backward of `G = -sum_h [P k | P^T q] [Wq_h; Wk_h]` for a cotangent `C`, per head
//! (`U = P k`, `V = P^T q`, `[Cu | Cv] = -C [Wq_h; Wk_h]^T`):
//! `dP = Cu k^T + q Cv^T`, `dS = P * (dP - rowsum(P dP))`, `dbeta_h = sum dS * (q k^T)`,
//! `dq = beta dS k + P Cv`, `dk = beta dS^T q + P^T Cu`, `dx = sum_h [dq | dk] [Wq_h; Wk_h]`,
//! `d[Wq_h; Wk_h] = [dq | dk]^T x - [U | V]^T C`.
//! The backward is itself not differentiable (third derivatives of the energy are not provided);
//! the composed path, used off the CPU, is.

use crate::error::{expect_float, expect_same_dtype, KernelError};
use crate::matmul::{gemm_serial, Mat};
use crate::rows::{cpu_contiguous, storage_slice};
use crate::softmax::{softmax_grad_rows, softmax_rows, Elem, Float};
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// `dE/dx` of the attention energy `E = -sum_h 1/beta_h sum_{b, A} lse_B(beta_h q_A . k_B)`
/// (the Energy Transformer's, Hoover et al. 2023): `x` is `(B, L, D)`, `wq` and `wk` `(H, Z, D)`,
/// `beta` `(H)`; with `exclude_self` a token does not attend to itself. The result has `x`'s
/// shape and is differentiable in all four inputs (first order: training through the descent).
/// Fused on the CPU for f32 and f64, [`attention_energy_grad_composed`] elsewhere; they agree to
/// rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[1f64, 0.], [0., 1.]]], &dev)?; // (1, 2, 2)
/// let w = Tensor::new(&[[[1f64, 0.]]], &dev)?;           // (1, 1, 2): one head, Z = 1
/// let beta = Tensor::new(&[1f64], &dev)?;
/// let g = hopfield_cuda::attention_energy_grad(&x, &w, &w, &beta, false)?;
/// let reference = hopfield_cuda::attention_energy_grad_composed(&x, &w, &w, &beta, false)?;
/// assert!((g - reference)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn attention_energy_grad(
    x: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    beta: &Tensor,
    exclude_self: bool,
) -> Result<Tensor> {
    check(x, wq, wk, beta)?;
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.elem_count() > 0
        && wq.elem_count() > 0;
    if !fused {
        return attention_energy_grad_composed(x, wq, wk, beta, exclude_self);
    }
    // [Wq_h; Wk_h] per head: one product gives q and k, one gives both halves of the gradient.
    let w = Tensor::cat(&[wq, wk], 1)?.contiguous()?;
    x.contiguous()?.apply_op3(
        &w,
        &beta.contiguous()?,
        AttentionEnergyGrad { exclude_self },
    )
}

/// [`attention_energy_grad`] from candle ops (any float dtype and device, differentiable to any
/// order): the reference the fused op is tested against.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[2f64, 0.]]], &Device::Cpu)?;
/// let w = Tensor::new(&[[[1f64, 0.]]], &Device::Cpu)?;
/// let beta = Tensor::new(&[1f64], &Device::Cpu)?;
/// // One token attending to itself: P = 1, dE/dx = -(k Wq + q Wk) = -(2 + 2, 0).
/// let g = hopfield_cuda::attention_energy_grad_composed(&x, &w, &w, &beta, false)?;
/// assert_eq!(g.flatten_all()?.to_vec1::<f64>()?, vec![-4., 0.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn attention_energy_grad_composed(
    x: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    beta: &Tensor,
    exclude_self: bool,
) -> Result<Tensor> {
    let (b, l, d) = check(x, wq, wk, beta)?;
    let (h, z, _) = wq.dims3()?;
    if x.elem_count() == 0 || wq.elem_count() == 0 {
        return x.zeros_like();
    }
    let (q, k, s) = attention_scores(x, wq, wk, beta, exclude_self)?;
    let p = crate::masked_softmax(&s)?;
    // [P k | P^T q] (B, L, H, 2Z) against [Wq_h; Wk_h] (H, 2Z, D): one product for both halves.
    let u = Tensor::cat(&[&p.matmul(&k)?, &p.t()?.matmul(&q)?], 3)?
        .transpose(1, 2)?
        .reshape((b * l, h * 2 * z))?;
    let w = Tensor::cat(&[wq, wk], 1)?.reshape((h * 2 * z, d))?;
    u.matmul(&w)?.neg()?.reshape((b, l, d))
}

/// The attention energy's projections and scaled scores from candle ops (differentiable):
/// `q`, `k` `(B, H, L, Z)` and `beta_h q k^T` `(B, H, L, L)`, whose diagonal is `-inf` with
/// `exclude_self`. Shapes as in [`attention_energy_grad`]; the energy is
/// `-sum_h 1/beta_h sum lse(scores)`, so this is where energies and parameter gradients start.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[1f64, 0.], [0., 2.]]], &Device::Cpu)?; // (1, 2, 2)
/// let w = Tensor::new(&[[[1f64, 1.]]], &Device::Cpu)?;           // one head, Z = 1
/// let beta = Tensor::new(&[0.5f64], &Device::Cpu)?;
/// let (q, _, s) = hopfield_cuda::attention_scores(&x, &w, &w, &beta, true)?;
/// assert_eq!(q.flatten_all()?.to_vec1::<f64>()?, vec![1., 2.]);
/// // 0.5 * q_A k_B, without the diagonal.
/// assert_eq!(s.flatten_all()?.to_vec1::<f64>()?, vec![f64::NEG_INFINITY, 1., 1., f64::NEG_INFINITY]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn attention_scores(
    x: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    beta: &Tensor,
    exclude_self: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, d) = check(x, wq, wk, beta)?;
    let (h, z, _) = wq.dims3()?;
    // One matmul for q and k: rows of [Wq; Wk] are the (head, z) projections.
    let w = Tensor::cat(&[wq, wk], 0)?.reshape((2 * h * z, d))?;
    let qk = x
        .reshape((b * l, d))?
        .matmul(&w.t()?)?
        .reshape((b, l, 2 * h, z))?
        .transpose(1, 2)?;
    let q = qk.narrow(1, 0, h)?.contiguous()?;
    let k = qk.narrow(1, h, h)?.contiguous()?;
    // beta_h scales q (B, H, L, Z) rather than the larger scores (B, H, L, L).
    let mut s = q
        .broadcast_mul(&beta.reshape((1, h, 1, 1))?)?
        .matmul(&k.t()?)?;
    if exclude_self {
        let diag: Vec<f64> = (0..l * l)
            .map(|i| {
                if i / l == i % l {
                    f64::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(diag, (1, 1, l, l), x.device())?.to_dtype(x.dtype())?;
        s = s.broadcast_add(&mask)?;
    }
    Ok((q, k, s))
}

/// Shapes and dtypes; returns `(B, L, D)`.
pub(crate) fn check(
    x: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    beta: &Tensor,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "attention_energy_grad";
    expect_float(OP, "x", x)?;
    for (arg, t) in [("wq", wq), ("wk", wk), ("beta", beta)] {
        expect_same_dtype(OP, (arg, t), ("x", x))?;
    }
    let shape = |arg: &'static str, expected: String, got: &[usize]| -> candle_core::Error {
        KernelError::Shape {
            op: OP,
            arg,
            expected,
            got: got.to_vec(),
        }
        .into()
    };
    let (b, l, d) = x
        .dims3()
        .map_err(|_| shape("x", "(B, L, D)".into(), x.dims()))?;
    let (h, _, dq) = wq
        .dims3()
        .map_err(|_| shape("wq", format!("(H, Z, {d})"), wq.dims()))?;
    if dq != d {
        return Err(shape(
            "wq",
            format!("(H, Z, {d}) for x {:?}", x.dims()),
            wq.dims(),
        ));
    }
    if wk.dims() != wq.dims() {
        return Err(shape("wk", format!("{:?} (as wq)", wq.dims()), wk.dims()));
    }
    if beta.dims() != [h] {
        return Err(shape(
            "beta",
            format!("({h}) for wq {:?}", wq.dims()),
            beta.dims(),
        ));
    }
    Ok((b, l, d))
}

struct AttentionEnergyGrad {
    exclude_self: bool,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub l: usize,
    pub d: usize,
    pub h: usize,
    pub z: usize,
}

impl Dims {
    fn of(x: &Layout, w: &Layout) -> Result<Self> {
        let (b, l, d) = x.shape().dims3()?;
        let (h, z2, _) = w.shape().dims3()?;
        Ok(Self {
            b,
            l,
            d,
            h,
            z: z2 / 2,
        })
    }
}

impl Dims {
    /// Head groups per sample: one task per sample when the batch fills the threads, else the
    /// heads split so that every thread has work.
    fn groups(&self) -> usize {
        let threads = rayon::current_num_threads();
        (2 * threads)
            .div_ceil(self.b.max(1))
            .clamp(1, self.h.max(1))
    }

    /// The heads of group `g` of `groups`.
    fn heads(&self, g: usize, groups: usize) -> std::ops::Range<usize> {
        g * self.h / groups..(g + 1) * self.h / groups
    }
}

/// One task: sample `b`, heads `heads`, with its slices of the inputs.
pub(crate) struct Task<'a, T> {
    /// The sample's tokens `(L, D)`.
    x: &'a [T],
    /// `[Wq_h; Wk_h]` of the task's heads, `(2 Z |heads|, D)`.
    w: &'a [T],
    /// The betas of the task's heads.
    beta: &'a [T],
    dm: Dims,
    exclude_self: bool,
}

/// A task's packed buffers (`(L, 2 Z |heads|)`: `[q_h | k_h]` per head) and `(L, L)` scratch.
struct Buffers<T> {
    qk: Vec<T>,
    uv: Vec<T>,
    /// `q k^T`.
    a: Vec<T>,
    /// Logits, then `dP`.
    s: Vec<T>,
    /// The row softmax `P`.
    p: Vec<T>,
    /// `dS`.
    ds: Vec<T>,
}

impl<'a, T: Elem> Task<'a, T> {
    pub(crate) fn new(
        x: &'a [T],
        w: &'a [T],
        beta: &'a [T],
        dm: Dims,
        exclude_self: bool,
        t: usize,
        groups: usize,
    ) -> Self {
        let (bi, g) = (t / groups, t % groups);
        let heads = dm.heads(g, groups);
        let (l, d, z2) = (dm.l, dm.d, 2 * dm.z);
        Self {
            x: &x[bi * l * d..][..l * d],
            w: &w[heads.start * z2 * d..heads.end * z2 * d],
            beta: &beta[heads],
            dm,
            exclude_self,
        }
    }

    /// Packed columns `2 Z |heads|`.
    fn ld(&self) -> usize {
        2 * self.dm.z * self.beta.len()
    }

    fn wm(&self) -> Mat<'a, T> {
        Mat::row_major(self.w, self.ld(), self.dm.d, self.dm.d)
    }

    fn halves<'b>(&self, packed: &'b [T], hi: usize) -> (Mat<'b, T>, Mat<'b, T>) {
        let (z, ld) = (self.dm.z, self.ld());
        (
            Mat::row_major(&packed[2 * hi * z..], self.dm.l, z, ld),
            Mat::row_major(&packed[(2 * hi + 1) * z..], self.dm.l, z, ld),
        )
    }

    /// Projections and `[P k | P^T q]` of every head; `P` of the last head stays in `bufs.p`
    /// (callers that need each head's `P` pass `per_head`, called after each head). `false` when
    /// a logit is NaN (the caller reports NaN rather than a softmax of garbage); infinite logits
    /// are defined as in [`crate::masked_softmax`].
    fn retrieve(
        &self,
        bufs: &mut Buffers<T>,
        mut per_head: impl FnMut(usize, &mut Buffers<T>),
    ) -> bool {
        let (l, d, z, ld) = (self.dm.l, self.dm.d, self.dm.z, self.ld());
        gemm_serial(
            &mut bufs.qk,
            ld,
            Mat::row_major(self.x, l, d, d),
            self.wm().t(),
            false,
        );
        let mut ok = true;
        for (hi, &beta) in self.beta.iter().enumerate() {
            let (q, k) = self.halves(&bufs.qk, hi);
            gemm_serial(&mut bufs.a, l, q, k.t(), false);
            for (i, (sr, ar)) in bufs.s.chunks_mut(l).zip(bufs.a.chunks(l)).enumerate() {
                for (s, &a) in sr.iter_mut().zip(ar) {
                    *s = beta * a;
                }
                if self.exclude_self {
                    sr[i] = <T as Float>::NEG_INF;
                }
            }
            ok &= softmax_rows(&bufs.s, &mut bufs.p, l);
            let pm = Mat::row_major(&bufs.p, l, l, l);
            gemm_serial(&mut bufs.uv[2 * hi * z..], ld, pm, k, false);
            gemm_serial(&mut bufs.uv[(2 * hi + 1) * z..], ld, pm.t(), q, false);
            per_head(hi, bufs);
        }
        ok
    }

    fn buffers(&self) -> Buffers<T> {
        let (l, ld) = (self.dm.l, self.ld());
        let z = |n: usize| vec![T::zero(); n];
        Buffers {
            qk: z(l * ld),
            uv: z(l * ld),
            a: z(l * l),
            s: z(l * l),
            p: z(l * l),
            ds: z(l * l),
        }
    }

    /// `-[U | V] [Wq; Wk]` of the task's heads `(L, D)`: its share of `dE/dx`.
    pub(crate) fn forward(&self) -> Vec<T> {
        let (l, d, ld) = (self.dm.l, self.dm.d, self.ld());
        let mut bufs = self.buffers();
        let ok = self.retrieve(&mut bufs, |_, _| {});
        let mut g = vec![T::zero(); l * d];
        if !ok {
            g.fill(T::from_f64(f64::NAN));
            return g;
        }
        gemm_serial(
            &mut g,
            d,
            Mat::row_major(&bufs.uv, l, ld, ld),
            self.wm(),
            false,
        );
        g.iter_mut().for_each(|v| *v = -*v);
        g
    }

    /// The task's `dx` share `(L, D)`, `d[Wq; Wk]` of its heads from this sample and `dbeta`.
    pub(crate) fn backward(&self, c: &[T]) -> TaskGrads<T> {
        let (l, d, ld) = (self.dm.l, self.dm.d, self.ld());
        let cm = Mat::row_major(c, l, d, d);
        let mut bufs = self.buffers();
        // [Cu | Cv] per head = -C [Wq; Wk]^T: the cotangents of U = P k and V = P^T q.
        let mut cuv = vec![T::zero(); l * ld];
        gemm_serial(&mut cuv, ld, cm, self.wm().t(), false);
        cuv.iter_mut().for_each(|v| *v = -*v);
        let mut dqk = vec![T::zero(); l * ld];
        let mut dbeta = vec![T::zero(); self.beta.len()];
        self.retrieve(&mut bufs, |hi, b| {
            let beta = self.beta[hi];
            let (q, k) = self.halves(&b.qk, hi);
            let (cu, cv) = self.halves(&cuv, hi);
            // dP = Cu k^T + q Cv^T, into the logits buffer.
            gemm_serial(&mut b.s, l, cu, k.t(), false);
            gemm_serial(&mut b.s, l, q, cv.t(), true);
            softmax_grad_rows(&b.p, &b.s, &mut b.ds, l);
            for (&g, &a) in b.ds.iter().zip(&b.a) {
                dbeta[hi] += g * a;
            }
            b.ds.iter_mut().for_each(|v| *v *= beta);
            let dsm = Mat::row_major(&b.ds, l, l, l);
            let pm = Mat::row_major(&b.p, l, l, l);
            // [dq | dk] = [beta dS k + P Cv | beta dS^T q + P^T Cu]
            let (dq, dk) = (2 * hi * self.dm.z, (2 * hi + 1) * self.dm.z);
            gemm_serial(&mut dqk[dq..], ld, dsm, k, false);
            gemm_serial(&mut dqk[dq..], ld, pm, cv, true);
            gemm_serial(&mut dqk[dk..], ld, dsm.t(), q, false);
            gemm_serial(&mut dqk[dk..], ld, pm.t(), cu, true);
        });
        let dqkm = Mat::row_major(&dqk, l, ld, ld);
        let mut dx = vec![T::zero(); l * d];
        gemm_serial(&mut dx, d, dqkm, self.wm(), false);
        // d[Wq; Wk] = [dq | dk]^T x - [U | V]^T C
        let mut dw = vec![T::zero(); ld * d];
        gemm_serial(&mut dw, d, dqkm.t(), Mat::row_major(self.x, l, d, d), false);
        bufs.uv.iter_mut().for_each(|v| *v = -*v);
        gemm_serial(
            &mut dw,
            d,
            Mat::row_major(&bufs.uv, l, ld, ld).t(),
            cm,
            true,
        );
        (dx, dw, dbeta)
    }
}

/// A task's `(dx share, d[Wq; Wk] of its heads, dbeta of its heads)`.
pub(crate) type TaskGrads<T> = (Vec<T>, Vec<T>, Vec<T>);

/// `out[b] = sum_g parts[b * groups + g]`, samples in parallel, groups in a fixed order.
fn sum_groups<T: Elem>(parts: &[Vec<T>], groups: usize, len: usize) -> Vec<T> {
    let mut out = vec![T::zero(); parts.len() / groups * len];
    out.par_chunks_mut(len.max(1))
        .zip(parts.par_chunks(groups))
        .for_each(|(o, ps)| {
            o.copy_from_slice(&ps[0]);
            for p in &ps[1..] {
                o.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
            }
        });
    out
}

pub(crate) fn forward<T: Elem>(
    x: &[T],
    w: &[T],
    beta: &[T],
    dm: Dims,
    exclude_self: bool,
) -> Vec<T> {
    let groups = dm.groups();
    let parts: Vec<Vec<T>> = (0..dm.b * groups)
        .into_par_iter()
        .map(|t| Task::new(x, w, beta, dm, exclude_self, t, groups).forward())
        .collect();
    sum_groups(&parts, groups, dm.l * dm.d)
}

/// `(dx, d[Wq; Wk], dbeta)` for the cotangent `c` of the gradient.
pub(crate) fn backward<T: Elem>(
    x: &[T],
    w: &[T],
    beta: &[T],
    c: &[T],
    dm: Dims,
    exclude_self: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let groups = dm.groups();
    let (l, d, z2) = (dm.l, dm.d, 2 * dm.z);
    let parts: Vec<TaskGrads<T>> = (0..dm.b * groups)
        .into_par_iter()
        .map(|t| {
            let bi = t / groups;
            Task::new(x, w, beta, dm, exclude_self, t, groups).backward(&c[bi * l * d..][..l * d])
        })
        .collect();
    let mut dxs = Vec::with_capacity(parts.len());
    let mut rest = Vec::with_capacity(parts.len());
    for (a, b, c) in parts {
        dxs.push(a);
        rest.push((b, c));
    }
    let dx = sum_groups(&dxs, groups, l * d);
    // Weights and betas: each group's heads, summed over the samples in order.
    let mut dw = vec![T::zero(); dm.h * z2 * d];
    let mut dbeta = vec![T::zero(); dm.h];
    for g in 0..groups {
        let heads = dm.heads(g, groups);
        let (wg, bg) = (
            &mut dw[heads.start * z2 * d..heads.end * z2 * d],
            &mut dbeta[heads],
        );
        for bi in 0..dm.b {
            let (pw, pb) = &rest[bi * groups + g];
            wg.iter_mut().zip(pw).for_each(|(a, &v)| *a += v);
            bg.iter_mut().zip(pb).for_each(|(a, &v)| *a += v);
        }
    }
    (dx, dw, dbeta)
}

/// `(dx, d[Wq; Wk], dbeta)` as tensors of the inputs' shapes.
fn grads<T: Elem>(
    [x, w, beta, c]: [&Tensor; 4],
    exclude_self: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dm = Dims::of(x.layout(), w.layout())?;
    let guards = [x, w, beta, c].map(|t| t.storage_and_layout());
    let (dx, dw, db) = backward::<T>(
        storage_slice(&guards[0].0, guards[0].1, "attention_energy_grad")?,
        storage_slice(&guards[1].0, guards[1].1, "attention_energy_grad")?,
        storage_slice(&guards[2].0, guards[2].1, "attention_energy_grad")?,
        storage_slice(&guards[3].0, guards[3].1, "attention_energy_grad")?,
        dm,
        exclude_self,
    );
    let dev = &candle_core::Device::Cpu;
    Ok((
        Tensor::from_vec(dx, x.shape(), dev)?,
        Tensor::from_vec(dw, w.shape(), dev)?,
        Tensor::from_vec(db, beta.shape(), dev)?,
    ))
}

impl CustomOp3 for AttentionEnergyGrad {
    fn name(&self) -> &'static str {
        "hopfield-attention-energy-grad"
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
        let dm = Dims::of(lx, lw)?;
        let out = match x.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(forward(
                cpu_contiguous::<f32>(x, lx)?,
                cpu_contiguous::<f32>(w, lw)?,
                cpu_contiguous::<f32>(beta, lb)?,
                dm,
                self.exclude_self,
            )),
            DType::F64 => f64::to_cpu_storage_owned(forward(
                cpu_contiguous::<f64>(x, lx)?,
                cpu_contiguous::<f64>(w, lw)?,
                cpu_contiguous::<f64>(beta, lb)?,
                dm,
                self.exclude_self,
            )),
            other => candle_core::bail!(
                "attention_energy_grad: CPU op supports f32 and f64, got {other:?}"
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
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => grads::<f32>(args, self.exclude_self)?,
            DType::F64 => grads::<f64>(args, self.exclude_self)?,
            other => candle_core::bail!(
                "attention_energy_grad: CPU op supports f32 and f64, got {other:?}"
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

    fn inputs(b: usize, l: usize, d: usize, h: usize, z: usize) -> Result<[Var; 4]> {
        let dev = Device::Cpu;
        Ok([
            Var::randn(0f64, 1., (b, l, d), &dev)?,
            Var::randn(0f64, 0.5, (h, z, d), &dev)?,
            Var::randn(0f64, 0.5, (h, z, d), &dev)?,
            Var::from_tensor(&Tensor::rand(0.2f64, 1.5, h, &dev)?)?,
        ])
    }

    /// Fused and composed agree on the gradient and on its backward (every input).
    #[rstest]
    #[case(2, 5, 8, 2, 4, false)]
    #[case(2, 5, 8, 2, 4, true)]
    #[case(3, 1, 6, 3, 2, false)]
    #[case(1, 1, 6, 1, 2, true)]
    #[case(1, 17, 12, 4, 3, true)]
    fn fused_equals_composed(
        #[case] b: usize,
        #[case] l: usize,
        #[case] d: usize,
        #[case] h: usize,
        #[case] z: usize,
        #[case] exclude_self: bool,
    ) -> Result<()> {
        let [x, wq, wk, beta] = inputs(b, l, d, h, z)?;
        let cot = Tensor::randn(0f64, 1., (b, l, d), &Device::Cpu)?;
        let args = (
            x.as_tensor(),
            wq.as_tensor(),
            wk.as_tensor(),
            beta.as_tensor(),
        );
        let fused = attention_energy_grad(args.0, args.1, args.2, args.3, exclude_self)?;
        let composed =
            attention_energy_grad_composed(args.0, args.1, args.2, args.3, exclude_self)?;
        assert!(max_diff(&fused, &composed) < 1e-12);
        let gf = (&fused * &cot)?.sum_all()?.backward()?;
        let gc = (&composed * &cot)?.sum_all()?.backward()?;
        for v in [&x, &wq, &wk, &beta] {
            let (a, c) = (
                gf.get(v).expect("fused grad"),
                gc.get(v).expect("composed grad"),
            );
            let scale = 1.0 + c.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(max_diff(a, c) < 1e-11 * scale, "{:?}", v.dims());
        }
        Ok(())
    }

    /// The gradient is the energy's: central finite differences of `E` along a random direction.
    #[test]
    fn gradient_matches_finite_differences_of_the_energy() -> Result<()> {
        let [x, wq, wk, beta] = inputs(2, 6, 8, 2, 3)?;
        let energy = |x: &Tensor| -> Result<f64> {
            let (b, l, d) = x.dims3()?;
            let (h, z, _) = wq.dims3()?;
            let w = Tensor::cat(&[wq.as_tensor(), wk.as_tensor()], 0)?.reshape((2 * h * z, d))?;
            let qk = x
                .reshape((b * l, d))?
                .matmul(&w.t()?)?
                .reshape((b, l, 2 * h, z))?;
            let qk = qk.transpose(1, 2)?;
            let (q, k) = (
                qk.narrow(1, 0, h)?.contiguous()?,
                qk.narrow(1, h, h)?.contiguous()?,
            );
            let bt = beta.as_tensor().reshape((1, h, 1, 1))?;
            let s = q.broadcast_mul(&bt)?.matmul(&k.t()?)?;
            let m = s.max_keepdim(3)?;
            let lse = (s.broadcast_sub(&m)?.exp()?.sum_keepdim(3)?.log()? + m)?;
            lse.broadcast_div(&bt)?.sum_all()?.neg()?.to_scalar::<f64>()
        };
        let g = attention_energy_grad(x.as_tensor(), &wq, &wk, &beta, false)?;
        let dir = Tensor::randn(0f64, 1., x.dims(), &Device::Cpu)?;
        let eps = 1e-5;
        let plus = energy(&(x.as_tensor() + (&dir * eps)?)?)?;
        let minus = energy(&(x.as_tensor() - (&dir * eps)?)?)?;
        let fd = (plus - minus) / (2.0 * eps);
        let analytic = (g * dir)?.sum_all()?.to_scalar::<f64>()?;
        assert!(
            (fd - analytic).abs() < 1e-6 * (1.0 + analytic.abs()),
            "{fd} vs {analytic}"
        );
        Ok(())
    }

    #[test]
    fn f32_agrees_with_f64() -> Result<()> {
        let [x, wq, wk, beta] = inputs(2, 9, 8, 2, 4)?;
        let g64 = attention_energy_grad(&x, &wq, &wk, &beta, true)?;
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let g32 = attention_energy_grad(&f(&x)?, &f(&wq)?, &f(&wk)?, &f(&beta)?, true)?;
        assert!(max_diff(&g32.to_dtype(DType::F64)?, &g64) < 1e-4);
        Ok(())
    }

    #[test]
    fn nan_logits_give_nan_not_a_finite_guess() -> Result<()> {
        let [x, wq, wk, _] = inputs(1, 4, 8, 1, 2)?;
        let beta = Tensor::new(&[f64::NAN], &Device::Cpu)?;
        let g = attention_energy_grad(&x, &wq, &wk, &beta, false)?;
        assert!(!crate::all_finite(&g)?);
        Ok(())
    }

    #[test]
    fn shapes_are_checked_by_name() -> Result<()> {
        let [x, wq, wk, beta] = inputs(1, 4, 8, 2, 2)?;
        let bad = Tensor::zeros((2, 2, 7), DType::F64, &Device::Cpu)?;
        let e = attention_energy_grad(&x, &bad, &wk, &beta, false).unwrap_err();
        assert!(e.to_string().contains("wq"), "{e}");
        let e = attention_energy_grad(&x, &wq, &bad, &beta, false).unwrap_err();
        assert!(e.to_string().contains("wk"), "{e}");
        let e = attention_energy_grad(&x, &wq, &wk, &wq, false).unwrap_err();
        assert!(e.to_string().contains("beta"), "{e}");
        let ints = Tensor::zeros((1, 4, 8), DType::U32, &Device::Cpu)?;
        assert!(attention_energy_grad(&ints, &wq, &wk, &beta, false).is_err());
        Ok(())
    }
}
