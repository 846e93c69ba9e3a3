//! Approximate cosine kNN graphs by NN-descent (Dong, Charikar, Li 2011: "a neighbour of a
//! neighbour is likely a neighbour"), for pattern sets where the exact O(N^2 d) build of
//! [`crate::knn_from_patterns`] is out of reach (10^6 patterns: hours on 2 cores).
//!
//! Same output as the exact path: cosine similarity of the rows normalised as
//! [`crate::normalize_rows`] does, each row's k' = min(k, N - 1) best positive neighbours, no
//! self loops, symmetrised with `A = max(M, M^T)` into a [`Csr`]. Only the neighbour choice is
//! approximate; the weight of every edge kept is the cosine similarity in the search dtype (f64
//! for f64 patterns, else f32, as the exact path).
//!
//! The search keeps a longer list than k per node (the `pool`) and reports its k best: an entry
//! near the top of a 6k-long list is found far more reliably than the k-th of a k-long one, which
//! is what lifts recall@k on high-dimensional data. Work is O(N * trees * leaf * d) for the start
//! plus O(N * iterations * candidates^2 * d) for the descent; memory O(N (d + pool + candidates)).
//!
//! The steps: a forest of `trees` partition trees with large leaves (each node split into the
//! Voronoi cells of up to 32 random members; `leaf` ~ 10^3 points) seeds the lists, every pair
//! in a leaf compared by a dense product and filtered against both ends' worst kept entries
//! (`approx/leaves.rs`; on uniform 64-d data this start alone finds most neighbours, which
//! NN-descent from random lists does not at 10^6); slots still empty get random ids. Then
//! NN-descent (PyNNDescent's layout): each iteration samples per node up to `candidates` new and
//! old neighbours, forward and reverse (reverse lists rebuilt as a CSR by counting, not by
//! random-access heaps), joins every (new, new) and (new, old) pair in batches (dot products in
//! AVX2 where the CPU has it, bit for bit the portable ones), and applies the improvements per
//! owner range of nodes (no locks). `DAHN_NND_TRACE=1` prints the phase times.
//!
//! Reproducibility: every random choice (tree centres, initial lists, candidate sampling) is a
//! hash of the seed and positions, the forest's products run in fixed shapes on one thread
//! each, and updates are applied per node in a fixed order, so a seed gives the same graph
//! whatever the number of threads (on a given CPU: the dense products' rounding follows the
//! kernels `gemm` picks for it).

mod leaves;

use crate::prefetch::prefetch;
use crate::{check, effective_k, normalize_rows, Csr, GraphError, Merge};
use candle_core::{DType, Result, Tensor, WithDType};
use rayon::prelude::*;

/// Parameters of the approximate search ([`knn_approx_from_patterns`], [`crate::KnnMethod`]):
/// a forest of large-leaf partition trees, then NN-descent.
///
/// Uniform random 64-d patterns are the hardest case (no cluster structure): there the defaults
/// (leaf 1024, automatic tree count: 80 trees at 10^6, pool 48 for k = 8) give recall@8 ~0.95 at
/// 10^6 (see docs/dahn-performance.md for the measured recall, time and memory); clustered data
/// needs fewer trees. Below ~5 * 10^4 patterns the exact builder is as fast.
///
/// ```
/// use dahn_graph::NnDescent;
/// let p = NnDescent::default().seed(7).pool(Some(32)).trees(Some(16));
/// assert_eq!((p.seed, p.pool, p.trees, p.leaf), (7, Some(32), Some(16), 1024));
/// assert_eq!(p.tree_count(1_000_000), 16);
/// assert_eq!(NnDescent::default().tree_count(1_000_000), 80);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NnDescent {
    /// Seed of every random choice. Default 0.
    pub seed: u64,
    /// Length of each node's working neighbour list (raised to k', cut to N - 1); `None` =
    /// `max(6 k, 24)`.
    pub pool: Option<usize>,
    /// Candidates sampled per node and iteration, for new and old neighbours each; `None` =
    /// `min(pool, 32)` (at least 1).
    pub max_candidates: Option<usize>,
    /// Partition trees whose leaves seed the lists (`Some(0)`: random start only); `None` =
    /// automatic, see [`NnDescent::tree_count`].
    pub trees: Option<usize>,
    /// Leaf size of those trees (raised to the pool length). Default 1024: all pairs of a leaf
    /// are one dense product, fast per pair; smaller leaves need more trees for the same recall.
    pub leaf: usize,
    /// Upper bound on the iterations. Default 12.
    pub max_iters: usize,
    /// Stop when an iteration changes fewer than `delta * N * pool` list entries (0, negative
    /// or NaN: run all `max_iters`). Default 0.001.
    pub delta: f64,
}

impl Default for NnDescent {
    fn default() -> Self {
        Self {
            seed: 0,
            pool: None,
            max_candidates: None,
            trees: None,
            leaf: 1024,
            max_iters: 12,
            delta: 0.001,
        }
    }
}

impl NnDescent {
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the working list length (`None` = automatic).
    pub fn pool(mut self, pool: Option<usize>) -> Self {
        self.pool = pool;
        self
    }

    /// Sets the candidates per node and iteration (`None` = automatic).
    pub fn max_candidates(mut self, c: Option<usize>) -> Self {
        self.max_candidates = c;
        self
    }

    /// Sets the number of partition trees (`None` = automatic).
    pub fn trees(mut self, trees: Option<usize>) -> Self {
        self.trees = trees;
        self
    }

    /// The trees used for N patterns: [`NnDescent::trees`], or automatically
    /// `ceil(3.6 (N / leaf)^0.45)` (80 for 10^6 patterns and leaves of 1024, 29 for 10^5), one
    /// when a leaf holds all N. Why that law: a close pair survives each Voronoi split of a tree
    /// with probability ~0.73 per halving of the cell size on uniform 64-d data (= 2^-0.45), so
    /// it shares a leaf with probability ~(N / leaf)^-0.45, and that many trees keep the forest's
    /// recall about the same at every N (3.6: recall@8 ~0.95 after the descent at 10^6).
    pub fn tree_count(&self, n: usize) -> usize {
        let leaf = self.leaf.max(2);
        if n <= leaf {
            return self.trees.unwrap_or(1).min(1);
        }
        self.trees
            .unwrap_or_else(|| (3.6 * (n as f64 / leaf as f64).powf(0.45)).ceil() as usize)
    }

    /// Sets the trees' leaf size.
    pub fn leaf(mut self, leaf: usize) -> Self {
        self.leaf = leaf;
        self
    }

    /// Sets the iteration bound.
    pub fn max_iters(mut self, iters: usize) -> Self {
        self.max_iters = iters;
        self
    }

    /// Sets the convergence threshold.
    pub fn delta(mut self, delta: f64) -> Self {
        self.delta = delta;
        self
    }
}

/// Each node's k' nearest neighbours found by a kNN search, before symmetrisation: row `i` of
/// `indices` / `similarities` (length `k` each, best first; ties to the lower index). Rows with
/// fewer than k entries (N - 1 < k, or fewer positive similarities when filtered) end in
/// [`KnnLists::EMPTY`] with similarity `-inf`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_graph::{nn_descent, NnDescent};
/// let x = Tensor::new(&[[1f32, 0.], [1., 0.1], [0., 1.], [0.1, 1.]], &Device::Cpu)?;
/// let lists = nn_descent(&x, 1, &NnDescent::default())?;
/// assert_eq!(lists.row(0).0, &[1]);
/// assert_eq!(lists.row(2).0, &[3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KnnLists {
    /// Nodes.
    pub n: usize,
    /// Entries per node.
    pub k: usize,
    /// (N, k) neighbour ids, row-major.
    pub indices: Vec<u32>,
    /// (N, k) cosine similarities.
    pub similarities: Vec<f64>,
}

impl KnnLists {
    /// Marks a missing neighbour.
    pub const EMPTY: u32 = u32::MAX;

    /// Row `i`: (neighbour ids, similarities); empty for a row outside the lists (`i >= n`, or
    /// storage shorter than `n * k`: see [`KnnLists::validate`]).
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        let r = i.saturating_mul(self.k)..i.saturating_add(1).saturating_mul(self.k);
        match (self.indices.get(r.clone()), self.similarities.get(r)) {
            (Some(ids), Some(sims)) if i < self.n => (ids, sims),
            _ => (&[], &[]),
        }
    }

    /// Checks lists built by hand (the fields are public): `indices` and `similarities` hold
    /// `n * k` entries each, and no similarity is NaN or `+inf` (`-inf` marks a missing entry).
    /// Ids are not bounded by `n`: lists of some rows of a larger graph (from
    /// [`brute_force_rows`]) name that graph's nodes; [`KnnLists::to_csr`] rejects ids `>= n`.
    /// Errors are typed ([`GraphError`]).
    ///
    /// ```
    /// use dahn_graph::KnnLists;
    /// let ok = KnnLists { n: 2, k: 1, indices: vec![1, 0], similarities: vec![0.5, 0.5] };
    /// assert!(ok.validate().is_ok());
    /// let short = KnnLists { n: 2, k: 1, indices: vec![1], similarities: vec![0.5] };
    /// assert!(short.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let len = self
            .n
            .checked_mul(self.k)
            .ok_or_else(|| GraphError::TooLarge {
                what: "KnnLists",
                dims: vec![self.n, self.k],
                elems: "overflows usize".into(),
            })?;
        if self.indices.len() != len || self.similarities.len() != len {
            return Err(GraphError::ShapeMismatch(format!(
                "KnnLists: n = {}, k = {} needs {len} ids and similarities, got {} and {}",
                self.n,
                self.k,
                self.indices.len(),
                self.similarities.len()
            ))
            .into());
        }
        if self
            .similarities
            .iter()
            .any(|s| s.is_nan() || *s == f64::INFINITY)
        {
            return Err(GraphError::NonFinite {
                what: "KnnLists: similarities",
            }
            .into());
        }
        Ok(())
    }

    /// Both lists valid, `exact` one row per entry of `rows`, every row in `self`.
    fn check_recall(&self, rows: &[usize], exact: &KnnLists) -> Result<()> {
        self.validate()?;
        exact.validate()?;
        if exact.n != rows.len() {
            return Err(GraphError::ShapeMismatch(format!(
                "KnnLists recall: {} rows asked for, but the exact lists hold {}",
                rows.len(),
                exact.n
            ))
            .into());
        }
        if let Some(&i) = rows.iter().find(|&&i| i >= self.n) {
            return Err(GraphError::IndexOutOfRange {
                what: "KnnLists recall: rows".into(),
                index: i as u64,
                bound: self.n as u64,
            }
            .into());
        }
        Ok(())
    }

    /// Mean over `rows` of |approximate row ∩ exact row| / |exact row| (recall@k), counting
    /// only the exact row's real entries; `exact` holds the reference lists for those rows in
    /// order (e.g. from [`brute_force_rows`]). Rows whose exact list is empty count as 1.
    /// Errors (typed): either list malformed ([`KnnLists::validate`]), `exact` not one row per
    /// entry of `rows`, a row outside `self`.
    ///
    /// ```
    /// use dahn_graph::KnnLists;
    /// let a = KnnLists { n: 4, k: 2, indices: vec![1, 2, 0, 2, 0, 1, 0, 1], similarities: vec![1.; 8] };
    /// let e = KnnLists { n: 1, k: 2, indices: vec![2, 3], similarities: vec![1.; 2] };
    /// assert_eq!(a.recall(&[0], &e)?, 0.5); // row 0 found 2 of its true neighbours {2, 3}
    /// assert!(a.recall(&[9], &e).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn recall(&self, rows: &[usize], exact: &KnnLists) -> Result<f64> {
        self.check_recall(rows, exact)?;
        Ok(mean_over_rows(rows, |r, i| {
            let want: Vec<u32> = exact
                .row(r)
                .0
                .iter()
                .copied()
                .filter(|&j| j != Self::EMPTY)
                .collect();
            if want.is_empty() {
                return 1.0;
            }
            let got = self.row(i).0;
            let hit = want.iter().filter(|j| got.contains(j)).count();
            hit as f64 / want.len() as f64
        }))
    }

    /// Recall@k that counts ties as hits (ann-benchmarks' recall with a distance epsilon): per
    /// row, the approximate entries whose similarity is at least the exact row's lowest (its
    /// k-th) minus `eps`, at most as many as the exact row holds, over the exact row's real
    /// entries; averaged over `rows` (empty exact rows count as 1). Where many patterns are
    /// equally near (sign patterns' cosines are multiples of 2/d), [`KnnLists::recall`] counts
    /// a tied neighbour other than the one the exact search kept as a miss; this does not. The
    /// similarities are the lists' own (both searches compute cosines the same way up to
    /// rounding: `eps` covers it). Errors as [`KnnLists::recall`], and `eps` not finite and >= 0.
    ///
    /// ```
    /// use dahn_graph::KnnLists;
    /// // Row 0's true 2-NN are {2, 3} at 0.9 and 0.5; the search found 2 and 1, and 1 is as near as 3.
    /// let a = KnnLists { n: 4, k: 2, indices: vec![2, 1, 0, 2, 0, 1, 0, 1], similarities: vec![0.9, 0.5, 0., 0., 0., 0., 0., 0.] };
    /// let e = KnnLists { n: 1, k: 2, indices: vec![2, 3], similarities: vec![0.9, 0.5] };
    /// assert_eq!(a.recall(&[0], &e)?, 0.5);
    /// assert_eq!(a.recall_with_ties(&[0], &e, 1e-6)?, 1.0);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn recall_with_ties(&self, rows: &[usize], exact: &KnnLists, eps: f64) -> Result<f64> {
        self.check_recall(rows, exact)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(GraphError::InvalidArgument(format!(
                "KnnLists::recall_with_ties: eps must be finite and >= 0, got {eps}"
            ))
            .into());
        }
        Ok(mean_over_rows(rows, |r, i| {
            let (ids, sims) = exact.row(r);
            let real = ids.iter().filter(|&&j| j != Self::EMPTY).count();
            if real == 0 {
                return 1.0;
            }
            let kth = ids
                .iter()
                .zip(sims)
                .filter(|&(&j, _)| j != Self::EMPTY)
                .fold(f64::INFINITY, |m, (_, &s)| m.min(s));
            let (got, got_sims) = self.row(i);
            let hit = got
                .iter()
                .zip(got_sims)
                .filter(|&(&j, &s)| j != Self::EMPTY && s >= kth - eps)
                .count();
            hit.min(real) as f64 / real as f64
        }))
    }

    /// The symmetrised graph: positive entries only, `A = max(M, M^T)` (as the exact builder).
    /// Errors (typed): lists that fail [`KnnLists::validate`], an id `>= n`.
    pub fn to_csr(&self) -> Result<Csr> {
        self.validate()?;
        let what = "KnnLists::to_csr: edges";
        let mut t: Vec<(u32, u32, f64)> =
            check::try_with_capacity(what, 2usize.saturating_mul(self.indices.len()))?;
        // By entry, not by row: `n` of hand-built lists with k = 0 may be anything.
        for (p, (&j, &s)) in self.indices.iter().zip(&self.similarities).enumerate() {
            if j != Self::EMPTY && s > 0.0 {
                let i = u32::try_from(p / self.k).unwrap_or(Self::EMPTY);
                t.push((i, j, s));
                t.push((j, i, s));
            }
        }
        Csr::from_triplets(self.n, t, Merge::Max)
    }
}

/// The mean of `f(r, rows[r])` over `rows` (1 for no rows).
fn mean_over_rows(rows: &[usize], f: impl Fn(usize, usize) -> f64) -> f64 {
    if rows.is_empty() {
        return 1.0;
    }
    rows.iter().enumerate().map(|(r, &i)| f(r, i)).sum::<f64>() / rows.len() as f64
}

/// The approximate cosine kNN graph of `x` (N, d) by NN-descent: same semantics and output as
/// [`crate::knn_from_patterns`] (positive similarities, no self loops, `max(M, M^T)`), only the
/// neighbour choice is approximate. Errors: `x` not 2-D, N = 0, NaN/inf, `k == 0` (the
/// parameters cannot be wrong: out-of-range values are clamped as documented on [`NnDescent`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_graph::{knn_approx_from_patterns, NnDescent};
/// let x = Tensor::new(&[[1f64, 0.], [1., 0.1], [0., 1.], [-1., 0.]], &Device::Cpu)?;
/// let a = knn_approx_from_patterns(&x, 1, &NnDescent::default())?;
/// assert!(a.get(0, 1) > 0.99 && a.get(1, 0) == a.get(0, 1));
/// assert_eq!(a.row(3).0.len(), 0); // only negative similarities: isolated
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn knn_approx_from_patterns(x: &Tensor, k: usize, params: &NnDescent) -> Result<Csr> {
    nn_descent(x, k, params)?.to_csr()
}

/// NN-descent's directed kNN lists of `x` (N, d) (see [`knn_approx_from_patterns`]), for
/// measuring recall against [`brute_force_rows`]. Non-positive similarities are kept in the
/// lists (they are dropped by [`KnnLists::to_csr`]).
pub fn nn_descent(x: &Tensor, k: usize, params: &NnDescent) -> Result<KnnLists> {
    let (n, d) = check::patterns_2d("nn_descent: patterns", x)?;
    let k = effective_k(k, n)?;
    match host_normalized(x)? {
        Host::F64(v) => Ok(Search::new(&v, n, d, k, params)?.run(params)),
        Host::F32(v) => Ok(Search::new(&v, n, d, k, params)?.run(params)),
    }
}

/// The exact top-k' (cosine, no self loops, non-positive similarities kept) of the given rows of
/// `x`, by brute force over all N patterns: O(|rows| N d). The reference for recall at scales
/// where the exact graph is out of reach. Errors as [`nn_descent`], plus a row `>= N`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_graph::brute_force_rows;
/// let x = Tensor::new(&[[1f32, 0.], [1., 0.1], [0., 1.]], &Device::Cpu)?;
/// let e = brute_force_rows(&x, &[2], 1)?;
/// assert_eq!(e.row(0).0, &[1]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn brute_force_rows(x: &Tensor, rows: &[usize], k: usize) -> Result<KnnLists> {
    let (n, d) = check::patterns_2d("brute_force_rows: patterns", x)?;
    let k = effective_k(k, n)?;
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        return Err(GraphError::IndexOutOfRange {
            what: "brute_force_rows: rows".into(),
            index: r as u64,
            bound: n as u64,
        }
        .into());
    }
    fn go<T: Elem>(v: &[T], n: usize, d: usize, rows: &[usize], k: usize) -> KnnLists {
        let per_row: Vec<Vec<(u32, f64)>> = rows
            .par_iter()
            .map(|&i| {
                let a = &v[i * d..(i + 1) * d];
                let mut best = Heap::new(k);
                for j in 0..n {
                    if j != i {
                        best.push_unchecked(j as u32, T::dot(a, &v[j * d..(j + 1) * d]));
                    }
                }
                best.sorted()
            })
            .collect();
        lists_from(rows.len(), k, per_row)
    }
    Ok(match host_normalized(x)? {
        Host::F64(v) => go(&v, n, d, rows, k),
        Host::F32(v) => go(&v, n, d, rows, k),
    })
}

enum Host {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Unit rows on the host, in the exact path's similarity dtype (f64 stays f64, the rest f32).
fn host_normalized(x: &Tensor) -> Result<Host> {
    let x = match x.dtype() {
        DType::F64 | DType::F32 => x.detach(),
        _ => x.detach().to_dtype(DType::F32)?,
    };
    let xn = normalize_rows(&x)?.flatten_all()?;
    Ok(match xn.dtype() {
        DType::F64 => Host::F64(xn.to_vec1()?),
        _ => Host::F32(xn.to_vec1()?),
    })
}

/// The search element type: the dot product is the whole inner loop.
trait Elem: WithDType + PartialOrd + Send + Sync + std::ops::Sub<Output = Self> {
    const NEG_INF: Self;
    fn dot(a: &[Self], b: &[Self]) -> Self;
    /// [`dot_lanes`] (bit for bit) for callers compiled with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_in_avx2(a: &[Self], b: &[Self]) -> Self;
}

/// The portable dot product; eight independent accumulators because float addition is not
/// reassociated by the compiler, so one running sum would not vectorise.
#[inline(always)]
fn dot_lanes<T: WithDType>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// [`dot_lanes`] compiled for AVX2: twice the lanes of the SSE2 baseline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2<T: WithDType>(a: &[T], b: &[T]) -> T {
    dot_lanes(a, b)
}

/// [`dot_lanes`] for f32 in AVX2 registers, bit for bit: the eight accumulators are one
/// 256-bit register (products rounded before the sum: no FMA), reduced in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let len = a.len().min(b.len());
    let full = len - len % 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // SAFETY: i + 8 <= full <= len of both slices.
        let x = _mm256_loadu_ps(a.as_ptr().add(i));
        let y = _mm256_loadu_ps(b.as_ptr().add(i));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        i += 8;
    }
    // (acc0 + acc4, acc1 + acc5, acc2 + acc6, acc3 + acc7) = (p, q, r, t); then (p + q) + (r + t).
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_hadd_ps(h, h);
    let mut s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    for j in full..len {
        s += a[j] * b[j];
    }
    s
}

macro_rules! elem {
    ($t:ty, $avx2:expr) => {
        impl Elem for $t {
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            #[inline]
            fn dot(a: &[Self], b: &[Self]) -> Self {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { Self::dot_in_avx2(a, b) };
                }
                dot_lanes(a, b)
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn dot_in_avx2(a: &[Self], b: &[Self]) -> Self {
                $avx2(a, b)
            }
        }
    };
}
elem!(f32, dot_f32_avx2);
elem!(f64, dot_avx2::<f64>);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash3(seed: u64, a: u64, b: u64) -> u64 {
    splitmix(splitmix(seed ^ a.wrapping_mul(0x2545_f491_4f6c_dd1d)) ^ b)
}

/// One node's bounded list as a binary min-heap on similarity (root = worst kept entry), so a
/// candidate is rejected by one comparison; `new` marks entries not yet joined.
struct Heap<T> {
    idx: Vec<u32>,
    sim: Vec<T>,
}

impl<T: Elem> Heap<T> {
    fn new(cap: usize) -> Self {
        Self {
            idx: vec![KnnLists::EMPTY; cap],
            sim: vec![T::NEG_INF; cap],
        }
    }

    /// Push without a duplicate check (for callers that offer each id once).
    fn push_unchecked(&mut self, j: u32, s: T) {
        heap_replace_root(&mut self.idx, &mut self.sim, None, j, s);
    }

    /// Entries best first, ties to the lower index; empty slots last.
    fn sorted(&self) -> Vec<(u32, f64)> {
        sorted_entries(&self.idx, &self.sim)
    }
}

fn sorted_entries<T: Elem>(idx: &[u32], sim: &[T]) -> Vec<(u32, f64)> {
    let mut e: Vec<(u32, f64)> = idx
        .iter()
        .zip(sim)
        .filter(|(&j, _)| j != KnnLists::EMPTY)
        .map(|(&j, &s)| (j, s.to_f64()))
        .collect();
    e.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    e
}

fn lists_from(n: usize, k: usize, rows: Vec<Vec<(u32, f64)>>) -> KnnLists {
    let mut indices = vec![KnnLists::EMPTY; n * k];
    let mut similarities = vec![f64::NEG_INFINITY; n * k];
    for (i, row) in rows.into_iter().enumerate() {
        for (s, (j, v)) in row.into_iter().take(k).enumerate() {
            indices[i * k + s] = j;
            similarities[i * k + s] = v;
        }
    }
    KnnLists {
        n,
        k,
        indices,
        similarities,
    }
}

/// Replaces the root of a min-heap (idx, sim[, flag]) with (j, s) if `s` beats it, keeping the
/// heap order; ties with the root are rejected. Returns whether it was inserted.
// Negated comparisons read as "not better than" (values are never NaN: inputs are checked).
#[allow(clippy::neg_cmp_op_on_partial_ord)]
#[inline]
fn heap_replace_root<T: PartialOrd + Copy>(
    idx: &mut [u32],
    sim: &mut [T],
    mut flag: Option<&mut [u8]>,
    j: u32,
    s: T,
) -> bool {
    let len = idx.len();
    if len == 0 || !(s > sim[0]) {
        return false;
    }
    let mut pos = 0;
    loop {
        let (l, r) = (2 * pos + 1, 2 * pos + 2);
        let mut child = l;
        if l >= len {
            break;
        }
        if r < len && sim[r] < sim[l] {
            child = r;
        }
        if !(sim[child] < s) {
            break;
        }
        idx[pos] = idx[child];
        sim[pos] = sim[child];
        if let Some(f) = flag.as_deref_mut() {
            f[pos] = f[child];
        }
        pos = child;
    }
    idx[pos] = j;
    sim[pos] = s;
    if let Some(f) = flag {
        f[pos] = 1;
    }
    true
}

/// [`dot_lanes`], in AVX2 registers where `AVX2` (bit for bit the same).
#[inline(always)]
fn pair_dot<T: Elem, const AVX2: bool>(a: &[T], b: &[T]) -> T {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is set only by `joins_avx2`, which runs after checking for AVX2.
        return unsafe { T::dot_in_avx2(a, b) };
    }
    dot_lanes(a, b)
}

/// Updates looked ahead by [`Search::apply`]'s prefetch.
const PREFETCH: usize = 16;

/// Directed list updates `(target, neighbour, similarity)`, one vector per owner of a range
/// of `span` target nodes.
type Updates<T> = Vec<Vec<(u32, u32, T)>>;

/// One node's local join into `out`: for every pair (new, new) and (new, old) of its
/// candidates `nw` / `od`, an update of each end whose worst kept entry it beats, pushed to
/// that end's owner (`target / span`). `#[inline(always)]` so that the dot products compile
/// with the caller's target features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn join_node<T: Elem, const AVX2: bool>(
    data: &[T],
    d: usize,
    worst: impl Fn(u32) -> T,
    nw: &[u32],
    od: &[u32],
    span: usize,
    wbuf: &mut Vec<T>,
    out: &mut Updates<T>,
) {
    let row = |u: u32| &data[u as usize * d..(u as usize + 1) * d];
    // The ends' worst entries up front: one pass of independent (overlapping) cache misses.
    wbuf.clear();
    wbuf.extend(nw.iter().chain(od).map(|&u| worst(u)));
    let (wn, wo) = wbuf.split_at(nw.len());
    for (a, &u) in nw.iter().enumerate() {
        let (ru, wu) = (row(u), wn[a]);
        for (&v, &wv) in nw[a + 1..]
            .iter()
            .zip(&wn[a + 1..])
            .chain(od.iter().zip(wo))
        {
            if u == v {
                continue;
            }
            let s = pair_dot::<T, AVX2>(ru, row(v));
            if s > wu {
                out[u as usize / span].push((u, v, s));
            }
            if s > wv {
                out[v as usize / span].push((v, u, s));
            }
        }
    }
}

/// Nodes per local-join batch: the batch's updates are held at once (bounded memory), and
/// the next batch sees the improved lists (faster convergence than one update per iteration).
const BATCH: usize = 2048;

/// Nodes per join task inside a batch (one update vector each).
const CHUNK: usize = 64;

/// The live prefix of a candidate list (live ids first, then [`KnnLists::EMPTY`]).
fn live(c: &[u32]) -> &[u32] {
    let m = c
        .iter()
        .position(|&j| j == KnnLists::EMPTY)
        .unwrap_or(c.len());
    &c[..m]
}

/// The local joins of `lists(0..count)` (each: new and old candidate ids) against `s`'s
/// current lists. Generic code, compiled once per target feature set below.
#[inline(always)]
fn joins_impl<'l, T: Elem, const AVX2: bool>(
    s: &Search<'_, T>,
    count: usize,
    lists: &dyn Fn(usize) -> (&'l [u32], &'l [u32]),
) -> Updates<T> {
    let (pool, span) = (s.pool, s.span);
    let worst = |u: u32| s.sim[u as usize * pool];
    let mut out = vec![Vec::new(); s.n.div_ceil(span)];
    let mut wbuf = Vec::new();
    for c in 0..count {
        if c + 1 < count {
            // The next node's candidate rows and worst entries load while this one joins.
            let (nw, od) = lists(c + 1);
            for &u in nw.iter().chain(od) {
                let row = &s.data[u as usize * s.d..(u as usize + 1) * s.d];
                for line in row.chunks(64 / std::mem::size_of::<T>().max(1)) {
                    prefetch(&line[0]);
                }
                prefetch(&s.sim[u as usize * pool]);
            }
        }
        let (nw, od) = lists(c);
        join_node::<T, AVX2>(s.data, s.d, worst, nw, od, span, &mut wbuf, &mut out);
    }
    out
}

/// [`joins_impl`] compiled for AVX2 (the dot products inline and use 256-bit lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn joins_avx2<'l, T: Elem>(
    s: &Search<'_, T>,
    count: usize,
    lists: &dyn Fn(usize) -> (&'l [u32], &'l [u32]),
) -> Updates<T> {
    joins_impl::<T, true>(s, count, lists)
}

/// [`joins_impl`] for the best target the CPU supports (same results on every path: the
/// dot products add in the same order).
fn joins<'l, T: Elem>(
    s: &Search<'_, T>,
    count: usize,
    lists: &dyn Fn(usize) -> (&'l [u32], &'l [u32]),
) -> Updates<T> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { joins_avx2(s, count, lists) };
    }
    joins_impl::<T, false>(s, count, lists)
}

struct Search<'a, T> {
    data: &'a [T],
    n: usize,
    d: usize,
    k: usize,
    pool: usize,
    cand: usize,
    /// Nodes per owner of list updates: one contiguous range per thread.
    span: usize,
    idx: Vec<u32>,
    sim: Vec<T>,
    new: Vec<u8>,
}

impl<'a, T: Elem> Search<'a, T> {
    fn new(data: &'a [T], n: usize, d: usize, k: usize, p: &NnDescent) -> Result<Self> {
        let pool = p
            .pool
            .unwrap_or_else(|| (6 * k).max(24))
            .max(k)
            .min(n.saturating_sub(1));
        let cand = p.max_candidates.unwrap_or(pool.min(32)).max(1);
        let what = "nn_descent: neighbour lists";
        check::checked_elems(what, &[n, pool], 4 + T::DTYPE.size_in_bytes() + 1)?;
        check::checked_elems("nn_descent: candidates", &[n, cand, 2], 4)?;
        check::checked_elems("nn_descent: reverse lists", &[n, pool], 4)?;
        let mut s = Self {
            data,
            n,
            d,
            k,
            pool,
            cand,
            span: n.div_ceil(rayon::current_num_threads().max(1)).max(1),
            idx: check::try_vec(what, n * pool, KnnLists::EMPTY)?,
            sim: check::try_vec(what, n * pool, T::NEG_INF)?,
            new: check::try_vec(what, n * pool, 1u8)?,
        };
        let t0 = std::time::Instant::now();
        if s.n - 1 > 2 * s.pool {
            s.leaf_forest(p.seed, p.tree_count(n), s.pool.max(p.leaf));
        }
        let t1 = t0.elapsed().as_secs_f64();
        s.fill(p.seed);
        if std::env::var_os("DAHN_NND_TRACE").is_some() {
            eprintln!(
                "forest {t1:.2}s fill {:.2}s",
                t0.elapsed().as_secs_f64() - t1
            );
        }
        Ok(s)
    }

    /// Fills the lists in place: every other node when N - 1 is within twice the pool, else
    /// random distinct ids in the slots still empty (all of them without a forest).
    fn fill(&mut self, seed: u64) {
        let (n, d, pool, data) = (self.n, self.d, self.pool, self.data);
        if pool == 0 {
            return;
        }
        self.idx
            .par_chunks_mut(pool)
            .zip(self.sim.par_chunks_mut(pool))
            .enumerate()
            .for_each(|(i, (idx, sim))| {
                let dot = |j: usize| T::dot(&data[i * d..(i + 1) * d], &data[j * d..(j + 1) * d]);
                if n - 1 <= 2 * pool {
                    for j in (0..n).filter(|&j| j != i) {
                        heap_replace_root(idx, sim, None, j as u32, dot(j));
                    }
                    return;
                }
                let mut state = hash3(seed, u64::MAX, i as u64);
                let mut empty = idx.iter().filter(|&&j| j == KnnLists::EMPTY).count();
                while empty > 0 {
                    state = splitmix(state);
                    let j = ((state as u128 * n as u128) >> 64) as usize;
                    if j == i || idx.contains(&(j as u32)) {
                        continue;
                    }
                    // Empty slots hold -inf: they are the heap's roots until all are filled.
                    heap_replace_root(idx, sim, None, j as u32, dot(j));
                    empty -= 1;
                }
            });
    }

    /// Whether any real list entry is still marked new (not yet sampled as a candidate).
    fn any_new(&self) -> bool {
        self.idx
            .iter()
            .zip(&self.new)
            .any(|(&j, &f)| j != KnnLists::EMPTY && f != 0)
    }

    fn run(mut self, p: &NnDescent) -> KnnLists {
        let (n, pool, cand) = (self.n, self.pool, self.cand);
        if pool > 0 && n - 1 > 2 * pool {
            let mut new_c = vec![KnnLists::EMPTY; n * cand];
            let mut old_c = vec![KnnLists::EMPTY; n * cand];
            let mut rev = vec![0u32; n * pool];
            let mut start = vec![0usize; n + 1];
            let trace = std::env::var_os("DAHN_NND_TRACE").is_some();
            for iter in 0..p.max_iters {
                let t0 = std::time::Instant::now();
                self.candidates(
                    p.seed,
                    iter as u64,
                    &mut new_c,
                    &mut old_c,
                    &mut rev,
                    &mut start,
                );
                let t1 = t0.elapsed().as_secs_f64();
                let changed = self.join(&new_c, &old_c);
                if trace {
                    eprintln!(
                        "iter {iter}: cand {t1:.2}s join {:.2}s changed {changed}",
                        t0.elapsed().as_secs_f64() - t1
                    );
                }
                if (changed as f64) <= p.delta * (n * pool) as f64 {
                    break;
                }
                // A fixed point: no entry changed and none is left unsampled as new, so the next
                // iteration has no candidate pair to join. Ends a run whose delta never stops it
                // (0, negative, NaN) however large max_iters is.
                if changed == 0 && !self.any_new() {
                    break;
                }
            }
        }
        // Each list's k best, best first, written in place (no per-row copies of the pools).
        let k = self.k;
        let mut indices = vec![KnnLists::EMPTY; n * k];
        let mut similarities = vec![f64::NEG_INFINITY; n * k];
        if k > 0 {
            let this = &self;
            indices
                .par_chunks_mut(k)
                .zip(similarities.par_chunks_mut(k))
                .enumerate()
                .for_each(|(i, (ix, sm))| {
                    let r = i * pool..(i + 1) * pool;
                    let best = sorted_entries(&this.idx[r.clone()], &this.sim[r]);
                    for (s, (j, v)) in best.into_iter().take(k).enumerate() {
                        ix[s] = j;
                        sm[s] = v;
                    }
                });
        }
        KnnLists {
            n,
            k,
            indices,
            similarities,
        }
    }

    /// Samples each node's join candidates: up to `cand` of its new and of its old neighbours,
    /// forward and reverse (uniformly: a random priority per directed edge and iteration, the
    /// `cand` smallest over distinct ids kept), written live ids first in ascending order; then
    /// marks the sampled new ones old. `rev` (N * pool) and `start` (N + 1) are scratch for the
    /// reverse lists.
    fn candidates(
        &mut self,
        seed: u64,
        iter: u64,
        new_c: &mut [u32],
        old_c: &mut [u32],
        rev: &mut [u32],
        start: &mut [usize],
    ) {
        let (n, pool, cand) = (self.n, self.pool, self.cand);
        let (idx, new) = (&self.idx, &self.new);
        // Reverse lists (CSR by target; entry = source | new flag << 31, sources ascending):
        // count, prefix sum, then one task per range of targets scans every edge and fills its
        // own part (no locks, the same order whatever the number of tasks).
        start.fill(0);
        for &j in idx.iter().filter(|&&j| j != KnnLists::EMPTY) {
            start[j as usize + 1] += 1;
        }
        for j in 0..n {
            start[j + 1] += start[j];
        }
        let tasks = rayon::current_num_threads().max(1);
        let span = n.div_ceil(tasks).max(1);
        let mut parts = Vec::with_capacity(tasks);
        let mut rest = &mut rev[..start[n]];
        for lo in (0..n).step_by(span) {
            let hi = (lo + span).min(n);
            let (head, tail) = rest.split_at_mut(start[hi] - start[lo]);
            parts.push((lo, hi, head));
            rest = tail;
        }
        let start = &*start;
        parts.into_par_iter().for_each(|(lo, hi, out)| {
            let mut fill: Vec<usize> = start[lo..hi].iter().map(|&s| s - start[lo]).collect();
            for (s, &j) in idx.iter().enumerate() {
                let j = j as usize;
                if (lo..hi).contains(&j) {
                    out[fill[j - lo]] = (s / pool) as u32 | (new[s] as u32) << 31;
                    fill[j - lo] += 1;
                }
            }
        });
        let rev = &*rev;
        new_c
            .par_chunks_mut(cand)
            .zip(old_c.par_chunks_mut(cand))
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(nk, ok), (i, (nc, oc))| {
                    nk.clear();
                    ok.clear();
                    let key = |a: usize, b: usize, id: usize| {
                        hash3(seed, iter, ((a as u64) << 32) | b as u64) >> 32 << 32 | id as u64
                    };
                    for s in i * pool..(i + 1) * pool {
                        let j = idx[s];
                        if j != KnnLists::EMPTY {
                            let k = key(i, j as usize, j as usize);
                            if new[s] != 0 {
                                nk.push(k)
                            } else {
                                ok.push(k)
                            }
                        }
                    }
                    for &r in &rev[start[i]..start[i + 1]] {
                        let src = (r & 0x7fff_ffff) as usize;
                        let k = key(src, i, src);
                        if r >> 31 != 0 {
                            nk.push(k)
                        } else {
                            ok.push(k)
                        }
                    }
                    if nk.is_empty() {
                        // No new neighbour: the join has no pair for this node, old ones unused.
                        ok.clear();
                    }
                    for (keys, c) in [(&mut *nk, nc), (&mut *ok, oc)] {
                        keys.sort_unstable();
                        let mut m = 0;
                        for &k in keys.iter() {
                            if m == cand {
                                break;
                            }
                            if !c[..m].contains(&(k as u32)) {
                                c[m] = k as u32;
                                m += 1;
                            }
                        }
                        c[..m].sort_unstable();
                        c[m..].fill(KnnLists::EMPTY);
                    }
                },
            );
        let tm = std::time::Instant::now();
        let nc: &[u32] = new_c;
        self.idx
            .par_chunks(pool)
            .zip(self.new.par_chunks_mut(pool))
            .enumerate()
            .for_each(|(i, (idx, new))| {
                let sampled = live(&nc[i * cand..(i + 1) * cand]);
                for (j, f) in idx.iter().zip(new.iter_mut()) {
                    if *f != 0 && sampled.binary_search(j).is_ok() {
                        *f = 0;
                    }
                }
            });
        if std::env::var_os("DAHN_NND_TRACE").is_some() {
            eprintln!("mark {:.2}s", tm.elapsed().as_secs_f64());
        }
    }

    /// The local join: every pair (new, new) and (new, old) among a node's candidates is
    /// offered to both ends' lists. Returns the number of list entries changed.
    fn join(&mut self, new_c: &[u32], old_c: &[u32]) -> usize {
        let (n, cand) = (self.n, self.cand);
        let mut changed = 0;
        for b0 in (0..n).step_by(BATCH) {
            let b1 = (b0 + BATCH).min(n);
            let this = &*self;
            let parts: Vec<Updates<T>> = (0..(b1 - b0).div_ceil(CHUNK))
                .into_par_iter()
                .map(|c| {
                    let lo = b0 + c * CHUNK;
                    let lists = |t: usize| {
                        let i = lo + t;
                        let r = i * cand..(i + 1) * cand;
                        (live(&new_c[r.clone()]), live(&old_c[r]))
                    };
                    joins(this, CHUNK.min(b1 - lo), &lists)
                })
                .collect();
            changed += self.apply(&parts);
        }
        changed
    }

    /// Applies the updates (target, j, s) of every part, in order; returns the entries changed.
    fn apply(&mut self, parts: &[Updates<T>]) -> usize {
        let (pool, span) = (self.pool, self.span);
        // Each task owns a range of target nodes and reads its own vector of every part: no
        // locks, and a node's offers arrive in generation order whatever the number of tasks
        // (reproducible).
        self.idx
            .par_chunks_mut(span * pool)
            .zip(self.sim.par_chunks_mut(span * pool))
            .zip(self.new.par_chunks_mut(span * pool))
            .enumerate()
            .map(|(t, ((idx, sim), new))| {
                let lo = t * span;
                let hi = lo + idx.len() / pool;
                let mut c = 0;
                let ups = parts.iter().flat_map(|p| &p[t]);
                // Prefetch the target rows a few updates ahead: the updates hit random rows.
                let ahead = parts.iter().flat_map(|p| &p[t]).skip(PREFETCH);
                for (&(target, j, s), next) in
                    ups.zip(ahead.map(Some).chain(std::iter::repeat(None)))
                {
                    if let Some(&(u, _, _)) = next {
                        let r = (u as usize - lo) * pool;
                        prefetch(&sim[r]);
                        prefetch(&idx[r]);
                    }
                    let target = target as usize;
                    debug_assert!((lo..hi).contains(&target));
                    let r = (target - lo) * pool..(target - lo + 1) * pool;
                    if s > sim[r.start] && !idx[r.clone()].contains(&j) {
                        heap_replace_root(
                            &mut idx[r.clone()],
                            &mut sim[r.clone()],
                            Some(&mut new[r]),
                            j,
                            s,
                        );
                        c += 1;
                    }
                }
                c
            })
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-0.5, 0.5) (the leaf forest's tests use them too).
    pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len)
            .map(|i| (splitmix(seed ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }

    #[test]
    fn avx2_dot_is_bit_for_bit_the_portable_one() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            for len in [0, 1, 7, 8, 9, 16, 63, 64, 65, 130] {
                let (a, b) = (values(len, 1), values(len, 2));
                // SAFETY: AVX2 checked just above.
                let fast = unsafe { f32::dot_in_avx2(&a, &b) };
                assert_eq!(fast.to_bits(), dot_lanes(&a, &b).to_bits(), "len {len}");
                let (a, b): (Vec<f64>, Vec<f64>) = (
                    a.iter().map(|&v| v as f64).collect(),
                    b.iter().map(|&v| v as f64).collect(),
                );
                let fast = unsafe { f64::dot_in_avx2(&a, &b) };
                assert_eq!(fast.to_bits(), dot_lanes(&a, &b).to_bits(), "len {len}");
            }
        }
    }

    #[test]
    fn forest_start_gives_every_node_distinct_neighbours() -> Result<()> {
        // 600 uniform points in 8-d: the random start plus 4 trees of 48-point leaves, no descent.
        let (n, d, k) = (600, 8, 5);
        let x = Tensor::from_vec(values(n * d, 3), (n, d), &Device::Cpu)?;
        let p = NnDescent::default().max_iters(0).trees(Some(4)).leaf(48);
        let lists = nn_descent(&x, k, &p)?;
        for i in 0..n {
            let (idx, sim) = lists.row(i);
            let mut ids = idx.to_vec();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), k, "row {i}: {idx:?}");
            assert!(idx.iter().all(|&j| j != i as u32 && (j as usize) < n));
            assert!(sim.windows(2).all(|w| w[0] >= w[1]), "best first");
        }
        // The trees alone already find many true neighbours (a random start: ~pool / N).
        let rows: Vec<usize> = (0..n).step_by(7).collect();
        let exact = brute_force_rows(&x, &rows, k)?;
        let forest = lists.recall(&rows, &exact)?;
        let random = nn_descent(&x, k, &p.trees(Some(0)))?.recall(&rows, &exact)?;
        assert!(
            forest > 2.0 * random && forest > 0.3,
            "{forest} vs {random}"
        );
        Ok(())
    }

    #[test]
    fn descent_reaches_high_recall_on_uniform_data() -> Result<()> {
        // Uniform 12-d points (no clusters): the descent, not the start, finds the neighbours.
        let (n, d, k) = (1200, 12, 8);
        let x = Tensor::from_vec(values(n * d, 4), (n, d), &Device::Cpu)?;
        let rows: Vec<usize> = (0..n).step_by(11).collect();
        let exact = brute_force_rows(&x, &rows, k)?;
        let p = NnDescent::default().seed(5);
        let recall = nn_descent(&x, k, &p)?.recall(&rows, &exact)?;
        assert!(recall >= 0.95, "recall@{k} = {recall}");
        Ok(())
    }
}
