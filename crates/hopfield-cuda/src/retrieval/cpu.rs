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
const BR: usize = 32;
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
    /// `a * b + c`, one rounding (a hardware FMA) when the caller is compiled with `fma`.
    fn mul_add(self, b: Self, c: Self) -> Self;
}

/// `a * b + c`: fused in the FMA builds (where `mul_add` is one instruction), plain elsewhere
/// (where `mul_add` would be a slow library call).
#[inline(always)]
fn madd<T: Float, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
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
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        f32::mul_add(self, b, c)
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
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        f64::mul_add(self, b, c)
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

impl<'a, T: Float> Inputs<'a, T> {
    fn new(data: [&'a [T]; 3], views: [View; 3], mask: Option<(&'a [T], View)>) -> Self {
        Self {
            q: data[0],
            k: data[1],
            v: data[2],
            vq: views[0],
            vk: views[1],
            vv: views[2],
            mask,
        }
    }

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

/// `logits[r][j] = sum_d a[r][d] * bt[d][j]` for `rows x BC`, `bt` being `hd x BC`. Two rows
/// at a time in local accumulators, so the compiler keeps them in registers and each load of
/// `bt` feeds two FMAs.
#[inline(always)]
fn block_logits<T: Float, const FMA: bool>(
    a: &[T],
    bt: &[T],
    hd: usize,
    rows: usize,
    logits: &mut [T],
) {
    let mut r = 0;
    while r + 2 <= rows {
        let mut acc0 = [T::ZERO; BC];
        let mut acc1 = [T::ZERO; BC];
        let (a0, a1) = (&a[r * hd..(r + 1) * hd], &a[(r + 1) * hd..(r + 2) * hd]);
        for d in 0..hd {
            let row: &[T; BC] = (&bt[d * BC..(d + 1) * BC]).try_into().unwrap();
            let (x0, x1) = (a0[d], a1[d]);
            for j in 0..BC {
                acc0[j] = madd::<T, FMA>(x0, row[j], acc0[j]);
                acc1[j] = madd::<T, FMA>(x1, row[j], acc1[j]);
            }
        }
        logits[r * BC..(r + 1) * BC].copy_from_slice(&acc0);
        logits[(r + 1) * BC..(r + 2) * BC].copy_from_slice(&acc1);
        r += 2;
    }
    if r < rows {
        let mut acc = [T::ZERO; BC];
        let ar = &a[r * hd..(r + 1) * hd];
        for (d, &x) in ar.iter().enumerate() {
            let row: &[T; BC] = (&bt[d * BC..(d + 1) * BC]).try_into().unwrap();
            for j in 0..BC {
                acc[j] = madd::<T, FMA>(x, row[j], acc[j]);
            }
        }
        logits[r * BC..(r + 1) * BC].copy_from_slice(&acc);
    }
}

/// `row[j] = exp(row[j] - shift)` over the whole block (vectorised; no reduction in the loop),
/// then the sum of the first `c` entries with independent lanes; entries past `c` become 0.
#[inline(always)]
fn exp_shift_sum<T: Float>(row: &mut [T], shift: T, c: usize) -> T {
    for z in row.iter_mut() {
        *z = (*z - shift).exp();
    }
    for z in row.iter_mut().skip(c) {
        *z = T::ZERO;
    }
    let mut lanes = [T::ZERO; 8];
    for ch in row.chunks_exact(8) {
        for (a, &b) in lanes.iter_mut().zip(ch) {
            *a += b;
        }
    }
    let mut sum = T::ZERO;
    for a in lanes {
        sum += a;
    }
    sum
}

/// `out[r][:] += sum_j p[r][j] * b[j][:]`, `p` being `rows x cols` with row stride `ps`, `b`
/// being `cols x w`.
/// Four rows and 16 output columns at a time in local accumulators: each load of `b` feeds
/// four independent FMA chains.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_accumulate<T: Float, const FMA: bool>(
    p: &[T],
    ps: usize,
    b: &[T],
    w: usize,
    rows: usize,
    cols: usize,
    out: &mut [T],
) {
    const W: usize = 16;
    const R: usize = 4;
    let full = w / W * W;
    let mut r = 0;
    while r + R <= rows {
        let mut e0 = 0;
        while e0 < full {
            let mut acc = [[T::ZERO; W]; R];
            for (i, a) in acc.iter_mut().enumerate() {
                a.copy_from_slice(&out[(r + i) * w + e0..(r + i) * w + e0 + W]);
            }
            for j in 0..cols {
                let br: &[T; W] = (&b[j * w + e0..j * w + e0 + W]).try_into().unwrap();
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = p[(r + i) * ps + j];
                    for e in 0..W {
                        a[e] = madd::<T, FMA>(x, br[e], a[e]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                out[(r + i) * w + e0..(r + i) * w + e0 + W].copy_from_slice(a);
            }
            e0 += W;
        }
        r += R;
    }
    // Leftover rows and columns.
    for rr in 0..rows {
        let from = if rr < r { full } else { 0 };
        if from == w {
            continue;
        }
        let o = &mut out[rr * w + from..(rr + 1) * w];
        for j in 0..cols {
            let x = p[rr * ps + j];
            let br = &b[j * w + from..(j + 1) * w];
            for (oe, &be) in o.iter_mut().zip(br) {
                *oe = madd::<T, FMA>(x, be, *oe);
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_block<T: Float, const FMA: bool>(
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
        block_logits::<T, FMA>(&qb, &kt, hd, rows, &mut logits);
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
            let sum = exp_shift_sum(row, mnew, c);
            l[r] = l[r] * alpha + sum;
            m[r] = mnew;
            if alpha != T::ONE {
                o[r * pd..(r + 1) * pd]
                    .iter_mut()
                    .for_each(|e| *e = *e * alpha);
            }
        }
        block_accumulate::<T, FMA>(&logits, BC, &vb, pd, rows, c, &mut o);
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
    let x = Inputs::new(data, views, mask);
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
        // One chunk unless the tasks alone cannot keep the threads busy; the zero pattern
        // belongs to the first chunk only.
        let parts: Vec<Partial<T>> = (0..chunks)
            .into_par_iter()
            .filter_map(|c| {
                let s0 = c * per_chunk;
                (s0 < g.s || c == 0).then(|| {
                    let s1 = (s0 + per_chunk).min(g.s);
                    let zero = c == 0 && p.zero_association;
                    forward_block_dispatch(p, &x, n, h, r0, rows, s0, s1, zero)
                })
            })
            .collect();
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
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_chunk<T: Float, const FMA: bool>(
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
    let mut pt = vec![T::ZERO; BC * BR];
    let mut dst = vec![T::ZERO; BC * BR];
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
            block_logits::<T, FMA>(&qb, &kt, hd, rows, &mut pb);
            block_logits::<T, FMA>(&dob, &vt, pd, rows, &mut dpb);
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
                if x.mask.is_some() {
                    for (j, z) in row.iter_mut().enumerate().take(c) {
                        *z += x.mask_at(n, h, r0 + r, j0 + j);
                    }
                }
                exp_shift_sum(row, lse, c);
                // dS = P (dP - D + dlse), stored over dP.
                let shift = grad[no + li] - delta[li];
                for (d, &pv) in dpb[r * BC..(r + 1) * BC].iter_mut().zip(row.iter()) {
                    *d = pv * (*d + shift);
                }
            }
            // dV += P^T dO and dK += beta dS^T q (q is already scaled), through the
            // transposed blocks; dq += beta dS k below.
            for r in 0..rows {
                for j in 0..c {
                    pt[j * BR + r] = pb[r * BC + j];
                    dst[j * BR + r] = dpb[r * BC + j];
                }
            }
            block_accumulate::<T, FMA>(&pt, BR, &dob, pd, c, rows, &mut dv);
            block_accumulate::<T, FMA>(&dst, BR, &qb, hd, c, rows, &mut dk);
            let mut dqb = vec![T::ZERO; rows * hd];
            block_accumulate::<T, FMA>(&dpb, BC, &kb, hd, rows, c, &mut dqb);
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
    let x = Inputs::new(data, views, mask);
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
                backward_chunk_dispatch(p, &x, res, grad, &delta, n, h, s0, s1, dk_out, dv_out),
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

/// Which instruction set the kernels run with, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Generic
    })
}

/// The same kernel code compiled for AVX-512 and for AVX2+FMA (picked at run time; the default
/// x86-64 target only allows SSE2 and no FMA) and generic for everything else.
macro_rules! dispatch {
    ($name:ident, $inner:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Float>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<T: Float>($($arg: $ty),*) -> $ret {
                    $inner::<T, true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: Float>($($arg: $ty),*) -> $ret {
                    $inner::<T, true>($($arg),*)
                }
                match isa() {
                    // SAFETY: the features were detected on this CPU.
                    Isa::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                    Isa::Avx2Fma => return unsafe { avx2::<T>($($arg),*) },
                    Isa::Generic => {}
                }
            }
            $inner::<T, false>($($arg),*)
        }
    };
}

dispatch!(forward_block_dispatch, forward_block, (
    p: &Params, x: &Inputs<T>, n: usize, h: usize, r0: usize, rows: usize, s0: usize, s1: usize,
    with_zero: bool
) -> Partial<T>);

dispatch!(backward_chunk_dispatch, backward_chunk, (
    p: &Params, x: &Inputs<T>, res: &[T], grad: &[T], delta: &[T], n: usize, h: usize,
    s0: usize, s1: usize, dk_out: SharedMut<T>, dv_out: SharedMut<T>
) -> Vec<T>);
