//! k-nearest-neighbour graphs, symmetrised as difflayers does: `A = max(M, M^T)`.
//!
//! Two entry points share one top-k selection ([`crate::top_k_into`]) and one symmetrisation:
//! - [`knn_graph`]: difflayers' `build_knn_graph(S, k)` on a given dense similarity matrix
//!   (differentiable w.r.t. `S`; the diagonal is a candidate, as in difflayers).
//! - [`knn_from_patterns`]: the exact cosine kNN graph of patterns `X` computed by row blocks,
//!   never materialising N x N: memory O(N k + block N). On the CPU each block's similarities
//!   with the rows from its own on (half of `X X^T` in all, it is symmetric) by a multi-threaded
//!   `gemm` into one reused tile, selected along the tile's rows and down its columns with rayon;
//!   elsewhere the device's matmul of the block against every row. Result in CSR.
//!
//! `k' = min(k, N - 1)` (difflayers clamps silently; so do we, documented). Rows with fewer than
//! k' positive similarities keep only their positive entries (difflayers selects zeros, which add
//! nothing). Ties between equal similarities go to the lower index.

use crate::gemm::gemm_abt;
use crate::topk::{merge_row, offer, CHUNK};
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

/// Rows per similarity block: about 16M entries against the first block's N columns (a 64 MB
/// f32 tile, the build's largest buffer; later blocks' tiles are narrower), 64 to 1024 rows.
/// Measured on 2 cores at N = 10^5 (docs/dahn-performance.md): 64 rows 9.4-10.2 s, 128 7.5 s,
/// 167 (this rule) 6.9 s, 512 6.6 s.
pub fn default_block_rows(n: usize) -> usize {
    ((1usize << 24) / n.max(1)).clamp(64, 1024)
}

/// The exact cosine kNN graph of the patterns `x` (N, d), symmetrised with `max`, as a CSR
/// matrix of f64 weights: equal to `knn_graph(cosine_similarity(x), k)` without ever holding the
/// N x N similarity. `block_rows` rows of similarities are computed at a time (`None`: see
/// [`default_block_rows`]; on the CPU at most 2^25 similarities, 64 rows at least), on the CPU
/// only against the rows from the block's own on (the similarity is symmetric). The similarity
/// is computed in `x`'s dtype (f16/bf16 promoted to f32).
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
    let (n, d) = check::patterns_2d("knn_from_patterns: patterns", x)?;
    // k = 0: the edgeless graph (difflayers' `GraphBuilder(k=0)`); no pair is selected.
    let k = if k == 0 { 0 } else { effective_k(k, n)? };
    let x = match x.dtype() {
        DType::F64 | DType::F32 => x.detach(),
        _ => x.detach().to_dtype(DType::F32)?,
    };
    let xn = normalize_rows(&x)?;
    let block = block_rows.unwrap_or_else(|| default_block_rows(n)).max(1);
    let directed = if k == 0 {
        Vec::new()
    } else if xn.device().is_cpu() {
        match xn.dtype() {
            DType::F64 => triangle::<f64>(&xn.flatten_all()?.to_vec1()?, n, d, k, block)?,
            _ => triangle::<f32>(&xn.flatten_all()?.to_vec1()?, n, d, k, block)?,
        }
    } else {
        device_blocks(&xn, n, k, block)?
    };
    let what = "knn_from_patterns: edges";
    let mut triplets: Vec<(u32, u32, f64)> =
        check::try_with_capacity(what, 2usize.saturating_mul(directed.len()))?;
    for (i, j, v) in directed {
        triplets.push((i, j, v));
        triplets.push((j, i, v));
    }
    Csr::from_triplets(n, triplets, Merge::Max)
}

/// Most similarities in [`triangle`]'s tile (128 MB in f32), however large `block_rows`.
const MAX_TILE: usize = 1 << 25;

/// Columns per task of [`triangle`]'s column pass.
const COLUMN_TASK: usize = 2048;

/// The directed top-k lists (positive similarities only) of the unit rows `x` (n, d), by
/// blocks of `block` rows against the rows from the block's first on: the similarity is
/// symmetric, so each block's tile `S[I, I0..]` serves its own rows (their columns from `I0`
/// on) and, read down its columns, the later rows (their columns in `I`). Half the products of
/// the full `S[I, ..]` per block, written by `gemm` into one reused buffer; each pair offered to
/// each of its two rows once, in ascending column order (as [`top_k_into`] scans a row), so
/// ties go to the lower column as there.
fn triangle<T: WithDType>(
    x: &[T],
    n: usize,
    d: usize,
    k: usize,
    block: usize,
) -> Result<Vec<(u32, u32, f64)>> {
    let mut lists: Vec<Vec<(usize, T)>> = (0..n).map(|_| Vec::with_capacity(k)).collect();
    // The first block's tile is the widest: one buffer for all, of at most MAX_TILE
    // similarities (64 rows at least) whatever `block_rows` asks for.
    let block = block.min((MAX_TILE / n.max(1)).max(64));
    let what = "knn_from_patterns: similarity tile";
    let mut buf = check::try_vec(what, block.min(n) * n, T::zero())?;
    let mut i0 = 0;
    while i0 < n {
        let (b, w) = (block.min(n - i0), n - i0);
        let i1 = i0 + b;
        let tile = &mut buf[..b * w];
        gemm_abt(tile, &x[i0 * d..i1 * d], &x[i0 * d..], (b, w, d), true);
        let tile = &*tile;
        // The block's rows: every column from i0 on (earlier ones came down earlier tiles).
        lists[i0..i1]
            .par_iter_mut()
            .enumerate()
            .for_each(|(r, list)| {
                merge_row(&tile[r * w..(r + 1) * w], i0, k, Some(i0 + r), list, 0)
            });
        // The later rows: the block's rows are candidates, read down the tile's columns a
        // row at a time against each column's k-th.
        lists[i1..]
            .par_chunks_mut(COLUMN_TASK)
            .enumerate()
            .for_each(|(t, chunk)| {
                let c0 = i1 - i0 + t * COLUMN_TASK;
                // A short list takes anything: its bar is -inf.
                let kth = |l: &Vec<(usize, T)>| {
                    if l.len() < k {
                        T::from_f64(f64::NEG_INFINITY)
                    } else {
                        l[k - 1].1
                    }
                };
                let mut bar: Vec<T> = chunk.iter().map(kth).collect();
                for r in 0..b {
                    let seg = &tile[r * w + c0..r * w + c0 + chunk.len()];
                    for s0 in (0..seg.len()).step_by(CHUNK) {
                        let s1 = (s0 + CHUNK).min(seg.len());
                        // Pairs reach each row in ascending column order (earlier blocks' rows
                        // down their columns, then its own block's row), so an equal value
                        // never ranks before the k-th: `>`, as in `merge_row`.
                        let hits: u32 = seg[s0..s1]
                            .iter()
                            .zip(&bar[s0..s1])
                            .map(|(&v, &h)| (v > h) as u32)
                            .sum();
                        if hits == 0 {
                            continue;
                        }
                        for c in s0..s1 {
                            if seg[c] > bar[c] {
                                offer(&mut chunk[c], 0, k, i0 + r, seg[c]);
                                bar[c] = kth(&chunk[c]);
                            }
                        }
                    }
                }
            });
        i0 = i1;
    }
    Ok(lists
        .into_iter()
        .enumerate()
        .flat_map(|(i, l)| {
            l.into_iter()
                .map(move |(j, v)| (i as u32, j as u32, v.to_f64()))
                .filter(|e| e.2 > 0.0)
        })
        .collect())
}

/// The directed top-k lists off the CPU: each block of rows against all rows by the device's
/// matmul, then selected on the host (the same order as [`triangle`]).
fn device_blocks(xn: &Tensor, n: usize, k: usize, block: usize) -> Result<Vec<(u32, u32, f64)>> {
    let xt = xn.t()?.contiguous()?;
    let mut directed = Vec::new();
    let mut r0 = 0;
    while r0 < n {
        let b = block.min(n - r0);
        let sim = xn.narrow(0, r0, b)?.matmul(&xt)?;
        directed.extend(match sim.dtype() {
            DType::F64 => select_block::<f64>(&sim, r0, n, k)?,
            _ => select_block::<f32>(&sim, r0, n, k)?,
        });
        r0 += b;
    }
    Ok(directed)
}

/// Top-k of each row of one (b, N) similarity block, skipping the diagonal, keeping positive values.
fn select_block<T: WithDType + PartialOrd>(
    sim: &Tensor,
    r0: usize,
    n: usize,
    k: usize,
) -> Result<Vec<(u32, u32, f64)>> {
    // Read the block in place when it lives on the CPU (a block is up to ~16M entries: copying
    // it again would double the memory traffic of the whole build).
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

    /// The CPU path (triangle tiles, each pair offered to both rows) against the path other
    /// devices take (every row against every column, selected row by row), on data with exact
    /// ties (duplicated patterns, a zero pattern), any block size and k: the same directed
    /// lists, so the same graph.
    #[test]
    fn triangle_equals_full_rows_for_any_block_and_k() -> Result<()> {
        let (n, d) = (150, 6);
        let base = random(n, d, 7, 0.1)?;
        // Rows 10..20 repeat rows 0..10 (ties between two columns of every row); row 40 is 0.
        let x = base
            .slice_assign(&[10..20, 0..d], &base.narrow(0, 0, 10)?)?
            .slice_assign(
                &[40..41, 0..d],
                &Tensor::zeros((1, d), DType::F64, &Device::Cpu)?,
            )?;
        let xn = normalize_rows(&x)?;
        let host = xn.flatten_all()?.to_vec1::<f64>()?;
        for k in [1, 2, 5, 17, n - 1] {
            let want = device_blocks(&xn, n, k, 64)?;
            for block in [1, 7, 64, n, 1000] {
                let got = triangle(&host, n, d, k, block)?;
                assert_eq!(got.len(), want.len(), "k {k} block {block}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, g.1), (w.0, w.1), "k {k} block {block}");
                    assert!((g.2 - w.2).abs() < 1e-12, "k {k} block {block}");
                }
            }
        }
        Ok(())
    }
}
