//! Register tiles: the AVX-512 f32 micro-kernel under the retrieval's block products
//! (`retrieval::avx512`) and under [`crate::matmul::gemm_small`], the small dense products of
//! the per-task kernels (the Energy Transformer's per-head attention).
//!
//! One tile holds `TR` rows of `16 V` output lanes in registers and runs `TR` broadcasts of the
//! left factor and `V` loads of the right one per step of the inner dimension. The broadcasts
//! compete with the FMAs for a port, so tiles that feed four FMAs per broadcast (six rows by four
//! vectors, gemm's own micro-kernel shape) run at ~85% of the FMA rate where two per broadcast
//! (eight rows by two vectors) ran at ~65% (an Ice Lake Xeon, in isolation: 138-146 against
//! 94-119 GFLOP/s per core). The tiles read both factors where they lie, with any strides for
//! the left one: no packing, which is what small products need (the gemm crate packs both
//! factors on every call). Also the AVX 8 x 8 transpose ([`transpose8`]) that the retrieval's
//! block loads and [`crate::matmul::transposed`] run on.

use std::arch::x86_64::*;

/// `TR` rows of `16 V` lanes: `out[i][..] (+)= sum_k a(k, i) * b[k][..]`, where `a(k, i)` is
/// at `pa + k * a_step[0] + i * a_step[1]`, and rows of `b` and `out` are `b_stride` and
/// `out_stride` apart (`+=` when `ACC`, `=` otherwise; `out` is not read then). The one register
/// tile of every product here; the caller checked the bounds.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<const TR: usize, const V: usize, const ACC: bool>(
    mut pa: *const f32,
    a_step: [usize; 2],
    mut pb: *const f32,
    b_stride: usize,
    depth: usize,
    po: *mut f32,
    out_stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; TR];
    if ACC {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(po.add(i * out_stride + 16 * v));
            }
        }
    }
    for _ in 0..depth {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(pb.add(16 * v));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*pa.add(i * a_step[1]));
            for (v, y) in row.iter_mut().enumerate() {
                *y = _mm512_fmadd_ps(x, bv[v], *y);
            }
        }
        pa = pa.add(a_step[0]);
        pb = pb.add(b_stride);
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            _mm512_storeu_ps(po.add(i * out_stride + 16 * v), *x);
        }
    }
}

/// `rows` rows of one column tile of `16 V` lanes, [`tile`] by [`tile`]: twelve rows at a time
/// when two vectors wide (the same 24 accumulators as six by four; in isolation 111-131 GFLOP/s
/// per core against 94-118 for eight rows), else six, then the remainder by four, two and one.
/// `a(k, i)` is at `pa + k * a_step[0] + i * a_step[1]`; the caller checked the bounds.
///
/// # Safety
/// The CPU has AVX-512F; `rows x depth` of `a`, `depth` rows of `16 V` lanes of `b` and `rows`
/// rows of `16 V` lanes of `out` are in bounds.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, unused_assignments)]
pub(crate) unsafe fn rows_of_tiles<const V: usize, const ACC: bool>(
    pa: *const f32,
    a_step: [usize; 2],
    pb: *const f32,
    b_stride: usize,
    depth: usize,
    po: *mut f32,
    out_stride: usize,
    rows: usize,
) {
    let mut r = 0;
    macro_rules! run {
        ($tr:literal) => {{
            tile::<$tr, V, ACC>(
                pa.add(r * a_step[1]),
                a_step,
                pb,
                b_stride,
                depth,
                po.add(r * out_stride),
                out_stride,
            );
            r += $tr;
        }};
    }
    while V <= 2 && r + 12 <= rows {
        run!(12);
    }
    while r + 6 <= rows {
        run!(6);
    }
    if r + 4 <= rows {
        run!(4);
    }
    if r + 2 <= rows {
        run!(2);
    }
    if r < rows {
        run!(1);
    }
}

/// `out (+)= a b` for row-major `out` (`m x n`, row stride `ld`), `a(i, k)` at
/// `a[i * a_step[1] + k * a_step[0]]` and row-major `b` (`depth x n`, row stride `b_stride`):
/// column tiles of 64, 32 and 16 lanes, the last `n % 16` columns by plain dot products.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    out: &mut [f32],
    ld: usize,
    a: &[f32],
    a_step: [usize; 2],
    b: &[f32],
    b_stride: usize,
    (m, n, depth): (usize, usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The length a `rows x cols` operand with these strides needs.
    let len = |rows: usize, rs: usize, cols: usize, cs: usize| match rows.min(cols) {
        0 => 0,
        _ => (rows - 1) * rs + (cols - 1) * cs + 1,
    };
    assert!(
        out.len() >= (m - 1) * ld + n
            && a.len() >= len(m, a_step[1], depth, a_step[0])
            && b.len() >= len(depth, b_stride, n, 1),
        "microkernel::product: operand out of bounds"
    );
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let mut j = 0;
    macro_rules! columns {
        ($v:literal) => {{
            if accumulate {
                rows_of_tiles::<$v, true>(pa, a_step, pb.add(j), b_stride, depth, po.add(j), ld, m);
            } else {
                rows_of_tiles::<$v, false>(
                    pa,
                    a_step,
                    pb.add(j),
                    b_stride,
                    depth,
                    po.add(j),
                    ld,
                    m,
                );
            }
            j += 16 * $v;
        }};
    }
    while j + 64 <= n {
        columns!(4);
    }
    if j + 32 <= n {
        columns!(2);
    }
    if j + 16 <= n {
        columns!(1);
    }
    for i in 0..m {
        for jj in j..n {
            let mut s = if accumulate { out[i * ld + jj] } else { 0.0 };
            for k in 0..depth {
                s += a[i * a_step[1] + k * a_step[0]] * b[k * b_stride + jj];
            }
            out[i * ld + jj] = s;
        }
    }
}

/// The 8 x 8 f32 tile at `src` (rows `ss` apart) transposed to `dst` (rows `ds` apart), through
/// registers: 32-bit interleaves, 64-bit shuffles within 128-bit lanes, then a lane exchange.
///
/// # Safety
/// AVX must be present, and the 8 rows of 8 at `src` and at `dst` must be in bounds.
#[inline]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
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
