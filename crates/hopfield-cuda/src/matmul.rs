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
