//! Multiple-instance learning on bags of real handwritten digits: the analogue of hflayers'
//! MNIST-bags notebook on the bundled 8x8 UCI digits.
//!
//! A bag holds 8-16 digit images (padded to 16, with a padding mask); it is positive when it
//! contains the target digit (default 9). Both models share an instance encoder (an MLP
//! 64 -> 64 -> 32) and a linear read-out, and differ in how they pool a bag:
//!
//! * `HopfieldPooling` (one trainable query, 4 heads, the bag's instances as stored patterns,
//!   padded instances masked), as in the paper's MIL experiments;
//! * gated attention pooling (Ilse et al., 2018): weights `softmax_i w^T (tanh(V h_i) *
//!   sigmoid(U h_i))` over the bag's real instances.
//!
//! Images are split 70/30 into train and test pools before bags are drawn, so test bags hold
//! unseen digits. Each seed draws new bags and new initial weights (seeded, reproducible);
//! the summary gives the mean and spread over seeds, a PNG shows one positive test bag with each
//! instance's attention weight, and the last line is `test accuracy X` (the Hopfield model's
//! mean over seeds).
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin mil_digits
//! cargo run --release -p hopfield-examples --bin mil_digits -- --seeds 5 --target 3
//! ```

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::Parser;
use hopfield_examples::plot::{digit_grid, GridRow, GridSection};
use hopfield_examples::{
    batches, bce_with_logits, binary_accuracy, clip_grad_norm, device, digits_path, load_digits,
    select, torch_linear, DeviceChoice,
};
use hopfield_nn::{HopfieldConfig, HopfieldPooling, HopfieldPoolingConfig, Masks};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Multiple-instance learning on digit bags: HopfieldPooling vs gated attention")]
struct Args {
    /// Where to run: auto (CUDA when built with it and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// The digit that makes a bag positive.
    #[arg(long, default_value_t = 9)]
    target: u8,
    /// Training bags per seed.
    #[arg(long, default_value_t = 600)]
    train_bags: usize,
    /// Test bags per seed.
    #[arg(long, default_value_t = 300)]
    test_bags: usize,
    /// Smallest bag.
    #[arg(long, default_value_t = 8)]
    min_bag: usize,
    /// Largest bag (bags are padded to this size).
    #[arg(long, default_value_t = 16)]
    max_bag: usize,
    /// Training epochs.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Number of seeds (each draws new bags and new initial weights).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The picture of one positive test bag (PNG).
    #[arg(long, default_value = "target/mil_digits.png")]
    out: PathBuf,
}

/// Padded bags: instances `(B, max, 64)`, padding mask `(B, max)` (1 = padding), labels `(B)`.
struct Bags {
    x: Tensor,
    mask: Tensor,
    y: Tensor,
    /// The image index of every real instance, per bag.
    members: Vec<Vec<usize>>,
}

/// Draws `n` bags from `pool` (image indices), half of them positive: a positive bag holds one or
/// two target digits, a negative bag none.
fn draw_bags(
    images: &[Vec<f32>],
    labels: &[u8],
    pool: &[usize],
    n: usize,
    args: &Args,
    rng: &mut StdRng,
    dev: &Device,
) -> Result<Bags> {
    let (targets, others): (Vec<usize>, Vec<usize>) =
        pool.iter().partition(|&&i| labels[i] == args.target);
    let max = args.max_bag;
    let (mut x, mut mask, mut y, mut members) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in 0..n {
        let size = rng.random_range(args.min_bag..=max);
        let positive = b % 2 == 0;
        let hits = if positive { rng.random_range(1..=2) } else { 0 };
        let mut bag: Vec<usize> = Vec::with_capacity(size);
        for slot in 0..size {
            let from = if slot < hits { &targets } else { &others };
            bag.push(from[rng.random_range(0..from.len())]);
        }
        bag.shuffle(rng);
        for slot in 0..max {
            match bag.get(slot) {
                Some(&i) => {
                    x.extend_from_slice(&images[i]);
                    mask.push(0u8);
                }
                None => {
                    x.extend(std::iter::repeat_n(0f32, 64));
                    mask.push(1u8);
                }
            }
        }
        y.push(if positive { 1f32 } else { 0. });
        members.push(bag);
    }
    Ok(Bags {
        x: Tensor::from_vec(x, (n, max, 64), dev)?,
        mask: Tensor::from_vec(mask, (n, max), dev)?,
        y: Tensor::from_vec(y, n, dev)?,
        members,
    })
}

/// The shared instance encoder: 64 -> 64 -> 32, ReLU.
struct Encoder {
    l1: Linear,
    l2: Linear,
}

impl Encoder {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            l1: torch_linear(64, 64, vb.pp("l1"))?,
            l2: torch_linear(64, 32, vb.pp("l2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.relu()?)?.relu()
    }
}

/// How a model pools a bag of encoded instances `(B, S, 32)` with padding mask `(B, S)`.
enum Pool {
    Hopfield(Box<HopfieldPooling>),
    Gated { v: Linear, u: Linear, w: Linear },
}

struct MilModel {
    encoder: Encoder,
    pool: Pool,
    head: Linear,
}

impl MilModel {
    fn hopfield(vb: VarBuilder) -> Result<Self> {
        let cfg = HopfieldConfig::new(32)
            .with_hidden_size(Some(16))
            .with_num_heads(4);
        let pool = HopfieldPooling::new(HopfieldPoolingConfig::new(cfg), vb.pp("pool"))?;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"))?,
            pool: Pool::Hopfield(Box::new(pool)),
            head: torch_linear(32, 1, vb.pp("head"))?,
        })
    }

    fn gated(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"))?,
            pool: Pool::Gated {
                v: torch_linear(32, 16, vb.pp("attention_v"))?,
                u: torch_linear(32, 16, vb.pp("attention_u"))?,
                w: torch_linear(16, 1, vb.pp("attention_w"))?,
            },
            head: torch_linear(32, 1, vb.pp("head"))?,
        })
    }

    /// Gated attention weights `(B, S)`, padding excluded.
    fn gated_weights(
        v: &Linear,
        u: &Linear,
        w: &Linear,
        h: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let gate = (v.forward(h)?.tanh()? * candle_nn::ops::sigmoid(&u.forward(h)?)?)?;
        let scores = w.forward(&gate)?.squeeze(D::Minus1)?;
        let neg = Tensor::full(f32::NEG_INFINITY, mask.shape(), mask.device())?
            .to_dtype(scores.dtype())?;
        let pad = mask.where_cond(&neg, &neg.zeros_like()?)?;
        hopfield_cuda::masked_softmax(&(scores + pad)?)
    }

    fn logits(&self, x: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.encoder.forward(x)?;
        let z = match &self.pool {
            Pool::Hopfield(p) => p.forward_with(
                &h,
                None,
                Masks {
                    stored_pattern_padding_mask: Some(mask),
                    association_mask: None,
                },
                train,
            )?,
            Pool::Gated { v, u, w } => {
                let a = Self::gated_weights(v, u, w, &h, mask)?;
                a.unsqueeze(1)?.matmul(&h)?.squeeze(1)?
            }
        };
        self.head.forward(&z)?.squeeze(D::Minus1)
    }

    /// Each instance's pooling weight in bag `x` `(1, S, 64)` (Hopfield: the association averaged
    /// over heads).
    fn weights(&self, x: &Tensor, mask: &Tensor) -> Result<Vec<f32>> {
        let h = self.encoder.forward(x)?;
        let w = match &self.pool {
            Pool::Hopfield(p) => {
                let masks = Masks {
                    stored_pattern_padding_mask: Some(mask),
                    association_mask: None,
                };
                // (1, H, 1, S) -> mean over heads
                p.association_matrix(&h, None, masks)?
                    .mean(1)?
                    .squeeze(0)?
                    .squeeze(0)?
            }
            Pool::Gated { v, u, w } => Self::gated_weights(v, u, w, &h, mask)?.squeeze(0)?,
        };
        w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1()
    }
}

fn accuracy(model: &MilModel, bags: &Bags) -> Result<f64> {
    binary_accuracy(&model.logits(&bags.x, &bags.mask, false)?, &bags.y)
}

/// Trains a fresh model; returns its test accuracy.
fn fit(
    name: &str,
    model: &MilModel,
    varmap: &VarMap,
    (train, test): (&Bags, &Bags),
    args: &Args,
    rng: &mut StdRng,
) -> Result<f64> {
    let vars = varmap.all_vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let pb = ProgressBar::new(args.epochs as u64)
        .with_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} epochs {msg}")
                .map_err(candle_core::Error::wrap)?
                .progress_chars("=> "),
        )
        .with_prefix(name.to_string());
    let all: Vec<u32> = (0..train.y.dim(0)? as u32).collect();
    for _ in 0..args.epochs {
        let mut loss_sum = 0.0;
        let epoch = batches(&all, 16, Some(rng));
        for b in &epoch {
            let (xb, mb, yb) = (
                select(&train.x, b)?,
                select(&train.mask, b)?,
                select(&train.y, b)?,
            );
            let loss = bce_with_logits(&model.logits(&xb, &mb, true)?, &yb)?;
            let mut grads = loss.backward()?;
            clip_grad_norm(&mut grads, &vars, 1.0)?;
            opt.step(&grads)?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        pb.set_message(format!("loss {:.4}", loss_sum / epoch.len() as f64));
        pb.inc(1);
    }
    pb.finish_and_clear();
    accuracy(model, test)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The PNG of one positive test bag: its instances, and each scaled by its relative weight under
/// both models.
fn picture(
    args: &Args,
    images: &[Vec<f32>],
    bag: &[usize],
    rows: [(&str, &[f32]); 2],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut grid = vec![GridRow {
        label: "instances".into(),
        images: bag.iter().map(|&i| images[i].clone()).collect(),
    }];
    for (name, w) in rows {
        let max = w
            .iter()
            .take(bag.len())
            .fold(0f32, |a, &b| a.max(b))
            .max(1e-12);
        grid.push(GridRow {
            label: format!("{name} weight"),
            images: bag
                .iter()
                .zip(w)
                .map(|(&i, &wi)| images[i].iter().map(|p| p * wi / max).collect())
                .collect(),
        });
    }
    digit_grid(
        &args.out,
        &[GridSection {
            title: format!(
                "a positive test bag (target digit {}): instances, each scaled by its pooling weight",
                args.target
            ),
            rows: grid,
        }],
    )?;
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.min_bag == 0 || args.min_bag > args.max_bag || args.target > 9 || args.seeds == 0 {
        return Err("need 1 <= --min-bag <= --max-bag, --target 0-9 and --seeds >= 1".into());
    }
    let dev = device(args.device)?;
    let (images_t, labels) = load_digits(digits_path())?;
    let images = images_t.to_vec2::<f32>()?;
    println!(
        "Multiple-instance learning on digit bags: {} train / {} test bags of {}-{} digits, \
         positive = contains a {}; {} epochs, {} seeds",
        args.train_bags,
        args.test_bags,
        args.min_bag,
        args.max_bag,
        args.target,
        args.epochs,
        args.seeds
    );
    let (mut hop_acc, mut gated_acc) = (Vec::new(), Vec::new());
    let mut last = None;
    for s in args.seed..args.seed + args.seeds {
        let mut rng = StdRng::seed_from_u64(s);
        // Disjoint image pools: test bags hold digits no model saw in training.
        let mut order: Vec<usize> = (0..images.len()).collect();
        order.shuffle(&mut rng);
        let (train_pool, test_pool) = order.split_at(images.len() * 7 / 10);
        let train = draw_bags(
            &images,
            &labels,
            train_pool,
            args.train_bags,
            &args,
            &mut rng,
            &dev,
        )?;
        let test = draw_bags(
            &images,
            &labels,
            test_pool,
            args.test_bags,
            &args,
            &mut rng,
            &dev,
        )?;
        // Seeded initial weights: the same seed gives the same run.
        hopfield_core::rng::seed(s);
        let (hmap, gmap) = (VarMap::new(), VarMap::new());
        let hop = MilModel::hopfield(VarBuilder::from_varmap(&hmap, DType::F32, &dev))?;
        let gated = MilModel::gated(VarBuilder::from_varmap(&gmap, DType::F32, &dev))?;
        let a = fit(
            &format!("HopfieldPooling seed {s}"),
            &hop,
            &hmap,
            (&train, &test),
            &args,
            &mut rng,
        )?;
        let b = fit(
            &format!("gated attention seed {s}"),
            &gated,
            &gmap,
            (&train, &test),
            &args,
            &mut rng,
        )?;
        println!("seed {s}: test accuracy HopfieldPooling {a:.4}, gated attention {b:.4}");
        hop_acc.push(a);
        gated_acc.push(b);
        last = Some((test, hop, gated));
    }
    println!("\n{:<28} {:>8} {:>8}  per seed", "model", "mean", "std");
    for (name, acc) in [
        ("HopfieldPooling", &hop_acc),
        ("gated attention (Ilse et al.)", &gated_acc),
    ] {
        let (m, sd) = mean_std(acc);
        println!("{name:<28} {m:>8.4} {sd:>8.4}  {acc:.4?}");
    }
    if let Some((test, hop, gated)) = last {
        // The first positive test bag (even bags are positive).
        let bag = &test.members[0];
        let (x, m) = (test.x.narrow(0, 0, 1)?, test.mask.narrow(0, 0, 1)?);
        let (wh, wg) = (hop.weights(&x, &m)?, gated.weights(&x, &m)?);
        let shown: Vec<String> = bag.iter().map(|&i| labels[i].to_string()).collect();
        println!("\none positive test bag, digits {shown:?}");
        println!("HopfieldPooling weights  {:.3?}", &wh[..bag.len()]);
        println!("gated attention weights  {:.3?}", &wg[..bag.len()]);
        picture(&args, &images, bag, [("Hopfield", &wh), ("gated", &wg)])?;
        println!("wrote {}", args.out.display());
    }
    println!("test accuracy {:.4}", mean_std(&hop_acc).0);
    Ok(())
}
