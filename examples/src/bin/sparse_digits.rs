//! Sparse Hopfield retrieval (issue 11): softmax vs entmax-1.5 vs sparsemax association on real
//! handwritten digits, a memory full of similar patterns (1797 UCI 8x8 digits, about 180 of each
//! digit).
//!
//! Every digit (centred to unit norm) is stored; corrupted copies are the queries; one update
//! `assoc(beta R Y^T) Y` retrieves (`HopfieldConfig::pure_static()` with `association`). A query
//! counts as retrieved when the output is nearest (L2) to its own original among all stored
//! patterns. For each association and beta it prints that accuracy and the mean number of stored
//! patterns with a non-zero weight per query (exact zeros; computed in f64, so softmax's count
//! only drops where `exp` underflows f64), and draws both against beta (`--out`, default
//! `target/sparse_digits.png`).
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin sparse_digits
//! ```

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use clap::Parser;
use hopfield_examples::plot;
use hopfield_examples::{digits_path, load_digits, normalize_rows, standard_normal};
use hopfield_nn::{Association, Hopfield, HopfieldConfig, HopfieldInput, Masks};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Softmax vs sparse (entmax, sparsemax) Hopfield retrieval of handwritten digits")]
struct Args {
    /// The digits file (gzip CSV: 64 pixels 0..16, then the label).
    #[arg(long)]
    digits: Option<PathBuf>,
    /// Seed of the corruptions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the picture goes (PNG).
    #[arg(long, default_value = "target/sparse_digits.png")]
    out: PathBuf,
    /// Store only the first N digits (quick runs; default: all 1797).
    #[arg(long)]
    stored: Option<usize>,
}

const BETAS: [f64; 6] = [4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// How a query is made from a stored image (pixels in [0, 1]).
#[derive(Clone, Copy)]
enum Corruption {
    /// Gaussian noise of this standard deviation, clamped to [0, 1].
    Gaussian(f64),
    /// Each pixel replaced by a uniform value with this probability.
    Replace(f64),
}

impl Corruption {
    fn label(self) -> String {
        match self {
            Corruption::Gaussian(s) => format!("gaussian noise sd {s}"),
            Corruption::Replace(p) => format!("{:.0}% pixels random", p * 100.0),
        }
    }

    fn apply(self, pixels: &[f32], rng: &mut StdRng) -> Vec<f32> {
        pixels
            .iter()
            .map(|&p| match self {
                Corruption::Gaussian(s) => (p + (s * standard_normal(rng)) as f32).clamp(0.0, 1.0),
                Corruption::Replace(q) => {
                    if rng.random_bool(q) {
                        rng.random::<f32>()
                    } else {
                        p
                    }
                }
            })
            .collect()
    }
}

/// The association functions compared, with their names.
fn associations() -> [(&'static str, Association); 3] {
    [
        ("softmax", Association::Softmax),
        ("entmax-1.5", Association::Entmax15),
        ("sparsemax", Association::Sparsemax),
    ]
}

/// One row of the table: accuracy and mean support per beta.
struct Row {
    corruption: String,
    association: &'static str,
    accuracy: Vec<f64>,
    support: Vec<f64>,
}

/// Index of the nearest (L2) stored pattern of every retrieved row.
fn nearest(retrieved: &Tensor, stored: &Tensor) -> Result<Vec<u32>> {
    let cross = retrieved.matmul(&stored.t()?)?;
    let stored_sq = stored.sqr()?.sum(D::Minus1)?.unsqueeze(0)?;
    // |r - y|^2 = |r|^2 - 2 r.y + |y|^2; |r|^2 is constant per row.
    stored_sq
        .broadcast_sub(&(cross * 2.0)?)?
        .argmin(D::Minus1)?
        .to_vec1::<u32>()
}

/// Retrieval accuracy and the mean number of non-zero association weights per query.
fn measure(
    stored: &Tensor,
    queries: &Tensor,
    beta: f64,
    association: Association,
) -> Result<(f64, f64)> {
    let memory = Hopfield::new(
        HopfieldConfig::pure_static()
            .with_scaling(beta)
            .with_association(association),
        VarBuilder::zeros(DType::F64, &Device::Cpu),
    )?;
    let (y, r) = (stored.unsqueeze(0)?, queries.unsqueeze(0)?);
    let input = HopfieldInput::from((&y, &r, &y));
    let (out, xi) = (
        memory.forward_with(input, Masks::default(), false)?,
        memory.association_matrix(input, Masks::default())?,
    );
    let found = nearest(&out.squeeze(0)?, stored)?;
    let m = found.len();
    let correct = found
        .iter()
        .enumerate()
        .filter(|(i, &n)| *i == n as usize)
        .count();
    let nonzero = xi
        .ne(0.0)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok((correct as f64 / m as f64, nonzero / m as f64))
}

fn draw(
    path: &Path,
    rows: &[Row],
    m: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = plot::canvas(path, (1100, 440))?;
    let (left, right) = root.split_horizontally(550);
    let (lo, hi) = (BETAS[0] * 0.8, BETAS[BETAS.len() - 1] * 1.25);
    let named = |f: &dyn Fn(&Row) -> &Vec<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
        rows.iter()
            .filter(|r| r.corruption == rows[0].corruption)
            .map(|r| {
                (
                    r.association.to_string(),
                    BETAS.iter().copied().zip(f(r).iter().copied()).collect(),
                )
            })
            .collect()
    };
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "retrieval accuracy, {m} stored digits ({})",
                rows[0].corruption
            ),
            ("sans-serif", 15),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), -0.02f64..1.02)?;
    chart
        .configure_mesh()
        .x_desc("beta")
        .y_desc("accuracy")
        .draw()?;
    plot::curves(
        &mut chart,
        &named(&|r| &r.accuracy),
        SeriesLabelPosition::LowerRight,
    )
    .map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "stored patterns with non-zero weight per query",
            ("sans-serif", 15),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), (0.8f64..m as f64 * 1.3).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("beta")
        .y_desc("non-zero weights (mean)")
        .draw()?;
    plot::curves(
        &mut chart,
        &named(&|r| &r.support),
        SeriesLabelPosition::LowerLeft,
    )
    .map_err(|e| e.to_string())?;
    root.present()?;
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (mut images, _labels) = load_digits(args.digits.unwrap_or_else(digits_path))?;
    if let Some(n) = args.stored {
        images = images.narrow(0, 0, n.clamp(2, images.dim(0)?))?;
    }
    let images = images.to_dtype(DType::F64)?;
    let stored = normalize_rows(&images)?;
    let m = stored.dim(0)?;
    let pixels = images.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    println!("{m} stored digits, one update assoc(beta R Y^T) Y; accuracy = the output is nearest");
    println!(
        "to its own original; support = mean number of stored patterns with a non-zero weight"
    );
    let (mut rows, mut limits) = (Vec::new(), Vec::new());
    for c in [Corruption::Gaussian(0.3), Corruption::Replace(0.5)] {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let q: Vec<f64> = pixels
            .iter()
            .flat_map(|r| c.apply(r, &mut rng))
            .map(f64::from)
            .collect();
        let queries = normalize_rows(&Tensor::from_vec(q, (m, 64), &Device::Cpu)?)?;
        // The beta -> infinity limit of every association: the stored pattern nearest the query.
        let nn = nearest(&queries, &stored)?;
        let nn = nn
            .iter()
            .enumerate()
            .filter(|(i, &n)| *i == n as usize)
            .count();
        limits.push((c.label(), nn as f64 / m as f64));
        for (name, a) in associations() {
            let (mut accuracy, mut support) = (Vec::new(), Vec::new());
            for &beta in &BETAS {
                let (acc, sup) = measure(&stored, &queries, beta, a.clone())?;
                accuracy.push(acc);
                support.push(sup);
            }
            rows.push(Row {
                corruption: c.label(),
                association: name,
                accuracy,
                support,
            });
        }
    }
    println!();
    print!("{:<22} {:<11}", "query", "association");
    BETAS
        .iter()
        .for_each(|b| print!(" {:>14}", format!("beta {b}")));
    println!();
    for r in &rows {
        print!("{:<22} {:<11}", r.corruption, r.association);
        for (a, s) in r.accuracy.iter().zip(&r.support) {
            print!(" {:>14}", format!("{a:.3} / {s:.1}"));
        }
        println!();
    }
    println!("(each cell: accuracy / mean non-zero weights out of {m})");
    for (c, acc) in &limits {
        println!("beta -> infinity (the stored pattern nearest the query), {c}: {acc:.3}");
    }
    draw(&args.out, &rows, m)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
