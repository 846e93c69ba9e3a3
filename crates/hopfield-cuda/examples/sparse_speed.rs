//! Speed of the sparse kernels (`hopfield_cuda::sparse`) on kNN-like graphs, against the
//! machine's memory bandwidth.
//!
//! ```sh
//! cargo run --release -p hopfield-cuda --example sparse_speed            # N = 100000, k = 8
//! cargo run --release -p hopfield-cuda --example sparse_speed -- 20000 8  # N, k
//! cargo run --release -p hopfield-cuda --example sparse_speed -- --default-alloc
//! cargo run --release -p hopfield-cuda --example sparse_speed -- --graph ordered --reps 40
//! cargo run --release -p hopfield-cuda --example sparse_speed -- 1000000 --widths 64
//! ```
//!
//! Reports, per graph and batch width B (f32; 32 and 256 unless `--widths` says otherwise): the
//! time of `spmm` (y = W x) and of the fused step `(1 - eta deg) x + eta W x`, and the
//! bandwidth achieved against the floor of touching every byte once (W's row pointers, columns
//! and f32 values; x read; y written), as a fraction of the stream bandwidth parallel copy and
//! scale loops reach on the same machine.
//!
//! Three graphs of N nodes and k entries per row:
//! - `random`: k pseudo-random columns per row. No numbering brings such neighbours together,
//!   so every gather misses cache: the worst case.
//! - `lattice, shuffled`: a 4-D periodic lattice (each node linked to its two neighbours along
//!   each axis: k = 8), the structure of a kNN graph of data whose intrinsic dimension is 4,
//!   with its nodes numbered at random, as a shuffled dataset numbers them.
//! - `lattice, locality order`: the same graph renumbered by [`CsrMatrix::locality_order`].
//! - `band`: row i links to the k/2 rows on either side, so every gathered row was read a few
//!   rows before: the kernel's ceiling, as near to one pass over x as a gather gets.
//!
//! Then one and three fused steps on the shuffled lattice, `as numbered` and `through
//! Locality` (as `dahn_diffusion::FactoredDiffusion` runs two or more steps on such a graph: x
//! and deg permuted into the cached [`CsrMatrix::locality`] order, the steps there, the result
//! permuted back), permutations included in the time (not in the floor bytes).
//!
//! The process calls [`hopfield_cuda::tune_allocator`] (freed outputs stay mapped for the next
//! call) unless given `--default-alloc`.

use candle_core::{Device, Result, Tensor};
use hopfield_cuda::sparse::{diffusion_step, spmm, CsrMatrix};
use rayon::prelude::*;
use std::time::Instant;

/// Median seconds of `reps` (at least one) runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Bytes per second of two parallel loops over 256 MiB arrays, best of 5 each (read + write
/// counted, as STREAM counts them): `copy` (`copy_from_slice`, which glibc runs with string
/// instructions that skip reading the destination) and `scale` (`y = 3 x`, ordinary stores that
/// read each destination line before writing it, like the kernels' output rows).
fn stream_bandwidth() -> (f64, f64) {
    let len = 64 << 20;
    let src = vec![1f32; len];
    let mut dst = vec![0f32; len];
    let mut best = |f: &(dyn Fn(&mut [f32], &[f32]) + Sync)| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let s = Instant::now();
            dst.par_chunks_mut(1 << 16)
                .zip(src.par_chunks(1 << 16))
                .for_each(|(d, s)| f(d, s));
            best = best.min(s.elapsed().as_secs_f64());
        }
        (2 * len * 4) as f64 / best
    };
    let copy = best(&|d, s| d.copy_from_slice(s));
    let scale = best(&|d, s| {
        for (y, &x) in d.iter_mut().zip(s) {
            *y = 3.0 * x;
        }
    });
    std::hint::black_box(&dst);
    (copy, scale)
}

/// Row i links to k distinct pseudo-random columns (a kNN graph's shape without its locality:
/// the gathers of x rows are as scattered as they get).
fn knn_like(n: usize, k: usize) -> Result<CsrMatrix> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let (mut rp, mut ci, mut v) = (
        vec![0usize],
        Vec::with_capacity(n * k),
        Vec::with_capacity(n * k),
    );
    for _ in 0..n {
        let start = ci.len();
        while ci.len() - start < k.min(n) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let c = (s % n as u64) as u32;
            if !ci[start..].contains(&c) {
                ci.push(c);
                v.push(0.5 + (s >> 40) as f64 / (1u64 << 25) as f64);
            }
        }
        ci[start..].sort_unstable();
        rp.push(ci.len());
    }
    CsrMatrix::new(n, rp, ci, v)
}

/// Row i links to the k/2 rows on either side of it (shifted inwards at the ends).
fn band(n: usize, k: usize) -> Result<CsrMatrix> {
    let half = (k / 2).clamp(1, n.saturating_sub(1).max(2) / 2);
    let mut rp = vec![0usize];
    let mut ci = Vec::with_capacity(n * k);
    for i in 0..n {
        let start = i.saturating_sub(half).min(n.saturating_sub(2 * half + 1));
        ci.extend(
            (start..(start + 2 * half + 1).min(n))
                .filter(|&j| j != i)
                .map(|j| j as u32),
        );
        rp.push(ci.len());
    }
    let v = (0..ci.len()).map(|p| 0.5 + (p % 7) as f64 / 7.0).collect();
    CsrMatrix::new(n, rp, ci, v)
}

/// A 4-D periodic lattice of about `n` nodes (side `round(n^(1/4))`), each linked to its two
/// neighbours along each axis, nodes numbered by a pseudo-random permutation.
fn shuffled_lattice(n: usize) -> Result<CsrMatrix> {
    let side = (n as f64).powf(0.25).round().max(3.0) as usize;
    let n = side.pow(4);
    let mut label: Vec<u32> = (0..n as u32).collect();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        label.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let mut rows = vec![Vec::new(); n];
    for (node, row) in rows.iter_mut().enumerate() {
        let mut stride = 1;
        for _ in 0..4 {
            let coord = node / stride % side;
            for c in [(coord + 1) % side, (coord + side - 1) % side] {
                row.push(node - coord * stride + c * stride);
            }
            stride *= side;
        }
    }
    // Row `label[node]` holds node's links, renumbered.
    let mut by_label = vec![Vec::new(); n];
    for (node, row) in rows.into_iter().enumerate() {
        by_label[label[node] as usize] = row.into_iter().map(|j| label[j]).collect::<Vec<u32>>();
    }
    let mut rp = vec![0usize];
    let mut ci = Vec::with_capacity(8 * n);
    for mut row in by_label {
        row.sort_unstable();
        ci.extend(row);
        rp.push(ci.len());
    }
    let v = (0..ci.len()).map(|p| 0.5 + (p % 7) as f64 / 7.0).collect();
    CsrMatrix::new(n, rp, ci, v)
}

/// The graphs to measure, as `--graph` names them.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Graph {
    Random,
    Shuffled,
    Ordered,
    Band,
}

#[derive(clap::Parser)]
#[command(about = "Speed of the sparse kernels against the machine's memory bandwidth")]
struct Args {
    /// Nodes.
    #[arg(default_value_t = 100_000)]
    n: usize,
    /// Entries per row.
    #[arg(default_value_t = 8)]
    k: usize,
    /// Leave glibc's allocator as it is (freed outputs go back to the OS).
    #[arg(long)]
    default_alloc: bool,
    /// Only these graphs (repeatable; `shuffled` also runs the steps through Locality).
    #[arg(long, value_enum)]
    graph: Vec<Graph>,
    /// Runs per timing (the median is reported, after one warm-up).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Column counts B of x (comma-separated; DAHN diffuses patterns of its embedding width).
    #[arg(long, value_delimiter = ',', default_values_t = [32usize, 256])]
    widths: Vec<usize>,
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (n, k) = (args.n, args.k);
    if !args.default_alloc {
        hopfield_cuda::tune_allocator();
    }
    let wanted = |g: Graph| args.graph.is_empty() || args.graph.contains(&g);
    let stream = stream_bandwidth();
    println!(
        "threads {}, instruction set {}, stream bandwidth: copy {:.1} GB/s, scale {:.1} GB/s",
        rayon::current_num_threads(),
        hopfield_cuda::instruction_set(),
        stream.0 / 1e9,
        stream.1 / 1e9
    );
    let lattice = shuffled_lattice(n)?;
    println!("| graph | N | nnz | bandwidth | op | B | time (ms) | floor bytes (MB) | achieved (GB/s) | of copy | of scale |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (g, name) in [
        (Graph::Random, "random"),
        (Graph::Shuffled, "lattice, shuffled"),
        (Graph::Ordered, "lattice, locality order"),
        (Graph::Band, "band"),
    ] {
        if !wanted(g) {
            continue;
        }
        let a = match g {
            Graph::Random => knn_like(n, k)?,
            Graph::Shuffled => lattice.clone(),
            Graph::Ordered => lattice.permuted(&lattice.locality_order())?,
            Graph::Band => band(n, k)?,
        };
        measure(name, &a, stream, args.reps, &args.widths)?;
    }
    if wanted(Graph::Shuffled) {
        through_locality(&lattice, stream, args.reps, &args.widths)?;
    }
    Ok(())
}

/// `steps` fused steps of a shuffled graph, as numbered and in its cached locality order (x
/// and deg permuted in, the steps, the result permuted back), as
/// `dahn_diffusion::FactoredDiffusion` runs them.
fn through_locality(
    a: &CsrMatrix,
    stream: (f64, f64),
    reps: usize,
    widths: &[usize],
) -> Result<()> {
    let dev = Device::Cpu;
    // A fresh copy, so that the order is built here (a clone would share the cached one).
    let a = &CsrMatrix::new(
        a.n(),
        a.row_ptr().to_vec(),
        a.col_idx().to_vec(),
        a.values().to_vec(),
    )?;
    let built = Instant::now();
    let Some(loc) = a.locality() else {
        println!("(no locality order for this graph: too small or already in order)");
        return Ok(());
    };
    println!(
        "locality order built (once per graph, cached) in {:.1} ms",
        built.elapsed().as_secs_f64() * 1e3
    );
    let n = a.n();
    let deg: Vec<f32> = (0..n)
        .map(|i| a.row(i).1.iter().sum::<f64>() as f32)
        .collect();
    let deg = Tensor::from_vec(deg, n, &dev)?;
    for steps in [1usize, 3] {
        for &b in widths {
            let x = Tensor::randn(0f32, 1., (n, b), &dev)?;
            let bytes = steps as f64 * ((n + 1) * 8 + a.nnz() * 8 + 2 * n * b * 4 + n * 4) as f64;
            let direct = time(reps, || {
                let mut y = x.clone();
                for _ in 0..steps {
                    y = diffusion_step(a, &deg, 0.05, &y)?;
                }
                std::hint::black_box(y);
                Ok(())
            })?;
            let ordered = time(reps, || {
                let d = loc.to_order(&deg)?;
                let mut y = loc.to_order(&x)?;
                for _ in 0..steps {
                    y = diffusion_step(loc.matrix(), &d, 0.05, &y)?;
                }
                std::hint::black_box(loc.from_order(&y)?);
                Ok(())
            })?;
            for (how, t) in [("as numbered", direct), ("through Locality", ordered)] {
                let graph = format!("lattice, shuffled, {how}");
                let op = format!("{steps} fused step(s)");
                print_row(&graph, a, None, &op, b, t, bytes, stream);
            }
        }
    }
    Ok(())
}

fn measure(
    graph: &str,
    a: &CsrMatrix,
    stream: (f64, f64),
    reps: usize,
    widths: &[usize],
) -> Result<()> {
    let (n, dev) = (a.n(), Device::Cpu);
    let deg: Vec<f32> = (0..n)
        .map(|i| a.row(i).1.iter().sum::<f64>() as f32)
        .collect();
    let deg = Tensor::from_vec(deg, n, &dev)?;
    let eta = 0.05;
    for &b in widths {
        let x = Tensor::randn(0f32, 1., (n, b), &dev)?;
        let w_bytes = (n + 1) * 8 + a.nnz() * (4 + 4);
        let xy = 2 * n * b * 4;
        for (name, extra) in [("spmm", 0usize), ("fused step", n * 4)] {
            let bytes = (w_bytes + xy + extra) as f64;
            let t = time(reps, || {
                let y = if extra == 0 {
                    spmm(a, &x)?
                } else {
                    diffusion_step(a, &deg, eta, &x)?
                };
                std::hint::black_box(y);
                Ok(())
            })?;
            print_row(graph, a, Some(a.bandwidth()), name, b, t, bytes, stream);
        }
    }
    Ok(())
}

/// One table row: time, floor bytes, achieved bandwidth and its fractions of the two streams.
#[allow(clippy::too_many_arguments)]
fn print_row(
    graph: &str,
    a: &CsrMatrix,
    bandwidth: Option<usize>,
    op: &str,
    b: usize,
    t: f64,
    bytes: f64,
    stream: (f64, f64),
) {
    let bandwidth = bandwidth.map_or("-".to_string(), |w| w.to_string());
    println!(
        "| {graph} | {} | {} | {bandwidth} | {op} | {b} | {:.2} | {:.1} | {:.1} | {:.0}% | {:.0}% |",
        a.n(),
        a.nnz(),
        t * 1e3,
        bytes / 1e6,
        bytes / t / 1e9,
        100.0 * bytes / t / stream.0,
        100.0 * bytes / t / stream.1
    );
}
