//! Retrieval from a memory split into shards gives the answer of the whole memory: 4 shards of
//! 250,000 patterns against one memory of 10^6 (`hopfield_core::sharded::ShardedMemory`).
//!
//! Stores S random +-1 patterns of dimension d, corrupts L of them (15% of their signs flipped)
//! and retrieves `softmax(beta q X^T) X` twice: through the sharded memory (shards on CPU
//! threads, merged exactly from each shard's log-sum-exp) and through the single memory. Prints
//! each time, the bytes the sharded retrieval's collectives would move between P devices (NCCL
//! ring model, counted by `CountingCommunicator`: independent of S), peak memory, and, as its
//! last line, the largest difference between the two answers. With `--backward` it also
//! differentiates a loss through both (the gradient of the queries: each shard's part, summed
//! on the queries' device), counts the bytes the backward pass moves and compares the gradients.
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin retrieve_sharded
//! cargo run --release -p hopfield-examples --bin retrieve_sharded -- --shards 8 --patterns-per-shard 10000
//! cargo run --release -p hopfield-examples --bin retrieve_sharded -- --sweep 8   # bytes for P = 1..8
//! cargo run --release -p hopfield-examples --bin retrieve_sharded -- --backward --sweep 8
//! ```

use candle_core::{Device, Result, Tensor, Var};
use clap::Parser;
use hopfield_core::sharded::{CountingCommunicator, LocalCommunicator, Shard, ShardedMemory};
use hopfield_cuda::retrieval::{retrieve, Retrieval};
use hopfield_examples::{peak_rss_mib, random_signs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Sharded Hopfield retrieval against one memory of the same patterns")]
struct Args {
    /// Number of shards P (each on its own CPU thread).
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Stored patterns per shard.
    #[arg(long, default_value_t = 250_000)]
    patterns_per_shard: usize,
    /// Pattern dimension d.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Number of corrupted queries L.
    #[arg(long, default_value_t = 1024)]
    queries: usize,
    /// Fraction of signs flipped in each query.
    #[arg(long, default_value_t = 0.15)]
    flip: f64,
    /// Inverse temperature beta.
    #[arg(long, default_value_t = 8.0)]
    beta: f64,
    /// Seed of the pattern generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First split the same memory into 1..=K shards and print, per P, the bytes the
    /// collectives move, the time and the difference from the single memory.
    #[arg(long)]
    sweep: Option<usize>,
    /// Also run a backward pass (the gradient of the queries) through both and count its bytes.
    #[arg(long)]
    backward: bool,
}

/// The gradient of a fixed loss (each output entry weighed by a cosine of its index, so no two
/// weigh the same) with respect to the queries, by a retrieval `f` of them.
fn query_gradient(q: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let q = Var::from_tensor(q)?;
    let out = f(q.as_tensor())?;
    let n = out.elem_count();
    let w = Tensor::arange(0u32, n as u32, out.device())?
        .to_dtype(out.dtype())?
        .cos()?
        .reshape(out.shape())?;
    let grads = (out * w)?.sum_all()?.backward()?;
    grads
        .get(&q)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("no gradient reached the queries".into()))
}

/// Largest absolute difference of two tensors.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// The memory split into `p` shards, each a copy of its own rows (as it would be on its own
/// device, not a view of the store), its collectives counted by `comm`.
fn sharded(
    store: &Tensor,
    p: usize,
    comm: Arc<CountingCommunicator<LocalCommunicator>>,
) -> Result<ShardedMemory> {
    let split = ShardedMemory::split(store, store, p, &[Device::Cpu])?;
    let shards = split
        .shards()
        .iter()
        .map(|sh| {
            // The example's values are its keys: one copy serves both.
            let rows = sh.keys.force_contiguous()?;
            Ok(Shard {
                keys: rows.clone(),
                values: rows,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ShardedMemory::new(shards)?.with_communicator(comm))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.shards == 0 || args.patterns_per_shard == 0 || args.dim == 0 || args.queries == 0 {
        candle_core::bail!(
            "--shards, --patterns-per-shard, --dim and --queries must be at least 1"
        );
    }
    let dev = Device::Cpu;
    let (p, d, l) = (args.shards, args.dim, args.queries);
    let s = p * args.patterns_per_shard;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let store: Vec<f32> = random_signs(&mut rng, s * d);
    let mut queries = Vec::with_capacity(l * d);
    for _ in 0..l {
        let t = rng.random_range(0..s);
        for e in 0..d {
            let x = store[t * d + e];
            queries.push(if rng.random::<f64>() < args.flip {
                -x
            } else {
                x
            });
        }
    }
    // The retrieval layout: (N, S, H, d) with one sample and one head.
    let store = Tensor::from_vec(store, (1, s, 1, d), &dev)?;
    let queries = Tensor::from_vec(queries, (1, l, 1, d), &dev)?;
    let cfg = Retrieval::new(args.beta);

    let t = Instant::now();
    let single = retrieve(&queries, &store, &store, &cfg)?;
    let single_secs = t.elapsed().as_secs_f64();
    let peak_single = peak_rss_mib();

    let single_dq = if args.backward {
        Some(query_gradient(&queries, |q| {
            retrieve(q, &store, &store, &cfg)
        })?)
    } else {
        None
    };

    if let Some(k) = args.sweep {
        println!(
            "P   forward    backward   fwd/(P-1) bwd/(P-1) broadcast max     sums     dq-reduce \
             sum-grads time (s)  max abs diff (out, dq)"
        );
        for p in 1..=k {
            let comm = Arc::new(CountingCommunicator::new(LocalCommunicator));
            let memory = sharded(&store, p, comm.clone())?;
            let t = Instant::now();
            let out = memory.retrieve(&queries, &cfg)?;
            let mut tr = comm.traffic();
            let dq_diff = match &single_dq {
                Some(one) => {
                    // Its own forward pass again: only the backward bytes are counted from it.
                    comm.reset();
                    let dq = query_gradient(&queries, |q| memory.retrieve(q, &cfg))?;
                    let back = comm.traffic();
                    tr.broadcast_grad = back.broadcast_grad;
                    tr.sum_grad = back.sum_grad;
                    format!("{:e}", max_abs_diff(&dq, one)?)
                }
                None => "-".into(),
            };
            let secs = t.elapsed().as_secs_f64();
            let per = |b: u64| if p > 1 { b / (p as u64 - 1) } else { 0 };
            println!(
                "{p:<3} {:<10} {:<10} {:<9} {:<9} {:<9} {:<7} {:<8} {:<9} {:<9} {secs:<9.3} {:e}, {dq_diff}",
                tr.forward(),
                tr.backward(),
                per(tr.forward()),
                per(tr.backward()),
                tr.broadcast,
                tr.max,
                tr.sum,
                tr.broadcast_grad,
                tr.sum_grad,
                max_abs_diff(&out, &single)?
            );
        }
    }

    let comm = Arc::new(CountingCommunicator::new(LocalCommunicator));
    let shards = sharded(&store, p, comm.clone())?;

    let t = Instant::now();
    let sharded = shards.retrieve(&queries, &cfg)?;
    let sharded_secs = t.elapsed().as_secs_f64();
    let traffic = comm.traffic();
    let backward = match &single_dq {
        Some(one) => {
            comm.reset();
            let t = Instant::now();
            let dq = query_gradient(&queries, |q| shards.retrieve(q, &cfg))?;
            let dq_max = one.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            Some((
                t.elapsed().as_secs_f64(),
                max_abs_diff(&dq, one)?,
                dq_max,
                comm.traffic(),
            ))
        }
        None => None,
    };
    let diff = max_abs_diff(&sharded, &single)?;
    let store_mib = (s * d * 4) as f64 / (1 << 20) as f64;
    println!(
        "stored patterns        {s} x {d} (f32, {store_mib:.0} MiB), beta {}",
        args.beta
    );
    println!(
        "queries L              {l}, {:.0}% of signs flipped",
        100.0 * args.flip
    );
    println!(
        "sharded retrieval      {sharded_secs:.3} s ({p} shards of {} on {} CPU threads)",
        args.patterns_per_shard,
        rayon::current_num_threads()
    );
    println!("single retrieval       {single_secs:.3} s (one memory of {s})");
    println!(
        "bytes between devices  {} (broadcast {}, max {}, sums {}; O(L d P), independent of S)",
        traffic.total(),
        traffic.broadcast,
        traffic.max,
        traffic.sum
    );
    if let Some((secs, dq_diff, dq_max, tr)) = backward {
        println!(
            "forward + backward     {secs:.3} s sharded; backward bytes {} (dq reduce {}, sum gradients {}); max abs difference of dq {dq_diff:e} (largest |dq| {dq_max:e})",
            tr.backward(),
            tr.broadcast_grad,
            tr.sum_grad
        );
    }
    if let (Some(single), Some(peak)) = (peak_single, peak_rss_mib()) {
        println!(
            "peak memory            {single:.0} MiB after the single retrieval, {peak:.0} MiB in all (store {store_mib:.0} MiB + shard copies {store_mib:.0} MiB)"
        );
    }
    println!("max abs difference {diff:e}");
    Ok(())
}
