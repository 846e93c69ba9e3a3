//! The start of the search: a forest of random partition trees with large leaves whose
//! all-pairs similarities are dense products (`gemm`), each row filtered against its node's
//! current worst kept similarity.
//!
//! Why large leaves and a Voronoi split: on high-dimensional data without structure (uniform
//! 64-d: the true 8-NN of 10^6 points sit at cosine ~0.55) a random hyperplane separates a
//! point from a given neighbour with probability ~0.3, so a pair survives the ~14 splits down
//! to a 64-point leaf with probability ~0.7^14 ~ 0.5%. Splitting a node by its members' nearest
//! of B random members (a Voronoi cell; spherical LSH in the limit) keeps close pairs together
//! far more often per cell count than hyperplanes, and leaves of ~10^3 points let the all-pairs
//! work run at dense-product speed (the filter rejects almost every entry with one vector
//! compare per 16). A tree costs O(N (B d depth + leaf d)); memory is one permutation of N ids
//! per tree (built one tree at a time) plus a leaf's rows and one product tile per thread.
//!
//! Reproducibility: centres are hashes of `(seed, tree, node)`, assignment products run in
//! fixed row chunks on one thread each, every node belongs to exactly one leaf per tree (so
//! leaves update disjoint lists and their order does not matter), and each leaf's rows are
//! offered in one fixed order: the lists do not depend on the number of threads.

use super::{hash3, heap_replace_root, splitmix, Elem, Search};
use crate::gemm::gemm_abt;
use crate::prefetch::prefetch;
use rayon::prelude::*;
use std::mem::size_of;

/// Most children per tree node: the assignment product costs B d per point and level.
pub(super) const MAX_BRANCHING: usize = 32;

/// Rows per assignment product chunk (a fixed size: results independent of the thread count).
const ASSIGN_ROWS: usize = 2048;

/// Rows of a leaf's product computed at once: a (TILE, leaf) tile stays in cache for the filter.
const TILE: usize = 128;

/// Nodes at least this large split their children in parallel.
const PAR_NODE: usize = 1 << 13;

/// The neighbour lists, written by several leaves at once.
struct SharedLists<T> {
    idx: *mut u32,
    sim: *mut T,
    new: *mut u8,
    pool: usize,
}

// SAFETY: leaves of one tree partition the nodes, and a leaf task touches only its own nodes'
// rows (see `row`), so no two threads access the same element.
unsafe impl<T: Send> Send for SharedLists<T> {}
unsafe impl<T: Send> Sync for SharedLists<T> {}

impl<T> SharedLists<T> {
    /// Node `i`'s list.
    ///
    /// # Safety
    /// `i < N`, and no other live reference to row `i` exists (one leaf per node and tree).
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, i: usize) -> (&mut [u32], &mut [T], &mut [u8]) {
        let o = i * self.pool;
        (
            std::slice::from_raw_parts_mut(self.idx.add(o), self.pool),
            std::slice::from_raw_parts_mut(self.sim.add(o), self.pool),
            std::slice::from_raw_parts_mut(self.new.add(o), self.pool),
        )
    }
}

impl<T: Elem> Search<'_, T> {
    /// `trees` partition trees with leaves of at most `leaf` nodes; all pairs of every leaf
    /// are offered to both ends' lists.
    pub(super) fn leaf_forest(&mut self, seed: u64, trees: usize, leaf: usize) {
        let n = self.n;
        let leaf = leaf.max(2);
        let trace = std::env::var_os("DAHN_NND_TRACE").is_some();
        let (mut t_split, mut t_leaf) = (0.0, 0.0);
        let mut order: Vec<u32> = Vec::with_capacity(n);
        for t in 0..trees {
            let t0 = std::time::Instant::now();
            order.clear();
            order.extend(0..n as u32);
            let mut leaves = Vec::new();
            self.partition(
                hash3(seed, 0xf0_0000 + t as u64, 0),
                &mut order,
                0,
                leaf,
                &mut leaves,
            );
            let t1 = std::time::Instant::now();
            self.offer_leaves(&order, &leaves);
            t_split += (t1 - t0).as_secs_f64();
            t_leaf += t1.elapsed().as_secs_f64();
        }
        if trace {
            eprintln!("leaf forest: {trees} trees, split {t_split:.2}s, leaves {t_leaf:.2}s");
        }
    }

    /// Splits `ids` (at offset `base` of the tree's order) until parts hold at most `leaf` ids;
    /// appends the leaves' ranges (in no particular order).
    fn partition(
        &self,
        key: u64,
        ids: &mut [u32],
        base: usize,
        leaf: usize,
        leaves: &mut Vec<(usize, usize)>,
    ) {
        let len = ids.len();
        if len <= leaf {
            leaves.push((base, base + len));
            return;
        }
        let d = self.d;
        let b = len.div_ceil(leaf).clamp(2, MAX_BRANCHING);
        // Centres: b members drawn by hash (with replacement: a repeat only leaves a cell empty).
        let mut centres = Vec::with_capacity(b * d);
        for c in 0..b {
            let r = splitmix(key ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9));
            let id = ids[((r as u128 * len as u128) >> 64) as usize] as usize;
            centres.extend_from_slice(&self.data[id * d..(id + 1) * d]);
        }
        // Each member's nearest centre (ties: the lower centre), in fixed chunks.
        let mut label = vec![0u8; len];
        let assign = |(chunk, out): (&[u32], &mut [u8])| {
            let mut rows = Vec::new();
            gather(self.data, d, chunk, &mut rows);
            let mut s = vec![T::zero(); chunk.len() * b];
            gemm_abt(&mut s, &rows, &centres, (chunk.len(), b, d), false);
            for (r, o) in s.chunks_exact(b).zip(out.iter_mut()) {
                let mut best = 0;
                for c in 1..b {
                    if r[c] > r[best] {
                        best = c;
                    }
                }
                *o = best as u8;
            }
        };
        if len >= PAR_NODE {
            ids.par_chunks(ASSIGN_ROWS)
                .zip(label.par_chunks_mut(ASSIGN_ROWS))
                .for_each(assign);
        } else {
            ids.chunks(ASSIGN_ROWS)
                .zip(label.chunks_mut(ASSIGN_ROWS))
                .for_each(assign);
        }
        // Counting sort by cell, stable (members keep their relative order).
        let mut start = vec![0usize; b + 1];
        for &l in &label {
            start[l as usize + 1] += 1;
        }
        for c in 0..b {
            start[c + 1] += start[c];
        }
        let mut fill = start.clone();
        let mut sorted = vec![0u32; len];
        for (&i, &l) in ids.iter().zip(&label) {
            sorted[fill[l as usize]] = i;
            fill[l as usize] += 1;
        }
        ids.copy_from_slice(&sorted);
        if (0..b).any(|c| start[c + 1] - start[c] > len - len / 16) {
            // (Almost) every member in one cell (duplicates, outliers as centres): halve the
            // range instead, so that the depth stays logarithmic whatever the data.
            start = vec![0; b + 1];
            start[1..].fill(len);
            start[1] = len / 2;
        }
        drop(label);
        // Children (empty ones skipped), each with its own key.
        let mut parts = Vec::with_capacity(b);
        let mut rest = ids;
        for c in 0..b {
            let (head, tail) = rest.split_at_mut(start[c + 1] - start[c]);
            rest = tail;
            if !head.is_empty() {
                parts.push((splitmix(key ^ (0x5eed + c as u64)), base + start[c], head));
            }
        }
        if len >= PAR_NODE {
            let found: Vec<Vec<(usize, usize)>> = parts
                .into_par_iter()
                .map(|(k, o, part)| {
                    let mut l = Vec::new();
                    self.partition(k, part, o, leaf, &mut l);
                    l
                })
                .collect();
            leaves.extend(found.into_iter().flatten());
        } else {
            for (k, o, part) in parts {
                self.partition(k, part, o, leaf, leaves);
            }
        }
    }

    /// Offers every pair of every leaf `order[lo..hi]` to both ends.
    fn offer_leaves(&mut self, order: &[u32], leaves: &[(usize, usize)]) {
        let (d, pool, data) = (self.d, self.pool, self.data);
        if pool == 0 {
            return;
        }
        let lists = SharedLists {
            idx: self.idx.as_mut_ptr(),
            sim: self.sim.as_mut_ptr(),
            new: self.new.as_mut_ptr(),
            pool,
        };
        let lists = &lists;
        leaves
            .par_iter()
            .for_each_init(Scratch::default, |scratch, &(lo, hi)| {
                leaf_pairs(data, d, &order[lo..hi], lists, scratch)
            });
    }
}

/// Per-thread buffers of [`leaf_pairs`].
struct Scratch<T> {
    rows: Vec<T>,
    tile: Vec<T>,
    idx: Vec<u32>,
    sim: Vec<T>,
    new: Vec<u8>,
    worst: Vec<T>,
    dirty: Vec<bool>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            tile: Vec::new(),
            idx: Vec::new(),
            sim: Vec::new(),
            new: Vec::new(),
            worst: Vec::new(),
            dirty: Vec::new(),
        }
    }
}

/// One leaf: the upper triangle of its rows' product, tile by tile, each entry (p, q) offered
/// to p's list and to q's when it beats that list's worst kept similarity.
fn leaf_pairs<T: Elem>(
    data: &[T],
    d: usize,
    ids: &[u32],
    lists: &SharedLists<T>,
    sc: &mut Scratch<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { leaf_pairs_avx2(data, d, ids, lists, sc) };
    }
    leaf_pairs_impl::<T, false>(data, d, ids, lists, sc)
}

/// [`leaf_pairs_impl`] compiled for AVX2 (the filter's compares in 256-bit lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn leaf_pairs_avx2<T: Elem>(
    data: &[T],
    d: usize,
    ids: &[u32],
    lists: &SharedLists<T>,
    sc: &mut Scratch<T>,
) {
    leaf_pairs_impl::<T, true>(data, d, ids, lists, sc)
}

/// [`leaf_pairs`] for the given target features (`AVX2`: the caller checked the CPU has it).
#[inline(always)]
fn leaf_pairs_impl<T: Elem, const AVX2: bool>(
    data: &[T],
    d: usize,
    ids: &[u32],
    lists: &SharedLists<T>,
    sc: &mut Scratch<T>,
) {
    let (m, pool) = (ids.len(), lists.pool);
    sc.rows.clear();
    gather(data, d, ids, &mut sc.rows);
    // The members' lists, copied here: a hit then touches cache, not a scattered row of N
    // (one dependent miss each); rows that changed are written back at the end.
    let mut local = Local {
        ids,
        pool,
        idx: std::mem::take(&mut sc.idx),
        sim: std::mem::take(&mut sc.sim),
        new: std::mem::take(&mut sc.new),
        worst: std::mem::take(&mut sc.worst),
        dirty: std::mem::take(&mut sc.dirty),
    };
    local.idx.clear();
    local.sim.clear();
    local.new.clear();
    local.worst.clear();
    local.dirty.clear();
    local.dirty.resize(m, false);
    for &i in ids {
        // SAFETY: i is in this leaf only; the references end here.
        let (idx, sim, new) = unsafe { lists.row(i as usize) };
        local.idx.extend_from_slice(idx);
        local.sim.extend_from_slice(sim);
        local.new.extend_from_slice(new);
        local.worst.push(sim[0]);
    }
    sc.tile.resize(TILE.min(m) * m, T::zero());
    let (rows, tile) = (&sc.rows, &mut sc.tile);
    for r0 in (0..m).step_by(TILE) {
        let (tm, cols) = (TILE.min(m - r0), m - r0);
        // Columns r0.. only: the pairs (p, q) with q < r0 were offered by earlier tiles.
        gemm_abt(
            tile,
            &rows[r0 * d..(r0 + tm) * d],
            &rows[r0 * d..],
            (tm, cols, d),
            false,
        );
        for r in 0..tm {
            let p = r0 + r;
            let srow = &tile[r * cols + r + 1..(r + 1) * cols];
            let mut c0 = 0;
            while c0 + LANES <= srow.len() {
                let tc = &local.worst[p + 1 + c0..];
                let mut bits = above::<T, AVX2>(&srow[c0..c0 + LANES], local.worst[p], tc);
                while bits != 0 {
                    let o = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    local.offer(p, p + 1 + c0 + o, srow[c0 + o]);
                }
                c0 += LANES;
            }
            for (o, &s) in srow[c0..].iter().enumerate() {
                local.offer(p, p + 1 + c0 + o, s);
            }
        }
    }
    for (t, &i) in ids.iter().enumerate() {
        if local.dirty[t] {
            // SAFETY: as above.
            let (idx, sim, new) = unsafe { lists.row(i as usize) };
            let r = t * pool..(t + 1) * pool;
            idx.copy_from_slice(&local.idx[r.clone()]);
            sim.copy_from_slice(&local.sim[r.clone()]);
            new.copy_from_slice(&local.new[r]);
        }
    }
    sc.idx = local.idx;
    sc.sim = local.sim;
    sc.new = local.new;
    sc.worst = local.worst;
    sc.dirty = local.dirty;
}

/// A leaf's copy of its members' lists (row t = member t), with each list's worst kept
/// similarity and whether it changed.
struct Local<'a, T> {
    ids: &'a [u32],
    pool: usize,
    idx: Vec<u32>,
    sim: Vec<T>,
    new: Vec<u8>,
    worst: Vec<T>,
    dirty: Vec<bool>,
}

impl<T: Elem> Local<'_, T> {
    /// Offers the pair (p, q) of members with similarity `s` to both ends' lists where it beats
    /// their worst kept entry and is not there yet.
    #[inline(always)]
    fn offer(&mut self, p: usize, q: usize, s: T) {
        for (a, b) in [(p, q), (q, p)] {
            if s > self.worst[a] {
                let r = a * self.pool..(a + 1) * self.pool;
                let j = self.ids[b];
                if !self.idx[r.clone()].contains(&j) {
                    let (idx, sim) = (&mut self.idx[r.clone()], &mut self.sim[r.clone()]);
                    heap_replace_root(idx, sim, Some(&mut self.new[r]), j, s);
                    self.worst[a] = sim[0];
                    self.dirty[a] = true;
                }
            }
        }
    }
}

/// Appends the rows `ids` of `data` to `out`, loading a few rows ahead (the ids are scattered).
#[inline(always)]
fn gather<T: Elem>(data: &[T], d: usize, ids: &[u32], out: &mut Vec<T>) {
    const AHEAD: usize = 8;
    out.reserve(ids.len() * d);
    for (t, &i) in ids.iter().enumerate() {
        if let Some(&a) = ids.get(t + AHEAD) {
            for line in
                data[a as usize * d..(a as usize + 1) * d].chunks(64 / size_of::<T>().max(1))
            {
                prefetch(&line[0]);
            }
        }
        out.extend_from_slice(&data[i as usize * d..(i as usize + 1) * d]);
    }
}

/// Entries per filter step.
const LANES: usize = 16;

/// Bit `l` set where `s[l]` beats the row's worst `tr` or its column's worst `tc[l]`, i.e.
/// `s[l] > min(tr, tc[l])`.
#[inline(always)]
fn above<T: Elem, const AVX2: bool>(s: &[T], tr: T, tc: &[T]) -> u32 {
    let (s, tc) = (&s[..LANES], &tc[..LANES]);
    #[cfg(target_arch = "x86_64")]
    if AVX2 && T::DTYPE == candle_core::DType::F32 {
        // SAFETY: T is f32 (its dtype says so), both slices hold LANES values, and `AVX2` is
        // set only by `leaf_pairs_avx2`, which runs after checking the CPU.
        unsafe {
            let f = |v: &[T]| v.as_ptr() as *const f32;
            return above_f32_avx2(f(s), *(&tr as *const T as *const f32), f(tc));
        }
    }
    let mut m = 0u32;
    for l in 0..LANES {
        let t = if tc[l] < tr { tc[l] } else { tr };
        m |= ((s[l] > t) as u32) << l;
    }
    m
}

/// [`above`] for 16 f32 in two AVX2 compares.
///
/// # Safety
/// AVX2, and 16 readable f32 at `s` and at `tc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn above_f32_avx2(s: *const f32, tr: f32, tc: *const f32) -> u32 {
    use std::arch::x86_64::*;
    let r = _mm256_set1_ps(tr);
    let t0 = _mm256_min_ps(r, _mm256_loadu_ps(tc));
    let t1 = _mm256_min_ps(r, _mm256_loadu_ps(tc.add(8)));
    let m0 = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(s), t0);
    let m1 = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(s.add(8)), t1);
    (_mm256_movemask_ps(m0) as u32) | (_mm256_movemask_ps(m1) as u32) << 8
}

#[cfg(test)]
mod tests {
    use super::super::{brute_force_rows, nn_descent, NnDescent};
    use super::*;
    use candle_core::{Device, Result, Tensor};

    // Uniform values in [-0.5, 0.5) (the data of `knn_approx`), deterministic.
    use super::super::tests::values as uniform;

    /// `clusters` blobs: centres uniform in [-1, 1)^d, members within +-0.15 per coordinate.
    fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let centres = uniform(clusters * d, seed);
        let noise = uniform(n * d, seed ^ 0xabc);
        (0..n * d)
            .map(|e| 2.0 * centres[(e / d) % clusters * d + e % d] + 0.3 * noise[e])
            .collect()
    }

    /// The forest alone (no descent): recall@k of its lists against brute force on every
    /// `step`-th row.
    fn forest_recall(v: Vec<f32>, d: usize, k: usize, p: NnDescent, step: usize) -> Result<f64> {
        let n = v.len() / d;
        let x = Tensor::from_vec(v, (n, d), &Device::Cpu)?;
        let rows: Vec<usize> = (0..n).step_by(step).collect();
        let exact = brute_force_rows(&x, &rows, k)?;
        nn_descent(&x, k, &p.max_iters(0))?.recall(&rows, &exact)
    }

    #[rstest::rstest]
    // One leaf holding every point: all pairs compared, the lists are exact.
    #[case::one_leaf(false, 16, 1, 4096, 1.0)]
    // Clustered 16-d data, leaves of 64 among 3000 points: a few trees find almost everything.
    #[case::clustered(true, 16, 8, 64, 0.95)]
    // Uniform 32-d data (no structure, the hard case), leaves of 128.
    #[case::uniform(false, 32, 12, 128, 0.8)]
    fn forest_recall_against_exact(
        #[case] clusters: bool,
        #[case] d: usize,
        #[case] trees: usize,
        #[case] leaf: usize,
        #[case] at_least: f64,
    ) -> Result<()> {
        let n = 3000;
        let v = if clusters {
            clustered(n, d, 30, 1)
        } else {
            uniform(n * d, 2)
        };
        let p = NnDescent::default().trees(Some(trees)).leaf(leaf).seed(3);
        let recall = forest_recall(v, d, 8, p, 7)?;
        assert!(recall >= at_least, "recall@8 {recall} < {at_least}");
        Ok(())
    }

    #[test]
    fn more_trees_find_more() -> Result<()> {
        let p = NnDescent::default().leaf(128).seed(9);
        let r: Vec<f64> = [1, 4, 16]
            .iter()
            .map(|&t| forest_recall(uniform(3000 * 32, 5), 32, 8, p.trees(Some(t)), 5))
            .collect::<Result<_>>()?;
        assert!(r[0] < r[1] && r[1] < r[2], "{r:?}");
        Ok(())
    }

    #[test]
    fn forest_lists_do_not_depend_on_the_threads() -> Result<()> {
        // Leaves of 64 among 5000 points: many leaves per tree, run on 1 and 3 threads.
        let (n, d) = (5000, 24);
        let x = Tensor::from_vec(uniform(n * d, 6), (n, d), &Device::Cpu)?;
        let p = NnDescent::default()
            .trees(Some(6))
            .leaf(64)
            .seed(1)
            .max_iters(2);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| nn_descent(&x, 8, &p))
        };
        let one = run(1)?;
        assert_eq!(one, run(3)?);
        assert_eq!(one, nn_descent(&x, 8, &p)?);
        Ok(())
    }

    #[test]
    fn duplicates_and_few_points_split_without_looping() -> Result<()> {
        // 2000 copies of 3 points: Voronoi cells cannot separate them, halving must.
        let base = [[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.]];
        let v: Vec<f32> = (0..2000).flat_map(|i| base[i % 3]).collect();
        let x = Tensor::from_vec(v, (2000, 3), &Device::Cpu)?;
        let p = NnDescent::default().trees(Some(2)).leaf(50).max_iters(1);
        let lists = nn_descent(&x, 4, &p)?;
        for i in 0..2000 {
            let (idx, sim) = lists.row(i);
            assert!(idx
                .iter()
                .all(|&j| j != i as u32 && j as usize % 3 == i % 3));
            assert!(
                sim.iter().all(|&s| (s - 1.0).abs() < 1e-6),
                "row {i}: {sim:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn above_is_the_portable_filter() {
        let s = uniform(16, 1);
        let tc = uniform(16, 2);
        for tr in [-1.0, -0.1, 0.0, 0.2, 1.0] {
            let want = above::<f32, false>(&s, tr, &tc);
            let by_hand = (0..16).fold(0u32, |m, l| m | ((s[l] > tr || s[l] > tc[l]) as u32) << l);
            assert_eq!(want, by_hand, "tr {tr}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                assert_eq!(above::<f32, true>(&s, tr, &tc), want, "tr {tr}");
            }
        }
    }
}
