//! DAHN at a million patterns: an approximate kNN graph (a forest of large-leaf partition trees,
//! then NN-descent: `NnDescent::default()`) over 10^6 stored random +-1 patterns, factored diffusion of the stored patterns on it (`(1 - eta deg) x + eta W x`,
//! `steps` times), and retrieval of corrupted queries with and without diffusion.
//!
//! Retrieval is the beta -> infinity limit of `softmax(beta q K^T) V`: the stored pattern whose
//! key has the largest dot product with the query (keys = the patterns, or the diffused
//! patterns); a query is correct when that is the pattern it was corrupted from. Prints the
//! graph build time, recall@k of the graph's directed lists on sampled rows (against brute force
//! for those rows; by id, and counting neighbours as near as the k-th as hits,
//! `KnnLists::recall_with_ties`), the diffusion time, both accuracies and the peak resident
//! memory (VmHWM).
//!
//! Expect the accuracy with diffusion to be the lower one: diffusion pulls each key towards its
//! graph neighbours, which trades instance identity for neighbourhood smoothing (at 10^6: 0.994
//! without, 0.837 with; docs/dahn-experiments.md measures the same on digits and random
//! patterns). The example shows the scale, not a gain.
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin dahn_million
//! cargo run --release -p hopfield-examples --bin dahn_million -- --patterns 100000 --flip 0.2
//! ```

use candle_core::{DType, Device, Result, Tensor, D};
use clap::Parser;
use dahn_diffusion::{DiffusionOperator, FactoredDiffusion};
use dahn_graph::{brute_force_rows, nn_descent, Graph, NnDescent};
use hopfield_examples::{peak_rss_mib, random_signs};
use rand::rngs::StdRng;
use rand::{seq::index::sample, SeedableRng};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "DAHN at a million patterns: approximate graph, factored diffusion, retrieval")]
struct Args {
    /// Number of stored patterns S.
    #[arg(long, default_value_t = 1_000_000)]
    patterns: usize,
    /// Pattern dimension d.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Neighbours per node.
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Number of corrupted queries.
    #[arg(long, default_value_t = 1024)]
    queries: usize,
    /// Fraction of signs flipped in each query.
    #[arg(long, default_value_t = 0.15)]
    flip: f64,
    /// Diffusion strength.
    #[arg(long, default_value_t = 0.1)]
    eta: f64,
    /// Diffusion steps.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Rows sampled for the graph's recall.
    #[arg(long, default_value_t = 1000)]
    recall_rows: usize,
    /// Partition trees of the graph search (default: automatic, `NnDescent::tree_count`).
    #[arg(long)]
    trees: Option<usize>,
    /// Leaf size of those trees (default: `NnDescent::default().leaf`).
    #[arg(long)]
    leaf: Option<usize>,
    /// Seed of the data, the corruption and the graph search.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// For each query, the index of the key with the largest dot product, by column blocks so the
/// (L, S) score matrix is never held whole (4 GiB at L = 1024, S = 10^6).
fn nearest(queries: &Tensor, keys: &Tensor) -> Result<Vec<usize>> {
    let (l, s) = (queries.dim(0)?, keys.dim(0)?);
    let mut best = vec![(f32::NEG_INFINITY, 0usize); l];
    let block = 65_536;
    for c0 in (0..s).step_by(block) {
        let b = block.min(s - c0);
        let scores = queries.matmul(&keys.narrow(0, c0, b)?.t()?)?;
        let vals = scores.max(D::Minus1)?.to_vec1::<f32>()?;
        let idx = scores.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (q, (v, i)) in vals.into_iter().zip(idx).enumerate() {
            if v > best[q].0 {
                best[q] = (v, c0 + i as usize);
            }
        }
    }
    Ok(best.into_iter().map(|b| b.1).collect())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dev = Device::Cpu;
    let (s, d) = (a.patterns, a.dim);
    let mut rng = StdRng::seed_from_u64(a.seed);
    let signs: Vec<f32> = random_signs(&mut rng, s * d);
    let x = Tensor::from_vec(signs, (s, d), &dev)?;

    let t = Instant::now();
    let mut params = NnDescent::default().seed(a.seed);
    params = params.trees(a.trees.or(params.trees));
    params = params.leaf(a.leaf.unwrap_or(params.leaf));
    let lists = nn_descent(&x, a.k, &params)?;
    let graph = Graph::from_csr(lists.to_csr()?, a.k.min(s - 1), DType::F32, &dev)?;
    let build = t.elapsed().as_secs_f64();
    let rows = sample(&mut rng, s, a.recall_rows.min(s)).into_vec();
    let t = Instant::now();
    let truth = brute_force_rows(&x, &rows, a.k)?;
    let recall = lists.recall(&rows, &truth)?;
    // Sign patterns' cosines are multiples of 2/d, so many neighbours tie with the k-th: by id,
    // a tied neighbour other than the one brute force kept counts as a miss.
    let with_ties = lists.recall_with_ties(&rows, &truth, 1e-6)?;
    let recall_secs = t.elapsed().as_secs_f64();
    drop(lists);
    println!(
        "graph: S={s} d={d} k={}: approximate build ({} trees, leaf {}, then NN-descent) {build:.1} s, nnz {} ({:.1} per node), \
         recall@{} on {} sampled rows {recall:.4} by id, {with_ties:.4} counting tied neighbours \
         (brute force {recall_secs:.1} s)",
        a.k,
        params.tree_count(s),
        params.leaf,
        graph.adjacency().nnz(),
        graph.adjacency().nnz() as f64 / s as f64,
        a.k,
        rows.len()
    );

    // An explicit Euler step needs eta * max degree <= 2 (FactoredDiffusion rejects more). kNN
    // graphs of high-dimensional data have hubs (nodes in many others' lists), so the largest
    // degree grows with S: at 10^6 sign patterns it is ~22 and eta = 0.1 would diverge.
    let degrees = graph.degrees()?;
    let max_degree = degrees.to_dtype(DType::F64)?.max(0)?.to_scalar::<f64>()?;
    let eta = if a.eta * max_degree > 2.0 {
        let stable = 1.9 / max_degree;
        println!(
            "eta {} is unstable on this graph (max degree {max_degree:.2}: eta <= {:.4}); using {stable:.4}",
            a.eta,
            2.0 / max_degree
        );
        stable
    } else {
        a.eta
    };
    let t = Instant::now();
    let op = FactoredDiffusion::from_graph(graph.matrix(), &degrees, eta, a.steps)?;
    let diffused = op.apply(&x)?;
    println!(
        "factored diffusion: eta {eta:.4} steps {}: {:.2} s",
        a.steps,
        t.elapsed().as_secs_f64()
    );

    // Queries: stored patterns with a fraction of their signs flipped.
    let targets = sample(&mut rng, s, a.queries.min(s)).into_vec();
    let flips = (a.flip * d as f64).round() as usize;
    let mut q = Vec::with_capacity(targets.len() * d);
    let host = x.narrow(0, 0, s)?;
    for &i in &targets {
        let mut row = host.get(i)?.to_vec1::<f32>()?;
        for j in sample(&mut rng, d, flips.min(d)) {
            row[j] = -row[j];
        }
        q.extend(row);
    }
    let q = Tensor::from_vec(q, (targets.len(), d), &dev)?;
    for (name, keys) in [("without diffusion", &x), ("with diffusion", &diffused)] {
        let t = Instant::now();
        let got = nearest(&q, keys)?;
        let acc =
            got.iter().zip(&targets).filter(|(g, t)| g == t).count() as f64 / targets.len() as f64;
        println!(
            "retrieval {name}: {} queries, {flips} of {d} signs flipped: accuracy {acc:.4} ({:.1} s)",
            targets.len(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "peak RSS {:.0} MiB (patterns {:.0} MiB), threads {}",
        peak_rss_mib().unwrap_or(f64::NAN),
        (s * d * 4) as f64 / (1 << 20) as f64,
        rayon::current_num_threads()
    );
    Ok(())
}
