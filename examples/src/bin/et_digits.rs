//! Masked-patch reconstruction of real 8x8 handwritten digits with an Energy Transformer.
//!
//! Each image is cut into 16 patches of 2x2 pixels (tokens of dimension 4), embedded to the model
//! dimension; half of the patches are replaced by a learned mask token, the tokens (+ positional
//! embedding) descend the energy of one Energy Transformer block (the paper's `EnergyLayerNorm`, so
//! the energy decreases at every step) and a linear read-out reconstructs the pixels. Trained with
//! AdamW on the masked patches' squared error; every parameter of the energy block is trained.
//! Writes a PNG with original / masked / reconstructed test digits and the energy per step.
//!
//! `cargo run --release -p hopfield-examples --bin et_digits -- --out docs/img/et_digits.png`

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{linear, AdamW, Init, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::Parser;
use flate2::read::GzDecoder;
use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig, HopfieldType};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use std::io::Read;

const TOKENS: usize = 16;
const PATCH: usize = 4;

#[derive(Parser, Debug)]
struct Args {
    /// Where to run: auto (CUDA when built with it and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: hopfield_examples::DeviceChoice,
    /// The digits file (gzip CSV: 64 pixels 0..16, then the label).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits/digits.csv.gz"))]
    data: String,
    /// Output PNG.
    #[arg(long, default_value = "et_digits.png")]
    out: String,
    #[arg(long, default_value_t = 25)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Model dimension.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Hopfield memories.
    #[arg(long, default_value_t = 256)]
    memories: usize,
    /// Energy descent steps.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Patches masked per image (of 16).
    #[arg(long, default_value_t = 8)]
    masked: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads for candle (default 1: the matrices are small, threads mostly add sync cost, and
    /// on a loaded machine they stall); the RAYON_NUM_THREADS environment variable wins.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Images as patch tokens `(N, 16, 4)` in [0, 1], row-major 4x4 grid of 2x2 patches.
fn load_digits(path: &str) -> anyhow_free::Res<Vec<[f32; 64]>> {
    let mut text = String::new();
    GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()?;
        let mut img = [0f32; 64];
        for (i, p) in v[..64].iter().enumerate() {
            img[i] = p / 16.0;
        }
        out.push(img);
    }
    Ok(out)
}

/// A tiny error type so the example needs no extra dependency.
mod anyhow_free {
    pub type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

fn to_patches(img: &[f32; 64]) -> [f32; 64] {
    let mut out = [0f32; 64];
    for t in 0..TOKENS {
        let (pr, pc) = (t / 4, t % 4);
        for k in 0..PATCH {
            let (r, c) = (2 * pr + k / 2, 2 * pc + k % 2);
            out[t * PATCH + k] = img[r * 8 + c];
        }
    }
    out
}

fn from_patches(p: &[f32]) -> [f32; 64] {
    let mut img = [0f32; 64];
    for t in 0..TOKENS {
        let (pr, pc) = (t / 4, t % 4);
        for k in 0..PATCH {
            img[(2 * pr + k / 2) * 8 + 2 * pc + k % 2] = p[t * PATCH + k];
        }
    }
    img
}

struct Model {
    embed: Linear,
    mask_token: Tensor,
    et: EnergyTransformer,
    readout: Linear,
}

impl Model {
    fn new(args: &Args, vb: VarBuilder) -> Result<Self> {
        let d = args.dim;
        let cfg = EnergyTransformerConfig::new(d, args.memories, 4)
            .with_context(TOKENS)
            .with_n_iters(args.steps)
            .with_alpha(0.2)
            .with_hopfield_type(HopfieldType::Relu)
            // Weights at 1/sqrt(D): the port's 0.002 init leaves the block ~ the identity.
            .with_init_scale(1.0 / (d as f64).sqrt())
            .paper();
        Ok(Self {
            embed: linear(PATCH, d, vb.pp("embed"))?,
            mask_token: vb.get_with_hints(
                d,
                "mask_token",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?,
            et: EnergyTransformer::new(&cfg, vb.pp("et"))?,
            readout: linear(d, PATCH, vb.pp("readout"))?,
        })
    }

    /// Reconstructed patches `(B, 16, 4)` and the energies per step, for patches and a 0/1 mask `(B, 16, 1)`.
    fn forward(&self, patches: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let e = self.embed.forward(patches)?;
        let keep = mask.affine(-1.0, 1.0)?;
        let x = (e.broadcast_mul(&keep)?
            + mask.broadcast_mul(&self.mask_token.reshape((1, 1, ()))?)?)?;
        let out = self.et.forward_detailed(&x, None)?;
        let energies = out.energies.expect("return_energy is on");
        Ok((self.readout.forward(&out.y)?, energies))
    }
}

/// Squared error per masked pixel.
fn masked_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let se = (pred - target)?.sqr()?.broadcast_mul(mask)?.sum_all()?;
    se / (mask.sum_all()?.to_scalar::<f32>()? as f64 * PATCH as f64)
}

fn batch(
    data: &[[f32; 64]],
    idx: &[usize],
    masks: &[[f32; TOKENS]],
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let p: Vec<f32> = idx.iter().flat_map(|&i| to_patches(&data[i])).collect();
    let m: Vec<f32> = masks.iter().flatten().copied().collect();
    Ok((
        Tensor::from_vec(p, (idx.len(), TOKENS, PATCH), dev)?,
        Tensor::from_vec(m, (idx.len(), TOKENS, 1), dev)?,
    ))
}

fn random_mask(rng: &mut StdRng, masked: usize) -> [f32; TOKENS] {
    let mut t: Vec<usize> = (0..TOKENS).collect();
    t.shuffle(rng);
    let mut m = [0f32; TOKENS];
    for &i in &t[..masked] {
        m[i] = 1.0;
    }
    m
}

fn main() -> anyhow_free::Res<()> {
    // Many large temporary tensors: keep freed memory instead of page-faulting it back in.
    hopfield_cuda::tune_allocator();
    let args = Args::parse();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Read by candle's CPU kernels on every call; set before the first tensor op.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    let dev = args.device.device()?;
    let data = load_digits(&args.data)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut rng);
    let (test_idx, train_idx) = order.split_at(297);
    println!(
        "{} digits: {} train, {} test; {} of 16 patches masked",
        data.len(),
        train_idx.len(),
        test_idx.len(),
        args.masked
    );

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = Model::new(&args, vb)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    // Fixed test masks, so the loss per epoch is comparable.
    let test_masks: Vec<[f32; TOKENS]> = test_idx
        .iter()
        .map(|_| random_mask(&mut rng, args.masked))
        .collect();
    let (test_x, test_m) = batch(&data, test_idx, &test_masks, &dev)?;
    // Baseline: every masked pixel predicted by the mean training pixel.
    let mean = train_idx
        .iter()
        .map(|&i| data[i].iter().sum::<f32>())
        .sum::<f32>()
        / (64.0 * train_idx.len() as f32);
    let baseline = masked_mse(
        &test_x.ones_like()?.affine(mean as f64, 0.0)?,
        &test_x,
        &test_m,
    )?
    .to_scalar::<f32>()?;
    println!("baseline (mean pixel) masked-pixel MSE on test: {baseline:.4}");

    let nb = train_idx.len().div_ceil(args.batch);
    let pb = ProgressBar::new((args.epochs * nb) as u64).with_style(
        ProgressStyle::with_template("{bar:30} epoch {msg} [{elapsed_precise}]").expect("template"),
    );
    let mut test_loss = f32::NAN;
    let mut train_idx = train_idx.to_vec();
    for epoch in 1..=args.epochs {
        train_idx.shuffle(&mut rng);
        let mut sum = 0f32;
        for chunk in train_idx.chunks(args.batch) {
            let masks: Vec<[f32; TOKENS]> = chunk
                .iter()
                .map(|_| random_mask(&mut rng, args.masked))
                .collect();
            let (x, m) = batch(&data, chunk, &masks, &dev)?;
            let (pred, _) = model.forward(&x, &m)?;
            let loss = masked_mse(&pred, &x, &m)?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()?;
            pb.inc(1);
        }
        let (pred, _) = model.forward(&test_x, &test_m)?;
        test_loss = masked_mse(&pred, &test_x, &test_m)?.to_scalar::<f32>()?;
        let line = format!(
            "{epoch:3}: train {:.4}, test {test_loss:.4}",
            sum / nb as f32
        );
        pb.set_message(line.clone());
        if pb.is_hidden() {
            // Not a terminal (piped to a log): the bar draws nothing, print the epoch line instead.
            println!("{line}");
        } else {
            pb.println(line);
        }
    }
    pb.finish();

    let (pred, energies) = model.forward(&test_x, &test_m)?;
    let e: Vec<f32> = (energies / test_idx.len() as f64)?.to_vec1()?;
    println!("final test masked-pixel MSE {test_loss:.4} (baseline {baseline:.4}); energy per image by step: {e:.2?}");
    let decreasing = e.windows(2).all(|w| w[1] <= w[0]);
    println!("energy decreases at every step: {decreasing}");
    draw(&args.out, &test_x, &test_m, &pred, &e, test_loss, baseline)?;
    println!("wrote {}", args.out);
    Ok(())
}

fn draw(
    path: &str,
    x: &Tensor,
    m: &Tensor,
    pred: &Tensor,
    energies: &[f32],
    loss: f32,
    baseline: f32,
) -> anyhow_free::Res<()> {
    const N: usize = 10;
    const CELL: u32 = 8;
    let x: Vec<Vec<Vec<f32>>> = x.narrow(0, 0, N)?.to_vec3()?;
    let m: Vec<Vec<Vec<f32>>> = m.narrow(0, 0, N)?.to_vec3()?;
    let p: Vec<Vec<Vec<f32>>> = pred.narrow(0, 0, N)?.clamp(0f32, 1f32)?.to_vec3()?;
    let root = BitMapBackend::new(path, (N as u32 * 72 + 120, 3 * 72 + 340)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(3 * 72 + 20);
    let labels = ["original", "masked", "reconstructed"];
    for (row, label) in labels.iter().enumerate() {
        top.draw(&Text::new(
            *label,
            (5, 20 + row as i32 * 72 + 28),
            ("sans-serif", 14).into_font(),
        ))?;
        for i in 0..N {
            let flat = |v: &Vec<Vec<f32>>| v.iter().flatten().copied().collect::<Vec<f32>>();
            let masked: Vec<f32> = x[i]
                .iter()
                .zip(&m[i])
                .flat_map(|(px, mk)| px.iter().map(move |v| if mk[0] > 0.5 { -1.0 } else { *v }))
                .collect();
            let recon: Vec<f32> = x[i]
                .iter()
                .zip(&p[i])
                .zip(&m[i])
                .flat_map(|((px, pp), mk)| if mk[0] > 0.5 { pp.clone() } else { px.clone() })
                .collect();
            let img = match row {
                0 => from_patches(&flat(&x[i])),
                1 => from_patches(&masked),
                _ => from_patches(&recon),
            };
            let (ox, oy) = (110 + i as i32 * 72, 20 + row as i32 * 72);
            for (k, v) in img.iter().enumerate() {
                let (r, c) = ((k / 8) as i32, (k % 8) as i32);
                // Masked pixels in mid red, the rest in grey levels (ink dark).
                let color = if *v < 0.0 {
                    RGBColor(200, 60, 60)
                } else {
                    let g = (255.0 * (1.0 - v)) as u8;
                    RGBColor(g, g, g)
                };
                let (x0, y0) = (ox + c * CELL as i32, oy + r * CELL as i32);
                top.draw(&Rectangle::new(
                    [(x0, y0), (x0 + CELL as i32, y0 + CELL as i32)],
                    color.filled(),
                ))?;
            }
        }
    }
    let (lo, hi) = energies
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("energy per test image by step (masked-pixel MSE {loss:.4}, mean-pixel baseline {baseline:.4})"), ("sans-serif", 14))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(1f32..energies.len() as f32, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("energy")
        .draw()?;
    chart.draw_series(LineSeries::new(
        energies
            .iter()
            .enumerate()
            .map(|(i, e)| ((i + 1) as f32, *e)),
        &BLUE,
    ))?;
    chart.draw_series(
        energies
            .iter()
            .enumerate()
            .map(|(i, e)| Circle::new(((i + 1) as f32, *e), 3, BLUE.filled())),
    )?;
    root.present()?;
    Ok(())
}
