//! `GraphCache` as a bounded LRU keyed on pattern values (issue 8): sets of one per-sample
//! graph each hit on the next call whatever their number up to the capacity, least recently used
//! sets go first, changed sets rebuild, and the bound is validated.

use candle_core::{DType, Device, Result, Tensor};
use dahn_diffusion::{CachedGraph, DiffusionConfig, DiffusionError, DiffusionMode, GraphCache};
use rstest::rstest;
use std::sync::Arc;

fn config() -> DiffusionConfig {
    DiffusionConfig::default().k_neighbors(2)
}

/// `n` distinct pattern sets of 6 x 3 (set i is set 0 shifted by i, so no two are equal).
fn sets(n: usize) -> Result<Vec<Tensor>> {
    let base = Tensor::randn(0f32, 1., (6, 3), &Device::Cpu)?;
    (0..n).map(|i| &base + i as f64).collect()
}

#[rstest]
#[case::one(1)]
#[case::four(4)]
#[case::eight(8)]
fn every_set_of_a_batch_hits_on_the_next_round(#[case] n: usize) -> Result<()> {
    let cache = GraphCache::new(config())?;
    let sets = sets(n)?;
    let first: Vec<_> = sets.iter().map(|p| cache.get(p)).collect::<Result<_>>()?;
    assert_eq!((cache.builds(), cache.hits(), cache.len()), (n, 0, n));
    for _ in 0..3 {
        for (p, g) in sets.iter().zip(&first) {
            assert!(Arc::ptr_eq(&cache.get(p)?, g));
        }
    }
    assert_eq!((cache.builds(), cache.hits(), cache.len()), (n, 3 * n, n));
    // An equal copy (another allocation) hits too: the key is the values.
    cache.get(&sets[0].copy()?)?;
    assert_eq!(cache.builds(), n);
    Ok(())
}

#[rstest]
#[case::capacity_1(1)]
#[case::capacity_2(2)]
#[case::capacity_5(5)]
fn the_least_recently_used_set_is_evicted_at_the_bound(#[case] capacity: usize) -> Result<()> {
    let cache = GraphCache::with_capacity(config(), capacity)?;
    let sets = sets(capacity + 1)?;
    for p in &sets[..capacity] {
        cache.get(p)?;
    }
    // Touch set 0 so that set 1 (or set 0 itself with capacity 1) is the least recent.
    cache.get(&sets[0])?;
    assert_eq!((cache.builds(), cache.len()), (capacity, capacity));
    cache.get(&sets[capacity])?;
    assert_eq!((cache.builds(), cache.len()), (capacity + 1, capacity));
    let evicted = if capacity == 1 { 0 } else { 1 };
    for (i, p) in sets.iter().enumerate().filter(|&(i, _)| i != evicted) {
        cache.get(p)?;
        assert_eq!(cache.builds(), capacity + 1, "set {i} must still be cached");
    }
    cache.get(&sets[evicted])?;
    assert_eq!(
        cache.builds(),
        capacity + 2,
        "set {evicted} was evicted and rebuilds"
    );
    assert_eq!(cache.len(), capacity);
    Ok(())
}

#[test]
fn a_batch_larger_than_the_capacity_hits_after_ensure_capacity() -> Result<()> {
    let sets = sets(8)?;
    // Cycling through 8 sets with room for 4: LRU evicts each set just before it comes back.
    let small = GraphCache::with_capacity(config(), 4)?;
    for _ in 0..2 {
        for p in &sets {
            small.get(p)?;
        }
    }
    assert_eq!((small.builds(), small.hits()), (16, 0));
    let grown = GraphCache::with_capacity(config(), 4)?;
    grown.ensure_capacity(sets.len());
    for _ in 0..2 {
        for p in &sets {
            grown.get(p)?;
        }
    }
    assert_eq!((grown.builds(), grown.hits(), grown.capacity()), (8, 8, 8));
    Ok(())
}

#[test]
fn changed_values_rebuild_and_unchanged_ones_do_not() -> Result<()> {
    let cache = GraphCache::new(config())?;
    let sets = sets(4)?;
    for p in &sets {
        cache.get(p)?;
    }
    // One value of set 2 changes (same shape, dtype, nearly the same sum).
    let mut v = sets[2].to_vec2::<f32>()?;
    v[3][1] += 1e-3;
    let changed = Tensor::new(v, &Device::Cpu)?;
    cache.get(&changed)?;
    for p in &sets {
        cache.get(p)?;
    }
    assert_eq!((cache.builds(), cache.hits()), (5, 4));
    // dtype and shape are part of the key.
    cache.get(&sets[0].to_dtype(DType::F64)?)?;
    cache.get(&sets[0].reshape((3, 6))?)?;
    assert_eq!(cache.builds(), 7);
    Ok(())
}

#[test]
fn cache_off_keeps_nothing_and_invalidate_forgets_everything() -> Result<()> {
    let sets = sets(3)?;
    let off = GraphCache::new(config().cache_graph(false))?;
    for p in sets.iter().chain(&sets) {
        off.get(p)?;
    }
    assert_eq!((off.builds(), off.hits(), off.len()), (6, 0, 0));
    let on = GraphCache::new(config())?;
    for p in &sets {
        on.get(p)?;
    }
    on.invalidate();
    assert!(on.is_empty());
    on.get(&sets[0])?;
    assert_eq!(on.builds(), 4);
    Ok(())
}

#[test]
fn a_zero_capacity_is_a_typed_error() {
    let e = GraphCache::with_capacity(config(), 0).unwrap_err();
    let typed = DiffusionError::find(&e).cloned();
    assert!(
        matches!(typed, Some(DiffusionError::InvalidConfig(ref m)) if m.contains("capacity must be >= 1, got 0")),
        "{e}"
    );
}

#[rstest]
#[case::simple(DiffusionMode::Simple)]
#[case::factored(DiffusionMode::Factored)]
fn a_graph_built_by_hand_equals_the_cached_one(#[case] mode: DiffusionMode) -> Result<()> {
    let cfg = config().mode(mode).eta(0.2);
    let p = &sets(1)?[0];
    let cached = GraphCache::new(cfg.clone())?.get(p)?;
    let own = CachedGraph::build(p, &cfg)?;
    let x = Tensor::randn(0f32, 1., (6, 4), &Device::Cpu)?;
    assert_eq!(
        cached.operator.apply(&x)?.to_vec2::<f32>()?,
        own.operator.apply(&x)?.to_vec2::<f32>()?
    );
    assert_eq!(
        cached.neighbours.to_vec2::<u32>()?,
        own.neighbours.to_vec2::<u32>()?
    );
    Ok(())
}

#[test]
fn threads_sharing_a_cache_see_one_graph_per_set() -> Result<()> {
    let cache = GraphCache::new(config())?;
    let sets = sets(4)?;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    for p in &sets {
                        cache.get(p)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a thread panicked")?;
        }
        Ok(())
    })?;
    // Concurrent misses may each build, but one copy per set is kept and later calls hit.
    assert_eq!(cache.len(), 4);
    let before = cache.builds();
    for p in &sets {
        cache.get(p)?;
    }
    assert_eq!(cache.builds(), before);
    Ok(())
}

/// The config's kNN method reaches the graph build: NN-descent on a set small enough to be
/// searched exhaustively gives the exact graph, so the same operator.
#[test]
fn the_knn_method_switch_reaches_the_build() -> Result<()> {
    use dahn_graph::{KnnMethod, NnDescent};
    let p = Tensor::randn(0f32, 1., (40, 5), &Device::Cpu)?;
    let exact = CachedGraph::build(&p, &config().k_neighbors(3))?;
    let cfg = config()
        .k_neighbors(3)
        .knn_method(KnnMethod::NnDescent(NnDescent::default()));
    assert!(matches!(cfg.knn_method, KnnMethod::NnDescent(_)));
    let approx = CachedGraph::build(&p, &cfg)?;
    let x = Tensor::randn(0f32, 1., (40, 2), &Device::Cpu)?;
    let d = (exact.operator.apply(&x)? - approx.operator.apply(&x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d < 1e-5, "{d}");
    Ok(())
}
