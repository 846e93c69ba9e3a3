//! Claims of "Hopfield Networks is All You Need" (Ramsauer et al., 2021), measured with this
//! library on real handwritten digits and on random patterns. One subcommand per claim:
//!
//! * `one-step`: the modern Hopfield update `xi <- X softmax(beta X^T xi)` retrieves a stored
//!   pattern after one update when the patterns are well separated; clustered patterns (the
//!   digits) need a larger beta, and further updates change little.
//! * `fixed-points`: as beta grows the fixed points move from the global average (all patterns
//!   share the softmax mass) through metastable states (a few similar patterns share it) to single
//!   patterns; measured with the paper's count of the patterns that carry 90% of the mass.
//! * `capacity`: retrieval error against the number of stored patterns, for the classical
//!   binary Hopfield network, dense associative memories (cubic and exponential interaction) and
//!   the modern Hopfield network, on random patterns and on the (binarised) digits.
//! * `energy`: the energy `E(xi) = -1/beta lse(beta X^T xi) + 1/2 xi^T xi + 1/beta log N + 1/2 M^2`
//!   decreases at every update, and the update is a gradient step of size 1 on it
//!   (`xi - grad E(xi) = X softmax(beta X^T xi)`, checked with candle autograd).
//!
//! Every update is `Hopfield` in pure static retrieval (`HopfieldConfig::pure_static()`, no
//! parameters), the layer users call. Results: `docs/paper.md`.
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin paper -- one-step
//! cargo run --release -p hopfield-examples --bin paper -- fixed-points
//! ```

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use clap::{Parser, Subcommand};
use hopfield_examples::plot::{self, digit_grid, min_max, GridRow, GridSection};
use hopfield_examples::{
    device, digits_path, load_digits, normalize_rows, random_signs, standard_normal, DeviceChoice,
};
use hopfield_nn::classical::{ClassicalHopfield, DenseAssociativeMemory, Interaction};
use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    about = "The paper's claims, measured: one-step retrieval and the three kinds of fixed points"
)]
struct Args {
    /// Where to run: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", global = true)]
    device: DeviceChoice,
    /// Seed of the random patterns and the query noise.
    #[arg(long, default_value_t = 0, global = true)]
    seed: u64,
    /// Store only the first N digits, at least 16 (quick runs; default: all 1797).
    #[arg(long, global = true)]
    patterns: Option<usize>,
    #[command(subcommand)]
    claim: Claim,
}

#[derive(Subcommand, Debug)]
enum Claim {
    /// Retrieval error after 1, 2 and 3 updates, for random (well-separated) patterns and for
    /// the digits (clustered).
    OneStep {
        /// Standard deviation of the Gaussian noise added to each pixel of a query (patterns
        /// have unit norm, so 1/sqrt(64) = 0.125 is a noise as large as the pattern).
        #[arg(long, default_value_t = 0.1)]
        noise: f64,
    },
    /// The 90%-mass count as beta varies, for the digits and for random patterns, with a plot
    /// and pictures of each regime.
    FixedPoints {
        /// The plot of the mean count against beta (PNG).
        #[arg(long, default_value = "target/paper_fixed_points.png")]
        plot: PathBuf,
        /// The pictures of retrieved digits in each regime (PNG).
        #[arg(long, default_value = "target/paper_regimes.png")]
        pictures: PathBuf,
    },
    /// Retrieval error against the number of stored patterns for the classical network, dense
    /// associative memories and the modern Hopfield network.
    Capacity {
        /// Fraction of a query's bits flipped.
        #[arg(long, default_value_t = 0.1)]
        flip: f64,
        /// Betas of the modern Hopfield network (patterns scaled to unit norm), comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [8.0, 32.0])]
        betas: Vec<f64>,
        /// Pattern dimensions of the random patterns, comma-separated (the digits have 64).
        #[arg(long, value_delimiter = ',', default_values_t = [32, 64])]
        dims: Vec<usize>,
        /// The plot of the error against the number of patterns, at the smallest dimension (PNG).
        #[arg(long, default_value = "target/paper_capacity.png")]
        plot: PathBuf,
    },
    /// The energy along 6 updates of noisy digit queries at several betas, with a plot, and the
    /// update checked against a gradient step of size 1.
    Energy {
        /// Noise sd per pixel of the queries.
        #[arg(long, default_value_t = 0.1)]
        noise: f64,
        /// The plot of the mean energy against the update step (PNG).
        #[arg(long, default_value = "target/paper_energy.png")]
        plot: PathBuf,
    },
}

/// The digits (pixels in [0, 1]) and labels, the first `limit` of them when given.
fn digits(limit: Option<usize>) -> Result<(Tensor, Vec<u8>)> {
    let (mut images, mut labels) = load_digits(digits_path())?;
    if let Some(n) = limit {
        let n = n.clamp(16, labels.len());
        images = images.narrow(0, 0, n)?;
        labels.truncate(n);
    }
    Ok((images, labels))
}

/// Random patterns of the digits' size, normalised the same way.
fn random_patterns(n: usize, d: usize, rng: &mut StdRng, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
    normalize_rows(&Tensor::from_vec(v, (n, d), dev)?)
}

/// `steps` updates of the states `xi` `(M, d)` against stored `x` `(N, d)`.
fn update(x: &Tensor, xi: &Tensor, beta: f64, steps: usize) -> Result<Tensor> {
    let memory = Hopfield::new(
        HopfieldConfig::pure_static().with_scaling(beta),
        VarBuilder::zeros(DType::F32, x.device()),
    )?;
    let y = x.unsqueeze(0)?;
    let mut state = xi.unsqueeze(0)?;
    for _ in 0..steps {
        state = memory.forward_with(
            HopfieldInput::from((&y, &state, &y)),
            Masks::default(),
            false,
        )?;
    }
    state.squeeze(0)
}

/// Fraction of rows of `xi` whose nearest stored pattern (largest dot product: all rows of `x`
/// have unit norm) is not the one they came from.
fn error_rate(x: &Tensor, xi: &Tensor) -> Result<f64> {
    let nearest = xi.matmul(&x.t()?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let wrong = nearest
        .iter()
        .enumerate()
        .filter(|&(i, &n)| i != n as usize)
        .count();
    Ok(wrong as f64 / nearest.len() as f64)
}

/// Mean distance `|xi - x_i|` of each state to the pattern it came from.
fn mean_distance(x: &Tensor, xi: &Tensor) -> Result<f64> {
    (xi - x)?
        .sqr()?
        .sum(D::Minus1)?
        .sqrt()?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar()
}

fn one_step(dev: &Device, seed: u64, noise: f64, limit: Option<usize>) -> Result<()> {
    let (images, _) = digits(limit)?;
    let digits = normalize_rows(&images.to_device(dev)?)?;
    let (n, d) = digits.dims2()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let random = random_patterns(n, d, &mut rng, dev)?;
    println!(
        "One-step retrieval: {n} stored patterns of d = {d} (unit norm), queries = the stored"
    );
    println!(
        "patterns + Gaussian noise sd {noise} per pixel, renormalised; error = nearest stored"
    );
    println!("pattern is not the original; distance = mean |xi - x| (patterns have norm 1)\n");
    println!(
        "{:<40} {:>6}  {:>17} {:>17} {:>17}",
        "patterns", "beta", "after 1 update", "after 2", "after 3"
    );
    for (name, x) in [
        ("random (well separated)", &random),
        ("digits (clustered)", &digits),
    ] {
        let queries = normalize_rows(&(x + gaussian(n, d, noise, &mut rng, dev)?)?)?;
        // How similar the patterns are: the mean of each pattern's largest dot product with another.
        let sims = x.matmul(&x.t()?)?.to_vec2::<f32>()?;
        let max_other = sims
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .fold(f32::MIN, |a, (_, &v)| a.max(v))
            })
            .sum::<f32>()
            / n as f32;
        let label = format!("{name}, max cos {max_other:.2}");
        print!("{label:<40} {:>6}  ", "query");
        println!(
            "{:>17}",
            format!(
                "{:.3} / {:.3}",
                error_rate(x, &queries)?,
                mean_distance(x, &queries)?
            )
        );
        for beta in [8.0, 32.0, 128.0, 512.0] {
            print!("{:<40} {beta:>6}  ", "");
            let mut state = queries.clone();
            for _ in 0..3 {
                state = update(x, &state, beta, 1)?;
                print!(
                    "{:>17} ",
                    format!(
                        "{:.3} / {:.3}",
                        error_rate(x, &state)?,
                        mean_distance(x, &state)?
                    )
                );
            }
            println!();
        }
    }
    println!("\n(each cell: error / distance)");
    Ok(())
}

/// The binary memories compared by `capacity`; the modern network follows, once per beta.
const BINARY: [&str; 3] = ["classical (Hebb)", "dense, cubic", "dense, exponential"];

/// The binary memories of `capacity`: one synchronous update of a set of states.
enum Binary {
    Classical(ClassicalHopfield),
    Dense(DenseAssociativeMemory),
}

impl Binary {
    fn update(&self, s: &Tensor) -> Result<Tensor> {
        match self {
            Self::Classical(net) => net.update(s),
            Self::Dense(net) => net.update(s),
        }
    }
}

/// Runs memory `memory` (an index into [`BINARY`], then the modern network at `betas[memory -
/// 3]`) on `±1` patterns `x` from `±1` queries; returns the fraction of queries not retrieved
/// exactly (after up to 10 synchronous updates, or one update then `sign` for the modern
/// network).
fn capacity_error(memory: usize, x: &Tensor, queries: &Tensor, betas: &[f64]) -> Result<f64> {
    let binary = match memory {
        0 => Some(Binary::Classical(ClassicalHopfield::store(x)?)),
        1 => Some(Binary::Dense(DenseAssociativeMemory::new(
            x,
            Interaction::Polynomial(3),
        )?)),
        2 => Some(Binary::Dense(DenseAssociativeMemory::new(
            x,
            Interaction::Exponential,
        )?)),
        _ => None,
    };
    let out = match binary {
        Some(net) => {
            let mut s = queries.to_dtype(DType::F64)?;
            for _ in 0..10 {
                let next = net.update(&s)?;
                let same = next
                    .eq(&s)?
                    .to_dtype(DType::F64)?
                    .min_all()?
                    .to_scalar::<f64>()?
                    == 1.0;
                s = next;
                if same {
                    break;
                }
            }
            s
        }
        None => {
            // Continuous states on the unit sphere: one update, then the sign.
            let d = x.dim(1)? as f64;
            let xs = (x.to_dtype(DType::F32)? / d.sqrt())?;
            let qs = (queries.to_dtype(DType::F32)? / d.sqrt())?;
            let r = update(&xs, &qs, betas[memory - BINARY.len()], 1)?;
            ((r.ge(0.0)?.to_dtype(DType::F64)? * 2.0)? - 1.0)?
        }
    };
    let m = queries.dim(0)?;
    let target = x.narrow(0, 0, m)?.to_dtype(DType::F64)?;
    let exact = out
        .eq(&target)?
        .to_dtype(DType::F64)?
        .min(1)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(1.0 - exact / m as f64)
}

/// The first `m` rows of `x` with a fraction `flip` of each row's entries negated (the same
/// number in every row).
fn flipped(x: &Tensor, m: usize, flip: f64, rng: &mut StdRng) -> Result<Tensor> {
    let rows = x.narrow(0, 0, m)?.to_vec2::<f64>()?;
    let d = rows.first().map_or(0, Vec::len);
    let k = (flip * d as f64).round() as usize;
    let mut out = Vec::with_capacity(m * d);
    for mut row in rows {
        let mut idx: Vec<usize> = (0..d).collect();
        idx.shuffle(rng);
        for &i in &idx[..k] {
            row[i] = -row[i];
        }
        out.extend(row);
    }
    Tensor::from_vec(out, (m, d), x.device())
}

fn capacity(
    dev: &Device,
    seed: u64,
    (flip, betas, dims): (f64, &[f64], &[usize]),
    plot: &Path,
    limit: Option<usize>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    if betas.is_empty() || dims.is_empty() || dims.contains(&0) {
        return Err("capacity needs at least one beta and one dimension >= 1".into());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let max_n = limit.unwrap_or(1024).clamp(16, 1024);
    let sizes: Vec<usize> = (1..=10)
        .map(|i| 1usize << i)
        .filter(|&n| n <= max_n)
        .collect();
    let names: Vec<String> = BINARY
        .iter()
        .map(|m| m.to_string())
        .chain(betas.iter().map(|b| format!("modern, beta {b}")))
        .collect();
    println!(
        "Storage capacity: queries = stored patterns with {:.0}% of their bits flipped; error =",
        flip * 100.0
    );
    println!("fraction of queries (at most 100) not retrieved exactly. Modern Hopfield: unit-norm");
    println!("patterns, one update then sign.\n");
    let mut sets = Vec::new();
    for &d in dims {
        let random: Vec<f64> = random_signs(&mut rng, max_n * d);
        sets.push((
            format!("random patterns, d = {d}"),
            d,
            Tensor::from_vec(random, (max_n, d), dev)?,
        ));
    }
    // The digits, binarised at half ink, in their file order (all ten classes mixed).
    let (images, _) = digits(Some(max_n))?;
    let binary = ((images.ge(0.5)?.to_dtype(DType::F64)? * 2.0)? - 1.0)?.to_device(dev)?;
    sets.push(("binarised digits, d = 64".to_string(), 64, binary));
    // The smallest dimension: where the memories part ways within 1024 patterns.
    let d_plot = *dims.iter().min().expect("checked non-empty");
    let mut curves = vec![Vec::new(); names.len()];
    for (name, d, x) in &sets {
        println!("{name}");
        print!("{:>6}", "N");
        names.iter().for_each(|m| print!("{m:>20}"));
        println!();
        for &n in sizes.iter().filter(|&&n| n <= x.dim(0).unwrap_or(0)) {
            let xn = x.narrow(0, 0, n)?;
            let queries = flipped(&xn, n.min(100), flip, &mut rng)?;
            print!("{n:>6}");
            for (k, curve) in curves.iter_mut().enumerate() {
                let e = capacity_error(k, &xn, &queries, betas)?;
                print!("{e:>20.3}");
                if name.starts_with("random") && *d == d_plot {
                    curve.push((n as f64, e));
                }
            }
            println!();
        }
        println!();
    }
    draw_capacity(plot, &names, &curves, d_plot)?;
    println!("wrote {}", plot.display());
    Ok(())
}

fn draw_capacity(
    path: &Path,
    names: &[String],
    curves: &[Vec<(f64, f64)>],
    d: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = plot::canvas(path, (720, 440))?;
    let n_max = curves.iter().flatten().fold(2f64, |a, p| a.max(p.0));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("retrieval error against stored random patterns (d = {d})"),
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d((2f64..n_max).log_scale(), -0.02f64..1.02)?;
    chart
        .configure_mesh()
        .x_desc("stored patterns N")
        .y_desc("error")
        .draw()?;
    let named: Vec<(String, Vec<(f64, f64)>)> =
        names.iter().cloned().zip(curves.iter().cloned()).collect();
    plot::curves(&mut chart, &named, SeriesLabelPosition::UpperLeft).map_err(|e| e.to_string())?;
    root.present()?;
    Ok(())
}

/// Gaussian noise of sd `sd`, `(n, d)`.
fn gaussian(n: usize, d: usize, sd: f64, rng: &mut StdRng, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * d)
        .map(|_| (standard_normal(rng) * sd) as f32)
        .collect();
    Tensor::from_vec(v, (n, d), dev)
}

/// The modern Hopfield energy of each state `xi` `(M, d)` against stored `x` `(N, d)`:
/// `-1/beta lse(beta x xi) + 1/2 |xi|^2 + 1/beta log N + 1/2 M^2`, `M` the largest pattern norm
/// (the constants make it non-negative; they do not change its gradient). Differentiable.
fn modern_energy(x: &Tensor, xi: &Tensor, beta: f64) -> Result<Tensor> {
    let n = x.dim(0)? as f64;
    let logits = (xi.matmul(&x.t()?)? * beta)?;
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &m)?
        .squeeze(D::Minus1)?;
    let big_m = x
        .sqr()?
        .sum(D::Minus1)?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let half_sq = (xi.sqr()?.sum(D::Minus1)? * 0.5)?;
    (half_sq - (lse / beta)?)? + (n.ln() / beta + 0.5 * big_m)
}

fn energy(
    dev: &Device,
    seed: u64,
    noise: f64,
    plot: &Path,
    limit: Option<usize>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (images, _) = digits(limit)?;
    let x = normalize_rows(&images.to_device(dev)?)?;
    let (n, d) = x.dims2()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let q = 200.min(n);
    let queries = normalize_rows(&(x.narrow(0, 0, q)? + gaussian(q, d, noise, &mut rng, dev)?)?)?;
    println!("Energy of {q} noisy digit queries (noise sd {noise}) against {n} stored digits,");
    println!("mean over queries, at the query (step 0) and after each update; 'increases' counts");
    println!("query-steps where the energy went up by more than 1e-5 (float rounding)\n");
    let steps = 6;
    print!("{:>6}", "beta");
    (0..=steps).for_each(|t| print!("{:>10}", format!("step {t}")));
    println!("{:>11}", "increases");
    let mut curves = Vec::new();
    for beta in [8.0, 32.0, 128.0] {
        let mut state = queries.clone();
        let mut e = modern_energy(&x, &state, beta)?.to_vec1::<f32>()?;
        let mut curve = vec![e.iter().sum::<f32>() as f64 / q as f64];
        let mut increases = 0;
        for _ in 0..steps {
            state = update(&x, &state, beta, 1)?;
            let next = modern_energy(&x, &state, beta)?.to_vec1::<f32>()?;
            increases += next
                .iter()
                .zip(&e)
                .filter(|(a, b)| **a > **b + 1e-5)
                .count();
            curve.push(next.iter().sum::<f32>() as f64 / q as f64);
            e = next;
        }
        print!("{beta:>6}");
        curve.iter().for_each(|v| print!("{v:>10.4}"));
        println!("{increases:>11}");
        curves.push((beta, curve));
    }
    // The update is a gradient step of size 1: xi - dE/dxi = X softmax(beta X^T xi).
    let beta = 32.0;
    let xi = candle_core::Var::from_tensor(&queries)?;
    let grads = modern_energy(&x, xi.as_tensor(), beta)?
        .sum_all()?
        .backward()?;
    let step = (xi.as_tensor() - grads.get(&xi).ok_or("no gradient")?)?;
    let diff = (step - update(&x, &queries, beta, 1)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    println!("\nbeta {beta}: max |(xi - grad E(xi)) - update(xi)| = {diff:.2e} (a gradient step of size 1 is the update)");
    draw_energy(plot, &curves)?;
    println!("wrote {}", plot.display());
    Ok(())
}

fn draw_energy(
    path: &Path,
    curves: &[(f64, Vec<f64>)],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = plot::canvas(path, (720, 440))?;
    let all = curves.iter().flat_map(|(_, c)| c.iter().copied());
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.08).max(1e-6);
    let steps = curves.first().map_or(1, |(_, c)| c.len() - 1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "modern Hopfield energy along the updates (mean over queries)",
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..steps, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("update")
        .y_desc("energy")
        .draw()?;
    let named: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(beta, c)| {
            let pts = c.iter().enumerate().map(|(t, &e)| (t as f64, e)).collect();
            (format!("beta {beta}"), pts)
        })
        .collect();
    plot::curves(&mut chart, &named, SeriesLabelPosition::UpperRight).map_err(|e| e.to_string())?;
    root.present()?;
    Ok(())
}

/// For every row of the softmax `P` `(M, N)`, how many patterns carry 90% of its mass.
fn mass_counts(p: &Tensor) -> Result<Vec<usize>> {
    Ok(p.to_vec2::<f32>()?
        .into_iter()
        .map(|mut row| {
            row.sort_by(|a, b| b.total_cmp(a));
            let mut acc = 0.0;
            row.iter()
                .take_while(|&&w| {
                    let before = acc;
                    acc += w;
                    before < 0.9
                })
                .count()
        })
        .collect())
}

/// The association `softmax(beta Q X^T)` of queries `q` against stored `x`.
fn association(x: &Tensor, q: &Tensor, beta: f64) -> Result<Tensor> {
    let memory = Hopfield::new(
        HopfieldConfig::pure_static().with_scaling(beta),
        VarBuilder::zeros(DType::F32, x.device()),
    )?;
    let (y, r) = (x.unsqueeze(0)?, q.unsqueeze(0)?);
    memory
        .association_matrix(HopfieldInput::from((&y, &r, &y)), Masks::default())?
        .squeeze(0)?
        .squeeze(0)
}

fn fixed_points(
    dev: &Device,
    seed: u64,
    (plot, pictures): (&PathBuf, &PathBuf),
    limit: Option<usize>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (images, labels) = digits(limit)?;
    let digits = normalize_rows(&images.to_device(dev)?)?;
    let (n, d) = digits.dims2()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let random = random_patterns(n, d, &mut rng, dev)?;
    let betas: Vec<f64> = (0..=12).map(|i| 2f64.powi(i)).collect();
    println!("Fixed points: each stored pattern is the query; after one update, how many patterns");
    println!("carry 90% of the softmax mass (mean over the {n} queries; {n} = global average,");
    println!("1 = a single pattern; in between: metastable states)\n");
    println!(
        "{:>8} {:>12} {:>12} {:>14}",
        "beta", "digits", "random", "digits: k = 1"
    );
    let mut curves: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for &beta in &betas {
        let mut means = [0.0; 2];
        let mut single = 0.0;
        for (i, x) in [&digits, &random].into_iter().enumerate() {
            let k = mass_counts(&association(x, x, beta)?)?;
            means[i] = k.iter().sum::<usize>() as f64 / k.len() as f64;
            if i == 0 {
                single = k.iter().filter(|&&c| c == 1).count() as f64 / k.len() as f64;
            }
            curves[i].push((beta, means[i]));
        }
        println!(
            "{beta:>8} {:>12.1} {:>12.1} {:>13.1}%",
            means[0],
            means[1],
            100.0 * single
        );
    }
    draw_curves(plot, &curves, n)?;
    println!("\nwrote {}", plot.display());
    // Pictures: the first image of each digit, retrieved (one update) in the three regimes.
    let shown: Vec<usize> = (0..10u8)
        .filter_map(|c| labels.iter().position(|&l| l == c))
        .collect();
    let idx = Tensor::new(shown.iter().map(|&i| i as u32).collect::<Vec<_>>(), dev)?;
    let queries = digits.index_select(&idx, 0)?;
    let pixels = images.to_vec2::<f32>()?;
    let mut rows = vec![GridRow {
        label: "query (stored)".into(),
        images: shown.iter().map(|&i| pixels[i].clone()).collect(),
    }];
    for (beta, what) in [
        (1.0, "global average"),
        (16.0, "metastable"),
        (512.0, "single pattern"),
    ] {
        let out = update(&digits, &queries, beta, 1)?.to_vec2::<f32>()?;
        rows.push(GridRow {
            label: format!("beta {beta}: {what}"),
            images: out.iter().map(|r| min_max(r)).collect(),
        });
    }
    digit_grid(
        pictures,
        &[GridSection {
            title: "one update of each digit's first image, in the three regimes".into(),
            rows,
        }],
    )?;
    println!("wrote {}", pictures.display());
    Ok(())
}

fn draw_curves(
    path: &Path,
    curves: &[Vec<(f64, f64)>; 2],
    n: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = plot::canvas(path, (720, 440))?;
    let beta_max = curves[0].last().map_or(1.0, |p| p.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "patterns carrying 90% of the softmax mass after one update",
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(
            (1f64..beta_max).log_scale(),
            (0.8f64..n as f64 * 1.2).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("beta")
        .y_desc("patterns (mean over queries)")
        .draw()?;
    let named = vec![
        ("digits".to_string(), curves[0].clone()),
        ("random".to_string(), curves[1].clone()),
    ];
    plot::curves(&mut chart, &named, SeriesLabelPosition::UpperRight).map_err(|e| e.to_string())?;
    root.present()?;
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    hopfield_cuda::tune_allocator();
    let args = Args::parse();
    let dev = device(args.device)?;
    match args.claim {
        Claim::OneStep { noise } => one_step(&dev, args.seed, noise, args.patterns)?,
        Claim::FixedPoints { plot, pictures } => {
            fixed_points(&dev, args.seed, (&plot, &pictures), args.patterns)?
        }
        Claim::Energy { noise, plot } => energy(&dev, args.seed, noise, &plot, args.patterns)?,
        Claim::Capacity {
            flip,
            betas,
            dims,
            plot,
        } => capacity(&dev, args.seed, (flip, &betas, &dims), &plot, args.patterns)?,
    }
    Ok(())
}
