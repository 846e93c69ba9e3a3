//! AVX-512 f32 micro-kernels for the retrieval's hot loops: the products with the queries as
//! lanes ([`rank_k`]: the logits, and the transposed output and `dq` accumulations), the
//! 8 x 32 accumulation tile of `dK` and `dV` ([`accumulate_tile`]), and the shifted
//! exponentials of a block ([`exp_shift_sum`], [`exp_grad`]).
//!
//! The portable kernels in `cpu.rs` compile to the same FMAs; these exist because their shape and
//! instruction mix decide the rate on AVX-512: each broadcast of the left factor takes a slot on
//! the FMA ports, so tiles that feed four FMAs per broadcast (six rows by four vectors) run at
//! ~85% of the FMA rate where two per broadcast ran at ~65%, and one pointer per operand with the
//! bounds checked once per tile keeps the loop at ~29 instructions per 24 FMAs. The exponential
//! uses `vrndscaleps` and `vscalefps` (~15 vector operations against ~23 for the portable form).
//! Same semantics as the portable loops, tested against their definitions below and against the
//! composed retrieval in `tests.rs`.

use std::arch::x86_64::*;

/// Rows of an [`accumulate_tile`].
pub(super) const R: usize = 8;
/// Columns of an [`accumulate_tile`]: two 16-lane vectors.
pub(super) const W: usize = 32;

/// `out[i][..] (+)= sum_k a[k * a_stride + i] * b[k][..]` for `i < rows`, `k < depth`, rows of
/// `16 V` lanes in `b` and `out` (`+=` when `ACC`, `=` otherwise): the retrieval's products with
/// the queries as lanes. Logits `S^T = K (beta q)^T` (`a` = K transposed, `b` = the block's
/// queries transposed), and, with `ACC`, `O^T += V^T P^T` and `dq^T += K^T dS^T` (`a` = the
/// block of V or K, row-major, `b` = the block's association or its gradient).
///
/// Tiles of six rows by four vectors: 24 accumulators, each broadcast of `a` feeding four FMAs
/// (gemm's own micro-kernel shape). The broadcasts compete with the FMAs for a port, so eight
/// rows by two vectors (two FMAs per broadcast) ran at ~65% of the FMA rate where six by four
/// runs at ~85% (an Ice Lake Xeon, in isolation: 94-119 against 138-146 GFLOP/s per core).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(unused_assignments)] // the last `rows!` advances `r` past its final use
pub(super) unsafe fn rank_k<const V: usize, const ACC: bool>(
    a: &[f32],
    a_stride: usize,
    b: &[f32],
    depth: usize,
    rows: usize,
    out: &mut [f32],
) {
    let lanes = 16 * V;
    if depth == 0 || rows == 0 {
        if !ACC {
            out[..rows * lanes].fill(0.0);
        }
        return;
    }
    assert!(
        a.len() >= (depth - 1) * a_stride + rows
            && b.len() >= depth * lanes
            && out.len() >= rows * lanes
    );
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let mut r = 0;
    // One tile of `$tr` rows at row `r`, then past it.
    macro_rules! rows {
        ($tr:literal) => {{
            let (pa, po) = (pa.add(r), po.add(r * lanes));
            tile::<$tr, V, ACC>(pa, [a_stride, 1], pb, lanes, depth, po, lanes);
            r += $tr;
        }};
    }
    // Two vectors wide, twelve rows fill the same 24 accumulators (in isolation 111-131 GFLOP/s
    // per core against 94-118 for eight rows).
    while V == 2 && r + 12 <= rows {
        rows!(12);
    }
    while r + 6 <= rows {
        rows!(6);
    }
    if r + 4 <= rows {
        rows!(4);
    }
    if r + 2 <= rows {
        rows!(2);
    }
    if r < rows {
        rows!(1);
    }
}

/// `TR` rows of `16 V` lanes: `out[i][..] (+)= sum_k a(k, i) * b[k][..]`, where `a(k, i)` is
/// at `pa + k * a_step[0] + i * a_step[1]`, and rows of `b` and `out` are `b_stride` and
/// `out_stride` apart. The one tile of [`rank_k`] (`a_step = [a_stride, 1]`, which the compiler
/// folds in once this is inlined) and [`accumulate_tile`]; the caller checked the bounds.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const TR: usize, const V: usize, const ACC: bool>(
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

/// `out[i * w ..][0..32] += sum_j p(i, j) * b[j * w ..][0..32]` for `i < 8`, `j < cols`, where
/// `p(i, j)` is `p[j * ps + i]` when `PT` and `p[i * ps + j]` otherwise (the slices start at
/// the tile's first row and column).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn accumulate_tile<const PT: bool>(
    p: &[f32],
    ps: usize,
    b: &[f32],
    w: usize,
    cols: usize,
    out: &mut [f32],
) {
    if cols == 0 {
        return;
    }
    let p_len = if PT {
        (cols - 1) * ps + R
    } else {
        (R - 1) * ps + cols
    };
    assert!(p.len() >= p_len && b.len() >= (cols - 1) * w + W && out.len() >= (R - 1) * w + W);
    // The step between consecutive `j` in `p`, and between consecutive rows `i`.
    let a_step = if PT { [ps, 1] } else { [1, ps] };
    tile::<R, 2, true>(p.as_ptr(), a_step, b.as_ptr(), w, cols, out.as_mut_ptr(), w);
}

/// `exp(x)` of 16 lanes with the portable `exp_f32_with`'s semantics: Cody-Waite reduction
/// `x = n ln2 + r` with the round done by `vrndscaleps`, Cephes' degree-6 polynomial (the same
/// constants), `2^n` applied by `vscalefps`; inputs below ln(f32::MIN_POSITIVE), `-inf`
/// included, give exactly 0 (no subnormals, which would slow the FMAs that read them), `inf` past
/// ln(f32::MAX) (where the portable form gives `inf` from ~88.38 on, one power of two early), NaN stays
/// NaN (`max`/`min` return their second operand when either is NaN, and the zeroing mask is
/// "not less than, unordered").
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: __m512) -> __m512 {
    const LO: f32 = -87.336_54;
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(LO));
    let x = _mm512_max_ps(_mm512_set1_ps(LO), x);
    // Past ln(f32::MAX) ~ 88.72 the result overflows to inf (89: n = 128 and y > 1).
    let x = _mm512_min_ps(_mm512_set1_ps(89.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let r2 = _mm512_mul_ps(r, r);
    let mut y = _mm512_set1_ps(1.987_569_1e-4);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.398_199_9e-3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.333_452e-3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.166_579_6e-2));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.666_666_5e-1));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, r2, r), _mm512_set1_ps(1.0));
    _mm512_maskz_scalef_ps(keep, y, n)
}

/// For each of the `rows` rows of `L` lanes in `z`: `z = exp(z - shift)` lane-wise, summed into
/// `sum` (the forward's online-softmax block). `L` is a multiple of 16.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_shift_sum<const L: usize>(
    z: &mut [f32],
    rows: usize,
    shift: &[f32; L],
    sum: &mut [f32; L],
) {
    assert!(z.len() >= rows * L && L.is_multiple_of(16));
    for v in (0..L).step_by(16) {
        let s = _mm512_loadu_ps(shift.as_ptr().add(v));
        let mut acc = _mm512_loadu_ps(sum.as_ptr().add(v));
        let mut pz = z.as_mut_ptr().add(v);
        for _ in 0..rows {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(pz), s));
            _mm512_storeu_ps(pz, e);
            acc = _mm512_add_ps(acc, e);
            pz = pz.add(L);
        }
        _mm512_storeu_ps(sum.as_mut_ptr().add(v), acc);
    }
}

/// For each of the `rows` rows of `L` lanes: `p = exp(z - lse)` into `z` and
/// `dS = p (dp + shift)` into `dp` (the backward's recomputed association and its logit
/// gradient). `L` is a multiple of 16.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_grad<const L: usize>(
    z: &mut [f32],
    dp: &mut [f32],
    rows: usize,
    lse: &[f32; L],
    shift: &[f32; L],
) {
    assert!(z.len() >= rows * L && dp.len() >= rows * L && L.is_multiple_of(16));
    for v in (0..L).step_by(16) {
        let l = _mm512_loadu_ps(lse.as_ptr().add(v));
        let s = _mm512_loadu_ps(shift.as_ptr().add(v));
        let (mut pz, mut pd) = (z.as_mut_ptr().add(v), dp.as_mut_ptr().add(v));
        for _ in 0..rows {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(pz), l));
            _mm512_storeu_ps(pz, e);
            let d = _mm512_add_ps(_mm512_loadu_ps(pd), s);
            _mm512_storeu_ps(pd, _mm512_mul_ps(e, d));
            pz = pz.add(L);
            pd = pd.add(L);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::exp_f32_with;

    fn has_avx512() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(2_246_822_519);
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn exp16_matches_the_portable_exp_including_the_edges() {
        if !has_avx512() {
            return;
        }
        let mut xs = vec![
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -87.336_54,
            -87.336_55,
            -87.4,
            -103.0,
            88.7,
            88.8,
            0.0,
            -0.0,
            1e-30,
        ];
        xs.extend(values(4096, 7).iter().map(|v| v * 90.0));
        xs.resize(xs.len().div_ceil(16) * 16, 0.5);
        for chunk in xs.chunks(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                // Near the top the portable form overflows one power of two early.
                let want = if x > 88.0 {
                    (x as f64).exp() as f32
                } else {
                    exp_f32_with::<true>(x)
                };
                let ok = if want.is_nan() {
                    g.is_nan()
                } else {
                    g == want || ((g - want) / want).abs() <= 4.0 * f32::EPSILON
                };
                assert!(ok, "exp({x}) = {g}, portable {want}");
            }
        }
    }

    #[test]
    fn tiles_match_their_definitions() {
        if !has_avx512() {
            return;
        }
        // Every remainder of the six-row tiles (rows 1..=13), both widths, `=` and `+=`.
        fn check_rank_k<const V: usize, const ACC: bool>(rows: usize) {
            let (depth, stride, lanes) = (13, 21, 16 * V);
            let a = values((depth - 1) * stride + rows, 1);
            let b = values(depth * lanes, 2);
            let start = values(rows * lanes, 3);
            let mut out = start.clone();
            // SAFETY: AVX-512F checked by the caller.
            unsafe { rank_k::<V, ACC>(&a, stride, &b, depth, rows, &mut out) };
            for i in 0..rows {
                for j in 0..lanes {
                    let dot: f64 = (0..depth)
                        .map(|k| a[k * stride + i] as f64 * b[k * lanes + j] as f64)
                        .sum();
                    let want = dot
                        + if ACC {
                            start[i * lanes + j] as f64
                        } else {
                            0.0
                        };
                    let got = out[i * lanes + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "rank_k V={V} ({i}, {j}) of {rows}"
                    );
                }
            }
        }
        for rows in (1..=13).chain([24, 31]) {
            check_rank_k::<2, false>(rows);
            check_rank_k::<4, false>(rows);
            check_rank_k::<4, true>(rows);
        }
        let (cols, ps, w) = (11, 17, 40);
        let b = values(cols * w, 3);
        for pt in [false, true] {
            let p = values(
                if pt {
                    (cols - 1) * ps + R
                } else {
                    (R - 1) * ps + cols
                },
                4,
            );
            let start = values(R * w, 5);
            let mut out = start.clone();
            // SAFETY: AVX-512F checked above.
            unsafe {
                if pt {
                    accumulate_tile::<true>(&p, ps, &b, w, cols, &mut out)
                } else {
                    accumulate_tile::<false>(&p, ps, &b, w, cols, &mut out)
                }
            };
            for i in 0..R {
                for e in 0..w {
                    let want = if e < W {
                        start[i * w + e] as f64
                            + (0..cols)
                                .map(|j| {
                                    let pij = if pt { p[j * ps + i] } else { p[i * ps + j] };
                                    pij as f64 * b[j * w + e] as f64
                                })
                                .sum::<f64>()
                    } else {
                        start[i * w + e] as f64
                    };
                    let got = out[i * w + e] as f64;
                    assert!((got - want).abs() < 1e-5, "accumulate pt={pt} ({i}, {e})");
                }
            }
        }
    }

    #[test]
    fn block_exponentials_match_the_portable_loops() {
        if !has_avx512() {
            return;
        }
        let rows = 5;
        let mut z: Vec<f32> = values(rows * W, 6).iter().map(|v| v * 30.0).collect();
        z[3] = f32::NEG_INFINITY;
        let shift: [f32; W] = std::array::from_fn(|i| if i == 7 { 0.0 } else { 20.0 });
        let lse: [f32; W] = std::array::from_fn(|i| if i == 9 { f32::INFINITY } else { 25.0 });
        let dp = values(rows * W, 8);
        let (mut z1, mut sum) = (z.clone(), [1f32; W]);
        let (mut z2, mut dp2) = (z.clone(), dp.clone());
        // SAFETY: AVX-512F checked above.
        unsafe {
            exp_shift_sum(&mut z1, rows, &shift, &mut sum);
            exp_grad(&mut z2, &mut dp2, rows, &lse, &shift);
        }
        let close = |g: f32, w: f32| g == w || ((g - w) / w).abs() <= 4.0 * f32::EPSILON;
        for i in 0..W {
            let mut s = 1f32;
            for r in 0..rows {
                let e = exp_f32_with::<true>(z[r * W + i] - shift[i]);
                s += e;
                assert!(close(z1[r * W + i], e), "exp_shift_sum ({r}, {i})");
                let p = exp_f32_with::<true>(z[r * W + i] - lse[i]);
                assert!(close(z2[r * W + i], p), "exp_grad p ({r}, {i})");
                let ds = p * (dp[r * W + i] + shift[i]);
                assert!(close(dp2[r * W + i], ds), "exp_grad dS ({r}, {i})");
            }
            assert!(((sum[i] - s) / s).abs() < 1e-5, "sum {i}");
        }
    }
}
