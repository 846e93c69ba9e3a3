//! [`GraphCache`]: builds (W, deg, neighbour table, L, operator) for sets of patterns and reuses
//! them while the patterns are unchanged.
//!
//! **Cache key** ([`CacheKey`]): a 64-bit fixed-seed `ahash` of the patterns' values (their bit
//! patterns: f32 for f16/bf16/f32, which hold them exactly, f64 otherwise), plus the exact shape,
//! dtype and device location. Never a pointer: an in-place change that keeps the sum (which
//! fools difflayers' `(data_ptr, shape, sum)` key, B8/D10) changes the key. A hit also compares the
//! stored bit patterns of the values with the query's, so a hash collision costs a rebuild, never a
//! wrong graph. Hashing costs one host copy of the patterns (O(N d)), negligible next to the
//! O(N^2 d) graph build; the hash is `ahash` rather than std's SipHash because a cached forward
//! hashes every call (SipHash of the f64 bit patterns was 3.4% of a cached (8, 256, 64) forward).
//! The config is fixed per cache.
//!
//! **Bound**: least-recently-used eviction at [`GraphCache::capacity`] entries
//! ([`GraphCache::DEFAULT_CAPACITY`] unless given), so that a batch of per-sample graphs (one entry
//! per sample) hits whatever its size up to the bound; [`GraphCache::ensure_capacity`] raises it.

use crate::{
    create_operator, DiffusionConfig, DiffusionError, DiffusionMode, DiffusionOperator,
    FactoredDiffusion,
};
use candle_core::{DType, DeviceLocation, Result, Tensor};
use dahn_graph::{Graph, GraphBuilder, GraphMatrix};
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What identifies a pattern set in the [`GraphCache`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Hash of the values' bit patterns, in row-major order.
    pub value_hash: u64,
    /// Exact shape.
    pub shape: Vec<usize>,
    /// dtype.
    pub dtype: DType,
    /// Device.
    pub device: DeviceLocation,
}

impl CacheKey {
    /// The key of `patterns`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_diffusion::CacheKey;
    /// let p = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
    /// assert_eq!(CacheKey::of(&p)?, CacheKey::of(&p.copy()?)?);
    /// assert_ne!(CacheKey::of(&p)?, CacheKey::of(&p.flip(&[0])?)?);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn of(patterns: &Tensor) -> Result<Self> {
        Ok(Values::of(patterns)?.0)
    }
}

/// Everything built for one pattern set (difflayers' `(W, deg, adj_indices, L, op)`).
#[derive(Debug, Clone)]
pub struct CachedGraph {
    /// The kNN graph (sparse weights; dense view with `graph.weights()`).
    pub graph: Graph,
    /// Degrees `W 1` (N,), in the patterns' dtype.
    pub degrees: Tensor,
    /// Neighbour table (N, k') `U32`.
    pub neighbours: Tensor,
    /// The (sparse) Laplacian for simple/iterative/spectral; `None` for factored (as difflayers).
    pub laplacian: Option<GraphMatrix>,
    /// The configured operator with `config.eta` and `config.steps`.
    pub operator: Arc<dyn DiffusionOperator>,
}

/// The host bit patterns of a pattern set, kept beside its key so that a hit is an exact
/// equality, not only an equal hash. Stored narrow where exact (f16/bf16/f32 fit f32 exactly) to
/// halve the memory of f32 entries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Values {
    Bits32(Vec<u32>),
    Bits64(Vec<u64>),
}

impl Values {
    /// The key and the values of `patterns`, from one host copy.
    fn of(patterns: &Tensor) -> Result<(CacheKey, Self)> {
        let p = patterns.detach().flatten_all()?;
        // Fixed seeds: the same values give the same key in every cache of the process.
        let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
        // One `write` of the whole slice (integer slices hash as their bytes).
        let values = match p.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => {
                // `into_iter` + `collect` to a type of the same size reuses the host copy.
                let host = p.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let bits: Vec<u32> = host.into_iter().map(f32::to_bits).collect();
                bits.hash(&mut h);
                Values::Bits32(bits)
            }
            _ => {
                let host = p.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let bits: Vec<u64> = host.into_iter().map(f64::to_bits).collect();
                bits.hash(&mut h);
                Values::Bits64(bits)
            }
        };
        let key = CacheKey {
            value_hash: h.finish(),
            shape: patterns.dims().to_vec(),
            dtype: patterns.dtype(),
            device: patterns.device().location(),
        };
        Ok((key, values))
    }
}

#[derive(Debug)]
struct Entry {
    key: CacheKey,
    values: Values,
    graph: Arc<CachedGraph>,
}

/// Entries, least recently used first.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    entries: VecDeque<Entry>,
}

impl Lru {
    fn lookup(&mut self, key: &CacheKey, values: &Values) -> Option<Arc<CachedGraph>> {
        let pos = self
            .entries
            .iter()
            .position(|e| &e.key == key && &e.values == values)?;
        let e = self.entries.remove(pos)?;
        let g = e.graph.clone();
        self.entries.push_back(e);
        Some(g)
    }

    fn insert(&mut self, entry: Entry) {
        // Another thread may have built the same set meanwhile: keep one copy.
        self.entries
            .retain(|e| !(e.key == entry.key && e.values == entry.values));
        self.entries.push_back(entry);
        self.trim();
    }

    fn trim(&mut self) {
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }
}

impl CachedGraph {
    /// Builds the graph objects of `patterns` (N, d) for `config`: `GraphBuilder(k_neighbors)`
    /// on the detached patterns, then [`CachedGraph::from_graph`]. What [`GraphCache::get`] does
    /// on a miss; call it to build graphs you keep yourself.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_diffusion::{CachedGraph, DiffusionConfig};
    /// let p = Tensor::new(&[[1f64, 0.], [0.9, 0.1], [0., 1.]], &Device::Cpu)?;
    /// let g = CachedGraph::build(&p, &DiffusionConfig::default().k_neighbors(1))?;
    /// assert_eq!((g.graph.n(), g.operator.n()), (3, 3));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn build(patterns: &Tensor, config: &DiffusionConfig) -> Result<Self> {
        config.validate()?;
        let graph = GraphBuilder::new()
            .k(config.k_neighbors)
            .method(config.knn_method)
            .build(&patterns.detach())?;
        Self::from_graph(graph, config)
    }

    /// The graph objects of a graph built elsewhere (e.g. your own kNN): degrees, neighbour
    /// table, and for simple/iterative/spectral the Laplacian (normalised iff
    /// `use_normalized_laplacian`) with the mode's operator on it; factored: the operator on
    /// (W, deg), no L. The operator has `config.eta` and `config.steps`. Errors: invalid config,
    /// unstable operator.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_diffusion::{CachedGraph, DiffusionConfig, DiffusionMode};
    /// use dahn_graph::GraphBuilder;
    /// let p = Tensor::new(&[[1f64, 0.], [0.9, 0.1], [0., 1.]], &Device::Cpu)?;
    /// let graph = GraphBuilder::new().k(1).build(&p)?;
    /// let cfg = DiffusionConfig::default().mode(DiffusionMode::Simple).eta(0.2);
    /// let g = CachedGraph::from_graph(graph, &cfg)?;
    /// assert!(g.laplacian.is_some());
    /// assert_eq!(g.operator.mode(), DiffusionMode::Simple);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_graph(graph: Graph, config: &DiffusionConfig) -> Result<Self> {
        config.validate()?;
        let cfg = config;
        let degrees = graph.degrees()?;
        let neighbours = graph.neighbours()?;
        let (laplacian, operator): (Option<GraphMatrix>, Arc<dyn DiffusionOperator>) =
            match cfg.diffusion_mode {
                DiffusionMode::Factored => (
                    None,
                    Arc::new(FactoredDiffusion::from_graph(
                        graph.matrix(),
                        &degrees,
                        cfg.eta,
                        cfg.steps,
                    )?),
                ),
                mode => {
                    let l: GraphMatrix = graph.try_laplacian(cfg.use_normalized_laplacian)?.into();
                    let op = create_operator(mode, &l, cfg.eta, cfg.steps)?;
                    (Some(l), op)
                }
            };
        Ok(Self {
            graph,
            degrees,
            neighbours,
            laplacian,
            operator,
        })
    }
}

/// difflayers' `GraphCache(config)`, holding up to [`capacity`](GraphCache::capacity) pattern
/// sets (least recently used evicted first; [`GraphCache::DEFAULT_CAPACITY`] by default), so that
/// one graph per sample of a batch hits on the next call. Thread-safe (`&self`): a miss builds
/// outside the lock, so two threads missing on one set may both build it (one copy is kept).
///
/// Memory per entry: the graph (O(N k)) and the patterns' bit patterns (N d values, 4 bytes each
/// for f16/bf16/f32, 8 for f64), kept for the exact equality check on a hit.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{DiffusionConfig, GraphCache};
/// let cache = GraphCache::new(DiffusionConfig::default().k_neighbors(1))?;
/// let p = Tensor::new(&[[1f64, 0.], [0.9, 0.1], [0., 1.]], &Device::Cpu)?;
/// let q = (&p * 2.)?;
/// let a = cache.get(&p)?;
/// cache.get(&q)?;
/// let b = cache.get(&p)?; // still cached: two sets fit
/// assert!(std::sync::Arc::ptr_eq(&a, &b));
/// assert_eq!((cache.builds(), cache.hits(), cache.len()), (2, 1, 2));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug)]
pub struct GraphCache {
    config: DiffusionConfig,
    lru: Mutex<Lru>,
    builds: AtomicUsize,
    hits: AtomicUsize,
}

impl GraphCache {
    /// Pattern sets a cache keeps unless told otherwise: a batch of up to 64 samples with one
    /// graph each hits on the next call.
    pub const DEFAULT_CAPACITY: usize = 64;

    /// A cache for `config` (validated) keeping [`Self::DEFAULT_CAPACITY`] pattern sets.
    pub fn new(config: DiffusionConfig) -> Result<Self> {
        Self::with_capacity(config, Self::DEFAULT_CAPACITY)
    }

    /// A cache for `config` (validated) keeping up to `capacity` pattern sets. Errors:
    /// `capacity == 0` (turn caching off with `cache_graph(false)` instead).
    ///
    /// ```
    /// use dahn_diffusion::{DiffusionConfig, GraphCache};
    /// let cache = GraphCache::with_capacity(DiffusionConfig::default(), 8)?;
    /// assert_eq!(cache.capacity(), 8);
    /// let e = GraphCache::with_capacity(DiffusionConfig::default(), 0).unwrap_err();
    /// assert!(e.to_string().contains("capacity"));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_capacity(config: DiffusionConfig, capacity: usize) -> Result<Self> {
        config.validate()?;
        if capacity == 0 {
            return Err(DiffusionError::InvalidConfig(
                "GraphCache capacity must be >= 1, got 0 (use cache_graph(false) to not cache)"
                    .into(),
            )
            .into());
        }
        Ok(Self {
            config,
            lru: Mutex::new(Lru {
                capacity,
                entries: VecDeque::new(),
            }),
            builds: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
        })
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic while holding the lock cannot leave the queue inconsistent (each operation is
        // one VecDeque call or a trim), so a poisoned lock is still usable.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &DiffusionConfig {
        &self.config
    }

    /// Number of graph builds so far (cache misses, or every call with `cache_graph` off).
    pub fn builds(&self) -> usize {
        self.builds.load(Ordering::Relaxed)
    }

    /// Number of cache hits so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Most pattern sets kept.
    pub fn capacity(&self) -> usize {
        self.lru().capacity
    }

    /// Pattern sets kept now.
    pub fn len(&self) -> usize {
        self.lru().entries.len()
    }

    /// Whether no pattern set is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raises the capacity to at least `n` (never lowers it). A caller that looks up `n` sets in
    /// turn on every call (one per sample) needs room for all of them: with fewer, LRU evicts each
    /// set just before it is asked for again and nothing ever hits.
    ///
    /// ```
    /// use dahn_diffusion::{DiffusionConfig, GraphCache};
    /// let cache = GraphCache::with_capacity(DiffusionConfig::default(), 4)?;
    /// cache.ensure_capacity(100);
    /// cache.ensure_capacity(10);
    /// assert_eq!(cache.capacity(), 100);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn ensure_capacity(&self, n: usize) {
        let mut lru = self.lru();
        lru.capacity = lru.capacity.max(n);
    }

    /// Forgets every cached entry.
    pub fn invalidate(&self) {
        self.lru().entries.clear();
    }

    /// The graph objects for `patterns` (N, d): cached if an entry's key and values match and
    /// `cache_graph` is on, else built ([`CachedGraph::build`]) and, with `cache_graph`, kept
    /// (evicting the least recently used entry beyond the capacity). Errors: bad patterns
    /// (dahn-graph errors), unstable operator.
    pub fn get(&self, patterns: &Tensor) -> Result<Arc<CachedGraph>> {
        if !self.config.cache_graph {
            let built = Arc::new(CachedGraph::build(patterns, &self.config)?);
            self.builds.fetch_add(1, Ordering::Relaxed);
            return Ok(built);
        }
        let (key, values) = Values::of(patterns)?;
        if let Some(g) = self.lru().lookup(&key, &values) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(g);
        }
        let built = Arc::new(CachedGraph::build(patterns, &self.config)?);
        self.builds.fetch_add(1, Ordering::Relaxed);
        self.lru().insert(Entry {
            key,
            values,
            graph: built.clone(),
        });
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sum_preserving_swap_invalidates_the_entry() -> Result<()> {
        // B8/D10: swapping two rows keeps data pointer, shape and sum, but not the key.
        let cache = GraphCache::new(DiffusionConfig::default().k_neighbors(2))?;
        let a = Tensor::new(
            &[
                [1f64, 0., 2.],
                [0., 3., -1.],
                [2., 2., 0.],
                [-1., 0., 1.],
                [1., 1., 1.],
                [3., -2., 0.],
            ],
            &Device::Cpu,
        )?;
        let swapped = Tensor::cat(
            &[
                &a.narrow(0, 1, 1)?,
                &a.narrow(0, 0, 1)?,
                &a.narrow(0, 2, 4)?,
            ],
            0,
        )?;
        let ga = cache.get(&a)?;
        assert_eq!(cache.builds(), 1);
        let gs = cache.get(&swapped)?;
        assert_eq!(cache.builds(), 2);
        assert_ne!(
            ga.graph.weights()?.to_vec2::<f64>()?,
            gs.graph.weights()?.to_vec2::<f64>()?
        );
        cache.get(&swapped)?;
        assert_eq!(cache.builds(), 2, "unchanged patterns hit the cache");
        cache.get(&swapped.to_dtype(DType::F32)?)?;
        assert_eq!(cache.builds(), 3, "dtype is part of the key");
        Ok(())
    }

    #[test]
    fn an_equal_hash_with_other_values_is_a_miss() -> Result<()> {
        // A real SipHash collision cannot be produced in a test: forge an entry whose key is
        // `a`'s but whose values (and graph) are `b`'s, as a collision would leave it.
        let cache = GraphCache::new(DiffusionConfig::default().k_neighbors(1))?;
        let a = Tensor::new(&[[1f32, 0.], [0.9, 0.1], [0., 1.]], &Device::Cpu)?;
        let b = Tensor::new(&[[0f32, 1.], [1., 0.], [0.7, 0.7]], &Device::Cpu)?;
        let (key_a, values_a) = Values::of(&a)?;
        let (_, values_b) = Values::of(&b)?;
        assert_ne!(values_a, values_b);
        let forged = Arc::new(CachedGraph::build(&b, cache.config())?);
        cache.lru().insert(Entry {
            key: key_a,
            values: values_b,
            graph: forged.clone(),
        });
        let got = cache.get(&a)?;
        assert!(
            !Arc::ptr_eq(&got, &forged),
            "a collision must not return b's graph"
        );
        assert_eq!((cache.builds(), cache.hits(), cache.len()), (1, 0, 2));
        assert_eq!(
            got.graph.weights()?.to_vec2::<f32>()?,
            CachedGraph::build(&a, cache.config())?
                .graph
                .weights()?
                .to_vec2::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn cache_off_always_rebuilds_and_modes_build_their_operator() -> Result<()> {
        let p = Tensor::new(
            &[[1f64, 0.], [0.9, 0.1], [0., 1.], [0.2, 0.8]],
            &Device::Cpu,
        )?;
        for mode in [
            DiffusionMode::Simple,
            DiffusionMode::Iterative,
            DiffusionMode::Spectral,
            DiffusionMode::Factored,
        ] {
            let cache = GraphCache::new(
                DiffusionConfig::default()
                    .cache_graph(false)
                    .k_neighbors(1)
                    .mode(mode),
            )?;
            let g = cache.get(&p)?;
            cache.get(&p)?;
            assert_eq!(cache.builds(), 2);
            assert_eq!(g.operator.mode(), mode);
            assert_eq!(g.laplacian.is_none(), mode == DiffusionMode::Factored);
        }
        Ok(())
    }
}
