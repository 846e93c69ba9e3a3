//! Dense products and column sums on host slices, shared by the fused CPU ops: the `gemm` crate
//! reads any strides, so transposed factors are read in place.

use candle_core::WithDType;
use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only `rows x cols` matrix in a slice: element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major with row stride `ld` (`ld >= cols`).
    pub(crate) fn row_major(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose, same data.
    pub(crate) fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// Tiny products are not worth waking the thread pool.
pub(crate) fn parallelism(work: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && work >= 1 << 15 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `dst = a b` (or `dst += a b` when `accumulate`), `dst` row-major `a.rows x b.cols` with row
/// stride `ld`; large products use the rayon pool.
pub(crate) fn gemm_into<T: WithDType>(
    dst: &mut [T],
    ld: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
) {
    let work = a.rows * a.cols * b.cols;
    gemm_with(dst, ld, a, b, accumulate, parallelism(work));
}

/// [`gemm_into`] on the calling thread only: for the small products of a kernel that already
/// runs one rayon task per (sample, head), where splitting each product again costs more than it
/// gains.
pub(crate) fn gemm_serial<T: WithDType>(
    dst: &mut [T],
    ld: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
) {
    gemm_with(dst, ld, a, b, accumulate, Parallelism::None);
}

/// [`gemm_serial`] for the small products of per-task kernels (tens of rows, inner sizes of
/// 32-128): in f32 on AVX-512 straight from the operands through register tiles
/// ([`crate::microkernel`]), a right factor with strided columns copied row-major first; else
/// [`gemm_serial`]. The gemm crate packs both factors on every call, which at these sizes took
/// as long as a third of the products themselves (the Energy Transformer's batch-8 training
/// step: packing 15% of all samples, its micro-kernel 40%).
pub(crate) fn gemm_small<T: WithDType>(
    dst: &mut [T],
    ld: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == candle_core::DType::F32 && has_avx512() {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        assert_eq!(k, b.rows, "gemm_small: inner sizes");
        assert!(
            a.in_bounds() && b.in_bounds(),
            "gemm_small: factor out of bounds"
        );
        assert!(
            m == 0 || n == 0 || (m - 1) * ld + n <= dst.len(),
            "gemm_small: destination too small"
        );
        // SAFETY: T is f32 (its dtype says so), so the slices reinterpret as they are.
        let f = |s: &[T]| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) };
        let (ad, bd) = (f(a.data), f(b.data));
        let copied: Vec<f32>;
        let (bd, b_stride) = if b.cs == 1 || n <= 1 {
            (bd, b.rs)
        } else if k * n > SMALL_COPY {
            // A large strided factor: its copy would cost more than the gemm crate's packing
            // (callers pass the transposes of their weights, made once per call).
            return gemm_serial(dst, ld, a, b, accumulate);
        } else {
            // Column by column: each a contiguous run of `b`'s storage when it is a transpose.
            let mut c = vec![0f32; k * n];
            for j in 0..n {
                for p in 0..k {
                    c[p * n + j] = bd[p * b.rs + j * b.cs];
                }
            }
            copied = c;
            (&copied[..], n)
        };
        // SAFETY: as above; AVX-512F was detected; `product` checks the bounds.
        unsafe {
            let out = std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len());
            crate::microkernel::product(
                out,
                ld,
                ad,
                [a.cs, a.rs],
                bd,
                b_stride,
                (m, n, k),
                accumulate,
            );
        }
        return;
    }
    gemm_serial(dst, ld, a, b, accumulate)
}

/// The most elements of a strided right factor [`gemm_small`] copies row-major per product (a
/// head's `k^T` at the Energy Transformer's sizes is 4096).
#[cfg(target_arch = "x86_64")]
const SMALL_COPY: usize = 1 << 14;

/// `src` (`rows x cols`, row-major) transposed: `cols x rows`, row-major. For the weights that
/// per-task products read transposed, made once per call instead of per product.
pub(crate) fn transposed<T: WithDType>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    assert!(src.len() >= rows * cols, "transposed: source too small");
    let mut out = vec![T::zero(); rows * cols];
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let (mut ti, mut tj) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == candle_core::DType::F32 && has_avx() {
        // Whole 8 x 8 tiles through registers.
        (ti, tj) = (rows / 8 * 8, cols / 8 * 8);
        for i in (0..ti).step_by(8) {
            for j in (0..tj).step_by(8) {
                // SAFETY: T is f32; the tile's rows `i..i+8` of columns `j..j+8` and its
                // transpose's lie inside `src` and `out` (i + 8 <= rows, j + 8 <= cols); AVX
                // was detected.
                unsafe {
                    crate::microkernel::transpose8(
                        src.as_ptr().add(i * cols + j) as *const f32,
                        cols,
                        out.as_mut_ptr().add(j * rows + i) as *mut f32,
                        rows,
                    )
                }
            }
        }
    }
    for i in 0..rows {
        // Columns past the tiles for every row; all columns for rows past the tiles.
        let from = if i < ti { tj } else { 0 };
        for j in from..cols {
            out[j * rows + i] = src[i * cols + j];
        }
    }
    out
}

/// Whether the CPU has AVX, detected once.
#[cfg(target_arch = "x86_64")]
fn has_avx() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::is_x86_feature_detected!("avx"))
}

/// Whether the CPU has AVX-512F and FMA, detected once.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    })
}

fn gemm_with<T: WithDType>(
    dst: &mut [T],
    ld: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm_into: inner sizes");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm_into: factor out of bounds"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * ld + n <= dst.len(),
        "gemm_into: destination too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the three matrices lie inside their slices (checked above) and `dst` is borrowed
    // mutably, so it overlaps neither factor.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// Column sums of a row-major `rows x cols` matrix: blocks of rows summed in parallel, then the
/// block sums added in order (so the result does not depend on the thread count's timing).
pub(crate) fn column_sums<T: WithDType>(g: &[T], cols: usize) -> Vec<T> {
    let mut acc = vec![T::zero(); cols];
    if cols == 0 {
        return acc;
    }
    let rows = g.len() / cols;
    let block = rows.div_ceil(4 * rayon::current_num_threads()).max(64);
    let parts: Vec<Vec<T>> = g
        .par_chunks(block * cols)
        .map(|c| {
            let mut part = vec![T::zero(); cols];
            for row in c.chunks_exact(cols) {
                for (a, &v) in part.iter_mut().zip(row) {
                    *a += v;
                }
            }
            part
        })
        .collect();
    for p in parts {
        for (a, v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn transposes_match_their_definition() {
        for (rows, cols) in [(1, 1), (8, 8), (16, 24), (13, 21), (64, 3), (5, 40)] {
            let src = values(rows * cols, 4);
            let t = transposed(&src, rows, cols);
            let t64 = transposed(
                &src.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                rows,
                cols,
            );
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        t[j * rows + i],
                        src[i * cols + j],
                        "({rows}, {cols}) ({i}, {j})"
                    );
                    assert_eq!(t64[j * rows + i], src[i * cols + j] as f64);
                }
            }
        }
    }

    /// Every column tile width and remainder, every row tile and remainder, both operands in
    /// both layouts, `=` and `+=`: the small products equal their definition (and the gemm
    /// crate's, which `gemm_small` falls back to without AVX-512).
    #[test]
    fn small_products_match_their_definition() {
        for (m, k, n) in [
            (1, 1, 1),
            (13, 7, 16),
            (25, 33, 64),
            (64, 64, 64),
            (7, 0, 20),
        ]
        .into_iter()
        .chain([(19, 5, 115), (6, 64, 48), (12, 3, 33)])
        {
            for (at, bt, acc) in [
                (false, false, false),
                (true, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                let ad = values(m * k, 1);
                let bd = values(k * n, 2);
                let a = if at {
                    Mat::row_major(&ad, k, m, m).t()
                } else {
                    Mat::row_major(&ad, m, k, k)
                };
                let b = if bt {
                    Mat::row_major(&bd, n, k, k).t()
                } else {
                    Mat::row_major(&bd, k, n, n)
                };
                let ld = n + 3;
                let start = values(m * ld, 3);
                let mut got = start.clone();
                gemm_small(&mut got, ld, a, b, acc);
                let mut reference = start.clone();
                gemm_serial(&mut reference, ld, a, b, acc);
                for i in 0..m {
                    for j in 0..ld {
                        let want = if j < n {
                            let dot: f64 = (0..k)
                                .map(|p| {
                                    a.data[i * a.rs + p * a.cs] as f64
                                        * b.data[p * b.rs + j * b.cs] as f64
                                })
                                .sum();
                            dot + if acc { start[i * ld + j] as f64 } else { 0.0 }
                        } else {
                            start[i * ld + j] as f64
                        };
                        let (g, r) = (got[i * ld + j] as f64, reference[i * ld + j] as f64);
                        let case = format!("({m}, {k}, {n}) at={at} bt={bt} acc={acc} ({i}, {j})");
                        assert!((g - want).abs() < 1e-5, "{case}: {g} vs {want}");
                        assert!((g - r).abs() < 1e-5, "{case}: {g} vs gemm {r}");
                    }
                }
            }
        }
    }
}
