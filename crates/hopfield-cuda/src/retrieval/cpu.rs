//! CPU kernels of the fused retrieval: forward with an online softmax over blocks of stored
//! patterns, FlashAttention-2 backward recomputing the association from the log-sum-exp.
//!
//! Work is split over (sample, head, block of queries) in the forward pass and over (sample,
//! head, chunk of stored patterns) in the backward pass; when that gives too few tasks for the
//! thread pool (a single huge memory), the stored patterns are split into chunks as well and the
//! partial results merged on their running max and sum.

use super::op::{Params, View};
use crate::softmax::exp_f32;
use rayon::prelude::*;

/// Query rows per block.
const BR: usize = 16;
/// Stored patterns per block.
const BC: usize = 64;

pub(crate) trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    const NEG_INF: Self;
    const ZERO: Self;
    const ONE: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn from_f64(x: f64) -> Self;
}

impl Float for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Float for f64 {
    const NEG_INF: Self = f64::NEG_INFINITY;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
}

#[inline(always)]
fn max<T: Float>(a: T, b: T) -> T {
    if b > a {
        b
    } else {
        a
    }
}

/// How many chunks to split the stored patterns into so that `tasks * chunks` keeps every thread
/// busy, with at least a few blocks per chunk.
fn chunks_for(tasks: usize, s: usize) -> usize {
    let want = 4 * rayon::current_num_threads();
    if tasks >= want {
        return 1;
    }
    let by_work = s.div_ceil(4 * BC).max(1);
    want.div_ceil(tasks.max(1)).min(by_work).max(1)
}

/// A pointer that rayon tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: every use writes disjoint index sets from different tasks.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// A method (not the field) so that closures capture the whole `Send` wrapper.
    #[inline(always)]
    fn at(self, i: usize) -> *mut T {
        // SAFETY: callers stay within the allocation.
        unsafe { self.0.add(i) }
    }
}

/// Unnormalised partial result of a block of queries over a range of stored patterns.
struct Partial<T> {
    /// `rows x pd`, `sum_j exp(z_j - m) v_j`.
    o: Vec<T>,
    m: Vec<T>,
    l: Vec<T>,
}

struct Inputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    vq: View,
    vk: View,
    vv: View,
    mask: Option<(&'a [T], View)>,
}

impl<T: Float> Inputs<'_, T> {
    #[inline(always)]
    fn mask_at(&self, n: usize, h: usize, r: usize, j: usize) -> T {
        match &self.mask {
            Some((m, vm)) => {
                m[vm.offset
                    + n * vm.strides[0]
                    + h * vm.strides[1]
                    + r * vm.strides[2]
                    + j * vm.strides[3]]
            }
            None => T::ZERO,
        }
    }
}

/// `logits[r][j] = sum_d a[r][d] * bt[d][j]` for `rows x BC`, `bt` being `hd x BC`.
#[inline(always)]
fn block_logits<T: Float>(a: &[T], bt: &[T], hd: usize, rows: usize, logits: &mut [T]) {
    for r in 0..rows {
        let acc: &mut [T; BC] = (&mut logits[r * BC..(r + 1) * BC]).try_into().unwrap();
        *acc = [T::ZERO; BC];
        let ar = &a[r * hd..(r + 1) * hd];
        for (d, &x) in ar.iter().enumerate() {
            let row: &[T; BC] = (&bt[d * BC..(d + 1) * BC]).try_into().unwrap();
            for j in 0..BC {
                acc[j] += x * row[j];
            }
        }
    }
}

/// `out[r][:] += sum_j p[r][j] * b[j][:]`, `p` being `rows x BC`, `b` being `cols x w`.
#[inline(always)]
fn block_accumulate<T: Float>(p: &[T], b: &[T], w: usize, rows: usize, cols: usize, out: &mut [T]) {
    for r in 0..rows {
        let o = &mut out[r * w..(r + 1) * w];
        for j in 0..cols {
            let x = p[r * BC + j];
            let br = &b[j * w..(j + 1) * w];
            for (oe, &be) in o.iter_mut().zip(br) {
                *oe += x * be;
            }
        }
    }
}

/// Loads rows `j0..j0+c` of head `h` of sample `n` of a `(N, S, H, w)` view transposed into
/// `w x BC` (zero beyond `c`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn load_transposed<T: Float>(
    src: &[T],
    view: &View,
    n: usize,
    h: usize,
    j0: usize,
    c: usize,
    w: usize,
    dst: &mut [T],
) {
    dst.iter_mut().for_each(|x| *x = T::ZERO);
    for j in 0..c {
        let base = view.at(n, j0 + j, h);
        for d in 0..w {
            dst[d * BC + j] = src[base + d];
        }
    }
}

/// Loads rows `j0..j0+c` of head `h` of sample `n` as `c x w`, optionally scaled.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn load_rows<T: Float>(
    src: &[T],
    view: &View,
    n: usize,
    h: usize,
    j0: usize,
    c: usize,
    w: usize,
    scale: T,
    dst: &mut [T],
) {
    for j in 0..c {
        let base = view.at(n, j0 + j, h);
        for d in 0..w {
            dst[j * w + d] = src[base + d] * scale;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_block<T: Float>(
    p: &Params,
    x: &Inputs<T>,
    n: usize,
    h: usize,
    r0: usize,
    rows: usize,
    s0: usize,
    s1: usize,
    with_zero: bool,
) -> Partial<T> {
    let g = &p.g;
    let (hd, pd) = (g.hd, g.pd);
    let beta = T::from_f64(p.betas[h]);
    let mut qb = vec![T::ZERO; BR * hd];
    load_rows(x.q, &x.vq, n, h, r0, rows, hd, beta, &mut qb);
    let mut kt = vec![T::ZERO; hd * BC];
    let mut vb = vec![T::ZERO; BC * pd];
    let mut logits = vec![T::ZERO; BR * BC];
    let mut o = vec![T::ZERO; rows * pd];
    // The zero pattern: logit 0, value 0, so it starts the running sum at exp(0 - 0) = 1.
    let (mut m, mut l) = if with_zero {
        (vec![T::ZERO; rows], vec![T::ONE; rows])
    } else {
        (vec![T::NEG_INF; rows], vec![T::ZERO; rows])
    };
    let mut j0 = s0;
    while j0 < s1 {
        let c = BC.min(s1 - j0);
        load_transposed(x.k, &x.vk, n, h, j0, c, hd, &mut kt);
        load_rows(x.v, &x.vv, n, h, j0, c, pd, T::ONE, &mut vb);
        block_logits(&qb, &kt, hd, rows, &mut logits);
        for r in 0..rows {
            let row = &mut logits[r * BC..(r + 1) * BC];
            if x.mask.is_some() {
                for (j, z) in row.iter_mut().enumerate().take(c) {
                    *z += x.mask_at(n, h, r0 + r, j0 + j);
                }
            }
            let mut bm = T::NEG_INF;
            for z in row.iter().take(c) {
                bm = max(bm, *z);
            }
            let mnew = max(m[r], bm);
            if mnew == T::NEG_INF {
                // Everything so far is masked: nothing to add.
                row.iter_mut().for_each(|z| *z = T::ZERO);
                continue;
            }
            let alpha = (m[r] - mnew).exp();
            let mut sum = T::ZERO;
            for z in row.iter_mut().take(c) {
                *z = (*z - mnew).exp();
                sum += *z;
            }
            for z in row.iter_mut().skip(c) {
                *z = T::ZERO;
            }
            l[r] = l[r] * alpha + sum;
            m[r] = mnew;
            if alpha != T::ONE {
                o[r * pd..(r + 1) * pd]
                    .iter_mut()
                    .for_each(|e| *e = *e * alpha);
            }
        }
        block_accumulate(&logits, &vb, pd, rows, c, &mut o);
        j0 += c;
    }
    Partial { o, m, l }
}

pub(crate) fn forward<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
) -> Vec<T> {
    let g = p.g;
    let x = Inputs {
        q: data[0],
        k: data[1],
        v: data[2],
        vq: views[0],
        vk: views[1],
        vv: views[2],
        mask,
    };
    let qblocks = g.l.div_ceil(BR);
    let tasks = g.n * g.h * qblocks;
    let chunks = chunks_for(tasks, g.s);
    let per_chunk = g.s.div_ceil(chunks).div_ceil(BC) * BC;
    let no = g.n * g.l * g.h * g.pd;
    let mut flat = vec![T::ZERO; no + g.n * g.h * g.l];
    let ptr = SharedMut(flat.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|t| {
        let (nh, qb) = (t / qblocks, t % qblocks);
        let (n, h) = (nh / g.h, nh % g.h);
        let r0 = qb * BR;
        let rows = BR.min(g.l - r0);
        let parts: Vec<Partial<T>> = if chunks == 1 {
            vec![forward_block(
                p,
                &x,
                n,
                h,
                r0,
                rows,
                0,
                g.s,
                p.zero_association,
            )]
        } else {
            (0..chunks)
                .into_par_iter()
                .filter_map(|c| {
                    let s0 = c * per_chunk;
                    (s0 < g.s || c == 0).then(|| {
                        let s1 = (s0 + per_chunk).min(g.s);
                        forward_block(p, &x, n, h, r0, rows, s0, s1, c == 0 && p.zero_association)
                    })
                })
                .collect()
        };
        for r in 0..rows {
            let mut m = T::NEG_INF;
            for pt in &parts {
                m = max(m, pt.m[r]);
            }
            let out_base = ((n * g.l + r0 + r) * g.h + h) * g.pd;
            let lse_at = no + (n * g.h + h) * g.l + r0 + r;
            // SAFETY: (n, h, r0 + r) is written by this task only.
            unsafe {
                if m == T::NEG_INF {
                    for e in 0..g.pd {
                        *ptr.at(out_base + e) = T::ZERO;
                    }
                    *ptr.at(lse_at) = T::NEG_INF;
                    continue;
                }
                let mut l = T::ZERO;
                let mut acc = vec![T::ZERO; g.pd];
                for pt in &parts {
                    if pt.m[r] == T::NEG_INF {
                        continue;
                    }
                    let a = (pt.m[r] - m).exp();
                    l += pt.l[r] * a;
                    for (e, &x) in acc.iter_mut().zip(&pt.o[r * g.pd..(r + 1) * g.pd]) {
                        *e += x * a;
                    }
                }
                let inv = T::ONE / l;
                for (e, x) in acc.iter().enumerate() {
                    *ptr.at(out_base + e) = *x * inv;
                }
                *ptr.at(lse_at) = m + l.ln();
            }
        }
    });
    flat
}

/// Gradients of one (sample, head) over stored patterns `s0..s1`: writes dk and dv rows of that
/// range into the flat output and returns this range's contribution to dq (`L x hd`).
#[allow(clippy::too_many_arguments)]
fn backward_chunk<T: Float>(
    p: &Params,
    x: &Inputs<T>,
    res: &[T],
    grad: &[T],
    delta: &[T],
    n: usize,
    h: usize,
    s0: usize,
    s1: usize,
    dk_out: SharedMut<T>,
    dv_out: SharedMut<T>,
) -> Vec<T> {
    let g = &p.g;
    let (hd, pd, l) = (g.hd, g.pd, g.l);
    let no = g.n * g.l * g.h * g.pd;
    let beta = T::from_f64(p.betas[h]);
    let mut dq = vec![T::ZERO; l * hd];
    let mut kb = vec![T::ZERO; BC * hd];
    let mut kt = vec![T::ZERO; hd * BC];
    let mut vt = vec![T::ZERO; pd * BC];
    let mut qb = vec![T::ZERO; BR * hd];
    let mut dob = vec![T::ZERO; BR * pd];
    let mut pb = vec![T::ZERO; BR * BC];
    let mut dpb = vec![T::ZERO; BR * BC];
    let mut j0 = s0;
    while j0 < s1 {
        let c = BC.min(s1 - j0);
        load_rows(x.k, &x.vk, n, h, j0, c, hd, T::ONE, &mut kb);
        load_transposed(x.k, &x.vk, n, h, j0, c, hd, &mut kt);
        load_transposed(x.v, &x.vv, n, h, j0, c, pd, &mut vt);
        let mut dk = vec![T::ZERO; c * hd];
        let mut dv = vec![T::ZERO; c * pd];
        let mut r0 = 0;
        while r0 < l {
            let rows = BR.min(l - r0);
            load_rows(x.q, &x.vq, n, h, r0, rows, hd, beta, &mut qb);
            for r in 0..rows {
                let base = ((n * l + r0 + r) * g.h + h) * pd;
                dob[r * pd..(r + 1) * pd].copy_from_slice(&grad[base..base + pd]);
            }
            block_logits(&qb, &kt, hd, rows, &mut pb);
            block_logits(&dob, &vt, pd, rows, &mut dpb);
            for r in 0..rows {
                let li = (n * g.h + h) * l + r0 + r;
                let lse = res[no + li];
                let row = &mut pb[r * BC..(r + 1) * BC];
                if lse == T::NEG_INF {
                    row.iter_mut().for_each(|z| *z = T::ZERO);
                    dpb[r * BC..(r + 1) * BC]
                        .iter_mut()
                        .for_each(|z| *z = T::ZERO);
                    continue;
                }
                for (j, z) in row.iter_mut().enumerate() {
                    *z = if j < c {
                        (*z + x.mask_at(n, h, r0 + r, j0 + j) - lse).exp()
                    } else {
                        T::ZERO
                    };
                }
                // dS = P (dP - D + dlse), stored over dP.
                let shift = grad[no + li] - delta[li];
                for (d, &pv) in dpb[r * BC..(r + 1) * BC].iter_mut().zip(row.iter()) {
                    *d = pv * (*d + shift);
                }
            }
            // dV += P^T dO; dK += beta dS^T q; dq += beta dS k.
            for r in 0..rows {
                let dor = &dob[r * pd..(r + 1) * pd];
                let qr = &qb[r * hd..(r + 1) * hd]; // already beta * q
                for j in 0..c {
                    let pv = pb[r * BC + j];
                    for (a, &b) in dv[j * pd..(j + 1) * pd].iter_mut().zip(dor) {
                        *a += pv * b;
                    }
                    let ds = dpb[r * BC + j];
                    for (a, &b) in dk[j * hd..(j + 1) * hd].iter_mut().zip(qr) {
                        *a += ds * b;
                    }
                }
            }
            let mut dqb = vec![T::ZERO; rows * hd];
            block_accumulate(&dpb, &kb, hd, rows, c, &mut dqb);
            for (a, &b) in dq[r0 * hd..(r0 + rows) * hd].iter_mut().zip(&dqb) {
                *a += beta * b;
            }
            r0 += rows;
        }
        for j in 0..c {
            let kbase = ((n * g.s + j0 + j) * g.h + h) * hd;
            let vbase = ((n * g.s + j0 + j) * g.h + h) * pd;
            // SAFETY: stored pattern j0 + j of (n, h) belongs to this task only.
            unsafe {
                for d in 0..hd {
                    *dk_out.at(kbase + d) = dk[j * hd + d];
                }
                for e in 0..pd {
                    *dv_out.at(vbase + e) = dv[j * pd + e];
                }
            }
        }
        j0 += c;
    }
    dq
}

pub(crate) fn backward<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
    res: &[T],
    grad: &[T],
) -> Vec<T> {
    let g = p.g;
    let x = Inputs {
        q: data[0],
        k: data[1],
        v: data[2],
        vq: views[0],
        vk: views[1],
        vv: views[2],
        mask,
    };
    // D_i = dO_i . O_i, per (n, h, l), laid out like the lse.
    let mut delta = vec![T::ZERO; g.n * g.h * g.l];
    delta.par_iter_mut().enumerate().for_each(|(i, d)| {
        let (nh, r) = (i / g.l, i % g.l);
        let (n, h) = (nh / g.h, nh % g.h);
        let base = ((n * g.l + r) * g.h + h) * g.pd;
        let mut s = T::ZERO;
        for e in 0..g.pd {
            s += res[base + e] * grad[base + e];
        }
        *d = s;
    });
    let (nq, nk) = (g.n * g.l * g.h * g.hd, g.n * g.s * g.h * g.hd);
    let mut flat = vec![T::ZERO; nq + nk + g.n * g.s * g.h * g.pd];
    let chunks = chunks_for(g.n * g.h, g.s);
    let per_chunk = g.s.div_ceil(chunks).div_ceil(BC) * BC;
    let base = SharedMut(flat.as_mut_ptr());
    let (dk_out, dv_out) = (SharedMut(base.at(nq)), SharedMut(base.at(nq + nk)));
    let parts: Vec<(usize, Vec<T>)> = (0..g.n * g.h * chunks)
        .into_par_iter()
        .filter_map(|t| {
            let (nh, c) = (t / chunks, t % chunks);
            let s0 = c * per_chunk;
            if s0 >= g.s {
                return None;
            }
            let s1 = (s0 + per_chunk).min(g.s);
            let (n, h) = (nh / g.h, nh % g.h);
            Some((
                nh,
                backward_chunk(p, &x, res, grad, &delta, n, h, s0, s1, dk_out, dv_out),
            ))
        })
        .collect();
    let (dq_flat, _) = flat.split_at_mut(nq);
    for (nh, dq) in parts {
        let (n, h) = (nh / g.h, nh % g.h);
        for r in 0..g.l {
            let b = ((n * g.l + r) * g.h + h) * g.hd;
            for d in 0..g.hd {
                dq_flat[b + d] += dq[r * g.hd + d];
            }
        }
    }
    flat
}
