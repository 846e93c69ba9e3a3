//! The CPU kernel: rows partitioned over rayon tasks, each output row summed in registers, 32
//! columns at a time, from the gathered rows of `x` it depends on (one pass over W, one gather of
//! x per entry, one write of y), with the fused step's `(1 - eta deg_i) x_i` applied to the row
//! while it is still in L1.

use super::CsrMatrix;
use candle_core::WithDType;

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
pub(crate) fn product<T: WithDType + Default>(
    a: &CsrMatrix,
    vals: &[T],
    x: &[T],
    m: usize,
    step: Option<(&[T], T)>,
) -> Vec<T> {
    let n = a.n();
    if m == 0 {
        return Vec::new();
    }
    let rows_per_task = crate::rows::rows_per_task(m);
    let (rp, ci) = (a.row_ptr(), a.col_idx());
    // Each task sets its own output rows (`par_vec`) right before writing them, instead of the
    // caller clearing the whole (N, m) output serially first.
    crate::rows::par_vec(n * m, m * rows_per_task, |t, chunk| {
        let first = t * rows_per_task;
        let rows = chunk.len() / m;
        let span = rp[first]..rp[first + rows];
        crate::simd::wide(|| {
            rows_kernel(
                &rp[first..=first + rows],
                &ci[span.clone()],
                &vals[span],
                x,
                m,
                step.map(|(d, e)| (&d[first..first + rows], e)),
                &x[first * m..(first + rows) * m],
                chunk,
            )
        });
    })
}

/// Output columns accumulated in registers at a time: 32 f32 are four AVX2 registers, 32 f64
/// eight, so a slab's sum stays in registers across the row's entries and is stored once,
/// instead of loading and storing the output row once per entry (which took most of the row
/// loop's samples once the gathers hit cache).
const SLAB: usize = 32;

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
        let entries = rp[r] - base..rp[r + 1] - base;
        let full = m - m % SLAB;
        for c0 in (0..full).step_by(SLAB) {
            let mut acc = [T::zero(); SLAB];
            gather_sum(&mut acc, entries.clone(), ci, v, x, m, c0);
            o[c0..c0 + SLAB].copy_from_slice(&acc);
        }
        if full < m {
            let mut acc = [T::zero(); SLAB];
            let acc = &mut acc[..m - full];
            gather_sum(acc, entries, ci, v, x, m, full);
            o[full..].copy_from_slice(acc);
        }
        // The step over the whole row while it is in L1, as one loop over slices (applied per
        // slab to the register sums, the compiler unrolled it into scalar code).
        if let Some((deg, eta)) = step {
            let keep = T::one() - deg[r] * eta;
            for (y, &b) in o.iter_mut().zip(&xi[r * m..(r + 1) * m]) {
                *y = b * keep + *y * eta;
            }
        }
    }
}

/// `acc[j] += v[p] x[ci[p], c0 + j]` over the entries `ps` in order. Called with a whole
/// `[T; SLAB]`, its length is a constant and the sums stay in registers.
#[inline(always)]
fn gather_sum<T: WithDType>(
    acc: &mut [T],
    ps: std::ops::Range<usize>,
    ci: &[u32],
    v: &[T],
    x: &[T],
    m: usize,
    c0: usize,
) {
    for p in ps {
        // The gathered rows are scattered over x: on the first slab, request the whole row
        // PREFETCH entries ahead so its page walk and cache misses overlap this row's arithmetic
        // (latency, not bandwidth, bounds a random gather); later slabs find it in cache.
        if c0 == 0 {
            if let Some(&c) = ci.get(p + PREFETCH) {
                prefetch_row(&x[c as usize * m..][..m]);
            }
        }
        let wp = v[p];
        let xr = &x[ci[p] as usize * m + c0..][..acc.len()];
        for (a, &b) in acc.iter_mut().zip(xr) {
            *a += wp * b;
        }
    }
}
