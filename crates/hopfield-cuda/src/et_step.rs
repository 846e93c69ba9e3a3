//! One Energy Transformer block step, `y = x - alpha (dE_att/dg + dE_hop/dg)` at
//! `g = LayerNorm(x) * weight + bias`, as one graph node with a closed-form backward.
//!
//! Composed, the step is a normalisation, an affine map, the two fused gradient ops, their sum, a
//! scale and a difference: half a dozen graph nodes over `(B, L, D)` tensors, and training doubles
//! them. At the Energy Transformer's batch of 8 x 64 tokens of dim 128 every one of those tensors
//! has 64K elements, the size from which candle runs an elementwise op on its own spinning thread
//! pool next to rayon's; on two cores the spinning pools took half of all samples (`perf`,
//! docs/energy-transformer.md). Here the step is one node: the normalisation and the final update
//! are row passes of our own, the two gradients are [`crate::attention_energy_grad`]'s and
//! [`crate::hopfield_energy_grad`]'s kernels, and the backward pass chains their closed-form
//! backward passes with LayerNorm's. Like theirs, the backward is first order (training through
//! the descent needs no more); [`et_step_composed`] is the reference, differentiable to any order.
//!
//! Backward for the cotangent `C` of `y` (`n` the standardised rows, `rstd = 1 / sqrt(var + eps)`):
//! `Cg = -alpha C`; the two ops' backward passes give `dg` and the weight gradients; then
//! `dweight = sum_rows dg n`, `dbias = sum_rows dg`, `dn = dg weight` and
//! `dx = C + rstd (dn - mean(dn) - n mean(dn n))`.

use crate::attention_energy::{self as att, Dims};
use crate::error::{expect_float, expect_same_dtype, KernelError};
use crate::hopfield_energy::{self as hop, HopfieldEnergyKind, Keep, Saved};
use crate::normalize::moments;
use crate::rows::{cpu_contiguous, rows_per_task, storage_slice};
use crate::scratch;
use crate::softmax::Elem;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::sync::Mutex;

/// The parameters of one block step (the Energy Transformer's, Hoover et al. 2023, as ported by
/// LumenPallidium/energy_transformer): the norm's per-feature `norm_weight` (`(D)`, or one
/// element broadcast: the paper's `EnergyLayerNorm` `gamma`) and `norm_bias` `(D)` with `eps`;
/// the attention energy's `wq`, `wk` `(H, Z, D)`, `attn_beta` `(H)` and `exclude_self`; the
/// Hopfield energy's memories `w` `(D, M)`, `hopfield_beta` (one element) and `kind`; the step
/// size `alpha`. All tensors share `x`'s dtype and device.
#[derive(Debug, Clone, Copy)]
pub struct EtStep<'a> {
    /// Per-feature norm weight `(D)` or a single (broadcast) element.
    pub norm_weight: &'a Tensor,
    /// Per-feature norm bias `(D)`.
    pub norm_bias: &'a Tensor,
    /// Added to the variance.
    pub eps: f64,
    /// Query projections `(H, Z, D)`.
    pub wq: &'a Tensor,
    /// Key projections `(H, Z, D)`.
    pub wk: &'a Tensor,
    /// Attention betas `(H)`.
    pub attn_beta: &'a Tensor,
    /// Whether a token does not attend to itself.
    pub exclude_self: bool,
    /// Memories `(D, M)`.
    pub w: &'a Tensor,
    /// The Hopfield beta, one element.
    pub hopfield_beta: &'a Tensor,
    /// The memories' interaction.
    pub kind: HopfieldEnergyKind,
    /// Step size.
    pub alpha: f64,
}

/// One descent step of tokens `x` `(B, L, D)`:
/// `x - alpha (dE_att/dg + dE_hop/dg)`, `g = (x - mean) / sqrt(var + eps) * norm_weight + norm_bias`
/// per token (see [`EtStep`], [`crate::attention_energy_grad`], [`crate::hopfield_energy_grad`]).
/// Differentiable in `x` and every parameter (first order). One fused node on the CPU for f32
/// and f64 (a row of `x` holding NaN or inf is an error there, as in [`crate::normalize`]),
/// [`et_step_composed`] elsewhere; they agree to rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::{et_step, et_step_composed, EtStep, HopfieldEnergyKind};
/// let dev = Device::Cpu;
/// let x = Tensor::randn(0f64, 1., (2, 3, 4), &dev)?;
/// let (ones, zeros) = (Tensor::ones(4, x.dtype(), &dev)?, Tensor::zeros(4, x.dtype(), &dev)?);
/// let wq = Tensor::randn(0f64, 0.5, (2, 2, 4), &dev)?;
/// let wk = Tensor::randn(0f64, 0.5, (2, 2, 4), &dev)?;
/// let (attn_beta, hopfield_beta) = (Tensor::new(&[0.7f64, 0.7], &dev)?, Tensor::new(&[1f64], &dev)?);
/// let w = Tensor::randn(0f64, 0.5, (4, 6), &dev)?;
/// let p = EtStep {
///     norm_weight: &ones, norm_bias: &zeros, eps: 1e-5,
///     wq: &wq, wk: &wk, attn_beta: &attn_beta, exclude_self: false,
///     w: &w, hopfield_beta: &hopfield_beta, kind: HopfieldEnergyKind::Relu,
///     alpha: 0.1,
/// };
/// let y = et_step(&x, &p)?;
/// let reference = et_step_composed(&x, &p)?;
/// assert!((y - reference)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn et_step(x: &Tensor, p: &EtStep) -> Result<Tensor> {
    check(x, p)?;
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.elem_count() > 0
        && p.wq.elem_count() > 0
        && p.w.elem_count() > 0;
    if !fused {
        return et_step_composed(x, p);
    }
    fused_step(x, p, by_sample(x.dim(0)?))
}

/// The fused op on validated CPU f32/f64 inputs, one task per sample or phase by phase.
fn fused_step(x: &Tensor, p: &EtStep, per_sample: bool) -> Result<Tensor> {
    let d = x.dim(2)?;
    let (h, z, _) = p.wq.dims3()?;
    let m = p.w.dim(1)?;
    // The small parameters packed into one input (a copy of ~H 2Z D elements): a custom op has
    // at most three inputs, and their gradients come back through `cat`'s backward.
    let nw = p.norm_weight.flatten_all()?;
    let nw = if nw.elem_count() == 1 {
        nw.broadcast_as(d)?.contiguous()?
    } else {
        nw
    };
    let pack = Tensor::cat(
        &[
            &Tensor::cat(&[p.wq, p.wk], 1)?.flatten_all()?,
            &p.attn_beta.flatten_all()?,
            &nw,
            &p.norm_bias.flatten_all()?,
            &p.hopfield_beta.flatten_all()?,
        ],
        0,
    )?;
    x.contiguous()?.apply_op3(
        &pack,
        &p.w.contiguous()?,
        EtStepOp {
            h,
            z,
            m,
            eps: p.eps,
            alpha: p.alpha,
            exclude_self: p.exclude_self,
            kind: p.kind,
            per_sample,
            saved: Mutex::new(None),
        },
    )
}

/// [`et_step`] from candle ops (any float dtype and device, differentiable to any order): the
/// reference the fused op is tested against.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::{et_step_composed, EtStep, HopfieldEnergyKind};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[1f64, -1.]]], &dev)?; // one token: its normalised form is (1, -1)
/// let (one, zero) = (Tensor::new(&[1f64], &dev)?, Tensor::zeros(2, x.dtype(), &dev)?);
/// let wq = Tensor::zeros((1, 1, 2), x.dtype(), &dev)?; // no attention
/// let w = Tensor::new(&[[1f64], [0.]], &dev)?;          // one memory, the first unit vector
/// let p = EtStep {
///     norm_weight: &one, norm_bias: &zero, eps: 0.,
///     wq: &wq, wk: &wq, attn_beta: &one, exclude_self: false,
///     w: &w, hopfield_beta: &one, kind: HopfieldEnergyKind::Relu,
///     alpha: 0.5,
/// };
/// // dE_hop/dg = -relu(g W) W^T = (-1, 0): the step moves x by 0.5 along the memory.
/// let y = et_step_composed(&x, &p)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, vec![1.5, -1.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn et_step_composed(x: &Tensor, p: &EtStep) -> Result<Tensor> {
    let (b, l, d) = check(x, p)?;
    let nw = p.norm_weight.flatten_all()?;
    let g = crate::normalize_composed(x, p.eps)?
        .broadcast_mul(&nw)?
        .broadcast_add(p.norm_bias)?;
    let ga = att::attention_energy_grad_composed(&g, p.wq, p.wk, p.attn_beta, p.exclude_self)?;
    let gh =
        hop::hopfield_energy_grad_composed(&g.reshape((b * l, d))?, p.w, p.hopfield_beta, p.kind)?
            .reshape((b, l, d))?;
    x - ((ga + gh)? * p.alpha)?
}

/// Shapes and dtypes; returns `(B, L, D)`.
fn check(x: &Tensor, p: &EtStep) -> Result<(usize, usize, usize)> {
    const OP: &str = "et_step";
    expect_float(OP, "x", x)?;
    let (b, l, d) = att::check(x, p.wq, p.wk, p.attn_beta)?;
    hop::check(&x.reshape((b * l, d))?, p.w, p.hopfield_beta)?;
    for (arg, t) in [("norm_weight", p.norm_weight), ("norm_bias", p.norm_bias)] {
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
    let nw = p.norm_weight.dims();
    if !(nw == [d] || p.norm_weight.elem_count() == 1 && nw.len() <= 1) {
        return Err(shape("norm_weight", format!("({d}), (1) or ()"), nw));
    }
    if p.norm_bias.dims() != [d] {
        return Err(shape("norm_bias", format!("({d})"), p.norm_bias.dims()));
    }
    for (name, value) in [("eps", p.eps), ("alpha", p.alpha)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(KernelError::Param {
                op: OP,
                name,
                expected: "finite and >= 0",
                value,
            }
            .into());
        }
    }
    Ok((b, l, d))
}

struct EtStepOp {
    h: usize,
    z: usize,
    m: usize,
    eps: f64,
    alpha: f64,
    exclude_self: bool,
    kind: HopfieldEnergyKind,
    /// Tasks of a few samples ([`by_sample`]) or phase by phase; tests force either.
    per_sample: bool,
    /// `g` and the Hopfield scores `g W` of the forward pass, for the backward pass (dropped with
    /// the op, at once when nothing tracks gradients).
    saved: Mutex<Option<[Saved; 2]>>,
}

/// Offsets of the packed parameters: `[Wq_h; Wk_h]` per head, attention betas, norm weight, norm
/// bias, Hopfield beta.
struct Pack {
    wqk: std::ops::Range<usize>,
    beta: std::ops::Range<usize>,
    nw: std::ops::Range<usize>,
    nb: std::ops::Range<usize>,
    hb: usize,
    len: usize,
}

impl EtStepOp {
    fn pack(&self, d: usize) -> Pack {
        let a = self.h * 2 * self.z * d;
        let b = a + self.h;
        let c = b + d;
        let e = c + d;
        Pack {
            wqk: 0..a,
            beta: a..b,
            nw: b..c,
            nb: c..e,
            hb: e,
            len: e + 1,
        }
    }

    fn dims(&self, x: &Layout) -> Result<Dims> {
        let (b, l, d) = x.shape().dims3()?;
        Ok(Dims {
            b,
            l,
            d,
            h: self.h,
            z: self.z,
        })
    }
}

/// `g = n * nw + nb` per row of `x` into `g`, `n` the standardised row (rounded to `T` first, as
/// the composed normalisation is); `false` if a row holds NaN or inf.
fn norm_block<T: Elem>(x: &[T], nw: &[T], nb: &[T], eps: f64, g: &mut [T]) -> bool {
    let mut ok = true;
    for (gr, xr) in g.chunks_mut(nw.len()).zip(x.chunks(nw.len())) {
        let (mean, rstd) = moments(xr, eps);
        ok &= mean.is_finite() && rstd.is_finite();
        for (((o, &v), &w), &b) in gr.iter_mut().zip(xr).zip(nw).zip(nb) {
            *o = T::from_f64((v.to_f64() - mean) * rstd) * w + b;
        }
    }
    ok
}

/// [`norm_block`] of all rows, blocks of rows in parallel.
fn norm_rows<T: Elem>(x: &[T], nw: &[T], nb: &[T], eps: f64) -> (Vec<T>, bool) {
    let d = nw.len();
    let mut g = vec![T::zero(); x.len()];
    let chunk = rows_per_task(d) * d;
    let ok = g
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .map(|(gc, xc)| norm_block(xc, nw, nb, eps, gc))
        .reduce(|| true, |a, b| a && b);
    (g, ok)
}

/// Whether to run one rayon task per few samples (norm, both gradients and the update of those
/// samples on one thread, their buffers in cache, no synchronisation between the phases) rather
/// than phase by phase with each phase split over all threads: when the batch alone fills the
/// threads.
fn by_sample(b: usize) -> bool {
    b >= 2 * rayon::current_num_threads()
}

/// Samples per task on the per-sample path: a few per task so that the Hopfield products span
/// several samples' rows (the memories are packed once per product), while every thread still
/// gets two tasks.
fn samples_per_task(b: usize) -> usize {
    (b / (2 * rayon::current_num_threads())).max(1)
}

/// The NaN/inf-row error of the norm.
fn bad_rows(dm: Dims) -> candle_core::Error {
    KernelError::Values {
        op: "et_step",
        arg: "x",
        shape: vec![dm.b, dm.l, dm.d],
        what: "NaN or inf",
    }
    .into()
}

fn forward<T: Keep>(
    op: &EtStepOp,
    x: &[T],
    pack: &[T],
    w: &[T],
    dm: Dims,
    per_sample: bool,
) -> Result<(Vec<T>, [Saved; 2])> {
    let pk = op.pack(dm.d);
    let (nw, nb) = (&pack[pk.nw.clone()], &pack[pk.nb.clone()]);
    let (wqk, beta, hb) = (&pack[pk.wqk.clone()], &pack[pk.beta.clone()], pack[pk.hb]);
    let alpha = T::from_f64(op.alpha);
    if per_sample {
        let (l, d, m) = (dm.l, dm.d, op.m);
        let one = Dims { b: 1, ..dm };
        let spt = samples_per_task(dm.b);
        let mut y = vec![T::zero(); x.len()];
        let mut g = vec![T::zero(); x.len()];
        let mut h = vec![T::zero(); dm.b * l * m];
        let ok = y
            .par_chunks_mut(spt * l * d)
            .zip(g.par_chunks_mut(spt * l * d))
            .zip(h.par_chunks_mut(spt * l * m))
            .zip(x.par_chunks(spt * l * d))
            .map(|(((yc, gc), hc), xc)| {
                let rows = xc.len() / d;
                let mut ok = norm_block(xc, nw, nb, op.eps, gc);
                let mut a = vec![T::zero(); rows * m];
                ok &= hop::forward_rows(gc, w, hb, [rows, d, m], op.kind, hc, &mut a, yc);
                for ((yb, gb), xb) in yc
                    .chunks_mut(l * d)
                    .zip(gc.chunks(l * d))
                    .zip(xc.chunks(l * d))
                {
                    let ga = att::Task::new(gb, wqk, beta, one, op.exclude_self, 0, 1).forward();
                    // As composed: x - ((ga + gh) * alpha).
                    for ((y, &ga), &x) in yb.iter_mut().zip(&ga).zip(xb) {
                        *y = x - (ga + *y) * alpha;
                    }
                }
                ok
            })
            .collect::<Vec<bool>>();
        // A sample whose norm saw NaN/inf is an error; NaN logits leave NaN tokens (the callers'
        // result checks report them), as the separate ops do.
        if ok.iter().any(|&v| !v) {
            let norm_ok = x.par_chunks(d).all(|r| {
                let (mean, rstd) = moments(r, op.eps);
                mean.is_finite() && rstd.is_finite()
            });
            if !norm_ok {
                return Err(bad_rows(dm));
            }
            y.fill(T::from_f64(f64::NAN));
        }
        return Ok((y, [T::save(g), T::save(h)]));
    }
    let (g, ok) = norm_rows(x, nw, nb, op.eps);
    if !ok {
        return Err(bad_rows(dm));
    }
    let ga = att::forward(&g, wqk, beta, dm, op.exclude_self);
    let (gh, h) = hop::forward(&g, w, hb, [dm.b * dm.l, dm.d, op.m], op.kind);
    // As composed: x - ((ga + gh) * alpha).
    let mut y = ga;
    let chunk = rows_per_task(dm.d) * dm.d;
    y.par_chunks_mut(chunk)
        .zip(gh.par_chunks(chunk).zip(x.par_chunks(chunk)))
        .for_each(|(yc, (hc, xc))| {
            for ((y, &gh), &x) in yc.iter_mut().zip(hc).zip(xc) {
                *y = x - (*y + gh) * alpha;
            }
        });
    Ok((y, [T::save(g), T::save(h)]))
}

/// The norm's backward for a block of rows: `dx = c + rstd (dn - mean(dn) - n mean(dn n))` with
/// `dn = dg nw`, and the block's column sums of `dg n` and `dg` added to `snw`, `snb`.
#[allow(clippy::too_many_arguments)]
fn norm_backward_block<T: Elem>(
    x: &[T],
    c: &[T],
    dg: &[T],
    nw: &[T],
    eps: f64,
    dx: &mut [T],
    snw: &mut [f64],
    snb: &mut [f64],
) {
    let d = nw.len();
    for (((dxr, dgr), xr), cr) in dx
        .chunks_mut(d)
        .zip(dg.chunks(d))
        .zip(x.chunks(d))
        .zip(c.chunks(d))
    {
        let (mean, rstd) = moments(xr, eps);
        let (mut sg, mut sgn) = (0f64, 0f64);
        for j in 0..d {
            let n = (xr[j].to_f64() - mean) * rstd;
            let gv = dgr[j].to_f64();
            snw[j] += gv * n;
            snb[j] += gv;
            let dn = gv * nw[j].to_f64();
            sg += dn;
            sgn += dn * n;
        }
        let (mg, mgn) = (sg / d as f64, sgn / d as f64);
        for j in 0..d {
            let n = (xr[j].to_f64() - mean) * rstd;
            let dn = dgr[j].to_f64() * nw[j].to_f64();
            dxr[j] = cr[j] + T::from_f64(rstd * (dn - mg - n * mgn));
        }
    }
}

/// `out += part` elementwise.
fn add_into<T: Elem>(out: &mut [T], part: &[T]) {
    out.iter_mut().zip(part).for_each(|(o, &v)| *o += v);
}

/// `(dx, dpack, dW)` for the cotangent `c` of the step.
fn backward<T: Keep>(
    op: &EtStepOp,
    [x, pack, w, c]: [&[T]; 4],
    dm: Dims,
    saved: Option<&[Saved; 2]>,
    per_sample: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let pk = op.pack(dm.d);
    let (l, d, m, n) = (dm.l, dm.d, op.m, dm.b * dm.l);
    let (nw, nb) = (&pack[pk.nw.clone()], &pack[pk.nb.clone()]);
    let (wqk, beta, hb) = (&pack[pk.wqk.clone()], &pack[pk.beta.clone()], pack[pk.hb]);
    let recomputed;
    let g = match saved.and_then(|s| T::saved(&s[0])) {
        Some(g) if g.len() == x.len() => g,
        _ => {
            recomputed = norm_rows(x, nw, nb, op.eps).0;
            &recomputed[..]
        }
    };
    let h = saved
        .and_then(|s| T::saved(&s[1]))
        .filter(|h| h.len() == n * m);
    let neg_alpha = T::from_f64(-op.alpha);
    let mut dpack = vec![T::zero(); pk.len];
    let (mut snw, mut snb) = (vec![0f64; d], vec![0f64; d]);
    let mut dx = vec![T::zero(); x.len()];
    let dw;
    if per_sample {
        // One task per few samples: their cotangent, the attention backward, the Hopfield
        // backward and its share of dW, and the norm's backward; then the per-task weight and
        // beta gradients summed in task order.
        let one = Dims { b: 1, ..dm };
        // Every element written by the tasks below: reused buffers, not fresh zeroed ones (`perf`:
        // `memset` was 44% of the main thread's samples, these among them).
        let mut a = scratch::take::<T>(n * m);
        let mut du = scratch::take::<T>(n * m);
        let mut cg = scratch::take::<T>(x.len());
        type Part<T> = (Vec<T>, Vec<T>, T, Vec<f64>, Vec<f64>, Vec<T>);
        let spt = samples_per_task(dm.b);
        let parts: Vec<Part<T>> = dx
            .par_chunks_mut(spt * l * d)
            .zip(cg.par_chunks_mut(spt * l * d))
            .zip(
                a.par_chunks_mut(spt * l * m)
                    .zip(du.par_chunks_mut(spt * l * m)),
            )
            .enumerate()
            .map(|(ti, ((dxc, cgc), (ac, duc)))| {
                let rows = dxc.len() / d;
                let span = ti * spt * l * d..ti * spt * l * d + rows * d;
                let (xc, gc, cc) = (&x[span.clone()], &g[span.clone()], &c[span]);
                cgc.iter_mut()
                    .zip(cc)
                    .for_each(|(o, &v)| *o = v * neg_alpha);
                let hspan = ti * spt * l * m..ti * spt * l * m + rows * m;
                let hrec;
                let hc = match h {
                    Some(h) => &h[hspan],
                    None => {
                        let mut v = vec![T::zero(); rows * m];
                        crate::matmul::gemm_serial(
                            &mut v,
                            m,
                            crate::matmul::Mat::row_major(gc, rows, d, d),
                            crate::matmul::Mat::row_major(w, d, m, m),
                            false,
                        );
                        hrec = v;
                        &hrec[..]
                    }
                };
                let mut dg = vec![T::zero(); rows * d];
                let dhb =
                    hop::backward_rows(w, hb, cgc, [rows, d, m], op.kind, hc, ac, duc, &mut dg);
                let mut dwqk = vec![T::zero(); pk.wqk.len()];
                let mut dbeta = vec![T::zero(); dm.h];
                for ((dgb, gb), cgb) in dg
                    .chunks_mut(l * d)
                    .zip(gc.chunks(l * d))
                    .zip(cgc.chunks(l * d))
                {
                    let task = att::Task::new(gb, wqk, beta, one, op.exclude_self, 0, 1);
                    let (dga, dw, db) = task.backward(cgb);
                    add_into(dgb, &dga);
                    add_into(&mut dwqk, &dw);
                    add_into(&mut dbeta, &db);
                }
                let (mut sw, mut sb) = (vec![0f64; d], vec![0f64; d]);
                norm_backward_block(xc, cc, &dg, nw, op.eps, dxc, &mut sw, &mut sb);
                // This task's share of dW = Cg^T (sign a) + g^T (beta du), from its rows while
                // they are in cache, instead of a separate phase over all rows afterwards.
                let dw =
                    hop::weight_grad(cgc, gc, ac, duc, [rows, d, m], crate::matmul::gemm_serial);
                (dwqk, dbeta, dhb, sw, sb, dw)
            })
            .collect();
        let mut dhb = T::zero();
        let mut dw_sum = vec![T::zero(); d * m];
        for (dwqk, dbeta, db, sw, sb, dwt) in parts {
            add_into(&mut dpack[pk.wqk.clone()], &dwqk);
            add_into(&mut dpack[pk.beta.clone()], &dbeta);
            dhb += db;
            snw.iter_mut().zip(sw).for_each(|(s, v)| *s += v);
            snb.iter_mut().zip(sb).for_each(|(s, v)| *s += v);
            add_into(&mut dw_sum, &dwt);
        }
        dpack[pk.hb] = dhb;
        dw = dw_sum;
        for buf in [a, du, cg] {
            scratch::give(buf);
        }
    } else {
        let chunk = rows_per_task(d) * d;
        let mut cg = vec![T::zero(); c.len()];
        cg.par_chunks_mut(chunk)
            .zip(c.par_chunks(chunk))
            .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = v * neg_alpha));
        let (mut dg, dwqk, dbeta) = att::backward(g, wqk, beta, &cg, dm, op.exclude_self);
        let (dgh, dwv, dhb) = hop::backward(g, w, hb, &cg, [n, d, m], op.kind, h);
        dw = dwv;
        let parts: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(chunk)
            .zip(dg.par_chunks_mut(chunk))
            .zip(
                dgh.par_chunks(chunk)
                    .zip(x.par_chunks(chunk).zip(c.par_chunks(chunk))),
            )
            .map(|((dxc, dgc), (dhc, (xc, cc)))| {
                add_into(dgc, dhc);
                let (mut sw, mut sb) = (vec![0f64; d], vec![0f64; d]);
                norm_backward_block(xc, cc, dgc, nw, op.eps, dxc, &mut sw, &mut sb);
                (sw, sb)
            })
            .collect();
        for (sw, sb) in parts {
            snw.iter_mut().zip(sw).for_each(|(s, v)| *s += v);
            snb.iter_mut().zip(sb).for_each(|(s, v)| *s += v);
        }
        dpack[pk.wqk.clone()].copy_from_slice(&dwqk);
        dpack[pk.beta.clone()].copy_from_slice(&dbeta);
        dpack[pk.hb] = dhb;
    }
    for (o, v) in dpack[pk.nw.clone()].iter_mut().zip(snw) {
        *o = T::from_f64(v);
    }
    for (o, v) in dpack[pk.nb.clone()].iter_mut().zip(snb) {
        *o = T::from_f64(v);
    }
    (dx, dpack, dw)
}

impl CustomOp3 for EtStepOp {
    fn name(&self) -> &'static str {
        "hopfield-et-step"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        pack: &CpuStorage,
        lp: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = self.dims(lx)?;
        fn run<T: Keep>(op: &EtStepOp, [x, pack, w]: [&[T]; 3], dm: Dims) -> Result<CpuStorage> {
            let (y, saved) = forward(op, x, pack, w, dm, op.per_sample)?;
            if let Ok(mut s) = op.saved.lock() {
                *s = Some(saved);
            }
            Ok(T::to_cpu_storage_owned(y))
        }
        let out = match x.dtype() {
            DType::F32 => run::<f32>(
                self,
                [
                    cpu_contiguous(x, lx)?,
                    cpu_contiguous(pack, lp)?,
                    cpu_contiguous(w, lw)?,
                ],
                dm,
            )?,
            DType::F64 => run::<f64>(
                self,
                [
                    cpu_contiguous(x, lx)?,
                    cpu_contiguous(pack, lp)?,
                    cpu_contiguous(w, lw)?,
                ],
                dm,
            )?,
            other => candle_core::bail!("et_step: CPU op supports f32 and f64, got {other:?}"),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        pack: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = grad.contiguous()?;
        let dm = self.dims(x.layout())?;
        let saved = self.saved.lock().ok();
        let saved = saved.as_ref().and_then(|s| s.as_ref());
        fn run<T: Keep>(
            op: &EtStepOp,
            [x, pack, w, c]: [&Tensor; 4],
            dm: Dims,
            saved: Option<&[Saved; 2]>,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let guards = [x, pack, w, c].map(|t| t.storage_and_layout());
            let s = |i: usize| storage_slice::<T>(&guards[i].0, guards[i].1, "et_step");
            let (dx, dp, dw) =
                backward::<T>(op, [s(0)?, s(1)?, s(2)?, s(3)?], dm, saved, op.per_sample);
            let dev = &candle_core::Device::Cpu;
            Ok((
                Tensor::from_vec(dx, x.shape(), dev)?,
                Tensor::from_vec(dp, pack.shape(), dev)?,
                Tensor::from_vec(dw, w.shape(), dev)?,
            ))
        }
        // x, pack and w are the op's own inputs: contiguous (made so in `et_step`).
        let args = [x, pack, w, &c];
        let (dx, dp, dw) = match x.dtype() {
            DType::F32 => run::<f32>(self, args, dm, saved)?,
            DType::F64 => run::<f64>(self, args, dm, saved)?,
            other => candle_core::bail!("et_step: CPU op supports f32 and f64, got {other:?}"),
        };
        Ok((Some(dx), Some(dp), Some(dw)))
    }
}

#[cfg(test)]
// rstest tables with a case per shape and option, and a `values` axis, take many arguments.
#[allow(clippy::too_many_arguments)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};
    use rstest::rstest;

    struct Params {
        nw: Var,
        nb: Var,
        wq: Var,
        wk: Var,
        ab: Var,
        w: Var,
        hb: Var,
    }

    impl Params {
        fn new(d: usize, h: usize, m: usize, scalar_weight: bool) -> Result<Self> {
            let dev = Device::Cpu;
            let z = d / h;
            let nw = if scalar_weight {
                Var::new(1.3f64, &dev)?
            } else {
                Var::from_tensor(&Tensor::rand(0.5f64, 1.5, d, &dev)?)?
            };
            Ok(Self {
                nw,
                nb: Var::randn(0f64, 0.3, d, &dev)?,
                wq: Var::randn(0f64, 0.5, (h, z, d), &dev)?,
                wk: Var::randn(0f64, 0.5, (h, z, d), &dev)?,
                ab: Var::from_tensor(&Tensor::rand(0.3f64, 1.2, h, &dev)?)?,
                w: Var::randn(0f64, 0.4, (d, m), &dev)?,
                hb: Var::new(&[0.8f64], &dev)?,
            })
        }

        fn step(&self, exclude_self: bool, kind: HopfieldEnergyKind) -> EtStep<'_> {
            EtStep {
                norm_weight: &self.nw,
                norm_bias: &self.nb,
                eps: 1e-5,
                wq: &self.wq,
                wk: &self.wk,
                attn_beta: &self.ab,
                exclude_self,
                w: &self.w,
                hopfield_beta: &self.hb,
                kind,
                alpha: 0.3,
            }
        }

        fn vars(&self) -> [&Var; 7] {
            [
                &self.nw, &self.nb, &self.wq, &self.wk, &self.ab, &self.w, &self.hb,
            ]
        }
    }

    /// Fused and composed agree on the step and on its backward (every input).
    #[rstest]
    #[case(2, 5, 8, 2, 6, false, HopfieldEnergyKind::Relu, false)]
    #[case(2, 5, 8, 2, 6, true, HopfieldEnergyKind::Softmax, false)]
    #[case(3, 1, 6, 3, 4, true, HopfieldEnergyKind::Relu, true)]
    #[case(1, 17, 12, 4, 9, false, HopfieldEnergyKind::Softmax, true)]
    #[case(9, 7, 16, 4, 40, false, HopfieldEnergyKind::Relu, false)]
    fn fused_equals_composed(
        #[case] b: usize,
        #[case] l: usize,
        #[case] d: usize,
        #[case] h: usize,
        #[case] m: usize,
        #[case] exclude_self: bool,
        #[case] kind: HopfieldEnergyKind,
        #[case] scalar_weight: bool,
        #[values(false, true)] per_sample: bool,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let p = Params::new(d, h, m, scalar_weight)?;
        let x = Var::randn(0f64, 1., (b, l, d), &dev)?;
        let cot = Tensor::randn(0f64, 1., (b, l, d), &dev)?;
        let s = p.step(exclude_self, kind);
        let fused = fused_step(&x, &s, per_sample)?;
        let composed = et_step_composed(&x, &s)?;
        assert!(max_diff(&fused, &composed) < 1e-12);
        let gf = (&fused * &cot)?.sum_all()?.backward()?;
        let gc = (&composed * &cot)?.sum_all()?.backward()?;
        for v in std::iter::once(&x).chain(p.vars()) {
            let (a, c) = (gf.get(v).expect("fused"), gc.get(v).expect("composed"));
            assert_eq!(a.dims(), v.dims());
            let scale = 1.0 + c.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(max_diff(a, c) < 1e-11 * scale, "{:?} {kind:?}", v.dims());
        }
        Ok(())
    }

    /// The backward pass is the step's derivative: central finite differences of
    /// `sum(C * step(x + t dx, params + t dp))` along a random direction of every input. The
    /// ReLU energy's step has kinks (a score crossing 0 between `t = -eps` and `eps` makes the
    /// difference quotient miss the derivative: seen once in ~40 runs, 29.5 vs 30.4), so a
    /// mismatch there is retried once with fresh random inputs; a wrong backward fails both.
    #[rstest]
    fn backward_matches_finite_differences(
        #[values(false, true)] per_sample: bool,
        #[values(HopfieldEnergyKind::Relu, HopfieldEnergyKind::Softmax)] kind: HopfieldEnergyKind,
    ) -> Result<()> {
        let tries = if kind == HopfieldEnergyKind::Relu {
            2
        } else {
            1
        };
        let mut last = (0.0, 0.0);
        for _ in 0..tries {
            last = fd_and_analytic(per_sample, kind)?;
            let (fd, analytic) = last;
            if (fd - analytic).abs() < 1e-6 * (1.0 + analytic.abs()) {
                return Ok(());
            }
        }
        panic!("{} vs {}", last.0, last.1);
    }

    /// One draw of [`backward_matches_finite_differences`]: `(finite difference, backward)`.
    fn fd_and_analytic(per_sample: bool, kind: HopfieldEnergyKind) -> Result<(f64, f64)> {
        let dev = Device::Cpu;
        let p = Params::new(8, 2, 5, false)?;
        let x = Var::randn(0f64, 1., (2, 4, 8), &dev)?;
        let cot = Tensor::randn(0f64, 1., (2, 4, 8), &dev)?;
        let s = p.step(false, kind);
        let grads = (fused_step(&x, &s, per_sample)? * &cot)?
            .sum_all()?
            .backward()?;
        let vars: Vec<&Var> = std::iter::once(&x).chain(p.vars()).collect();
        let dirs: Vec<Tensor> = vars
            .iter()
            .map(|v| Tensor::randn(0f64, 1., v.dims(), &dev))
            .collect::<Result<_>>()?;
        let mut analytic = 0.0;
        for (v, dir) in vars.iter().zip(&dirs) {
            let g = grads.get(v).expect("gradient");
            analytic += (g * dir)?.sum_all()?.to_scalar::<f64>()?;
        }
        let at = |t: f64| -> Result<f64> {
            let moved: Vec<Tensor> = vars
                .iter()
                .zip(&dirs)
                .map(|(v, dir)| v.as_tensor().detach() + (dir * t)?)
                .collect::<Result<_>>()?;
            let s = EtStep {
                norm_weight: &moved[1],
                norm_bias: &moved[2],
                wq: &moved[3],
                wk: &moved[4],
                attn_beta: &moved[5],
                w: &moved[6],
                hopfield_beta: &moved[7],
                ..s
            };
            (fused_step(&moved[0], &s, per_sample)? * &cot)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let eps = 1e-5;
        let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
        Ok((fd, analytic))
    }

    #[test]
    fn f32_agrees_with_f64() -> Result<()> {
        let p = Params::new(8, 2, 12, false)?;
        let x = Tensor::randn(0f64, 1., (3, 6, 8), &Device::Cpu)?;
        let s = p.step(true, HopfieldEnergyKind::Softmax);
        let y64 = et_step(&x, &s)?;
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let t32 = [
            f(&p.nw)?,
            f(&p.nb)?,
            f(&p.wq)?,
            f(&p.wk)?,
            f(&p.ab)?,
            f(&p.w)?,
            f(&p.hb)?,
        ];
        let s32 = EtStep {
            norm_weight: &t32[0],
            norm_bias: &t32[1],
            wq: &t32[2],
            wk: &t32[3],
            attn_beta: &t32[4],
            w: &t32[5],
            hopfield_beta: &t32[6],
            ..s
        };
        let y32 = et_step(&f(&x)?, &s32)?;
        assert!(max_diff(&y32.to_dtype(DType::F64)?, &y64) < 1e-4);
        Ok(())
    }

    #[test]
    fn bad_rows_and_shapes_are_errors() -> Result<()> {
        let p = Params::new(4, 2, 3, false)?;
        let s = p.step(false, HopfieldEnergyKind::Relu);
        let x = Tensor::new(&[[[1f64, 2., f64::INFINITY, 0.]]], &Device::Cpu)?;
        let e = et_step(&x, &s).unwrap_err().to_string();
        assert!(e.contains("et_step") && e.contains("inf"), "{e}");
        let x = Tensor::zeros((1, 2, 4), DType::F64, &Device::Cpu)?;
        let bad = Tensor::zeros(3, DType::F64, &Device::Cpu)?;
        let e = et_step(
            &x,
            &EtStep {
                norm_bias: &bad,
                ..s
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("norm_bias"), "{e}");
        let e = et_step(
            &x,
            &EtStep {
                norm_weight: &bad,
                ..s
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("norm_weight"), "{e}");
        let e = et_step(
            &x,
            &EtStep {
                alpha: f64::NAN,
                ..s
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
        let e = et_step(&x, &EtStep { w: &bad, ..s }).unwrap_err();
        assert!(e.to_string().contains('w'), "{e}");
        Ok(())
    }
}
