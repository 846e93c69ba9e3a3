//! k-nearest-neighbour graphs, symmetrised as difflayers does: `A = max(M, M^T)`.
//!
//! Two entry points share one top-k selection ([`crate::top_k_into`]) and one symmetrisation:
//! - [`knn_graph`]: difflayers' `build_knn_graph(S, k)` on a given dense similarity matrix
//!   (differentiable w.r.t. `S`; the diagonal is a candidate, as in difflayers).
//! - [`knn_from_patterns`]: the exact cosine kNN graph of patterns `X` computed by row blocks,
//!   never materialising N x N: memory O(N k + block N), the block similarity by a candle matmul
//!   (multi-threaded gemm) and the per-row selection with rayon. Result in CSR.
//!
//! `k' = min(k, N - 1)` (difflayers clamps silently; so do we, documented). Rows with fewer than
//! k' positive similarities keep only their positive entries (difflayers selects zeros, which add
//! nothing). Ties between equal similarities go to the lower index.

use crate::{check, normalize_rows, top_k_into, Csr, GraphError, Merge};
use candle_core::{DType, Result, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// The clamped neighbour count `min(k, N - 1)`; errors if `k == 0`.
pub fn effective_k(k: usize, n: usize) -> Result<usize> {
    if k == 0 {
        return Err(GraphError::InvalidK(k).into());
    }
    Ok(k.min(n.saturating_sub(1)))
}

/// difflayers' `build_knn_graph(S, k)`: row i keeps its k' largest entries of `S` (diagonal
/// included), `M` holds those values and zeros elsewhere, and the result is `max(M, M^T)`.
/// Differentiable w.r.t. `s` (gradient flows to the selected entries; at `max` ties candle, like
/// torch, splits it in half). `k == 0` keeps nothing: the zero matrix, as difflayers' empty
/// `topk` gives. Errors: `s` not square, NaN/inf.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let s = Tensor::new(&[[0f64, 0.9, 0.1], [0.9, 0., 0.5], [0.1, 0.5, 0.]], &Device::Cpu)?;
/// let a = dahn_graph::knn_graph(&s, 1)?.to_vec2::<f64>()?;
/// assert_eq!(a, vec![vec![0., 0.9, 0.], vec![0.9, 0., 0.5], vec![0., 0.5, 0.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn knn_graph(s: &Tensor, k: usize) -> Result<Tensor> {
    let n = check::square("knn_graph: similarity", s)?;
    if k == 0 {
        return s.zeros_like();
    }
    let k = effective_k(k, n)?;
    let host = check::host_f64(s)?;
    let mut mask = check::try_vec("knn_graph: mask", n * n, 0f64)?;
    mask.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, m)| {
            let mut sel = Vec::with_capacity(k);
            top_k_into(&host[i * n..(i + 1) * n], k, None, &mut sel);
            for (j, _) in sel {
                m[j] = 1.0;
            }
        });
    let mask = Tensor::from_vec(mask, (n, n), s.device())?.to_dtype(s.dtype())?;
    let m = (s * mask)?;
    m.maximum(&m.t()?)
}

/// Rows per similarity block: about 4M entries (16 MB in f32), at least 64 rows. Measured on
/// 2 cores (docs/dahn-performance.md): blocks whose output stays near the cache size are up to 2x
/// faster than larger ones, because the selection re-reads the block right after the matmul.
pub fn default_block_rows(n: usize) -> usize {
    ((1usize << 22) / n.max(1)).clamp(64, 1024)
}

/// The exact cosine kNN graph of the patterns `x` (N, d), symmetrised with `max`, as a CSR
/// matrix of f64 weights: equal to `knn_graph(cosine_similarity(x), k)` without ever holding the
/// N x N similarity. `block_rows` rows of similarities are computed at a time (`None`: see
/// [`default_block_rows`]). The similarity is computed in `x`'s dtype (f16/bf16 promoted to f32).
/// Errors: `x` not 2-D, N = 0, NaN/inf, `k == 0`. N = 1 gives an edgeless graph.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f64, 0.], [1., 0.1], [0., 1.], [-1., 0.]], &Device::Cpu)?;
/// let a = dahn_graph::knn_from_patterns(&x, 1, None)?;
/// assert!(a.get(0, 1) > 0.99 && a.get(1, 0) == a.get(0, 1));
/// assert_eq!(a.row(3).0.len(), 0); // only negative similarities: isolated
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn knn_from_patterns(x: &Tensor, k: usize, block_rows: Option<usize>) -> Result<Csr> {
    let (n, _) = check::patterns_2d("knn_from_patterns: patterns", x)?;
    // k = 0: the edgeless graph (difflayers' `GraphBuilder(k=0)`); the loop below adds nothing.
    let k = if k == 0 { 0 } else { effective_k(k, n)? };
    let x = match x.dtype() {
        DType::F64 | DType::F32 => x.detach(),
        _ => x.detach().to_dtype(DType::F32)?,
    };
    let xn = normalize_rows(&x)?;
    let xt = xn.t()?.contiguous()?;
    let block = block_rows.unwrap_or_else(|| default_block_rows(n)).max(1);
    let what = "knn_from_patterns: edges";
    // 2 N k' is an upper bound (only positive similarities are kept): reserve it when it can be
    // had, else grow as edges come, each growth checked (a failed allocation is a typed error).
    let bound = 2usize.saturating_mul(n).saturating_mul(k);
    let mut triplets: Vec<(u32, u32, f64)> =
        check::try_with_capacity(what, bound).unwrap_or_default();
    let mut r0 = 0;
    while r0 < n && k > 0 {
        let b = block.min(n - r0);
        let sim = xn.narrow(0, r0, b)?.matmul(&xt)?;
        let directed = match sim.dtype() {
            DType::F64 => select_block::<f64>(&sim, r0, n, k)?,
            _ => select_block::<f32>(&sim, r0, n, k)?,
        };
        triplets
            .try_reserve(2 * directed.len())
            .map_err(|_| GraphError::TooLarge {
                what,
                dims: vec![n, k],
                elems: format!("more than {} edges", triplets.len()),
            })?;
        for (i, j, v) in directed {
            triplets.push((i, j, v));
            triplets.push((j, i, v));
        }
        r0 += b;
    }
    Csr::from_triplets(n, triplets, Merge::Max)
}

/// Top-k of each row of one (b, N) similarity block, skipping the diagonal, keeping positive values.
fn select_block<T: WithDType + PartialOrd>(
    sim: &Tensor,
    r0: usize,
    n: usize,
    k: usize,
) -> Result<Vec<(u32, u32, f64)>> {
    // Read the block in place when it lives on the CPU (a block is ~16M entries: copying it
    // again would double the memory traffic of the whole build).
    let (storage, layout) = sim.storage_and_layout();
    let owned;
    let host: &[T] = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<T>()?[start..end],
        _ => {
            owned = sim.flatten_all()?.to_vec1::<T>()?;
            &owned
        }
    };
    Ok(host
        .par_chunks(n)
        .enumerate()
        .flat_map_iter(|(r, row)| {
            let i = r0 + r;
            let mut sel = Vec::with_capacity(k);
            top_k_into(row, k, Some(i), &mut sel);
            sel.into_iter()
                .map(move |(j, v)| (i as u32, j as u32, v.to_f64()))
                .filter(|e| e.2 > 0.0)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cosine_similarity;
    use candle_core::{Device, Var};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(n: usize, d: usize, seed: u64, offset: f64) -> Result<Tensor> {
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f64> = (0..n * d)
            .map(|_| rng.random::<f64>() - 0.5 + offset)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu)
    }

    /// B4/D4 and the never-N x N claim: the blocked sparse path equals the dense path, whatever
    /// the block size, including graphs with clamped negatives and a zero pattern.
    #[test]
    fn blocked_sparse_equals_dense_for_any_block() -> Result<()> {
        for (seed, offset) in [(1u64, 0.0), (2, 0.3)] {
            let x = random(23, 5, seed, offset)?;
            let x = x.slice_assign(
                &[3..4, 0..5],
                &Tensor::zeros((1, 5), DType::F64, &Device::Cpu)?,
            )?;
            for k in [1, 3, 7, 40] {
                let dense = knn_graph(&cosine_similarity(&x)?, k)?.to_vec2::<f64>()?;
                for block in [1, 4, 23, 100] {
                    let sparse = knn_from_patterns(&x, k, Some(block))?
                        .to_dense(DType::F64, &Device::Cpu)?
                        .to_vec2::<f64>()?;
                    for i in 0..23 {
                        for j in 0..23 {
                            assert!(
                                (dense[i][j] - sparse[i][j]).abs() < 1e-14,
                                "seed {seed} k {k} block {block} ({i},{j})"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn knn_graph_is_symmetric_max_of_row_topk() -> Result<()> {
        // Non-symmetric S with a non-zero diagonal: self-loops can be selected.
        let s = vec![
            vec![0.9, 0.1, 0.5, 0.2],
            vec![0.3, 0.2, 0.8, 0.1],
            vec![0.4, 0.6, 0.05, 0.7],
            vec![0.2, 0.3, 0.1, 0.25],
        ];
        let a = knn_graph(&Tensor::new(s.clone(), &Device::Cpu)?, 2)?.to_vec2::<f64>()?;
        let mut m = vec![vec![0.0f64; 4]; 4];
        for i in 0..4 {
            let mut idx: Vec<usize> = (0..4).collect();
            idx.sort_by(|&p, &q| s[i][q].partial_cmp(&s[i][p]).unwrap());
            for &j in &idx[..2] {
                m[i][j] = s[i][j];
            }
        }
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(a[i][j], m[i][j].max(m[j][i]), "{i},{j}");
            }
        }
        assert_eq!(a[0][0], 0.9, "self-loop selected");
        Ok(())
    }

    #[test]
    fn knn_graph_gradient_reaches_selected_entries_only() -> Result<()> {
        let s = Var::new(
            &[[0.0f64, 0.9, 0.1], [0.2, 0.0, 0.5], [0.3, 0.4, 0.0]],
            &Device::Cpu,
        )?;
        let g = knn_graph(s.as_tensor(), 1)?.sum_all()?.backward()?;
        let gs = g.get(s.as_tensor()).unwrap().to_vec2::<f64>()?;
        // Row tops: (0,1) 0.9, (1,2) 0.5, (2,1) 0.4. A = max(M, M^T): (0,1),(1,0) take 0.9;
        // (1,2),(2,1) take 0.5 -> M[1][2] gets both, M[2][1] none.
        assert_eq!(
            gs,
            vec![vec![0., 2., 0.], vec![0., 0., 2.], vec![0., 0., 0.]]
        );
        Ok(())
    }

    #[test]
    fn k_is_clamped_and_zero_k_is_edgeless() -> Result<()> {
        let x = random(5, 3, 7, 0.5)?;
        let a = knn_from_patterns(&x, 100, None)?;
        let s = cosine_similarity(&x)?;
        let full = s.to_vec2::<f64>()?;
        for i in 0..5 {
            for j in 0..5 {
                assert!(
                    (a.get(i, j) - full[i][j]).abs() < 1e-14,
                    "k >= N keeps every positive similarity"
                );
            }
        }
        // k = 0 is difflayers' empty topk: no edges, a zero matrix (D-V: accepted as it does).
        assert_eq!(knn_from_patterns(&x, 0, None)?.nnz(), 0);
        let zero = knn_graph(&s, 0)?.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(zero, vec![0.0; 25]);
        let nan = Tensor::new(&[[0f64, f64::NAN], [1., 0.]], &Device::Cpu)?;
        assert!(knn_graph(&nan, 0).is_err(), "k = 0 still checks the input");
        Ok(())
    }

    #[test]
    fn single_pattern_gives_edgeless_graph() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu)?;
        assert_eq!(knn_from_patterns(&x, 3, None)?.nnz(), 0);
        let s = Tensor::new(&[[0f32]], &Device::Cpu)?;
        assert_eq!(knn_graph(&s, 3)?.to_vec2::<f32>()?, vec![vec![0.0]]);
        Ok(())
    }

    #[test]
    fn nan_patterns_are_typed_errors() -> Result<()> {
        let x = Tensor::new(&[[1f64, f64::NAN], [1.0, 0.0]], &Device::Cpu)?;
        let e = knn_from_patterns(&x, 1, None).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::NonFinite { .. })
        ));
        let e = knn_graph(&x, 1).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::NonFinite { .. })
        ));
        Ok(())
    }

    #[test]
    fn f32_patterns_give_the_same_support() -> Result<()> {
        let x = random(30, 6, 11, 0.2)?;
        let a64 = knn_from_patterns(&x, 4, Some(7))?;
        let a32 = knn_from_patterns(&x.to_dtype(DType::F32)?, 4, Some(7))?;
        assert_eq!(a64.nnz(), a32.nnz());
        for i in 0..30 {
            assert_eq!(a64.row(i).0, a32.row(i).0);
        }
        Ok(())
    }
}
