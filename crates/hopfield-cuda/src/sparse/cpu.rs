//! The CPU kernel: rows partitioned over rayon tasks, each output row accumulated in place from
//! the gathered rows of `x` it depends on (one pass over W, one gather of x per entry, one write
//! of y), with the fused step's `(1 - eta deg_i) x_i` folded in while the row is in cache.

use super::CsrMatrix;
use candle_core::WithDType;
use rayon::prelude::*;

/// Output elements per rayon task: enough work to amortise the task's scheduling cost while
/// leaving tasks for both cores on small graphs.
const ELEMS_PER_TASK: usize = 16 * 1024;

/// Entries ahead whose x row is prefetched.
const PREFETCH: usize = 6;

/// Hints every cache line of `row` into cache (a no-op off x86-64).
#[inline(always)]
fn prefetch_row<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(row);
        let base = row.as_ptr() as *const i8;
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetch never faults, and `off < bytes` stays inside `row`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(base.add(off))
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// `W x` (step `None`) or `(1 - eta deg) ⊙ x + eta W x` for `x` (N, m) row-major. Per row the
/// sum runs over the stored entries in order from zero and the step is `x * keep + acc * eta`:
/// the same operations, in the same order, as the composed form on the CPU.
pub(crate) fn product<T: WithDType>(
    a: &CsrMatrix,
    vals: &[T],
    x: &[T],
    m: usize,
    step: Option<(&[T], T)>,
) -> Vec<T> {
    let n = a.n();
    let mut out = vec![T::zero(); n * m];
    if m == 0 {
        return out;
    }
    let rows_per_task = (ELEMS_PER_TASK / m).max(1);
    let (rp, ci) = (a.row_ptr(), a.col_idx());
    out.par_chunks_mut(m * rows_per_task)
        .enumerate()
        .for_each(|(t, chunk)| {
            let first = t * rows_per_task;
            let rows = chunk.len() / m;
            let span = rp[first]..rp[first + rows];
            rows_kernel(
                &rp[first..=first + rows],
                &ci[span.clone()],
                &vals[span],
                x,
                m,
                step.map(|(d, e)| (&d[first..first + rows], e)),
                &x[first * m..(first + rows) * m],
                chunk,
            );
        });
    out
}

/// A block of rows: `rp` their row pointers (absolute offsets), `ci`/`v` their entries, `xi`
/// their own rows of `x` (read by the step), `out` their output rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_kernel<T: WithDType>(
    rp: &[usize],
    ci: &[u32],
    v: &[T],
    x: &[T],
    m: usize,
    step: Option<(&[T], T)>,
    xi: &[T],
    out: &mut [T],
) {
    let base = rp[0];
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        for p in rp[r] - base..rp[r + 1] - base {
            // The gathered rows are scattered over x: request the row PREFETCH entries ahead so
            // its page walk and cache misses overlap this row's arithmetic (latency, not
            // bandwidth, bounds a random gather).
            if let Some(&c) = ci.get(p + PREFETCH) {
                prefetch_row(&x[c as usize * m..][..m]);
            }
            let w = v[p];
            let xr = &x[ci[p] as usize * m..][..m];
            for (a, &b) in o.iter_mut().zip(xr) {
                *a += w * b;
            }
        }
        if let Some((deg, eta)) = step {
            let keep = T::one() - deg[r] * eta;
            for (a, &b) in o.iter_mut().zip(&xi[r * m..(r + 1) * m]) {
                *a = b * keep + *a * eta;
            }
        }
    }
}
