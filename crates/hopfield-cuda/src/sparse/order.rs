//! Node orders that put a graph's neighbours near each other in memory, and the matrix
//! permuted into such an order.
//!
//! A product `W x` reads, for every stored entry, the row of `x` of its column. When the nodes
//! are numbered without regard to the graph (a shuffled dataset, patterns in arrival order),
//! those rows are scattered over all of `x`: every entry is a cache miss and, for rows of a
//! KiB, a TLB miss, and the kernel reaches a sixth of the memory bandwidth. Numbered in a
//! breadth-first order, neighbours sit a few rows apart, the gathers hit cache, and it reaches
//! about half (a 10^5-node graph, 256 f32 columns; docs/dahn-performance.md).
//! [`CsrMatrix::locality_order`] computes such an order (reverse Cuthill-McKee), and
//! [`CsrMatrix::permuted`] renumbers the matrix. A product of the permuted matrix with the
//! permuted `x` gives the permuted result bit for bit: each row sums the same entries in the
//! same order.

use super::{CsrMatrix, SparseError};
use candle_core::Result;
use std::collections::VecDeque;

impl CsrMatrix {
    /// A numbering of the nodes in which neighbours are close: `order[new] = old`. Reverse
    /// Cuthill-McKee on the symmetrised pattern (entries in either direction link two nodes;
    /// values are ignored): each connected component is walked breadth-first from a node of
    /// low degree far from the rest (a pseudo-peripheral node, found by repeated sweeps),
    /// neighbours taken in increasing degree, and the whole order reversed. O(nnz log k) time,
    /// O(N + nnz) memory.
    ///
    /// Compute it once per graph, renumber with [`Self::permuted`], and keep patterns (rows of
    /// `x`) in the same order: the products then read neighbours' rows from nearby memory.
    ///
    /// ```
    /// use hopfield_cuda::sparse::CsrMatrix;
    /// // A path 0 - 2 - 1 - 3 stored with its nodes shuffled.
    /// let w = CsrMatrix::new(
    ///     4,
    ///     vec![0, 1, 3, 5, 6],
    ///     vec![2, 2, 3, 0, 1, 1],
    ///     vec![1.0; 6],
    /// )?;
    /// let order = w.locality_order();
    /// let mut sorted = order.clone();
    /// sorted.sort();
    /// assert_eq!(sorted, vec![0, 1, 2, 3]); // a permutation
    /// let p = w.permuted(&order)?;
    /// assert_eq!(p.bandwidth(), 1); // the path, numbered along itself
    /// assert_eq!(w.bandwidth(), 2);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn locality_order(&self) -> Vec<u32> {
        let adj = self.symmetric_pattern();
        let n = self.n();
        let degree = |i: usize| adj.row_ptr[i + 1] - adj.row_ptr[i];
        let mut order = Vec::with_capacity(n);
        let mut seen = vec![false; n];
        // Components are started from their lowest-degree node, in node order.
        let mut by_degree: Vec<u32> = (0..n as u32).collect();
        by_degree.sort_by_key(|&i| (degree(i as usize), i));
        let mut level = vec![u32::MAX; n];
        for &s in &by_degree {
            if seen[s as usize] {
                continue;
            }
            let start = adj.peripheral(s as usize, &mut level);
            let first = order.len();
            seen[start] = true;
            order.push(start as u32);
            let mut head = first;
            let mut next = Vec::new();
            while head < order.len() {
                let v = order[head] as usize;
                head += 1;
                next.clear();
                next.extend(
                    adj.neighbours(v)
                        .iter()
                        .copied()
                        .filter(|&u| !seen[u as usize]),
                );
                next.sort_by_key(|&u| (degree(u as usize), u));
                for &u in &next {
                    seen[u as usize] = true;
                    order.push(u);
                }
            }
        }
        order.reverse();
        order
    }

    /// The matrix renumbered by `order` (`order[new] = old`, a permutation of `0..N`): `P W P^T`,
    /// row `new` holding old row `order[new]` with its columns renumbered, entries in their
    /// stored order (so `permuted(W) (P x) = P (W x)` exactly). Errors:
    /// [`SparseError::InvalidCsr`] when `order` is not a permutation of `0..N`.
    ///
    /// ```
    /// use hopfield_cuda::sparse::CsrMatrix;
    /// // [[0, 2], [0, 3]] with its two nodes swapped: [[3, 0], [2, 0]]
    /// let w = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 1], vec![2.0, 3.0])?;
    /// let p = w.permuted(&[1, 0])?;
    /// assert_eq!(p.row(0), (&[0u32][..], &[3.0][..]));
    /// assert_eq!(p.row(1), (&[0u32][..], &[2.0][..]));
    /// assert!(w.permuted(&[0, 0]).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn permuted(&self, order: &[u32]) -> Result<CsrMatrix> {
        let n = self.n();
        let inverse = inverse_permutation(order, n)?;
        let mut row_ptr = Vec::with_capacity(n + 1);
        row_ptr.push(0);
        let mut cols = Vec::with_capacity(self.nnz());
        let mut vals = Vec::with_capacity(self.nnz());
        for &old in order {
            let (c, v) = self.row(old as usize);
            cols.extend(c.iter().map(|&j| inverse[j as usize]));
            vals.extend_from_slice(v);
            row_ptr.push(cols.len());
        }
        Ok(CsrMatrix::from_valid(n, row_ptr, cols, vals))
    }

    /// The largest `|i - j|` over stored entries (0 for a diagonal or empty matrix): how far
    /// apart in memory a row's gathered rows can be.
    pub fn bandwidth(&self) -> usize {
        (0..self.n())
            .flat_map(|i| self.row(i).0.iter().map(move |&j| i.abs_diff(j as usize)))
            .max()
            .unwrap_or(0)
    }

    /// The pattern of `W + W^T` without the diagonal, each neighbour once.
    fn symmetric_pattern(&self) -> Pattern {
        let n = self.n();
        let t = self.transpose();
        let mut row_ptr = Vec::with_capacity(n + 1);
        row_ptr.push(0);
        let mut cols = Vec::with_capacity(2 * self.nnz());
        for i in 0..n {
            let start = cols.len();
            cols.extend(self.row(i).0.iter().chain(t.row(i).0));
            let row = &mut cols[start..];
            row.sort_unstable();
            let mut kept = 0;
            for r in 0..row.len() {
                if row[r] as usize != i && (kept == 0 || row[kept - 1] != row[r]) {
                    row[kept] = row[r];
                    kept += 1;
                }
            }
            cols.truncate(start + kept);
            row_ptr.push(cols.len());
        }
        Pattern { row_ptr, cols }
    }
}

/// `inverse[old] = new` for `order[new] = old`, or an error naming what breaks the permutation.
pub(super) fn inverse_permutation(order: &[u32], n: usize) -> Result<Vec<u32>> {
    let bad = |m: String| SparseError::InvalidCsr(m).into();
    if order.len() != n {
        return Err(bad(format!(
            "a node order for n = {n} needs {n} entries, got {}",
            order.len()
        )));
    }
    let mut inverse = vec![u32::MAX; n];
    for (new, &old) in order.iter().enumerate() {
        match inverse.get_mut(old as usize) {
            None => {
                return Err(bad(format!(
                    "node order entry {new} is {old}, out of range for n = {n}"
                )))
            }
            Some(s) if *s != u32::MAX => {
                return Err(bad(format!("node order names node {old} twice")))
            }
            Some(s) => *s = new as u32,
        }
    }
    Ok(inverse)
}

/// An unweighted symmetric adjacency structure.
struct Pattern {
    row_ptr: Vec<usize>,
    cols: Vec<u32>,
}

impl Pattern {
    fn neighbours(&self, i: usize) -> &[u32] {
        &self.cols[self.row_ptr[i]..self.row_ptr[i + 1]]
    }

    /// A node of `s`'s component far from the rest: breadth-first sweeps, each restarted from
    /// the lowest-degree node of the previous sweep's last level, while the depth grows (the
    /// George-Liu heuristic; a few sweeps at most in practice, capped at 8). `level` is
    /// scratch of N entries, left as `u32::MAX` for every node.
    fn peripheral(&self, s: usize, level: &mut [u32]) -> usize {
        let (mut start, mut depth) = (s, 0);
        let mut visited = Vec::new();
        for _ in 0..8 {
            visited.clear();
            let mut queue = VecDeque::from([start]);
            level[start] = 0;
            visited.push(start);
            let mut last = 0;
            while let Some(v) = queue.pop_front() {
                last = level[v];
                for &u in self.neighbours(v) {
                    if level[u as usize] == u32::MAX {
                        level[u as usize] = level[v] + 1;
                        visited.push(u as usize);
                        queue.push_back(u as usize);
                    }
                }
            }
            let far = visited
                .iter()
                .copied()
                .filter(|&v| level[v] == last)
                .min_by_key(|&v| (self.row_ptr[v + 1] - self.row_ptr[v], v))
                .unwrap_or(start);
            for &v in &visited {
                level[v] = u32::MAX;
            }
            if last <= depth {
                break;
            }
            depth = last;
            start = far;
        }
        start
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A ring of `n` nodes numbered by a stride coprime to `n` (so neighbours are far apart in
    /// the numbering), plus the nodes' links in both directions.
    pub(in crate::sparse) fn shuffled_ring(n: usize, stride: usize) -> CsrMatrix {
        let label = |i: usize| ((i * stride) % n) as u32;
        let mut rows = vec![Vec::new(); n];
        for i in 0..n {
            let (a, b) = (label(i), label((i + 1) % n));
            rows[a as usize].push(b);
            rows[b as usize].push(a);
        }
        let mut row_ptr = vec![0];
        let mut cols = Vec::new();
        for r in rows {
            cols.extend(r);
            row_ptr.push(cols.len());
        }
        let vals = (0..cols.len()).map(|p| 1.0 + p as f64 / 7.0).collect();
        CsrMatrix::new(n, row_ptr, cols, vals).unwrap()
    }

    #[test]
    fn a_shuffled_ring_comes_back_with_bandwidth_two() {
        let w = shuffled_ring(1000, 377);
        assert!(w.bandwidth() > 300, "{}", w.bandwidth());
        let order = w.locality_order();
        let p = w.permuted(&order).unwrap();
        // A ring walked breadth-first from one node: two fronts, each new node next to one
        // numbered at most two before it.
        assert!(p.bandwidth() <= 2, "{}", p.bandwidth());
        assert_eq!(p.nnz(), w.nnz());
    }

    #[test]
    fn every_component_and_isolated_node_is_numbered_once() {
        // Two paths (0-3, 1-4) and isolated nodes 2 and 5; one directed entry 6 -> 0.
        let w = CsrMatrix::new(
            7,
            vec![0, 1, 2, 2, 3, 4, 4, 5],
            vec![3, 4, 0, 1, 0],
            vec![1.0; 5],
        )
        .unwrap();
        let mut order = w.locality_order();
        order.sort();
        assert_eq!(order, (0..7).collect::<Vec<u32>>());
        // No nodes at all.
        let e = CsrMatrix::new(0, vec![0], vec![], vec![]).unwrap();
        assert!(e.locality_order().is_empty());
        assert_eq!((e.permuted(&[]).unwrap().n(), e.bandwidth()), (0, 0));
        assert!(e.locality().is_none());
    }

    #[test]
    fn permuted_products_are_the_permuted_products_bit_for_bit() {
        use crate::sparse::spmm;
        use candle_core::{Device, Tensor};
        let w = shuffled_ring(300, 101);
        let order = w.locality_order();
        let p = w.permuted(&order).unwrap();
        let x = Tensor::randn(0f32, 1., (300, 40), &Device::Cpu).unwrap();
        let idx = Tensor::new(order.as_slice(), &Device::Cpu).unwrap();
        let want = spmm(&w, &x).unwrap().index_select(&idx, 0).unwrap();
        let got = spmm(&p, &x.index_select(&idx, 0).unwrap()).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn orders_that_are_not_permutations_are_refused() {
        let w = shuffled_ring(4, 1);
        for bad in [&[0u32, 1, 2][..], &[0, 1, 2, 4], &[0, 1, 1, 3]] {
            let e = w.permuted(bad).unwrap_err();
            assert!(
                matches!(SparseError::find(&e), Some(SparseError::InvalidCsr(_))),
                "{e}"
            );
        }
    }
}
