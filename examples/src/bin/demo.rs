//! The README's main demo: a modern Hopfield network as an associative memory of real
//! handwritten digits (UCI 8x8 digits, bundled), then a tiny `HopfieldPooling` forward pass.
//!
//! All 1797 images, centred and scaled to unit norm, are the stored patterns Y; corrupted copies
//! (normalised the same way) are the queries R; one update `softmax(beta R Y^T) Y`
//! (`HopfieldConfig::pure_static()`, no parameters) retrieves. A query counts as retrieved when
//! the output is closer (L2) to its original than to any other stored pattern; the label column
//! block counts outputs nearest to an image of the same digit. Small beta averages many
//! memories (a metastable mixture), large beta retrieves a single one. A PNG shows it: for each
//! corruption, eight queries (one per digit 0-7), what a small and a large beta retrieve, and the
//! originals (`--out`, default `target/demo_retrieval.png`).
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin demo
//! ```

use candle_core::{DType, Device, ModuleT, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use hopfield_examples::plot::{digit_grid, min_max, GridRow, GridSection};
use hopfield_examples::{
    device, digits_path, load_digits, normalize_rows, standard_normal, DeviceChoice,
};
use hopfield_nn::{
    Hopfield, HopfieldConfig, HopfieldInput, HopfieldPooling, HopfieldPoolingConfig, Masks,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Associative retrieval of handwritten digits with a modern Hopfield network")]
struct Args {
    /// Where to run: auto (CUDA when built with it and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// The digits file (gzip CSV: 64 pixels 0..16, then the label).
    #[arg(long)]
    digits: Option<PathBuf>,
    /// Seed of the corruptions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the picture goes (PNG).
    #[arg(long, default_value = "target/demo_retrieval.png")]
    out: PathBuf,
    /// Store only the first N digits, at least 32 (quick runs; default: all 1797).
    #[arg(long)]
    stored: Option<usize>,
}

const BETAS: [f64; 5] = [1.0, 8.0, 32.0, 128.0, 512.0];
/// The betas of the picture: a metastable mixture and single-pattern retrieval.
const PICTURE_BETAS: [f64; 2] = [8.0, 128.0];

/// How a query is made from a stored image (pixels in [0, 1], 8x8 row-major).
#[derive(Clone, Copy)]
enum Corruption {
    /// Rows 4..8 set to 0 (pattern completion).
    MaskBottom,
    /// Each pixel replaced by a uniform value with this probability.
    Replace(f64),
    /// Gaussian noise of this standard deviation, clamped to [0, 1].
    Gaussian(f64),
}

impl Corruption {
    fn label(self) -> String {
        match self {
            Corruption::MaskBottom => "bottom half masked".into(),
            Corruption::Replace(p) => format!("{:.0}% pixels random", p * 100.0),
            Corruption::Gaussian(s) => format!("gaussian noise sd {s}"),
        }
    }

    fn apply(self, pixels: &[f32], rng: &mut StdRng) -> Vec<f32> {
        pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| match self {
                Corruption::MaskBottom => {
                    if i >= 32 {
                        0.0
                    } else {
                        p
                    }
                }
                Corruption::Replace(q) => {
                    if rng.random_bool(q) {
                        rng.random::<f32>()
                    } else {
                        p
                    }
                }
                Corruption::Gaussian(s) => (p + (s * standard_normal(rng)) as f32).clamp(0.0, 1.0),
            })
            .collect()
    }
}

/// Index of the nearest (L2) stored pattern of every retrieved row.
fn nearest(retrieved: &Tensor, stored: &Tensor) -> Result<Vec<u32>> {
    let cross = retrieved.matmul(&stored.t()?)?; // (Q, M)
    let stored_sq = stored.sqr()?.sum(D::Minus1)?.unsqueeze(0)?; // (1, M)
                                                                 // |r - y|^2 = |r|^2 - 2 r.y + |y|^2; |r|^2 is constant per row, so it drops out of argmin.
    let dist = stored_sq.broadcast_sub(&(cross * 2.0)?)?;
    dist.argmin(D::Minus1)?.to_vec1::<u32>()
}

/// The first image of each digit 0-7: the picture's columns.
fn examples(labels: &[u8]) -> Vec<usize> {
    (0..8u8)
        .filter_map(|d| labels.iter().position(|&l| l == d))
        .collect()
}

/// Prints the accuracy table and returns the picture's sections (one per corruption).
fn retrieval_table(
    images: &Tensor,
    labels: &[u8],
    dev: &Device,
    seed: u64,
) -> Result<Vec<GridSection>> {
    let shown = examples(labels);
    let mut sections = Vec::new();
    let stored = normalize_rows(&images.to_device(dev)?)?;
    let (m, e) = stored.dims2()?;
    let rows = images.to_vec2::<f32>()?;
    println!("Retrieval accuracy, {m} stored digits, one update softmax(beta R Y^T) Y");
    println!("(exact = nearest stored pattern is the original; label = it shows the same digit)");
    print!("{:<24}", "");
    print!("{:^40}  {:^40}", "exact, beta =", "label, beta =");
    println!();
    print!("{:<24}", "query");
    for _ in 0..2 {
        BETAS.iter().for_each(|b| print!("{b:>8}"));
        print!("  ");
    }
    println!();
    let corruptions = [
        Corruption::MaskBottom,
        Corruption::Replace(0.25),
        Corruption::Replace(0.5),
        Corruption::Gaussian(0.3),
    ];
    for c in corruptions {
        let mut rng = StdRng::seed_from_u64(seed);
        let queries: Vec<f32> = rows.iter().flat_map(|r| c.apply(r, &mut rng)).collect();
        let mut picture = vec![GridRow {
            label: "query".into(),
            images: shown
                .iter()
                .map(|&i| queries[i * e..(i + 1) * e].to_vec())
                .collect(),
        }];
        let queries = normalize_rows(&Tensor::from_vec(queries, (m, e), dev)?)?;
        let (mut exact, mut label) = (Vec::new(), Vec::new());
        for &beta in &BETAS {
            let memory = Hopfield::new(
                HopfieldConfig::pure_static().with_scaling(beta),
                VarBuilder::zeros(DType::F32, dev),
            )?;
            // Batch of one: the whole memory, all queries at once.
            let (y, r) = (stored.unsqueeze(0)?, queries.unsqueeze(0)?);
            let retrieved =
                memory.forward_with(HopfieldInput::from((&y, &r, &y)), Masks::default(), false)?;
            let retrieved = retrieved.squeeze(0)?;
            if PICTURE_BETAS.contains(&beta) {
                let out = retrieved.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
                picture.push(GridRow {
                    label: format!("retrieved, beta {beta}"),
                    images: shown.iter().map(|&i| min_max(&out[i])).collect(),
                });
            }
            let found = nearest(&retrieved, &stored)?;
            let frac = |ok: &dyn Fn(usize, usize) -> bool| {
                found
                    .iter()
                    .enumerate()
                    .filter(|&(i, &n)| ok(i, n as usize))
                    .count() as f64
                    / m as f64
            };
            exact.push(frac(&|i, n| i == n));
            label.push(frac(&|i, n| labels[i] == labels[n]));
        }
        print!("{:<24}", c.label());
        for accs in [exact, label] {
            accs.iter().for_each(|a| print!("{a:>8.3}"));
            print!("  ");
        }
        println!();
        picture.push(GridRow {
            label: "original".into(),
            images: shown.iter().map(|&i| rows[i].clone()).collect(),
        });
        sections.push(GridSection {
            title: c.label(),
            rows: picture,
        });
    }
    Ok(sections)
}

fn pooling_demo(images: &Tensor, labels: &[u8], dev: &Device) -> Result<()> {
    // Four bags of eight digits each; an (untrained) HopfieldPooling with two queries maps a
    // bag to one vector, the multiple-instance-learning building block.
    let bags = images
        .narrow(0, 0, 32)?
        .reshape((4, 8, 64))?
        .to_device(dev)?;
    let varmap = VarMap::new();
    let cfg = HopfieldPoolingConfig::new(
        HopfieldConfig::new(64)
            .with_hidden_size(Some(16))
            .with_num_heads(2),
    )
    .with_quantity(2);
    let pool = HopfieldPooling::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let pooled = pool.forward_t(&bags, false)?;
    let attention = pool.association_matrix(&bags, None, Masks::default())?; // (N, H, q, S)
    println!(
        "\nHopfieldPooling(64, hidden 16, 2 heads, quantity 2): bags {:?} -> {:?}",
        bags.dims(),
        pooled.dims()
    );
    println!("bag 0 labels {:?}", &labels[..8]);
    let w = attention.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?;
    println!(
        "bag 0, head 0, query 0 attention over instances: {w:.3?} (sums to {:.3})",
        w.iter().sum::<f32>()
    );
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Many large temporary tensors: keep freed memory instead of page-faulting it back in.
    hopfield_cuda::tune_allocator();
    let args = Args::parse();
    let dev = device(args.device)?;
    let (mut images, mut labels) = load_digits(args.digits.unwrap_or_else(digits_path))?;
    if let Some(n) = args.stored {
        let n = n.clamp(32, labels.len());
        images = images.narrow(0, 0, n)?;
        labels.truncate(n);
    }
    let sections = retrieval_table(&images, &labels, &dev, args.seed)?;
    digit_grid(&args.out, &sections)?;
    println!(
        "\nwrote {}: per corruption, 8 queries (digits 0-7), what beta {} and beta {} retrieve, \
         and the originals",
        args.out.display(),
        PICTURE_BETAS[0],
        PICTURE_BETAS[1]
    );
    pooling_demo(&images, &labels, &dev)?;
    Ok(())
}
