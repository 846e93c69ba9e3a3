//! Retrieval from a memory of a million patterns through the public `Hopfield` API (pure static
//! retrieval, `softmax(beta q X^T) X`, beta = 8), on the fused kernel: the `L x S` association
//! (4 GiB in f32 for the defaults) is never formed.
//!
//! Stores S random +-1 patterns of dimension d, corrupts L of them (a fraction of their signs
//! flipped) and retrieves; prints accuracy (retrieved pattern's signs equal the stored one's;
//! at the defaults about 0.85, the task's own limit: a query with ~10 of 64 signs flipped is
//! nearer some other of 10^6 random patterns about 15% of the time; `--flip 0.05` gives 1.0),
//! time, the GEMM floor measured on the same machine (`2 * 2 * S * L * d` flops at the rate of a
//! candle matmul of the same inner shape) and peak memory against the size of the pattern store.
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin retrieve_million
//! cargo run --release -p hopfield-examples --bin retrieve_million -- --patterns 100000 --flip 0.2
//! ```

use candle_core::{DType, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use hopfield_examples::{peak_rss_mib, random_signs};
use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Hopfield retrieval from a memory of a million patterns")]
struct Args {
    /// Where to run: auto (CUDA when built with it and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: hopfield_examples::DeviceChoice,
    /// Number of stored patterns S.
    #[arg(long, default_value_t = 1_000_000)]
    patterns: usize,
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
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = args.device.device()?;
    let (s, d, l) = (args.patterns, args.dim, args.queries);
    // Seeded (candle's CPU RNG cannot be).
    let mut rng = StdRng::seed_from_u64(args.seed);
    let store: Vec<f32> = random_signs(&mut rng, s * d);
    let targets: Vec<usize> = (0..l).map(|_| rng.random_range(0..s)).collect();
    let mut queries = Vec::with_capacity(l * d);
    for &t in &targets {
        for e in 0..d {
            let x = store[t * d + e];
            queries.push(if rng.random::<f64>() < args.flip {
                -x
            } else {
                x
            });
        }
    }
    let store = Tensor::from_vec(store, (1, s, d), &dev)?;
    let queries = Tensor::from_vec(queries, (1, l, d), &dev)?;
    let store_mib = (s * d * 4) as f64 / (1 << 20) as f64;
    let base_rss = peak_rss_mib().unwrap_or(f64::NAN);

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let hopfield = Hopfield::new(HopfieldConfig::pure_static().with_scaling(args.beta), vb)?;
    let t = Instant::now();
    let out = hopfield.forward_with(
        HopfieldInput::Triple {
            stored: &store,
            state: &queries,
            projection: &store,
        },
        Masks::default(),
        false,
    )?;
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_rss_mib().unwrap_or(f64::NAN);

    let out = out.squeeze(0)?.to_vec2::<f32>()?;
    let stored = store.squeeze(0)?;
    let mut correct = 0;
    for (row, &t) in out.iter().zip(&targets) {
        let truth = stored.get(t)?.to_vec1::<f32>()?;
        if row.iter().zip(&truth).all(|(a, b)| a.signum() == *b) {
            correct += 1;
        }
    }

    // GEMM floor: a candle matmul with the same inner shape (L x d times d x chunk), timed here.
    let chunk = s.min(65_536);
    let a = Tensor::randn(0f32, 1., (l, d), &dev)?;
    let b = Tensor::randn(0f32, 1., (d, chunk), &dev)?.contiguous()?;
    a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(a.matmul(&b)?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let rate = 2.0 * (l * d * chunk) as f64 / best;
    let floor = 2.0 * 2.0 * (s * l * d) as f64 / rate;
    // And at the rate of a large square matmul, the machine's best GEMM case.
    let sq = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    sq.matmul(&sq)?;
    let mut best_sq = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(sq.matmul(&sq)?);
        best_sq = best_sq.min(t.elapsed().as_secs_f64());
    }
    let rate_sq = 2.0 * 1024f64.powi(3) / best_sq;
    let floor_sq = 2.0 * 2.0 * (s * l * d) as f64 / rate_sq;

    println!("stored patterns S      {s} x {d} (f32, {store_mib:.0} MiB)");
    println!(
        "queries L              {l}, {:.0}% of signs flipped, beta {}",
        100.0 * args.flip,
        args.beta
    );
    println!(
        "accuracy               {:.4} ({correct}/{l})",
        correct as f64 / l as f64
    );
    println!("retrieval time         {secs:.3} s");
    println!(
        "GEMM floor             {floor:.3} s ({:.0} GFLOP/s matmul here; time / floor = {:.2})",
        rate / 1e9,
        secs / floor
    );
    println!(
        "GEMM floor (square)    {floor_sq:.3} s ({:.0} GFLOP/s for 1024^3; time / floor = {:.2})",
        rate_sq / 1e9,
        secs / floor_sq
    );
    println!(
        "peak memory            {peak:.0} MiB (before the retrieval: {base_rss:.0} MiB; peak / store = {:.2})",
        peak / store_mib
    );
    println!(
        "explicit association   would be {:.0} MiB of logits alone",
        (l * s * 4) as f64 / (1 << 20) as f64
    );
    Ok(())
}
