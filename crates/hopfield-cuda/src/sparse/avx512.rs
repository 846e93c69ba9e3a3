//! AVX-512 builds of the sparse product's row kernel (f32 and f64): each output row summed in
//! up to sixteen 512-bit registers at once (256 f32 or 128 f64 columns), one pass over the
//! row's entries for all of them, the fused step applied in registers, every output element
//! written once.
//!
//! The portable kernel (`cpu.rs`) holds 32 columns in registers, so a 256-column row walks its
//! entries eight times, and its sums form chains of dependent additions four or eight wide.
//! Here one walk feeds up to sixteen independent sums: against the portable build in one binary
//! (`HOPFIELD_ISA=avx2`), a 10^5-node graph in locality order at 256 f32 columns took ~18.8
//! instead of ~22.6 ms, a random one at 32 columns ~5.3 instead of ~8.0 ms
//! (docs/dahn-performance.md). Same operations per element, in the same order (entries in
//! stored order from zero, a multiply then an add, the step as `x * keep + acc * eta`), so
//! results are bitwise the portable kernel's (tested in `cpu.rs`).

use super::cpu::{prefetch_row, Block};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// One element type's kernel: `$t` with `$lanes` lanes per register and the matching
/// intrinsics.
macro_rules! kernel {
    ($module:ident, $t:ty, $lanes:expr, $mask:ty, $set1:ident, $load:ident, $maskz_load:ident,
     $add:ident, $mul:ident, $store:ident, $mask_store:ident) => {
        pub(super) mod $module {
            use super::*;

            const L: usize = $lanes;

            /// The rows of one task (see [`Block`]), writing every element of their (rows, m)
            /// output `out`.
            ///
            /// # Safety
            /// The CPU has AVX-512F, and every column in `ci` is below `x.len() / m`.
            #[target_feature(enable = "avx512f")]
            pub(in super::super) unsafe fn rows(block: Block<'_, $t>, out: &mut [MaybeUninit<$t>]) {
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
                let rows = rp.len() - 1;
                let base = rp[0];
                assert!(
                    out.len() == rows * m
                        && xi.len() == rows * m
                        && ci.len() == rp[rows] - base
                        && v.len() == ci.len()
                        && step.is_none_or(|(d, _)| d.len() == rows)
                );
                debug_assert!(ci.iter().all(|&c| (c as usize + 1) * m <= x.len()));
                let head = m - m % L;
                // The tail's lanes: the low `m % L` bits.
                let tail = ((1u32 << (m % L)) - 1) as $mask;
                for r in 0..rows {
                    let row = Row {
                        entries: rp[r] - base..rp[r + 1] - base,
                        ci,
                        v,
                        x,
                        m,
                        ahead,
                        // The same `1 - deg * eta` as the portable kernel.
                        step: step.map(|(d, eta)| (1.0 - d[r] * eta, eta)),
                        own: xi.as_ptr().add(r * m),
                        out: out.as_mut_ptr().add(r * m) as *mut $t,
                    };
                    let mut c0 = 0;
                    while head - c0 >= 16 * L {
                        row.slab::<16, false>(c0, !0);
                        c0 += 16 * L;
                    }
                    // The rest in one pass of 8, 4, 2 or 1 registers each.
                    row.pass::<8>(head, &mut c0);
                    row.pass::<4>(head, &mut c0);
                    row.pass::<2>(head, &mut c0);
                    row.pass::<1>(head, &mut c0);
                    if c0 < m {
                        row.slab::<1, true>(c0, tail);
                    }
                }
            }

            /// One output row and what it reads.
            struct Row<'a> {
                entries: Range<usize>,
                ci: &'a [u32],
                v: &'a [$t],
                x: &'a [$t],
                m: usize,
                /// Entries ahead whose rows are prefetched.
                ahead: usize,
                /// `(1 - deg * eta, eta)` for the fused step.
                step: Option<($t, $t)>,
                own: *const $t,
                out: *mut $t,
            }

            impl Row<'_> {
                /// One whole slab of `NZ` registers at `*c0` if the row's whole-register columns
                /// (`head`) hold one, then past it.
                #[target_feature(enable = "avx512f")]
                #[inline]
                unsafe fn pass<const NZ: usize>(&self, head: usize, c0: &mut usize) {
                    if head - *c0 >= NZ * L {
                        self.slab::<NZ, false>(*c0, !0);
                        *c0 += NZ * L;
                    }
                }

                /// Columns `c0..c0 + NZ * L` of the row (the last register's lanes limited to
                /// `mask` when `MASKED`): summed over the entries in registers, stepped, stored.
                #[target_feature(enable = "avx512f")]
                #[inline]
                unsafe fn slab<const NZ: usize, const MASKED: bool>(&self, c0: usize, mask: $mask) {
                    let m = self.m;
                    let xp = self.x.as_ptr();
                    // Register z's lanes at p (the tail's only, for the last when MASKED).
                    macro_rules! load {
                        ($p:expr, $z:expr) => {
                            if MASKED && $z == NZ - 1 {
                                $maskz_load(mask, $p)
                            } else {
                                $load($p)
                            }
                        };
                    }
                    let mut acc = [$set1(0.0); NZ];
                    for p in self.entries.clone() {
                        // The gathered rows lie anywhere in x: request a row `ahead`
                        // entries ahead, whole, on the first slab (later slabs find it in
                        // cache), so its misses overlap this row's arithmetic.
                        if c0 == 0 {
                            if let Some(&c) = self.ci.get(p + self.ahead) {
                                prefetch_row(&self.x[c as usize * m..][..m]);
                            }
                        }
                        let w = $set1(*self.v.get_unchecked(p));
                        let src = xp.add(*self.ci.get_unchecked(p) as usize * m + c0);
                        for (z, a) in acc.iter_mut().enumerate() {
                            *a = $add(*a, $mul(w, load!(src.add(z * L), z)));
                        }
                    }
                    if let Some((keep, eta)) = self.step {
                        let (keep, eta) = ($set1(keep), $set1(eta));
                        for (z, a) in acc.iter_mut().enumerate() {
                            let own = load!(self.own.add(c0 + z * L), z);
                            *a = $add($mul(own, keep), $mul(*a, eta));
                        }
                    }
                    for (z, a) in acc.iter().enumerate() {
                        let dst = self.out.add(c0 + z * L);
                        if MASKED && z == NZ - 1 {
                            $mask_store(dst, mask, *a);
                        } else {
                            $store(dst, *a);
                        }
                    }
                }
            }
        }
    };
}

kernel!(
    f32s,
    f32,
    16,
    __mmask16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_maskz_loadu_ps,
    _mm512_add_ps,
    _mm512_mul_ps,
    _mm512_storeu_ps,
    _mm512_mask_storeu_ps
);

kernel!(
    f64s,
    f64,
    8,
    __mmask8,
    _mm512_set1_pd,
    _mm512_loadu_pd,
    _mm512_maskz_loadu_pd,
    _mm512_add_pd,
    _mm512_mul_pd,
    _mm512_storeu_pd,
    _mm512_mask_storeu_pd
);
