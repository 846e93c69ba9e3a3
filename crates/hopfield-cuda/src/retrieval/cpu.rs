//! CPU kernels of the fused retrieval: forward with an online softmax over blocks of stored
//! patterns, FlashAttention-2 backward recomputing the association from the log-sum-exp.
//!
//! Work is split over (sample, head, block of queries) in the forward pass and over (sample,
//! head, chunk of stored patterns) in the backward pass; when that gives too few tasks for the
//! thread pool (a single huge memory), the stored patterns are split into chunks as well and the
//! partial results merged on their running max and sum.

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::op::{Params, View};
use crate::simd::{isa, wide, Isa};
use crate::softmax::{exp_f32, exp_f32_with};
use rayon::prelude::*;

/// Query rows per block: the lanes of the block products, four AVX-512 vectors of f32 (so that
/// each broadcast feeds four FMAs, see `avx512::rank_k`).
const BR: usize = 64;
/// Query rows per block of the forward tasks with that many queries or fewer.
const BR_NARROW: usize = 32;
/// Stored patterns per block.
const BC: usize = 64;
/// How far a block's logits may exceed the forward's running maximum before it moves (see
/// `forward_block`): exponentials up to e^8 ~ 3e3 against the old maximum, so the running sums
/// keep their range up to values near f32::MAX / (3e3 S) (past that a row overflows and is
/// reported as such, as every overflowing row is).
const LAZY_MAX: f64 = 8.0;

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
    /// [`Float::exp`] with fused multiply-adds where the caller is compiled with `fma`.
    fn exp_fma<const FMA: bool>(self) -> Self;
    fn ln(self) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
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
    fn exp_fma<const FMA: bool>(self) -> Self {
        exp_f32_with::<FMA>(self)
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
    fn to_f64(self) -> f64 {
        f64::from(self)
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
    fn exp_fma<const FMA: bool>(self) -> Self {
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
    fn to_f64(self) -> f64 {
        self
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

/// Partial result of a block of queries over a range of stored patterns: unnormalised, or the
/// final one where the range was the task's only chunk (see [`finish_rows`]).
struct Partial<T> {
    /// `rows x pd`, `sum_j exp(z_j - m) v_j`; divided by `l` once finished.
    o: Vec<T>,
    m: Vec<T>,
    /// The running sums; the log-sum-exp per query once finished.
    l: Vec<T>,
    /// `Some(rows that overflowed)` once finished.
    finished: Option<usize>,
}

struct Inputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    vq: View,
    vk: View,
    vv: View,
    mask: Option<(&'a [T], View)>,
    /// Per-feature biases of q, k and v (`H * w` each, head by head), added as the kernels load
    /// them: the projected op's packed input bias, left out of its GEMM (see
    /// [`Bias`]).
    bias: Bias<'a, T>,
}

/// Biases of q, k and v (`H * hd`, `H * hd`, `H * pd`), `None` where absent. The projected
/// self-association adds its packed input bias here, as the kernels load each block, instead of
/// writing it into every row of the `(N*L, 3*H*hd)` projection before its GEMM: that fill and
/// the GEMM's read of it were ~4% of the (16, 512, 256, 8) forward.
pub(crate) type Bias<'a, T> = [Option<&'a [T]>; 3];

impl<'a, T: Float> Inputs<'a, T> {
    fn new(
        data: [&'a [T]; 3],
        views: [View; 3],
        mask: Option<(&'a [T], View)>,
        bias: Bias<'a, T>,
    ) -> Self {
        Self {
            q: data[0],
            k: data[1],
            v: data[2],
            vq: views[0],
            vk: views[1],
            vv: views[2],
            mask,
            bias,
        }
    }

    /// Head `h`'s `w` biases of input `i` (0: q, 1: k, 2: v).
    #[inline(always)]
    fn bias(&self, i: usize, h: usize, w: usize) -> Option<&'a [T]> {
        self.bias[i].map(|b| &b[h * w..(h + 1) * w])
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

/// `out[r][j] = sum_d a[r][d] * bt[d][j]` for `rows x W`, `bt` being `hd x W` and `a` either
/// `rows x hd` or, when `AT`, stored transposed as `hd x BC` (`a[r][d]` at `d * BC + r`). `R`
/// rows at a time in local accumulators, so the compiler keeps them in registers and each load
/// of `bt` feeds `R` independent FMA chains.
///
/// The transposed form is the fast one: the `R` entries of `a` one step needs are then adjacent,
/// one base register and constant offsets. Row-major, each of the `R` rows needs its own
/// pointer and bounds check per step: the loop ran ~56 instructions per 16 FMAs (AVX-512, f32,
/// `R = 8`) where [`accumulate_tile`] runs ~29, and took 1.8x its time for the same FMA count.
#[inline(always)]
fn block_logits<T: Float, const FMA: bool, const W: usize, const R: usize, const AT: bool>(
    a: &[T],
    bt: &[T],
    hd: usize,
    rows: usize,
    out: &mut [T],
) {
    let mut r = 0;
    while r + R <= rows {
        logits_rows::<T, FMA, W, R, AT>(a, bt, hd, r, out);
        r += R;
    }
    while r < rows {
        logits_rows::<T, FMA, W, 1, AT>(a, bt, hd, r, out);
        r += 1;
    }
}

/// `R` (1, 2, 4 or 8) rows of [`block_logits`]. Separate named accumulators (not an array of
/// rows) so that the compiler keeps them in registers and vectorises over `j`.
#[inline(always)]
fn logits_rows<T: Float, const FMA: bool, const W: usize, const R: usize, const AT: bool>(
    a: &[T],
    bt: &[T],
    hd: usize,
    r: usize,
    out: &mut [T],
) {
    let mut acc0 = [T::ZERO; W];
    let mut acc1 = [T::ZERO; W];
    let mut acc2 = [T::ZERO; W];
    let mut acc3 = [T::ZERO; W];
    let mut acc4 = [T::ZERO; W];
    let mut acc5 = [T::ZERO; W];
    let mut acc6 = [T::ZERO; W];
    let mut acc7 = [T::ZERO; W];
    for d in 0..hd {
        let row: &[T; W] = (&bt[d * W..(d + 1) * W]).try_into().unwrap();
        // One bounds check per step for the `R` entries (the rows past `R` are never used).
        let col: &[T] = if AT {
            &a[d * BC + r..d * BC + r + R]
        } else {
            &[]
        };
        let at = |i: usize| {
            if i >= R {
                T::ZERO
            } else if AT {
                col[i]
            } else {
                a[(r + i) * hd + d]
            }
        };
        let (x0, x1, x2, x3) = (at(0), at(1), at(2), at(3));
        for j in 0..W {
            acc0[j] = madd::<T, FMA>(x0, row[j], acc0[j]);
            if R > 1 {
                acc1[j] = madd::<T, FMA>(x1, row[j], acc1[j]);
            }
            if R > 2 {
                acc2[j] = madd::<T, FMA>(x2, row[j], acc2[j]);
                acc3[j] = madd::<T, FMA>(x3, row[j], acc3[j]);
            }
        }
        if R > 4 {
            let (x4, x5, x6, x7) = (at(4), at(5), at(6), at(7));
            for j in 0..W {
                acc4[j] = madd::<T, FMA>(x4, row[j], acc4[j]);
                acc5[j] = madd::<T, FMA>(x5, row[j], acc5[j]);
                acc6[j] = madd::<T, FMA>(x6, row[j], acc6[j]);
                acc7[j] = madd::<T, FMA>(x7, row[j], acc7[j]);
            }
        }
    }
    let accs = [acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7];
    for (i, acc) in accs.iter().enumerate().take(R) {
        out[(r + i) * W..(r + i + 1) * W].copy_from_slice(acc);
    }
}

/// `out[r][:] += sum_j p[r][j] * b[j][:]` for `rows x w`, where `p[r][j]` sits at `r * ps + j`,
/// or at `j * ps + r` when `PT` (so a transposed `p` costs no copy), and `b` is `cols x w`.
/// `R` rows and [`AW`] output columns at a time in local accumulators: each load of `b` feeds `R`
/// independent FMA chains (the `p` entries are broadcast straight from memory).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_accumulate<T: Float, const FMA: bool, const WIDE: bool, const R: usize, const PT: bool>(
    p: &[T],
    ps: usize,
    b: &[T],
    w: usize,
    rows: usize,
    cols: usize,
    out: &mut [T],
) {
    // Tiles of 2 * AW columns first where the registers hold them (f32 on AVX-512: two vectors
    // per row, 16 accumulators, so each broadcast of `p` feeds two FMAs), then tiles of AW.
    let wide = WIDE && std::mem::size_of::<T>() == 4 && R == 8;
    let full2 = if wide { w / (2 * AW) * (2 * AW) } else { 0 };
    let full = full2 + (w - full2) / AW * AW;
    let mut r = 0;
    while r + R <= rows {
        let mut e0 = 0;
        while e0 < full2 {
            if !(WIDE && accumulate_avx512::<T, PT>(p, ps, b, w, r, e0, cols, out)) {
                accumulate_tile::<T, FMA, R, PT, { 2 * AW }>(p, ps, b, w, r, e0, cols, out);
            }
            e0 += 2 * AW;
        }
        while e0 < full {
            accumulate_tile::<T, FMA, R, PT, AW>(p, ps, b, w, r, e0, cols, out);
            e0 += AW;
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
            let x = if PT { p[j * ps + rr] } else { p[rr * ps + j] };
            let br = &b[j * w + from..(j + 1) * w];
            for (oe, &be) in o.iter_mut().zip(br) {
                *oe = madd::<T, FMA>(x, be, *oe);
            }
        }
    }
}

/// Output columns per accumulator of [`block_accumulate`].
const AW: usize = 16;

/// `R` (4 or 8) rows x `TW` columns of [`block_accumulate`] from column `e0`. Separate named
/// accumulators (not an array of rows) so that the compiler keeps them in registers and
/// vectorises over the columns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_tile<T: Float, const FMA: bool, const R: usize, const PT: bool, const TW: usize>(
    p: &[T],
    ps: usize,
    b: &[T],
    w: usize,
    r: usize,
    e0: usize,
    cols: usize,
    out: &mut [T],
) {
    let load = |i: usize| -> [T; TW] {
        if i < R {
            (&out[(r + i) * w + e0..(r + i) * w + e0 + TW])
                .try_into()
                .unwrap()
        } else {
            [T::ZERO; TW]
        }
    };
    let (mut a0, mut a1, mut a2, mut a3) = (load(0), load(1), load(2), load(3));
    let (mut a4, mut a5, mut a6, mut a7) = (load(4), load(5), load(6), load(7));
    let at = |i: usize, j: usize| {
        if i >= R {
            T::ZERO
        } else if PT {
            p[j * ps + r + i]
        } else {
            p[(r + i) * ps + j]
        }
    };
    for j in 0..cols {
        let br: &[T; TW] = (&b[j * w + e0..j * w + e0 + TW]).try_into().unwrap();
        let (x0, x1, x2, x3) = (at(0, j), at(1, j), at(2, j), at(3, j));
        for e in 0..TW {
            a0[e] = madd::<T, FMA>(x0, br[e], a0[e]);
            a1[e] = madd::<T, FMA>(x1, br[e], a1[e]);
            a2[e] = madd::<T, FMA>(x2, br[e], a2[e]);
            a3[e] = madd::<T, FMA>(x3, br[e], a3[e]);
        }
        if R > 4 {
            let (x4, x5, x6, x7) = (at(4, j), at(5, j), at(6, j), at(7, j));
            for e in 0..TW {
                a4[e] = madd::<T, FMA>(x4, br[e], a4[e]);
                a5[e] = madd::<T, FMA>(x5, br[e], a5[e]);
                a6[e] = madd::<T, FMA>(x6, br[e], a6[e]);
                a7[e] = madd::<T, FMA>(x7, br[e], a7[e]);
            }
        }
    }
    for (i, a) in [a0, a1, a2, a3, a4, a5, a6, a7].iter().enumerate().take(R) {
        out[(r + i) * w + e0..(r + i) * w + e0 + TW].copy_from_slice(a);
    }
}

/// Loads rows `j0..j0+c` of head `h` of sample `n` of a `(N, S, H, w)` view transposed into
/// `w x BC` (zero beyond `c`), plus `bias` per feature where given.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn load_transposed<T: Float, const AVX: bool>(
    src: &[T],
    view: &View,
    n: usize,
    h: usize,
    j0: usize,
    c: usize,
    w: usize,
    bias: Option<&[T]>,
    dst: &mut [T],
) {
    let base = view.at(n, j0, h);
    transpose_rows_to::<T, AVX>(src, base, view.strides[1], c, w, bias, dst, BC);
}

/// `c x w` rows (`c <= BC`) as `w x BC`, zero beyond `c`: the layout [`block_logits`] reads fastest.
#[inline(always)]
fn transpose_block<T: Float, const AVX: bool>(rows: &[T], c: usize, w: usize, dst: &mut [T]) {
    transpose_rows_to::<T, AVX>(rows, 0, w, c, w, None, dst, BC);
}

/// Rows `base + j * rs .. + w` of `src` for `j < c` (`c <= ds`), plus `bias` per column where
/// given, into `dst` as `w` rows `ds` apart, zero from `c` to `ds`. With AVX (`AVX`: the AVX2 and
/// AVX-512 builds) and f32, whole 8 x 8 tiles go through registers ([`transpose8`], the bias
/// added as their rows load); the rest element by element, whose stores the compiler turned into
/// scatters: ~5% of the (16, 512, 256, 8) forward kernel, 20% where one block of queries uses the
/// block; the tiles brought that to 0.4%.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transpose_rows_to<T: Float, const AVX: bool>(
    src: &[T],
    base: usize,
    rs: usize,
    c: usize,
    w: usize,
    bias: Option<&[T]>,
    dst: &mut [T],
    ds: usize,
) {
    assert!(
        c <= ds
            && dst.len() >= w * ds
            && (c == 0 || w == 0 || base + (c - 1) * rs + w <= src.len())
            && bias.is_none_or(|b| b.len() >= w)
    );
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let (mut tc, mut tw) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if AVX && std::mem::size_of::<T>() == 4 {
        (tc, tw) = (c / 8 * 8, w / 8 * 8);
        for j in (0..tc).step_by(8) {
            for d in (0..tw).step_by(8) {
                // SAFETY: `Float` is f32 or f64, so a 4-byte `T` is f32; the tile's rows
                // `base + (j + i) * rs + d .. + 8`, `dst[(d + i) * ds + j .. + 8]` and
                // `bias[d .. d + 8]` are in bounds (asserted above: j + 8 <= c, d + 8 <= w);
                // `AVX` instances run only where AVX2 (or AVX-512) was detected.
                unsafe {
                    transpose8(
                        src.as_ptr().add(base + j * rs + d) as *const f32,
                        rs,
                        bias.map(|b| b.as_ptr().add(d) as *const f32),
                        dst.as_mut_ptr().add(d * ds + j) as *mut f32,
                        ds,
                    )
                };
            }
        }
    }
    for j in 0..c {
        let row = &src[base + j * rs..base + j * rs + w];
        // Columns past the tiles for every row; all columns for rows past the tiles.
        let from = if j < tc { tw } else { 0 };
        match bias {
            Some(b) => {
                for (d, &x) in row.iter().enumerate().skip(from) {
                    dst[d * ds + j] = x + b[d];
                }
            }
            None => {
                for (d, &x) in row.iter().enumerate().skip(from) {
                    dst[d * ds + j] = x;
                }
            }
        }
    }
    if c < ds {
        for d in 0..w {
            dst[d * ds + c..(d + 1) * ds].fill(T::ZERO);
        }
    }
}

/// The 8 x 8 f32 tile at `src` (rows `ss` apart), plus the 8 values at `bias` on each row where
/// given, transposed to `dst` (rows `ds` apart), through registers: 32-bit interleaves, 64-bit
/// shuffles within 128-bit lanes, then a lane exchange.
///
/// # Safety
/// AVX must be present, and the 8 rows of 8 at `src` and at `dst` and the 8 at `bias` must be in
/// bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8(
    src: *const f32,
    ss: usize,
    bias: Option<*const f32>,
    dst: *mut f32,
    ds: usize,
) {
    use std::arch::x86_64::*;
    let mut r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
    if let Some(b) = bias {
        let b = _mm256_loadu_ps(b);
        r.iter_mut().for_each(|x| *x = _mm256_add_ps(*x, b));
    }
    // Rows 2i, 2i+1 interleaved: per 128-bit lane [a0 b0 a1 b1] and [a2 b2 a3 b3].
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // Four rows of one column per lane: u[4g + k] = rows 4g..4g+3 of columns k (low lane) and
    // 4 + k (high lane).
    let mut u = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm256_shuffle_ps::<0x44>(a, c);
        u[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(a, c);
        u[4 * g + 2] = _mm256_shuffle_ps::<0x44>(b, d);
        u[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(b, d);
    }
    for k in 0..4 {
        let (lo, hi) = (u[k], u[4 + k]);
        _mm256_storeu_ps(dst.add(k * ds), _mm256_permute2f128_ps::<0x20>(lo, hi));
        _mm256_storeu_ps(
            dst.add((k + 4) * ds),
            _mm256_permute2f128_ps::<0x31>(lo, hi),
        );
    }
}

/// Loads rows `j0..j0+c` of head `h` of sample `n` as `c x w`, plus `bias` per feature where
/// given, times `scale`.
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
    bias: Option<&[T]>,
    dst: &mut [T],
) {
    if w == 0 {
        return;
    }
    // Whole-row slices (no per-element bounds checks), so that rows of 16 are one vector move.
    for (j, row) in dst.chunks_exact_mut(w).take(c).enumerate() {
        let base = view.at(n, j0 + j, h);
        let src = &src[base..base + w];
        match bias {
            Some(bias) => {
                for ((o, &x), &b) in row.iter_mut().zip(src).zip(bias) {
                    *o = (x + b) * scale;
                }
            }
            None => {
                for (o, &x) in row.iter_mut().zip(src) {
                    *o = x * scale;
                }
            }
        }
    }
}

/// Asks the cache for rows `j0..j0+c` of head `h` of sample `n` (`w` elements each) ahead of
/// their [`load_rows`]. The rows of one head sit `H * w` (or, packed, `3 * H * w`) elements
/// apart, so consecutive rows are in different pages and the hardware prefetcher, which stays
/// within a page, does not follow them: `perf annotate` put ~10% of the forward kernel on the
/// stores of `load_rows` waiting for those loads at (16, 512, 256, 8). Prefetching the next block
/// while the current one is computed hides that latency.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn prefetch_rows<T: Float>(
    src: &[T],
    view: &View,
    n: usize,
    h: usize,
    j0: usize,
    c: usize,
    w: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let bytes = w * std::mem::size_of::<T>();
        for j in 0..c {
            let base = view.at(n, j0 + j, h);
            if base + w > src.len() {
                return;
            }
            let row = src[base..].as_ptr() as *const i8;
            let mut off = 0;
            while off < bytes {
                // SAFETY: a prefetch is a hint that never faults; the address is inside `src`.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        row.add(off),
                    )
                };
                off += LINE;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, view, n, h, j0, c, w);
}

/// [`block_logits`] with as many rows per step as the registers hold: AVX-512 (`WIDE`) has 32
/// registers of 16 lanes, so four rows of a 64-wide block are 16 accumulators (two rows were eight,
/// too few to hide the FMA latency; together with the halving-tree reductions of `row_max` and
/// `exp_shift_sum`, 11% less kernel CPU time on an AVX-512 Xeon), AVX2 has 16 registers of 8 lanes.
#[inline(always)]
fn logits<T: Float, const FMA: bool, const WIDE: bool, const W: usize, const AT: bool>(
    a: &[T],
    bt: &[T],
    hd: usize,
    rows: usize,
    out: &mut [T],
) {
    // Rows x vectors per row = 16 accumulators on AVX-512 where they fit (f32: 8 rows of a
    // 32-wide block, 4 of a 64-wide one). R = 3 is never used: `logits_rows` handles 1, 2, 4, 8.
    if WIDE && logits_avx512::<T, W, AT>(a, bt, hd, rows, out) {
        return;
    }
    let f32_lanes = std::mem::size_of::<T>() == 4;
    match (WIDE, W <= 64) {
        (true, true) if f32_lanes && W <= 32 => {
            block_logits::<T, FMA, W, 8, AT>(a, bt, hd, rows, out)
        }
        (true, true) => block_logits::<T, FMA, W, 4, AT>(a, bt, hd, rows, out),
        (true, false) | (false, true) => block_logits::<T, FMA, W, 2, AT>(a, bt, hd, rows, out),
        (false, false) => block_logits::<T, FMA, W, 1, AT>(a, bt, hd, rows, out),
    }
}

/// Whether `T` is f32: the AVX-512 micro-kernels are f32 only.
#[inline(always)]
fn is_f32<T: Float>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// `s` as f32 when `T` is f32.
#[inline(always)]
fn as_f32<T: Float>(s: &[T]) -> Option<&[f32]> {
    is_f32::<T>()
        // SAFETY: T is f32.
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
}

/// [`as_f32`] of a mutable slice.
#[inline(always)]
fn as_f32_mut<T: Float>(s: &mut [T]) -> Option<&mut [f32]> {
    is_f32::<T>()
        // SAFETY: T is f32.
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
}

/// [`block_logits`] through the AVX-512 micro-kernel where it applies (f32, `a` transposed, 32
/// or 64 queries wide); false where it does not. Only called from the AVX-512 build (`WIDE`).
#[inline(always)]
fn logits_avx512<T: Float, const W: usize, const AT: bool>(
    a: &[T],
    bt: &[T],
    hd: usize,
    rows: usize,
    out: &mut [T],
) -> bool {
    AT && rank_k_avx512::<T, W, false>(a, BC, bt, hd, rows, out)
}

/// `out[i][..] (+)= sum_k a[k * a_stride + i] * p[k][..]` (`+=` when `ACC`) for rows of `B`
/// query lanes: the logits (`a` = K transposed, `p` = a block of queries transposed) and the
/// transposed accumulations `O^T += V^T P^T`, `dq^T += K^T dS^T` (`a` = V or K row-major, `p` =
/// the block's association or its gradient). Through `avx512::rank_k` where it applies (f32,
/// 32 or 64 lanes); false where it does not. Only called from the AVX-512 build (`WIDE`).
#[inline(always)]
fn rank_k_avx512<T: Float, const B: usize, const ACC: bool>(
    a: &[T],
    a_stride: usize,
    p: &[T],
    depth: usize,
    rows: usize,
    out: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(a), Some(p), Some(out)) = (as_f32(a), as_f32(p), as_f32_mut(out)) {
        // SAFETY: only the AVX-512 build calls this (the CPU has AVX-512F).
        match B {
            32 => unsafe { avx512::rank_k::<2, ACC>(a, a_stride, p, depth, rows, out) },
            64 => unsafe { avx512::rank_k::<4, ACC>(a, a_stride, p, depth, rows, out) },
            _ => return false,
        }
        return true;
    }
    let _ = (a, a_stride, p, depth, rows, out);
    false
}

/// Whether a task of `rows` queries keeps its output (or dq) transposed per block of `B`, queries
/// as lanes, so that its accumulation runs on [`rank_k_avx512`] and the rescaling by the running
/// maximum is lane-wise: the AVX-512 f32 build, from half a block of queries on (below, the
/// row-major accumulation does work in proportion to the queries, the transposed one to the
/// whole block: 32x at one query).
#[inline(always)]
fn queries_as_lanes<T: Float, const WIDE: bool, const B: usize>(rows: usize) -> bool {
    WIDE && is_f32::<T>() && 2 * rows >= B
}

/// The first `n` queries of blocks of `B` transposed (`w x B` each, `ot[blk * w * B + e * B + i]`)
/// as row-major rows `out[(blk * B + i) * w + e]`.
#[inline(always)]
fn untranspose_blocks<T: Float, const AVX: bool, const B: usize>(
    ot: &[T],
    w: usize,
    n: usize,
    out: &mut [T],
) {
    for r0 in (0..n).step_by(B) {
        let block = &ot[r0 * w..(r0 + B) * w];
        transpose_rows_to::<T, AVX>(block, 0, B, w, B.min(n - r0), None, &mut out[r0 * w..], w);
    }
}

/// One 8 x 32 tile of [`block_accumulate`] (rows `r..r+8`, columns `e0..e0+32`) through the
/// AVX-512 micro-kernel where it applies (f32); false where it does not. Only called from the
/// AVX-512 build (`WIDE`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_avx512<T: Float, const PT: bool>(
    p: &[T],
    ps: usize,
    b: &[T],
    w: usize,
    r: usize,
    e0: usize,
    cols: usize,
    out: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(p), Some(b), Some(out)) = (as_f32(p), as_f32(b), as_f32_mut(out)) {
        let p = if PT { &p[r..] } else { &p[r * ps..] };
        // SAFETY: only the AVX-512 build calls this (the CPU has AVX-512F).
        unsafe { avx512::accumulate_tile::<PT>(p, ps, &b[e0..], w, cols, &mut out[r * w + e0..]) };
        return true;
    }
    let _ = (p, ps, b, w, r, e0, cols, out);
    false
}

/// [`block_accumulate`] with eight rows per step where AVX-512's 32 registers hold the
/// accumulators, four elsewhere.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate<T: Float, const FMA: bool, const WIDE: bool, const PT: bool>(
    p: &[T],
    ps: usize,
    b: &[T],
    w: usize,
    rows: usize,
    cols: usize,
    out: &mut [T],
) {
    if WIDE {
        block_accumulate::<T, FMA, WIDE, 8, PT>(p, ps, b, w, rows, cols, out)
    } else {
        block_accumulate::<T, FMA, WIDE, 4, PT>(p, ps, b, w, rows, cols, out)
    }
}

/// One task of the forward pass: queries `r0..r0+rows` of (sample `n`, head `h`) against stored
/// patterns `s0..s1`. The stored-pattern blocks are the outer loop, so each block is loaded once
/// per task and reused by every block of `BR` queries.
///
/// The logits are computed transposed, stored patterns as rows and the `BR` queries as lanes
/// (`Z^T = K (beta q)^T`, as the backward pass does): the online softmax's row maxima, rescaling
/// factors and sums of exponentials are then lane-wise vector operations over the block's rows,
/// with no horizontal reduction per query (those were a sixth of the kernel at d = 16), and
/// `P V` reads `Z^T` with swapped strides.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_block<T: Float, const FMA: bool, const WIDE: bool, const B: usize>(
    p: &Params,
    x: &Inputs<T>,
    n: usize,
    h: usize,
    r0: usize,
    rows: usize,
    s0: usize,
    s1: usize,
    with_zero: bool,
    finish: bool,
) -> Partial<T> {
    let g = &p.g;
    let (hd, pd) = (g.hd, g.pd);
    let beta = T::from_f64(p.betas[h]);
    let blocks = rows.div_ceil(B);
    let padded = blocks * B;
    // `beta q`, transposed per block of B queries (`hd x B`), zero past `rows`.
    let mut qt = vec![T::ZERO; padded * hd];
    for rb in (0..rows).step_by(B) {
        let (base, rr) = (x.vq.at(n, r0 + rb, h), B.min(rows - rb));
        let qtb = &mut qt[rb * hd..(rb + B) * hd];
        let bias = x.bias(0, h, hd);
        transpose_rows_to::<T, FMA>(x.q, base, x.vq.strides[1], rr, hd, bias, qtb, B);
        for row in qtb.chunks_exact_mut(B) {
            row[..rr].iter_mut().for_each(|e| *e = *e * beta);
        }
    }
    // K transposed (`hd x BC`): the layout the logits product reads fastest.
    let mut kt = vec![T::ZERO; hd * BC];
    let mut vb = vec![T::ZERO; BC * pd];
    let mut zt = vec![T::ZERO; BC * B];
    let mut o = vec![T::ZERO; rows * pd];
    // The output transposed per block (`pd x B`) where [`queries_as_lanes`] says so.
    let transposed = queries_as_lanes::<T, WIDE, B>(rows);
    let mut ot = vec![T::ZERO; if transposed { blocks * pd * B } else { 0 }];
    // The zero pattern: logit 0, value 0, so it starts the running sum at exp(0 - 0) = 1.
    let (mut m, mut l) = if with_zero {
        (vec![T::ZERO; padded], vec![T::ONE; padded])
    } else {
        (vec![T::NEG_INF; padded], vec![T::ZERO; padded])
    };
    let lazy = T::from_f64(LAZY_MAX);
    let mut j0 = s0;
    while j0 < s1 {
        let c = BC.min(s1 - j0);
        load_transposed::<T, FMA>(x.k, &x.vk, n, h, j0, c, hd, x.bias(1, h, hd), &mut kt);
        load_rows(
            x.v,
            &x.vv,
            n,
            h,
            j0,
            c,
            pd,
            T::ONE,
            x.bias(2, h, pd),
            &mut vb,
        );
        let next = BC.min(s1 - (j0 + c));
        prefetch_rows(x.k, &x.vk, n, h, j0 + c, next, hd);
        prefetch_rows(x.v, &x.vv, n, h, j0 + c, next, pd);
        for blk in 0..blocks {
            let rb = blk * B;
            let rr = B.min(rows - rb);
            logits::<T, FMA, WIDE, B, true>(&kt, &qt[rb * hd..], hd, c, &mut zt);
            if x.mask.is_some() {
                for j in 0..c {
                    for i in 0..rr {
                        zt[j * B + i] += x.mask_at(n, h, r0 + rb + i, j0 + j);
                    }
                }
            }
            let mb: &mut [T; B] = (&mut m[rb..rb + B]).try_into().unwrap();
            let lb: &mut [T; B] = (&mut l[rb..rb + B]).try_into().unwrap();
            let mut mnew = *mb;
            for row in zt.chunks_exact(B).take(c) {
                for (a, &z) in mnew.iter_mut().zip(row) {
                    *a = max(*a, z);
                }
            }
            // The running maximum moves only where the block's exceeds it by more than
            // `LAZY_MAX`: below that, the block's exponentials are taken against the old one (at
            // most e^LAZY_MAX, far from overflow), and the rescaling of the sums and outputs with
            // its scalar exponential is skipped, which after the first blocks is nearly always.
            // The log-sum-exp is `m + ln l` for whichever `m` the sums were taken against, so
            // the results are the same up to rounding. Queries still fully masked (maximum
            // -inf) add nothing: shift 0 makes their exponentials exp(-inf) = 0.
            let mut shift = [T::ZERO; B];
            let mut alpha = [T::ONE; B];
            for i in 0..B {
                if mnew[i] > mb[i] + lazy {
                    alpha[i] = (mb[i] - mnew[i]).exp_fma::<FMA>();
                    mb[i] = mnew[i];
                }
                if mb[i] != T::NEG_INF {
                    shift[i] = mb[i];
                }
            }
            let mut sum = [T::ZERO; B];
            if !(WIDE && exp_shift_sum_avx512(&mut zt, c, &shift, &mut sum)) {
                for row in zt.chunks_exact_mut(B).take(c) {
                    let row: &mut [T; B] = row.try_into().unwrap();
                    for i in 0..B {
                        let e = (row[i] - shift[i]).exp_fma::<FMA>();
                        row[i] = e;
                        sum[i] += e;
                    }
                }
            }
            for i in 0..B {
                lb[i] = lb[i] * alpha[i] + sum[i];
            }
            if transposed {
                let otb = &mut ot[blk * pd * B..(blk + 1) * pd * B];
                if alpha.iter().any(|&a| a != T::ONE) {
                    for row in otb.chunks_exact_mut(B) {
                        let row: &mut [T; B] = row.try_into().unwrap();
                        for i in 0..B {
                            row[i] = row[i] * alpha[i];
                        }
                    }
                }
                rank_k_avx512::<T, B, true>(&vb, pd, &zt, c, pd, otb);
                continue;
            }
            for (i, &a) in alpha.iter().enumerate().take(rr) {
                if a != T::ONE {
                    o[(rb + i) * pd..(rb + i + 1) * pd]
                        .iter_mut()
                        .for_each(|e| *e = *e * a);
                }
            }
            accumulate::<T, FMA, WIDE, true>(&zt, B, &vb, pd, rr, c, &mut o[rb * pd..]);
        }
        j0 += c;
    }
    if transposed {
        untranspose_blocks::<T, FMA, B>(&ot, pd, rows, &mut o);
    }
    m.truncate(rows);
    l.truncate(rows);
    let finished = finish.then(|| finish_rows(&mut o, &m, &mut l, pd));
    Partial { o, m, l, finished }
}

/// Whether a row's log-sum-exp marks it as overflowed: NaN, or `+inf`, the only ways it is
/// neither finite nor `-inf` (a fully masked row).
#[inline(always)]
fn lse_overflowed<T: Float>(lse: T) -> bool {
    lse.to_f64().is_nan() || lse == T::ZERO - T::NEG_INF
}

/// The softmax's last step for a task whose stored patterns were one chunk: every row of `o`
/// divided by its sum `l`, `l` replaced by the log-sum-exp `m + ln l`, fully masked rows (`m`
/// `-inf`) zero with log-sum-exp `-inf`. Returns how many rows are not finite (see
/// [`forward_into`]). Inline, so that it runs in the caller's SIMD build: as a per-row step after
/// the tasks (one dispatched call per row of `pd` values) it was 5% of the (16, 512, 256, 8)
/// forward.
#[inline(always)]
fn finish_rows<T: Float>(o: &mut [T], m: &[T], l: &mut [T], pd: usize) -> usize {
    for (row, (&m, &l)) in o.chunks_exact_mut(pd.max(1)).zip(m.iter().zip(l.iter())) {
        let inv = if m == T::NEG_INF { T::ZERO } else { T::ONE / l };
        for e in row.iter_mut() {
            *e = *e * inv;
        }
    }
    let finite = crate::finite::all_finite_slice(o);
    let mut overflowed = 0;
    for (r, (&m, l)) in m.iter().zip(l.iter_mut()).enumerate() {
        let row = &mut o[r * pd..(r + 1) * pd];
        if m == T::NEG_INF {
            // 0 * inf among the values would leave NaN here.
            row.fill(T::ZERO);
            *l = T::NEG_INF;
            continue;
        }
        let lse = m + l.ln();
        *l = lse;
        if lse_overflowed(lse) || !(finite || crate::finite::all_finite_slice(row)) {
            overflowed += 1;
        }
    }
    overflowed
}

/// The forward's `z = exp(z - shift)`, summed per query, over `rows` rows of a block through the
/// AVX-512 exponential where it applies (f32); false where it does not. Only called from the
/// AVX-512 build (`WIDE`).
#[inline(always)]
fn exp_shift_sum_avx512<T: Float, const B: usize>(
    z: &mut [T],
    rows: usize,
    shift: &[T; B],
    sum: &mut [T; B],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(z), Some(shift), Some(sum)) = (as_f32_mut(z), as_f32(shift), as_f32_mut(sum)) {
        // SAFETY: only the AVX-512 build calls this (the CPU has AVX-512F).
        unsafe {
            avx512::exp_shift_sum::<B>(z, rows, shift.try_into().unwrap(), sum.try_into().unwrap())
        };
        return true;
    }
    let _ = (z, rows, shift, sum);
    false
}

/// The backward's `p = exp(z - lse)`, `dS = p (dp + shift)` over `rows` rows of a block through
/// the AVX-512 exponential where it applies (f32); false where it does not. Only called from
/// the AVX-512 build (`WIDE`).
#[inline(always)]
fn exp_grad_avx512<T: Float, const B: usize>(
    z: &mut [T],
    dp: &mut [T],
    rows: usize,
    lse: &[T; B],
    shift: &[T; B],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(z), Some(dp), Some(lse), Some(shift)) =
        (as_f32_mut(z), as_f32_mut(dp), as_f32(lse), as_f32(shift))
    {
        // SAFETY: only the AVX-512 build calls this (the CPU has AVX-512F).
        unsafe {
            avx512::exp_grad::<B>(
                z,
                dp,
                rows,
                lse.try_into().unwrap(),
                shift.try_into().unwrap(),
            )
        };
        return true;
    }
    let _ = (z, dp, rows, lse, shift);
    false
}

/// Queries per forward task: as many as keep every thread busy, up to 8 blocks, so that each block
/// of stored patterns is loaded once for many queries.
fn rows_per_task(heads: usize, l: usize) -> usize {
    let want = 4 * rayon::current_num_threads();
    let mut bq = 8 * BR;
    while bq > BR && heads * l.div_ceil(bq) < want {
        bq /= 2;
    }
    bq
}

/// The forward pass: `[out (N, L, H, pd) | lse (N, H, L)]` flat, and the number of rows that
/// overflowed (see [`forward_into`]).
pub(crate) fn forward<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
) -> (Vec<T>, usize) {
    let g = p.g;
    let mut flat = vec![T::ZERO; g.n * g.l * g.h * g.pd + g.n * g.h * g.l];
    let overflowed = forward_into(p, data, views, mask, [None; 3], &mut flat);
    (flat, overflowed)
}

/// [`forward`] into `flat` (its length exactly `N*L*H*pd + N*H*L`), every element of which it
/// writes, so `flat` may hold anything before (a reused scratch buffer). Returns how many query
/// rows are not finite: a logit `beta q k` that is NaN or `+inf` (inputs too large for the
/// dtype, or not finite) makes its row's log-sum-exp NaN, and NaN or inf among the values makes
/// its output so; both cost a comparison per row or output element, no extra pass. `bias` is
/// added to q, k and v as they are read.
pub(crate) fn forward_into<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
    bias: Bias<T>,
    flat: &mut [T],
) -> usize {
    let g = p.g;
    let x = Inputs::new(data, views, mask, bias);
    let bq = rows_per_task(g.n * g.h, g.l);
    let qblocks = g.l.div_ceil(bq);
    let tasks = g.n * g.h * qblocks;
    let chunks = chunks_for(tasks, g.s);
    let per_chunk = g.s.div_ceil(chunks).div_ceil(BC) * BC;
    let no = g.n * g.l * g.h * g.pd;
    assert_eq!(flat.len(), no + g.n * g.h * g.l, "retrieval forward buffer");
    let ptr = SharedMut(flat.as_mut_ptr());
    (0..tasks)
        .into_par_iter()
        .map(|t| {
            let (nh, qb) = (t / qblocks, t % qblocks);
            let (n, h) = (nh / g.h, nh % g.h);
            let r0 = qb * bq;
            let rows = bq.min(g.l - r0);
            // One chunk unless the tasks alone cannot keep the threads busy; the zero pattern
            // belongs to the first chunk only.
            let parts: Vec<Partial<T>> = (0..chunks)
                .into_par_iter()
                .filter_map(|c| {
                    let s0 = c * per_chunk;
                    (s0 < g.s || c == 0).then(|| {
                        let s1 = (s0 + per_chunk).min(g.s);
                        let zero = c == 0 && p.zero_association;
                        let finish = chunks == 1;
                        if rows <= BR_NARROW {
                            forward_block_narrow_dispatch(
                                p, &x, n, h, r0, rows, s0, s1, zero, finish,
                            )
                        } else {
                            forward_block_dispatch(p, &x, n, h, r0, rows, s0, s1, zero, finish)
                        }
                    })
                })
                .collect();
            if let [Partial {
                o,
                l: lse,
                finished: Some(overflowed),
                ..
            }] = parts.as_slice()
            {
                for r in 0..rows {
                    let out_base = ((n * g.l + r0 + r) * g.h + h) * g.pd;
                    // SAFETY: (n, h, r0 + r) is written by this task only; its `pd` outputs
                    // are contiguous.
                    unsafe {
                        std::slice::from_raw_parts_mut(ptr.at(out_base), g.pd)
                            .copy_from_slice(&o[r * g.pd..(r + 1) * g.pd]);
                        *ptr.at(no + (n * g.h + h) * g.l + r0 + r) = lse[r];
                    }
                }
                return *overflowed;
            }
            // One merge buffer per task (not one allocation per query row).
            let mut acc = vec![T::ZERO; g.pd];
            let mut overflowed = 0;
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
                    // One chunk (the usual case): its sums are already the merged ones.
                    let (l, src) = match parts.as_slice() {
                        [one] => (one.l[r], &one.o[r * g.pd..(r + 1) * g.pd]),
                        _ => {
                            let mut l = T::ZERO;
                            acc.fill(T::ZERO);
                            for pt in &parts {
                                if pt.m[r] == T::NEG_INF {
                                    continue;
                                }
                                let a = (pt.m[r] - m).exp();
                                l += pt.l[r] * a;
                                let o = &pt.o[r * g.pd..(r + 1) * g.pd];
                                for (e, &x) in acc.iter_mut().zip(o) {
                                    *e += x * a;
                                }
                            }
                            (l, &acc[..])
                        }
                    };
                    let inv = T::ONE / l;
                    // SAFETY: as above; the row's `pd` outputs are contiguous.
                    let out = std::slice::from_raw_parts_mut(ptr.at(out_base), g.pd);
                    let finite = wide(
                        #[inline(always)]
                        || scale_row_finite(src, inv, out),
                    );
                    let lse = m + l.ln();
                    if !finite || lse_overflowed(lse) {
                        overflowed += 1;
                    }
                    *ptr.at(lse_at) = lse;
                }
            }
            overflowed
        })
        .sum()
}

/// `out = src * inv`; whether every result is finite (non-finite values, 0 * inf or inf - inf,
/// show up here). Both loops vectorise; a per-element `is_finite` branch on the write kept it
/// scalar: 7% of the (16, 512, 256, 8) forward.
#[inline(always)]
fn scale_row_finite<T: Float>(src: &[T], inv: T, out: &mut [T]) -> bool {
    for (o, &x) in out.iter_mut().zip(src) {
        *o = x * inv;
    }
    crate::finite::all_finite_slice(out)
}

/// What the backward pass reads besides the inputs: the forward's output `(N, L, H, pd)` and
/// log-sum-exp `(N, H, L)`, and their gradients (the lse gradient is zero when absent).
pub(crate) struct Saved<'a, T> {
    pub out: &'a [T],
    pub lse: &'a [T],
    pub d_out: &'a [T],
    pub d_lse: Option<&'a [T]>,
}

/// One (sample, head)'s queries and output gradients, copied once per backward task in the two
/// layouts the block products read: row-major (`rows x d`) and transposed per block of `B`
/// queries (`d x B`), zero-padded to whole blocks.
struct QueryBlocks<T> {
    /// `beta q`, row-major.
    q: Vec<T>,
    /// `beta q`, transposed per block.
    qt: Vec<T>,
    /// Output gradient, row-major.
    d_o: Vec<T>,
    /// Output gradient, transposed per block.
    d_ot: Vec<T>,
    /// The log-sum-exp per query; `+inf` for fully masked and padding rows, so that their
    /// recomputed association `exp(z - lse)` is exactly 0.
    lse: Vec<T>,
    /// `dlse - D` per query (0 on padding rows): `dS = P (dP + shift)`.
    shift: Vec<T>,
}

impl<T: Float> QueryBlocks<T> {
    fn load<const AVX: bool, const B: usize>(
        p: &Params,
        x: &Inputs<T>,
        sv: &Saved<T>,
        delta: &[T],
        n: usize,
        h: usize,
    ) -> Self {
        let g = &p.g;
        let (hd, pd, l) = (g.hd, g.pd, g.l);
        let padded = l.div_ceil(B) * B;
        let beta = T::from_f64(p.betas[h]);
        let mut qb = Self {
            q: vec![T::ZERO; padded * hd],
            qt: vec![T::ZERO; padded * hd],
            d_o: vec![T::ZERO; padded * pd],
            d_ot: vec![T::ZERO; padded * pd],
            lse: vec![T::ZERO; padded],
            shift: vec![T::ZERO; padded],
        };
        load_rows(
            x.q,
            &x.vq,
            n,
            h,
            0,
            l,
            hd,
            beta,
            x.bias(0, h, hd),
            &mut qb.q,
        );
        for r in 0..l {
            let base = ((n * l + r) * g.h + h) * pd;
            qb.d_o[r * pd..(r + 1) * pd].copy_from_slice(&sv.d_out[base..base + pd]);
        }
        for rb in (0..padded).step_by(B) {
            let qt = &mut qb.qt[rb * hd..(rb + B) * hd];
            transpose_rows_to::<T, AVX>(&qb.q, rb * hd, hd, B, hd, None, qt, B);
            let d_ot = &mut qb.d_ot[rb * pd..(rb + B) * pd];
            transpose_rows_to::<T, AVX>(&qb.d_o, rb * pd, pd, B, pd, None, d_ot, B);
        }
        for r in 0..padded {
            let li = (n * g.h + h) * l + r;
            let lse = if r < l { sv.lse[li] } else { T::NEG_INF };
            if lse == T::NEG_INF {
                qb.lse[r] = T::ZERO - T::NEG_INF;
            } else {
                qb.lse[r] = lse;
                let d_lse = sv.d_lse.map_or(T::ZERO, |d| d[li]);
                qb.shift[r] = d_lse - delta[li];
            }
        }
        qb
    }
}

/// Gradients of one (sample, head) over stored patterns `s0..s1`: writes dk and dv rows of that
/// range into the flat output and returns this range's contribution to dq (`L x hd`).
///
/// Everything is computed transposed (stored patterns as rows): `S^T = K (beta q)^T` and
/// `dP^T = V dO^T`, so that `dV = P^T dO` and `dK = dS^T (beta q)` read their left factor
/// row-major, and `dq = beta dS K` reads the same buffer with swapped strides: no transposes
/// in the loop.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_chunk<T: Float, const FMA: bool, const WIDE: bool, const B: usize>(
    p: &Params,
    x: &Inputs<T>,
    sv: &Saved<T>,
    delta: &[T],
    n: usize,
    h: usize,
    s0: usize,
    s1: usize,
    flat: SharedMut<T>,
    out: [View; 3],
) -> Vec<T> {
    let g = &p.g;
    let (hd, pd, l) = (g.hd, g.pd, g.l);
    let beta = T::from_f64(p.betas[h]);
    let qs = QueryBlocks::load::<FMA, B>(p, x, sv, delta, n, h);
    let mut dq = vec![T::ZERO; qs.lse.len() * hd];
    // dq transposed per block (`hd x B`) where [`queries_as_lanes`] says so.
    let transposed = queries_as_lanes::<T, WIDE, B>(l);
    let mut dqt = vec![T::ZERO; if transposed { dq.len() } else { 0 }];
    let mut kb = vec![T::ZERO; BC * hd];
    let mut kt = vec![T::ZERO; hd * BC];
    let mut vt = vec![T::ZERO; pd * BC];
    let mut st = vec![T::ZERO; BC * B];
    let mut dpt = vec![T::ZERO; BC * B];
    let mut dk = vec![T::ZERO; BC * hd];
    let mut dv = vec![T::ZERO; BC * pd];
    let mut j0 = s0;
    while j0 < s1 {
        let c = BC.min(s1 - j0);
        load_rows(
            x.k,
            &x.vk,
            n,
            h,
            j0,
            c,
            hd,
            T::ONE,
            x.bias(1, h, hd),
            &mut kb,
        );
        transpose_block::<T, FMA>(&kb, c, hd, &mut kt);
        load_transposed::<T, FMA>(x.v, &x.vv, n, h, j0, c, pd, x.bias(2, h, pd), &mut vt);
        let next = BC.min(s1 - (j0 + c));
        prefetch_rows(x.k, &x.vk, n, h, j0 + c, next, hd);
        prefetch_rows(x.v, &x.vv, n, h, j0 + c, next, pd);
        dk.fill(T::ZERO);
        dv.fill(T::ZERO);
        let mut r0 = 0;
        while r0 < l {
            let rows = B.min(l - r0);
            let (qt, d_ot) = (
                &qs.qt[r0 * hd..(r0 + B) * hd],
                &qs.d_ot[r0 * pd..(r0 + B) * pd],
            );
            logits::<T, FMA, WIDE, B, true>(&kt, qt, hd, c, &mut st);
            logits::<T, FMA, WIDE, B, true>(&vt, d_ot, pd, c, &mut dpt);
            let lse: &[T; B] = (&qs.lse[r0..r0 + B]).try_into().unwrap();
            let shift: &[T; B] = (&qs.shift[r0..r0 + B]).try_into().unwrap();
            if x.mask.is_some() {
                for j in 0..c {
                    for r in 0..rows {
                        st[j * B + r] += x.mask_at(n, h, r0 + r, j0 + j);
                    }
                }
            }
            if !(WIDE && exp_grad_avx512::<T, B>(&mut st, &mut dpt, c, lse, shift)) {
                for j in 0..c {
                    let row: &mut [T; B] = (&mut st[j * B..(j + 1) * B]).try_into().unwrap();
                    // One loop: as two, the compiler left the second (`dS`) scalar, 32 scalar
                    // multiply-adds per row where two vectors do.
                    let drow: &mut [T; B] = (&mut dpt[j * B..(j + 1) * B]).try_into().unwrap();
                    for r in 0..B {
                        let e = (row[r] - lse[r]).exp_fma::<FMA>();
                        row[r] = e;
                        drow[r] = e * (drow[r] + shift[r]);
                    }
                }
            }
            let q_rows = &qs.q[r0 * hd..];
            let do_rows = &qs.d_o[r0 * pd..];
            accumulate::<T, FMA, WIDE, false>(&st, B, do_rows, pd, c, rows, &mut dv);
            accumulate::<T, FMA, WIDE, false>(&dpt, B, q_rows, hd, c, rows, &mut dk);
            let dq_done = transposed && {
                let block = &mut dqt[r0 * hd..(r0 + B) * hd];
                rank_k_avx512::<T, B, true>(&kb, hd, &dpt, c, hd, block)
            };
            if !dq_done {
                accumulate::<T, FMA, WIDE, true>(&dpt, B, &kb, hd, rows, c, &mut dq[r0 * hd..]);
            }
            r0 += rows;
        }
        for j in 0..c {
            let kbase = out[1].at(n, j0 + j, h);
            let vbase = out[2].at(n, j0 + j, h);
            // SAFETY: stored pattern j0 + j of (n, h) belongs to this task only, and the
            // three output views do not overlap.
            unsafe {
                for d in 0..hd {
                    *flat.at(kbase + d) = dk[j * hd + d];
                }
                for e in 0..pd {
                    *flat.at(vbase + e) = dv[j * pd + e];
                }
            }
        }
        j0 += c;
    }
    if transposed {
        untranspose_blocks::<T, FMA, B>(&dqt, hd, l, &mut dq);
    }
    dq.truncate(l * hd);
    dq.iter_mut().for_each(|e| *e = *e * beta);
    dq
}

/// Writes dq, dk and dv through `out` (their views in a flat buffer of `len` elements, zero
/// elsewhere).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
    sv: &Saved<T>,
    out: [View; 3],
    len: usize,
) -> Vec<T> {
    let mut flat = vec![T::ZERO; len];
    backward_into(p, data, views, mask, [None; 3], sv, out, &mut flat);
    flat
}

/// [`backward`] into `flat`: writes every element of the three gradient views (and nothing
/// else), so their elements may hold anything before. `bias` is added to q, k and v as they
/// are read (the forward's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_into<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
    bias: Bias<T>,
    sv: &Saved<T>,
    out: [View; 3],
    flat: &mut [T],
) {
    let g = p.g;
    let x = Inputs::new(data, views, mask, bias);
    // D_i = dO_i . O_i, per (n, h, l), laid out like the lse.
    let mut delta = vec![T::ZERO; g.n * g.h * g.l];
    delta.par_iter_mut().enumerate().for_each(|(i, d)| {
        let (nh, r) = (i / g.l, i % g.l);
        let (n, h) = (nh / g.h, nh % g.h);
        let base = ((n * g.l + r) * g.h + h) * g.pd;
        let mut s = T::ZERO;
        for e in 0..g.pd {
            s += sv.out[base + e] * sv.d_out[base + e];
        }
        *d = s;
    });
    let chunks = chunks_for(g.n * g.h, g.s);
    let per_chunk = g.s.div_ceil(chunks).div_ceil(BC) * BC;
    let ptr = SharedMut(flat.as_mut_ptr());
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
            let dq = if g.l <= BR_NARROW {
                backward_chunk_narrow_dispatch(p, &x, sv, &delta, n, h, s0, s1, ptr, out)
            } else {
                backward_chunk_dispatch(p, &x, sv, &delta, n, h, s0, s1, ptr, out)
            };
            Some((nh, dq))
        })
        .collect();
    // The dq parts of one (n, h) from different chunks add up (the first one is stored, so the
    // buffer's old contents never leak in); after the parallel part, so plain indexing. Parts
    // arrive in task order, the chunks of one (n, h) together.
    let mut written = vec![false; g.n * g.h];
    for (nh, dq) in parts {
        let (n, h) = (nh / g.h, nh % g.h);
        let first = !std::mem::replace(&mut written[nh], true);
        for r in 0..g.l {
            let b = out[0].at(n, r, h);
            let (dst, src) = (&mut flat[b..b + g.hd], &dq[r * g.hd..(r + 1) * g.hd]);
            if first {
                dst.copy_from_slice(src);
            } else {
                dst.iter_mut().zip(src).for_each(|(a, &x)| *a += x);
            }
        }
    }
    // No stored patterns: no chunk ran, and dq is zero.
    for (nh, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
        let (n, h) = (nh / g.h, nh % g.h);
        for r in 0..g.l {
            let b = out[0].at(n, r, h);
            flat[b..b + g.hd].fill(T::ZERO);
        }
    }
}

/// `sum_{r, j} (p_a[r][j] - p_b[r][j])^2` for one (sample, head): the squared Frobenius norm of
/// the change between the associations of two query states `a` and `b` against the same stored
/// patterns, each recomputed block by block from its log-sum-exp (including the zero pattern's
/// column when `zero_association`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn change_task<T: Float, const FMA: bool, const WIDE: bool>(
    p: &Params,
    x: &Inputs<T>,
    b: &[T],
    vb: &View,
    lse_a: &[T],
    lse_b: &[T],
    n: usize,
    h: usize,
) -> f64 {
    let g = &p.g;
    let (hd, l) = (g.hd, g.l);
    let beta = T::from_f64(p.betas[h]);
    let mut qa = vec![T::ZERO; l * hd];
    let mut qb = vec![T::ZERO; l * hd];
    load_rows(x.q, &x.vq, n, h, 0, l, hd, beta, x.bias(0, h, hd), &mut qa);
    load_rows(b, vb, n, h, 0, l, hd, beta, None, &mut qb);
    // +inf for fully masked rows, so that exp(z - lse) is exactly 0 there.
    let shift = |lse: &[T], r: usize| {
        let v = lse[(n * g.h + h) * l + r];
        if v == T::NEG_INF {
            T::ZERO - T::NEG_INF
        } else {
            v
        }
    };
    let (sa, sb): (Vec<T>, Vec<T>) = (0..l).map(|r| (shift(lse_a, r), shift(lse_b, r))).unzip();
    let mut total = 0f64;
    if p.zero_association {
        for r in 0..l {
            let d = (T::ZERO - sa[r]).exp() - (T::ZERO - sb[r]).exp();
            total += (d * d).to_f64();
        }
    }
    let mut kt = vec![T::ZERO; hd * BC];
    let mut za = vec![T::ZERO; BR * BC];
    let mut zb = vec![T::ZERO; BR * BC];
    // Independent lanes: the compiler may not reorder one running float sum.
    let mut lanes = [T::ZERO; 16];
    let mut j0 = 0;
    while j0 < g.s {
        let c = BC.min(g.s - j0);
        load_transposed::<T, FMA>(x.k, &x.vk, n, h, j0, c, hd, x.bias(1, h, hd), &mut kt);
        let mut r0 = 0;
        while r0 < l {
            let rows = BR.min(l - r0);
            logits::<T, FMA, WIDE, BC, false>(&qa[r0 * hd..], &kt, hd, rows, &mut za);
            logits::<T, FMA, WIDE, BC, false>(&qb[r0 * hd..], &kt, hd, rows, &mut zb);
            for r in 0..rows {
                let ra: &mut [T; BC] = (&mut za[r * BC..(r + 1) * BC]).try_into().unwrap();
                let rb: &[T; BC] = (&zb[r * BC..(r + 1) * BC]).try_into().unwrap();
                let (shift_a, shift_b) = (sa[r0 + r], sb[r0 + r]);
                if x.mask.is_some() {
                    for j in 0..c {
                        let m = x.mask_at(n, h, r0 + r, j0 + j);
                        ra[j] = (ra[j] + m - shift_a).exp_fma::<FMA>()
                            - (rb[j] + m - shift_b).exp_fma::<FMA>();
                    }
                } else {
                    // Whole block, vectorised; the columns past c are zeroed below.
                    for j in 0..BC {
                        ra[j] =
                            (ra[j] - shift_a).exp_fma::<FMA>() - (rb[j] - shift_b).exp_fma::<FMA>();
                    }
                }
                ra[c..].fill(T::ZERO);
                for ch in ra.chunks_exact(16) {
                    for (a, &d) in lanes.iter_mut().zip(ch) {
                        *a = madd::<T, FMA>(d, d, *a);
                    }
                }
            }
            r0 += rows;
        }
        j0 += c;
    }
    total + lanes.iter().map(|a| a.to_f64()).sum::<f64>()
}

/// Per (sample, head) Frobenius norm of the change between the associations of the query states
/// `data[0]` (the "new" state, with `lse_a`) and `b` (with `lse_b`) against the keys `data[1]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn association_change<T: Float>(
    p: &Params,
    data: [&[T]; 3],
    views: [View; 3],
    mask: Option<(&[T], View)>,
    lse_a: &[T],
    lse_b: &[T],
) -> Vec<f64> {
    let g = p.g;
    let x = Inputs::new(data, views, mask, [None; 3]);
    let (b, vb) = (data[2], views[2]);
    (0..g.n * g.h)
        .into_par_iter()
        .map(|nh| {
            let (n, h) = (nh / g.h, nh % g.h);
            change_dispatch(p, &x, b, &vb, lse_a, lse_b, n, h).sqrt()
        })
        .collect()
}

/// The same kernel code compiled for AVX-512 and for AVX2+FMA (picked at run time; the default
/// x86-64 target only allows SSE2 and no FMA) and generic for everything else; `inner::<C>`
/// passes const arguments after the instruction-set ones (the query block width).
macro_rules! dispatch {
    ($name:ident, $inner:ident $(::<$($c:ident),+>)?, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Float>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<T: Float>($($arg: $ty),*) -> $ret {
                    $inner::<T, true, true $($(, $c)+)?>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: Float>($($arg: $ty),*) -> $ret {
                    $inner::<T, true, false $($(, $c)+)?>($($arg),*)
                }
                match isa() {
                    // SAFETY: the features were detected on this CPU.
                    Isa::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                    Isa::Avx2Fma => return unsafe { avx2::<T>($($arg),*) },
                    Isa::Generic => {}
                }
            }
            $inner::<T, false, false $($(, $c)+)?>($($arg),*)
        }
    };
}

dispatch!(forward_block_dispatch, forward_block::<BR>, (
    p: &Params, x: &Inputs<T>, n: usize, h: usize, r0: usize, rows: usize, s0: usize, s1: usize,
    with_zero: bool, finish: bool
) -> Partial<T>);

// Tasks of BR_NARROW queries or fewer run blocks of that many (a few queries against many stored
// patterns: blocks of 64 computed up to 64 lanes for one query, 1.8x the time of 32 at L = 1-8,
// S = 200,000; the backward padded a pooling layer's one query 64-fold).
dispatch!(forward_block_narrow_dispatch, forward_block::<BR_NARROW>, (
    p: &Params, x: &Inputs<T>, n: usize, h: usize, r0: usize, rows: usize, s0: usize, s1: usize,
    with_zero: bool, finish: bool
) -> Partial<T>);

dispatch!(backward_chunk_narrow_dispatch, backward_chunk::<BR_NARROW>, (
    p: &Params, x: &Inputs<T>, sv: &Saved<T>, delta: &[T], n: usize, h: usize,
    s0: usize, s1: usize, flat: SharedMut<T>, out: [View; 3]
) -> Vec<T>);

dispatch!(backward_chunk_dispatch, backward_chunk::<BR>, (
    p: &Params, x: &Inputs<T>, sv: &Saved<T>, delta: &[T], n: usize, h: usize,
    s0: usize, s1: usize, flat: SharedMut<T>, out: [View; 3]
) -> Vec<T>);

dispatch!(change_dispatch, change_task, (
    p: &Params, x: &Inputs<T>, b: &[T], vb: &View, lse_a: &[T], lse_b: &[T], n: usize, h: usize
) -> f64);

#[cfg(test)]
mod row_tests {
    use super::{scale_row_finite, transpose_rows_to, BC};

    /// The tiled (AVX, where present) and element-wise transposes against the definition: whole
    /// and partial 8 x 8 tiles, a row stride wider than the rows, an offset, with and without a
    /// bias per column, f32 and f64.
    #[test]
    fn transpose_rows_matches_the_definition() {
        fn check<T: super::Float + std::fmt::Debug>(wide: bool) {
            let avx = crate::simd::available_isas().contains(&2);
            for (c, w) in [
                (64, 32),
                (64, 64),
                (17, 33),
                (16, 16),
                (5, 70),
                (64, 8),
                (0, 16),
                (33, 0),
            ] {
                let (base, rs) = (3, w + 7);
                let src: Vec<T> = (0..base + c * rs + 1)
                    .map(|i| T::from_f64(i as f64 * 0.5 - 7.0))
                    .collect();
                let b: Vec<T> = (0..w).map(|d| T::from_f64(d as f64 * 0.25 + 1.0)).collect();
                for bias in [None, Some(&b[..])] {
                    let mut dst = vec![T::from_f64(99.0); w.max(1) * BC];
                    if wide && avx {
                        transpose_rows_to::<T, true>(&src, base, rs, c, w, bias, &mut dst, BC);
                    } else {
                        transpose_rows_to::<T, false>(&src, base, rs, c, w, bias, &mut dst, BC);
                    }
                    for d in 0..w {
                        for j in 0..BC {
                            let want = if j < c {
                                src[base + j * rs + d] + bias.map_or(T::ZERO, |b| b[d])
                            } else {
                                T::ZERO
                            };
                            let at = format!("c {c} w {w} d {d} j {j} wide {wide}");
                            assert_eq!(dst[d * BC + j], want, "{at} bias {}", bias.is_some());
                        }
                    }
                }
            }
        }
        for wide in [false, true] {
            check::<f32>(wide);
            check::<f64>(wide);
        }
    }

    /// Every length around the 16 lanes, a non-finite result in the lanes and in the tail.
    #[test]
    fn scale_row_finite_scales_and_finds_non_finite_results() {
        for n in [0usize, 1, 15, 16, 17, 40] {
            let src: Vec<f32> = (0..n).map(|i| i as f32 - 3.0).collect();
            let mut out = vec![0f32; n];
            assert!(scale_row_finite(&src, 0.5, &mut out));
            let want: Vec<f32> = src.iter().map(|x| x * 0.5).collect();
            assert_eq!(out, want);
            for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                for at in [0, n / 2, n.saturating_sub(1)]
                    .into_iter()
                    .filter(|_| n > 0)
                {
                    let mut s = src.clone();
                    s[at] = bad;
                    assert!(!scale_row_finite(&s, 0.5, &mut out), "n {n} at {at} {bad}");
                }
            }
        }
        // Finite inputs whose product overflows.
        assert!(!scale_row_finite(&[f64::MAX], 2.0, &mut [0.0]));
    }
}
