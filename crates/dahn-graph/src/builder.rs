//! Fluent builders: [`GraphBuilder`] (patterns -> kNN [`Graph`]) and [`LaplacianBuilder`].

use crate::{
    check, effective_k, knn_approx_from_patterns, knn_from_patterns, laplacian,
    normalized_laplacian, Csr, GraphError, GraphMatrix, NnDescent,
};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::Arc;

/// How [`GraphBuilder`] finds each node's neighbours. Both give the same kind of graph (cosine
/// weights, positive only, no self loops, `max(M, M^T)`); only the neighbour choice differs.
///
/// ```
/// use dahn_graph::{GraphBuilder, KnnMethod, NnDescent};
/// let b = GraphBuilder::new().method(KnnMethod::NnDescent(NnDescent::default().seed(3)));
/// assert_eq!(b, GraphBuilder::new().approximate(NnDescent::default().seed(3)));
/// assert_eq!(GraphBuilder::new().method, KnnMethod::Exact);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum KnnMethod {
    /// The blocked exact search ([`knn_from_patterns`]): O(N^2 d) time; 10^5 x 64 in ~7 s on
    /// 2 cores. The default.
    #[default]
    Exact,
    /// NN-descent ([`knn_approx_from_patterns`]): approximate, for N where the exact search is
    /// too slow. Recall depends on the data: on uniform random 64-d patterns (the hardest case)
    /// the defaults reach recall@8 0.96 at 10^5 and 0.94 at 10^6 (146.5 s, 1349 MiB on 2 cores;
    /// docs/dahn-performance.md, where two HNSW crates were also measured and were 19-25x slower
    /// at 10^5).
    NnDescent(NnDescent),
}

/// Builds the symmetrised cosine kNN graph of a set of patterns (difflayers'
/// `GraphBuilder(k).build(X)`), by the blocked exact path (no N x N similarity) or, with
/// [`KnnMethod::NnDescent`], approximately.
///
/// difflayers' `use_sparse` changes the weights (bug B4/D4: mutual edges counted twice); here the
/// storage is always sparse and the dense view is exactly difflayers' dense `W`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_graph::GraphBuilder;
/// let x = Tensor::new(&[[1f64, 0.], [1., 0.2], [0.2, 1.], [0., 1.]], &Device::Cpu)?;
/// let g = GraphBuilder::new().k(1).build(&x)?;
/// assert_eq!(g.neighbours()?.to_vec2::<u32>()?, vec![vec![1], vec![0], vec![3], vec![2]]);
/// let w = g.weights()?.to_vec2::<f64>()?;
/// assert_eq!(w[0][1], w[1][0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphBuilder {
    /// Neighbours per node (clamped to N - 1 at build time). Default 5 (difflayers' default).
    pub k: usize,
    /// Rows of similarities computed at once (exact method); `None` =
    /// [`crate::default_block_rows`].
    pub block_rows: Option<usize>,
    /// Exact (default) or approximate neighbour search.
    pub method: KnnMethod,
}

impl Default for GraphBuilder {
    fn default() -> Self {
        Self {
            k: 5,
            block_rows: None,
            method: KnnMethod::Exact,
        }
    }
}

impl GraphBuilder {
    /// The default builder (k = 5).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets k.
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Sets the similarity block height (memory O(block_rows * N)).
    pub fn block_rows(mut self, rows: usize) -> Self {
        self.block_rows = Some(rows);
        self
    }

    /// Sets the neighbour search.
    pub fn method(mut self, method: KnnMethod) -> Self {
        self.method = method;
        self
    }

    /// Approximate neighbour search by NN-descent with `params` (shorthand for
    /// `method(KnnMethod::NnDescent(params))`).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_graph::{GraphBuilder, NnDescent};
    /// let x = Tensor::new(&[[1f32, 0.], [1., 0.2], [0.2, 1.], [0., 1.]], &Device::Cpu)?;
    /// let g = GraphBuilder::new().k(1).approximate(NnDescent::default()).build(&x)?;
    /// assert_eq!(g.neighbours()?.to_vec2::<u32>()?, vec![vec![1], vec![0], vec![3], vec![2]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn approximate(self, params: NnDescent) -> Self {
        self.method(KnnMethod::NnDescent(params))
    }

    /// Builds the graph of `x` (N, d); the graph is a constant (`x` is detached). k = 0 gives the
    /// edgeless graph with an (N, 0) neighbour table, as difflayers' `GraphBuilder(k=0)` (an
    /// empty `topk`): every diffusion operator on it is the identity. Errors: `x` not 2-D, N = 0,
    /// NaN/inf; k = 0 with [`KnnMethod::NnDescent`] (a search for no neighbours is a mistake there:
    /// the exact method gives the edgeless graph).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_graph::GraphBuilder;
    /// let x = Tensor::new(&[[1f64, 0.], [1., 0.2], [0.2, 1.]], &Device::Cpu)?;
    /// let g = GraphBuilder::new().k(0).build(&x)?;
    /// assert_eq!((g.k(), g.adjacency().nnz(), g.neighbours()?.dims()), (0, 0, &[3, 0][..]));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn build(&self, x: &Tensor) -> Result<Graph> {
        let (n, _) = check::patterns_2d("GraphBuilder::build: patterns", x)?;
        if self.k == 0 && self.method == KnnMethod::Exact {
            return Ok(Graph {
                adjacency: Arc::new(Csr::from_triplets(n, Vec::new(), crate::Merge::Max)?),
                k: 0,
                dtype: x.dtype(),
                device: x.device().clone(),
            });
        }
        let k = effective_k(self.k, n)?;
        let csr = match &self.method {
            KnnMethod::Exact => knn_from_patterns(x, k.max(1), self.block_rows)?,
            KnnMethod::NnDescent(p) => knn_approx_from_patterns(x, k.max(1), p)?,
        };
        Ok(Graph {
            adjacency: Arc::new(csr),
            k,
            dtype: x.dtype(),
            device: x.device().clone(),
        })
    }
}

/// A kNN graph: sparse symmetric weights `W` plus the dtype/device its tensors are produced in.
#[derive(Debug, Clone)]
pub struct Graph {
    adjacency: Arc<Csr>,
    k: usize,
    dtype: DType,
    device: Device,
}

impl Graph {
    /// Wraps an adjacency matrix (e.g. a user-supplied one); `k` is the neighbour-table width
    /// (rows with fewer entries are padded, see [`Csr::neighbour_table`]). Errors: an integer
    /// `dtype` ([`GraphError::DType`]), an (N, k) table too large to allocate.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use dahn_graph::{Csr, Graph, Merge};
    /// let a = Csr::from_triplets(2, vec![(0, 1, 1.0), (1, 0, 1.0)], Merge::Sum)?;
    /// let g = Graph::from_csr(a.clone(), 1, DType::F32, &Device::Cpu)?;
    /// assert_eq!(g.neighbours()?.to_vec2::<u32>()?, vec![vec![1], vec![0]]);
    /// assert!(Graph::from_csr(a, 1, DType::U32, &Device::Cpu).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_csr(adjacency: Csr, k: usize, dtype: DType, device: &Device) -> Result<Self> {
        if !dtype.is_float() {
            return Err(GraphError::DType {
                what: "Graph::from_csr: dtype",
                dtype: format!("{dtype:?}"),
            }
            .into());
        }
        check::checked_elems("Graph::from_csr: neighbour table", &[adjacency.n(), k], 4)?;
        Ok(Self {
            adjacency: Arc::new(adjacency),
            k,
            dtype,
            device: device.clone(),
        })
    }

    /// Number of nodes.
    pub fn n(&self) -> usize {
        self.adjacency.n()
    }

    /// The effective k' = min(k, N - 1).
    pub fn k(&self) -> usize {
        self.k
    }

    /// dtype of the tensors this graph produces.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device of the tensors this graph produces.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The sparse weights.
    pub fn adjacency(&self) -> &Arc<Csr> {
        &self.adjacency
    }

    /// The weights as a [`GraphMatrix`] (sparse), for factored diffusion.
    pub fn matrix(&self) -> GraphMatrix {
        GraphMatrix::Sparse(self.adjacency.clone())
    }

    /// The dense (N, N) weights `W` (difflayers' dense `W`; O(N^2) memory).
    pub fn weights(&self) -> Result<Tensor> {
        self.adjacency.to_dense(self.dtype, &self.device)
    }

    /// Degrees `W 1`, (N,).
    pub fn degrees(&self) -> Result<Tensor> {
        self.adjacency.degrees(self.dtype, &self.device)
    }

    /// Neighbour table (N, k') `U32`: each row's k' heaviest edges, descending (see
    /// [`Csr::neighbour_table`] for nodes with fewer edges).
    pub fn neighbours(&self) -> Result<Tensor> {
        self.adjacency.neighbour_table(self.k, &self.device)
    }

    /// The sparse Laplacian of `W` (normalised or not); see [`Csr::laplacian`] for degrees that
    /// overflow f64.
    pub fn laplacian(&self, normalized: bool) -> Csr {
        self.adjacency.laplacian(normalized)
    }

    /// The sparse Laplacian of `W`, with overflowing degrees as a typed error
    /// ([`Csr::try_laplacian`]).
    pub fn try_laplacian(&self, normalized: bool) -> Result<Csr> {
        self.adjacency.try_laplacian(normalized)
    }
}

/// Builds a Laplacian from an adjacency (difflayers' `LaplacianBuilder(normalized)`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_graph::LaplacianBuilder;
/// let w = Tensor::new(&[[0f64, 1.], [1., 0.]], &Device::Cpu)?;
/// let l = LaplacianBuilder::new().normalized(false).build(&w)?;
/// assert_eq!(l.to_vec2::<f64>()?, vec![vec![1., -1.], vec![-1., 1.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaplacianBuilder {
    /// Symmetric-normalised (`true`, the default) or `D - W`.
    pub normalized: bool,
}

impl Default for LaplacianBuilder {
    fn default() -> Self {
        Self { normalized: true }
    }
}

impl LaplacianBuilder {
    /// The default builder (normalised).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets normalisation.
    pub fn normalized(mut self, normalized: bool) -> Self {
        self.normalized = normalized;
        self
    }

    /// Dense Laplacian of a dense adjacency (differentiable).
    pub fn build(&self, w: &Tensor) -> Result<Tensor> {
        if self.normalized {
            normalized_laplacian(w)
        } else {
            laplacian(w)
        }
    }

    /// Sparse Laplacian of a sparse adjacency ([`Csr::try_laplacian`]: overflowing degrees are
    /// a typed error).
    pub fn build_sparse(&self, w: &Csr) -> Result<Csr> {
        w.try_laplacian(self.normalized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cosine_similarity, knn_graph};

    #[test]
    fn graph_views_agree_with_dense_reference() -> Result<()> {
        let x = Tensor::new(
            &[
                [1f64, 0.2, 0.1],
                [0.9, 0.3, 0.0],
                [0.1, 1.0, 0.2],
                [0.0, 0.8, 0.5],
                [0.3, 0.3, 1.0],
            ],
            &Device::Cpu,
        )?;
        let g = GraphBuilder::new().k(2).block_rows(2).build(&x)?;
        let want = knn_graph(&cosine_similarity(&x)?, 2)?;
        let diff = (g.weights()? - &want)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-15);
        let deg = g.degrees()?.to_vec1::<f64>()?;
        let rows = want.sum(1)?.to_vec1::<f64>()?;
        for (a, b) in deg.iter().zip(&rows) {
            assert!((a - b).abs() < 1e-15);
        }
        for normalized in [true, false] {
            let dense = LaplacianBuilder::new()
                .normalized(normalized)
                .build(&want)?;
            let sparse = g.laplacian(normalized).to_dense(DType::F64, &Device::Cpu)?;
            assert!((dense - sparse)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-15);
        }
        assert_eq!(g.k(), 2);
        assert_eq!(g.neighbours()?.dims(), &[5, 2]);
        Ok(())
    }

    #[test]
    fn k_larger_than_n_is_clamped() -> Result<()> {
        let x = Tensor::new(&[[1f32, 0.1], [0.5, 1.0], [1.0, 1.0]], &Device::Cpu)?;
        let g = GraphBuilder::new().k(10).build(&x)?;
        assert_eq!(g.k(), 2);
        let t = g.neighbours()?.to_vec2::<u32>()?;
        for (i, row) in t.iter().enumerate() {
            let mut r = row.clone();
            r.sort();
            let mut want: Vec<u32> = (0..3).filter(|&j| j != i as u32).collect();
            want.sort();
            assert_eq!(r, want);
        }
        Ok(())
    }
}
