//! The CPU kernel: rows partitioned over rayon tasks, each output row summed in registers from
//! the gathered rows of `x` it depends on (one pass over W, one gather of x per entry, one write
//! of y), with the fused step's `(1 - eta deg_i) x_i` applied to the row while it is still in
//! L1. The portable kernel here sums 32 columns at a time; on AVX-512 CPUs f32 and f64 run the
//! wider build in `avx512.rs` (the same operations in the same order: bitwise the same results,
//! tested below).

use super::CsrMatrix;
use crate::rows::write_uninit as write;
use crate::simd::{isa, Isa};
use candle_core::WithDType;
use std::any::TypeId;
use std::mem::MaybeUninit;

/// Entries ahead whose x row is prefetched on a graph whose neighbours lie anywhere in x:
/// further ahead, prefetches of scattered rows fill the core's fill buffers and stall it (8 KiB
/// of 128-byte rows ahead: B = 32 random 6.1-6.3 -> 6.7-8.8 ms).
const PREFETCH_SCATTERED: usize = 6;

/// How far ahead, in bytes of rows, a gathered row is prefetched on a graph whose neighbours
/// are near each other: six 256-byte rows were too few (a 10^6 x 64 f32 product in locality
/// order 69-82 ms, 24-48 rows ahead 51-61 ms).
const PREFETCH_BYTES: usize = 8 << 10;

/// Entries ahead whose x row is prefetched, for `a`'s rows of `row_bytes`: a graph whose
/// neighbours are on average a tenth of it apart or more gathers as if at random.
fn prefetch_ahead(a: &CsrMatrix, row_bytes: usize) -> usize {
    if a.mean_distance() * 10.0 >= a.n() as f64 {
        PREFETCH_SCATTERED
    } else {
        (PREFETCH_BYTES / row_bytes.max(1)).clamp(PREFETCH_SCATTERED, 64)
    }
}

/// Hints every cache line of `row` into cache (a no-op off x86-64).
#[inline(always)]
pub(super) fn prefetch_row<T>(row: &[T]) {
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
    assert!(x.len() == n * m && vals.len() == a.nnz() && step.is_none_or(|(d, _)| d.len() == n));
    if m == 0 {
        return Vec::new();
    }
    let rows_per_task = crate::rows::rows_per_task(m);
    let (rp, ci) = (a.row_ptr(), a.col_idx());
    let avx512 = isa() == Isa::Avx512;
    let ahead = prefetch_ahead(a, m * std::mem::size_of::<T>());
    // Each task writes every element of its output rows once, with no zeroing pass first: at
    // 100 MB that pass took a fifth of the samples (each line written twice, read in between).
    // SAFETY: `rows_kernel` and the AVX-512 kernels write every element of their rows.
    unsafe {
        crate::rows::par_vec_uninit(n * m, m * rows_per_task, |t, chunk| {
            let first = t * rows_per_task;
            let rows = chunk.len() / m;
            let span = rp[first]..rp[first + rows];
            let block = Block {
                rp: &rp[first..=first + rows],
                ci: &ci[span.clone()],
                v: &vals[span],
                x,
                m,
                step: step.map(|(d, e)| (&d[first..first + rows], e)),
                xi: &x[first * m..(first + rows) * m],
                ahead,
            };
            if avx512 && wide_rows(block, chunk) {
                return;
            }
            crate::simd::wide(|| rows_kernel(block, chunk));
        })
    }
}

/// One task's rows and what they read: `rp` their row pointers (absolute offsets, one more
/// than rows), `ci`/`v` their entries, `x` the whole (N, m) operand, `step` the rows' degrees
/// and eta, `xi` the rows' own rows of `x` (read by the step).
pub(super) struct Block<'a, T> {
    pub rp: &'a [usize],
    pub ci: &'a [u32],
    pub v: &'a [T],
    pub x: &'a [T],
    pub m: usize,
    pub step: Option<(&'a [T], T)>,
    pub xi: &'a [T],
    /// Entries ahead whose x row is prefetched.
    pub ahead: usize,
}

impl<T: Copy> Clone for Block<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Copy> Copy for Block<'_, T> {}

impl<'a, T: Copy + 'static> Block<'a, T> {
    /// The same block as `Block<U>` when `T` is `U`.
    fn cast<U: Copy + 'static>(self) -> Option<Block<'a, U>> {
        Some(Block {
            rp: self.rp,
            ci: self.ci,
            v: cast(self.v)?,
            x: cast(self.x)?,
            m: self.m,
            step: match self.step {
                Some((d, e)) => Some((cast(d)?, cast(&[e])?[0])),
                None => None,
            },
            xi: cast(self.xi)?,
            ahead: self.ahead,
        })
    }
}

/// `slice` as `&[U]` when `T` is `U`.
fn cast<T: 'static, U: 'static>(slice: &[T]) -> Option<&[U]> {
    // SAFETY: T and U are the same type.
    (TypeId::of::<T>() == TypeId::of::<U>())
        .then(|| unsafe { std::slice::from_raw_parts(slice.as_ptr() as *const U, slice.len()) })
}

/// The rows through the AVX-512 kernel for f32 and f64 (false, nothing written, for other
/// types). The caller has checked that the CPU has AVX-512F.
fn wide_rows<T: WithDType>(block: Block<'_, T>, out: &mut [MaybeUninit<T>]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! run {
            ($t:ty, $kernel:path) => {
                if let Some(block) = block.cast::<$t>() {
                    // SAFETY: T is $t; the columns are below N (a `CsrMatrix` invariant) and
                    // `product` checked that x is (N, m); the caller checked for AVX-512F.
                    unsafe {
                        let out = std::slice::from_raw_parts_mut(
                            out.as_mut_ptr() as *mut MaybeUninit<$t>,
                            out.len(),
                        );
                        $kernel(block, out);
                    }
                    return true;
                }
            };
        }
        run!(f32, super::avx512::f32s::rows);
        run!(f64, super::avx512::f64s::rows);
    }
    let _ = (block, out);
    false
}

/// Output columns accumulated in registers at a time: 32 f32 are four AVX2 registers, 32 f64
/// eight, so a slab's sum stays in registers across the row's entries and is stored once,
/// instead of loading and storing the output row once per entry (which took most of the row
/// loop's samples once the gathers hit cache).
const SLAB: usize = 32;

/// The portable kernel over one task's rows, writing every element of `out`.
#[inline(always)]
fn rows_kernel<T: WithDType>(block: Block<'_, T>, out: &mut [MaybeUninit<T>]) {
    let Block {
        rp,
        ci,
        v,
        x,
        m,
        step,
        xi,
        ahead,
    } = block;
    let base = rp[0];
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let entries = rp[r] - base..rp[r + 1] - base;
        let full = m - m % SLAB;
        for c0 in (0..full).step_by(SLAB) {
            let mut acc = [T::zero(); SLAB];
            gather_sum(&mut acc, entries.clone(), ci, v, x, m, c0, ahead);
            write(&mut o[c0..c0 + SLAB], &acc);
        }
        if full < m {
            let mut acc = [T::zero(); SLAB];
            let acc = &mut acc[..m - full];
            gather_sum(acc, entries, ci, v, x, m, full, ahead);
            write(&mut o[full..], acc);
        }
        // SAFETY: the slabs and the tail wrote every element of the row.
        let o = unsafe { &mut *(o as *mut [MaybeUninit<T>] as *mut [T]) };
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
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather_sum<T: WithDType>(
    acc: &mut [T],
    ps: std::ops::Range<usize>,
    ci: &[u32],
    v: &[T],
    x: &[T],
    m: usize,
    c0: usize,
    ahead: usize,
) {
    for p in ps {
        // The gathered rows are scattered over x: on the first slab, request the whole row
        // `ahead` entries ahead so its page walk and cache misses overlap this row's arithmetic
        // (latency, not bandwidth, bounds a random gather); later slabs find it in cache.
        if c0 == 0 {
            if let Some(&c) = ci.get(p + ahead) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{available_isas, FORCE_ISA};
    use std::sync::atomic::Ordering;

    /// `n` rows of 0 to 2k - 1 pseudo-random columns (every fifth row empty), values of both
    /// signs.
    fn graph(n: usize, k: usize) -> CsrMatrix {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let (mut rp, mut ci, mut v) = (vec![0], Vec::new(), Vec::new());
        for i in 0..n {
            let len = if i % 5 == 4 {
                0
            } else {
                next() as usize % (2 * k)
            };
            for _ in 0..len {
                ci.push((next() % n as u64) as u32);
                v.push((next() % 2001) as f64 / 1000.0 - 1.0);
            }
            rp.push(ci.len());
        }
        CsrMatrix::new(n, rp, ci, v).unwrap()
    }

    /// The definition, element by element: entries in stored order from zero, then
    /// `x * (1 - deg * eta) + acc * eta`.
    fn definition<T: WithDType>(
        a: &CsrMatrix,
        v: &[T],
        x: &[T],
        m: usize,
        step: Option<(&[T], T)>,
    ) -> Vec<T> {
        let mut y = vec![T::zero(); a.n() * m];
        for i in 0..a.n() {
            for j in 0..m {
                let mut acc = T::zero();
                for p in a.row_ptr()[i]..a.row_ptr()[i + 1] {
                    acc += v[p] * x[a.col_idx()[p] as usize * m + j];
                }
                y[i * m + j] = match step {
                    Some((d, eta)) => x[i * m + j] * (T::one() - d[i] * eta) + acc * eta,
                    None => acc,
                };
            }
        }
        y
    }

    fn check<T: WithDType + Default>(n: usize, k: usize, m: usize) {
        let a = graph(n, k);
        let v: Vec<T> = a.values().iter().map(|&w| T::from_f64(w)).collect();
        let x: Vec<T> = (0..n * m)
            .map(|i| T::from_f64(((i as f64) * 0.7311).sin()))
            .collect();
        let deg: Vec<T> = (0..n).map(|i| T::from_f64(i as f64 * 0.01)).collect();
        let eta = T::from_f64(0.15);
        for step in [None, Some((&deg[..], eta))] {
            let want = definition(&a, &v, &x, m, step);
            for isa in available_isas() {
                FORCE_ISA.store(isa, Ordering::Relaxed);
                let got = product(&a, &v, &x, m, step);
                FORCE_ISA.store(0, Ordering::Relaxed);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_f64().to_bits() == w.to_f64().to_bits());
                assert!(
                    same && got.len() == want.len(),
                    "{} n {n} k {k} m {m} isa {isa} step {}",
                    T::DTYPE.as_str(),
                    step.is_some()
                );
            }
        }
    }

    /// Every instruction-set build (generic, AVX2+FMA, AVX-512, as far as this CPU runs them)
    /// bitwise equals the definition, f32 and f64: widths that fill one register, several,
    /// every register count of the AVX-512 kernel (16, 8, 4, 2, 1) and a masked tail, over
    /// several row tasks (16K output elements each).
    #[test]
    fn every_instruction_set_bitwise_equals_the_definition() {
        for (n, k, m) in [
            (9, 3, 1),
            (40, 4, 7),
            (40, 4, 8),
            (40, 4, 16),
            (40, 4, 17),
            (60, 5, 33),
            (70, 6, 64),
            (300, 5, 100),
            (200, 8, 256),
            (150, 3, 263),
            (90, 4, 512 + 128 + 64 + 32 + 16 + 8 + 5),
        ] {
            check::<f32>(n, k, m);
            check::<f64>(n, k, m);
        }
    }
}
