//! Pattern graphs for diffusion-augmented Hopfield networks: the graph part of difflayers 0.1.1
//! (`difflayers.graph`) on Candle, plus a sparse path that scales to 10^5 patterns.
//!
//! - [`cosine_similarity`]: cosine similarity, negatives clamped to 0, no self-loops.
//! - [`knn_graph`] (dense, differentiable) and [`knn_from_patterns`] (exact, blocked, CSR, memory
//!   O(N k + block N)): top-k per node, symmetrised with `A = max(M, M^T)`;
//!   [`knn_approx_from_patterns`] (NN-descent, [`KnnMethod::NnDescent`]) for 10^6 patterns.
//! - [`laplacian`], [`normalized_laplacian`] (dense, differentiable) and [`Csr::laplacian`]
//!   (sparse): `L = D - A` and `D^-1/2 (D - A) D^-1/2` with `D^-1/2 = 0` for isolated nodes.
//! - [`GraphBuilder`] -> [`Graph`] (sparse weights, degrees, neighbour table), [`LaplacianBuilder`],
//!   [`GraphMatrix`] (dense or sparse operand for the diffusion operators in `dahn-diffusion`).
//!
//! Where difflayers is wrong we deliberately differ (numbers from `docs/design/difflayers-semantics.md`):
//! graphs keep the input dtype instead of forcing float32 (B1/D1); the sparse graph has the same
//! weights as the dense one (B4/D4, tested); the normalised Laplacian's gradient is finite for
//! isolated nodes (D18); nodes with fewer than k neighbours pad their neighbour table with
//! themselves instead of arbitrary nodes (B12/D19); nothing here builds an N x N matrix unless
//! asked for a dense view (D13). `k >= N` is clamped to `N - 1` as in difflayers.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use dahn_graph::{GraphBuilder, LaplacianBuilder};
//! let x = Tensor::new(&[[1f64, 0.], [0.9, 0.1], [0.1, 1.], [0., 0.8]], &Device::Cpu)?;
//! let g = GraphBuilder::new().k(1).build(&x)?;           // sparse kNN graph
//! let l = LaplacianBuilder::new().build(&g.weights()?)?; // dense normalised Laplacian
//! assert_eq!(l.dims(), &[4, 4]);
//! # Ok::<(), candle_core::Error>(())
//! ```

// Index loops mirror the math in the reference checks of the tests.
#![cfg_attr(test, allow(clippy::needless_range_loop))]

mod approx;
mod builder;
mod check;
mod csr;
mod error;
mod gemm;
mod knn;
mod laplacian;
mod matrix;
mod prefetch;
mod similarity;
mod topk;

pub use approx::{brute_force_rows, knn_approx_from_patterns, nn_descent, KnnLists, NnDescent};
pub use builder::{Graph, GraphBuilder, KnnMethod, LaplacianBuilder};
pub use csr::{Csr, Merge};
pub use error::GraphError;
pub use knn::{default_block_rows, effective_k, knn_from_patterns, knn_graph};
pub use laplacian::{laplacian, normalized_laplacian};
pub use matrix::GraphMatrix;
pub use similarity::{cosine_similarity, normalize_rows, NORM_EPS};
pub use topk::top_k_into;
