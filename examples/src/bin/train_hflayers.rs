//! hflayers' demo tasks (`latch_sequence_demo.ipynb`, `bit_pattern_demo.ipynb`) trained with
//! hopfield-rs: AdamW (lr 1e-3, weight decay 0.01 as torch's default), batch 32, BCE with
//! logits, gradient clipping to norm 1.0, accuracy = round(sigmoid(logit)) == target, and the
//! notebooks' splits (the middle of the set trains, both ends evaluate).
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin train_hflayers -- latch
//! cargo run --release -p hopfield-examples --bin train_hflayers -- bits
//! ```
//!
//! `--seed` fixes everything random: the data, the batch order, the weight initialisation and the
//! dropout masks (`hopfield_core::rng::seed`), so a run prints the same numbers every time on the
//! same machine and thread count.

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::{Parser, Subcommand, ValueEnum};
use hopfield_examples::data::{
    BitPatternConfig, BitPatternSet, LatchSequenceConfig, LatchSequenceSet,
};
use hopfield_examples::{
    batches, bce_with_logits, binary_accuracy, clip_grad_norm, device, notebook_split, select,
    torch_linear, DeviceChoice,
};
use hopfield_nn::{
    Hopfield, HopfieldConfig, HopfieldLayer, HopfieldLayerConfig, HopfieldPooling,
    HopfieldPoolingConfig,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "hflayers' latch-sequence and bit-pattern demos with hopfield-rs")]
struct Args {
    #[command(subcommand)]
    task: Task,
    /// Where to run: auto (CUDA when built with it and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    /// Seed of the batch order, the weight initialisation and dropout (the data sets use hflayers' seeds).
    #[arg(long, global = true, default_value_t = 42)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// LatchSequenceSet(4096 samples, 32 instances, 20 characters); train 512..3584.
    Latch {
        /// Epochs per model.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        /// Models to train (default: all three).
        #[arg(long, value_enum)]
        model: Vec<LatchModel>,
    },
    /// BitPatternSet(2048 bags, 16 instances, 8 signals, 8 bits) with the adapted
    /// HopfieldPooling; train 256..1792.
    Bits {
        /// Epochs.
        #[arg(long, default_value_t = 400)]
        epochs: usize,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum LatchModel {
    /// Hopfield(20) -> flatten -> Linear(20*32 -> 1).
    Hopfield,
    /// HopfieldPooling(20) -> Linear(20 -> 1).
    Pooling,
    /// HopfieldLayer(20, quantity=20) -> flatten -> Linear(20*32 -> 1).
    Layer,
}

/// A Hopfield body followed by flatten and a linear logit head.
struct Net {
    body: Box<dyn ModuleT>,
    head: Linear,
}

impl Net {
    fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.body.forward_t(x, train)?.flatten_from(1)?;
        self.head.forward(&h)?.squeeze(1)
    }
}

fn latch_net(kind: LatchModel, instances: usize, vb: VarBuilder) -> Result<Net> {
    let cfg = HopfieldConfig::new(20);
    let (body, features): (Box<dyn ModuleT>, usize) = match kind {
        LatchModel::Hopfield => (
            Box::new(Hopfield::new(cfg, vb.pp("hopfield"))?),
            20 * instances,
        ),
        LatchModel::Pooling => {
            let pool = HopfieldPooling::new(HopfieldPoolingConfig::new(cfg), vb.pp("hopfield"))?;
            (Box::new(pool), 20)
        }
        LatchModel::Layer => {
            // quantity = number of distinct one-hot vectors in the data (20), as the notebook.
            let layer = HopfieldLayer::new(
                HopfieldLayerConfig::new(cfg).with_quantity(20),
                vb.pp("hopfield"),
            )?;
            (Box::new(layer), 20 * instances)
        }
    };
    Ok(Net {
        body,
        head: torch_linear(features, 1, vb.pp("output"))?,
    })
}

/// The notebook's "adapted" HopfieldPooling for bit patterns.
fn bits_net(vb: VarBuilder) -> Result<Net> {
    let cfg = HopfieldConfig::new(8)
        .with_hidden_size(Some(8))
        .with_num_heads(8)
        .with_update_steps_max(Some(3))
        .with_scaling(0.25)
        .with_dropout(0.5);
    let pool = HopfieldPooling::new(HopfieldPoolingConfig::new(cfg), vb.pp("hopfield"))?;
    Ok(Net {
        body: Box::new(pool),
        head: torch_linear(8, 1, vb.pp("output"))?,
    })
}

/// Inputs, targets and the notebook split of one task.
struct Task1 {
    x: Tensor,
    y: Tensor,
    train: Vec<u32>,
    eval: Vec<u32>,
}

/// Per-epoch numbers.
struct Epoch {
    loss: f64,
    train_acc: f64,
    eval_acc: f64,
}

fn evaluate(net: &Net, task: &Task1) -> Result<f64> {
    let mut correct = 0.0;
    for b in batches(&task.eval, 1024, None) {
        let logits = net.logits(&select(&task.x, &b)?, false)?;
        correct += binary_accuracy(&logits, &select(&task.y, &b)?)? * b.len() as f64;
    }
    Ok(correct / task.eval.len() as f64)
}

/// Trains `net` for `epochs`, printing one line per epoch; returns every epoch's numbers.
fn fit(
    name: &str,
    net: &Net,
    varmap: &VarMap,
    task: &Task1,
    epochs: usize,
    rng: &mut StdRng,
) -> Result<Vec<Epoch>> {
    let vars = varmap.all_vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
        .map_err(candle_core::Error::wrap)?
        .progress_chars("=> ");
    let mut history = Vec::with_capacity(epochs);
    for epoch in 1..=epochs {
        let start = Instant::now();
        let epoch_batches = batches(&task.train, 32, Some(rng));
        let pb = ProgressBar::new(epoch_batches.len() as u64)
            .with_style(style.clone())
            .with_prefix(format!("{name} epoch {epoch:>3}"));
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        for b in &epoch_batches {
            let (xb, yb) = (select(&task.x, b)?, select(&task.y, b)?);
            let logits = net.logits(&xb, true)?;
            let loss = bce_with_logits(&logits, &yb)?;
            let mut grads = loss.backward()?;
            clip_grad_norm(&mut grads, &vars, 1.0)?;
            opt.step(&grads)?;
            // Like the notebooks, train accuracy comes from the training-mode forward pass.
            let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss_sum += l * b.len() as f64;
            correct += binary_accuracy(&logits, &yb)? * b.len() as f64;
            pb.set_message(format!("loss {l:.4}"));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let n = task.train.len() as f64;
        let e = Epoch {
            loss: loss_sum / n,
            train_acc: correct / n,
            eval_acc: evaluate(net, task)?,
        };
        println!(
            "{name:<16} epoch {epoch:>3}  loss {:.4}  train acc {:.4}  eval acc {:.4}  ({:.1} s)",
            e.loss,
            e.train_acc,
            e.eval_acc,
            start.elapsed().as_secs_f64()
        );
        history.push(e);
    }
    Ok(history)
}

fn first_reaching(history: &[Epoch], target: f64) -> Option<usize> {
    history
        .iter()
        .position(|e| e.eval_acc >= target)
        .map(|i| i + 1)
}

fn run_latch(dev: &Device, epochs: usize, models: &[LatchModel], rng: &mut StdRng) -> Result<bool> {
    let cfg = LatchSequenceConfig::new(4096)
        .with_num_instances(32)
        .with_num_characters(20);
    let set = LatchSequenceSet::new(&cfg, dev)?;
    let (train, eval) = notebook_split(4096, 512);
    let task = Task1 {
        x: set.data().clone(),
        y: set.targets().clone(),
        train,
        eval,
    };
    let models = if models.is_empty() {
        vec![LatchModel::Hopfield, LatchModel::Pooling, LatchModel::Layer]
    } else {
        models.to_vec()
    };
    let mut ok = true;
    let mut summary = Vec::new();
    for kind in models {
        let varmap = VarMap::new();
        let net = latch_net(kind, 32, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
        let name = format!("{kind:?}").to_lowercase();
        let h = fit(&name, &net, &varmap, &task, epochs, rng)?;
        let reached = first_reaching(&h, 1.0);
        ok &= reached.is_some();
        let last = h.last().expect("at least one epoch");
        summary.push(format!(
            "{name:<16} final train acc {:.4}  eval acc {:.4}  eval 1.00 first at epoch {}",
            last.train_acc,
            last.eval_acc,
            reached.map_or("never".into(), |e| e.to_string())
        ));
    }
    println!("\nlatch summary");
    summary.iter().for_each(|l| println!("{l}"));
    Ok(ok)
}

fn run_bits(dev: &Device, epochs: usize, rng: &mut StdRng) -> Result<bool> {
    let set = BitPatternSet::new(&BitPatternConfig::new(2048, 16, 8), dev)?;
    let (train, eval) = notebook_split(2048, 256);
    let task = Task1 {
        x: set.bags().clone(),
        y: set.targets().clone(),
        train,
        eval,
    };
    let varmap = VarMap::new();
    let net = bits_net(VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let h = fit("pooling-adapted", &net, &varmap, &task, epochs, rng)?;
    let reached = first_reaching(&h, 0.80);
    let best = h.iter().map(|e| e.eval_acc).fold(0.0, f64::max);
    let last = h.last().expect("at least one epoch");
    println!(
        "\nbits summary\npooling-adapted  final train acc {:.4}  eval acc {:.4}  best eval {best:.4}  eval >= 0.80 first at epoch {}",
        last.train_acc,
        last.eval_acc,
        reached.map_or("never".into(), |e| e.to_string())
    );
    Ok(reached.is_some())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Many large temporary tensors: keep freed memory instead of page-faulting it back in.
    hopfield_cuda::tune_allocator();
    let args = Args::parse();
    let dev = device(args.device)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    hopfield_core::rng::seed(args.seed);
    let ok = match &args.task {
        Task::Latch { epochs, model } => run_latch(&dev, *epochs, model, &mut rng)?,
        Task::Bits { epochs } => run_bits(&dev, *epochs, &mut rng)?,
    };
    if !ok {
        return Err("a model did not reach its target accuracy".into());
    }
    Ok(())
}
