//! Retrieval experiments that difflayers' README lists but does not ship: standard (pure static)
//! Hopfield retrieval vs `DiffusedHopfield` ("static retrieval with diffused memories") on the
//! 1797 UCI digits and on random patterns (d = 64).
//!
//! Every stored pattern is used once as a query, corrupted by Gaussian noise or random pixel
//! masking; a query counts as retrieved when the nearest stored pattern (Euclidean, patterns are
//! unit-norm) to the module's output is its source pattern (digits also report class accuracy:
//! the nearest stored pattern has the source's label). Sections:
//! 1. noise robustness (Gaussian noise and masking at several levels), and where the noise-free
//!    misretrievals of key diffusion land (graph neighbours? same label? how many distinct targets?);
//! 2. steps sweep (`diffusion_steps` T = 1..10);
//! 3. diffusion modes (simple, iterative, spectral, factored) on a 500-pattern subset (spectral
//!    eigendecomposes a dense S x S Laplacian);
//! 4. logit diffusion (keys not diffused) vs key diffusion.
//!
//! Tables go to stdout (markdown), plots to `docs/img/dahn_*.png`; `docs/dahn-experiments.md`
//! records a run.
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin dahn_experiments
//! cargo run --release -p hopfield-examples --bin dahn_experiments -- --beta 16 --out-dir /tmp/img
//! ```

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use clap::Parser;
use dahn_diffusion::DiffusionMode;
use hopfield_examples::{digits_path, load_digits};
use hopfield_nn::{
    DiffusedHopfield, DiffusedHopfieldConfig, Hopfield, HopfieldConfig, HopfieldInput, Masks,
};
use plotters::coord::Shift;
use plotters::prelude::*;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Noise robustness, steps sweep, modes and logit diffusion of DiffusedHopfield")]
struct Args {
    /// Inverse temperature of every retrieval (Hopfield scaling and the diffusion loop's beta0).
    /// Patterns are unit-norm, so beta must be large: at 8 the iterated loop collapses to the
    /// metastable mean state, at 32 it still merges close digits (see docs/dahn-experiments.md).
    #[arg(long, default_value_t = 64.0)]
    beta: f64,
    /// Number of random patterns (d = 64).
    #[arg(long, default_value_t = 1000)]
    random_s: usize,
    /// Patterns per dataset in the mode comparison (spectral is a dense O(S^3) eigensolve).
    #[arg(long, default_value_t = 500)]
    modes_s: usize,
    /// Seed of the patterns, subsets and noise.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where the PNG plots go.
    #[arg(long, default_value = "docs/img")]
    out_dir: PathBuf,
}

/// Gaussian noise levels: the noise norm relative to the (unit) pattern norm.
const SIGMAS: [f64; 8] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0];
/// Fractions of masked (zeroed) coordinates.
const MASKS: [f64; 6] = [0.0, 0.25, 0.5, 0.75, 0.85, 0.95];
/// The README's retrieval recipe (eta 0.15, k 10, iterative, 5 steps).
const ETA: f64 = 0.15;
const K: usize = 10;
const STEPS: usize = 5;

/// Unit-norm patterns (rows of `x`, S x d) with optional class labels.
struct Dataset {
    name: &'static str,
    slug: &'static str,
    x: Vec<f32>,
    labels: Option<Vec<u8>>,
    s: usize,
    d: usize,
}

fn normalise_rows(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller: keeps the noise reproducible from the seed without another dependency.
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

impl Dataset {
    /// Digits: pixels in [0, 1], centred on the mean image (otherwise every pair of digits has
    /// cosine ~0.8 and the kNN graph is nearly complete in weight), then unit-norm.
    fn digits() -> Result<Self> {
        let (images, labels) = load_digits(digits_path())?;
        let (s, d) = images.dims2()?;
        let mean = images.mean_keepdim(0)?;
        let mut x: Vec<f32> = images
            .broadcast_sub(&mean)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        normalise_rows(&mut x, d);
        Ok(Self {
            name: "digits",
            slug: "digits",
            x,
            labels: Some(labels),
            s,
            d,
        })
    }

    /// Random patterns: `binary` = +-1 entries, else standard Gaussian; unit-norm.
    fn random(s: usize, d: usize, binary: bool, rng: &mut StdRng) -> Self {
        let mut x: Vec<f32> = (0..s * d)
            .map(|_| {
                if binary {
                    if rng.random::<bool>() {
                        1.0
                    } else {
                        -1.0
                    }
                } else {
                    gaussian(rng)
                }
            })
            .collect();
        normalise_rows(&mut x, d);
        Self {
            name: if binary { "random +-1" } else { "random gauss" },
            slug: if binary { "random_pm1" } else { "random_gauss" },
            x,
            labels: None,
            s,
            d,
        }
    }

    /// A random subset of `n` patterns (all if n >= S).
    fn subset(&self, n: usize, rng: &mut StdRng) -> Self {
        let mut idx: Vec<usize> = (0..self.s).collect();
        idx.shuffle(rng);
        idx.truncate(n.min(self.s));
        Self {
            name: self.name,
            slug: self.slug,
            x: idx
                .iter()
                .flat_map(|&i| self.x[i * self.d..(i + 1) * self.d].iter().copied())
                .collect(),
            labels: self
                .labels
                .as_ref()
                .map(|l| idx.iter().map(|&i| l[i]).collect()),
            s: idx.len(),
            d: self.d,
        }
    }

    fn stored(&self) -> Result<Tensor> {
        Tensor::from_slice(&self.x, (1, self.s, self.d), &Device::Cpu)
    }

    /// Every pattern once, corrupted, re-normalised to unit norm (so beta means the same at
    /// every noise level), as a (1, S, d) batch of queries.
    fn queries(&self, noise: Noise, rng: &mut StdRng) -> Result<Tensor> {
        let d = self.d;
        let mut q = self.x.clone();
        for row in q.chunks_mut(d) {
            match noise {
                Noise::Gauss(sigma) => {
                    // Per-coordinate std sigma / sqrt(d): the noise norm is ~sigma.
                    let std = (sigma / (d as f64).sqrt()) as f32;
                    row.iter_mut().for_each(|v| *v += std * gaussian(rng));
                }
                Noise::Mask(p) => {
                    let mut idx: Vec<usize> = (0..d).collect();
                    idx.shuffle(rng);
                    let m = ((p * d as f64).round() as usize).min(d - 1);
                    idx[..m].iter().for_each(|&i| row[i] = 0.0);
                }
            }
        }
        normalise_rows(&mut q, d);
        Tensor::from_slice(&q, (1, self.s, d), &Device::Cpu)
    }

    /// (pattern accuracy, class accuracy) of outputs (1, S, d) whose query i came from pattern i.
    fn score(&self, out: &Tensor) -> Result<(f64, Option<f64>)> {
        let stored = Tensor::from_slice(&self.x, (self.s, self.d), &Device::Cpu)?;
        // Unit-norm patterns: nearest in Euclidean distance = largest dot product.
        let nearest: Vec<u32> = out.squeeze(0)?.matmul(&stored.t()?)?.argmax(1)?.to_vec1()?;
        let n = self.s as f64;
        let hits = nearest
            .iter()
            .enumerate()
            .filter(|(i, &j)| *i == j as usize)
            .count();
        let class = self.labels.as_ref().map(|l| {
            nearest
                .iter()
                .enumerate()
                .filter(|(i, &j)| l[*i] == l[j as usize])
                .count() as f64
                / n
        });
        Ok((hits as f64 / n, class))
    }
}

#[derive(Clone, Copy, Debug)]
enum Noise {
    Gauss(f64),
    Mask(f64),
}

/// A retrieval model: plain static Hopfield or DiffusedHopfield (the module keeps its key-graph
/// cache across calls, so the stored-pattern graph is built once per dataset).
enum Model {
    Plain(Box<Hopfield>),
    Diffused(Box<DiffusedHopfield>),
}

impl Model {
    fn plain(beta: f64) -> Result<Self> {
        let cfg = HopfieldConfig::pure_static().with_scaling(beta);
        Ok(Self::Plain(Box::new(Hopfield::new(cfg, vb())?)))
    }

    fn diffused(cfg: DiffusedHopfieldConfig) -> Result<Self> {
        Ok(Self::Diffused(Box::new(DiffusedHopfield::new(cfg, vb())?)))
    }

    /// `softmax(beta Q K'^T) Y` after the model's dynamics; values are the clean stored patterns.
    fn retrieve(&self, stored: &Tensor, queries: &Tensor) -> Result<Tensor> {
        let input = HopfieldInput::Triple {
            stored,
            state: queries,
            projection: stored,
        };
        match self {
            Self::Plain(h) => h.forward_with(input, Masks::default(), false),
            Self::Diffused(h) => h.forward_with(input, Masks::default(), false),
        }
    }
}

fn vb() -> VarBuilder<'static> {
    // Pure static retrieval has no parameters: nothing is ever read from this builder.
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

/// DiffusedHopfield around pure static retrieval with the README recipe, keys diffused.
fn recipe(beta: f64) -> DiffusedHopfieldConfig {
    DiffusedHopfieldConfig::new(HopfieldConfig::pure_static().with_scaling(beta))
        .with_eta(ETA)
        .with_k_neighbors(K)
        .with_diffusion_mode(DiffusionMode::Iterative)
        .with_diffusion_steps(STEPS)
}

/// The model line-up of the noise-robustness section.
fn noise_models(beta: f64) -> Vec<(String, DiffusedHopfieldConfig)> {
    vec![
        // Same loop (T attention updates before the core) with diffusion switched off in effect:
        // separates the effect of diffusion from that of the extra retrieval updates.
        ("loop only (eta=1e-9)".into(), recipe(beta).with_eta(1e-9)),
        ("DH keys".into(), recipe(beta)),
        ("DH queries".into(), recipe(beta).with_diffuse(false, true)),
        (
            "DH keys+queries".into(),
            recipe(beta).with_diffuse(true, true),
        ),
    ]
}

type Row = (String, Vec<f64>);

/// Runs `models` (plus the plain Hopfield baseline first) over `levels`; returns per-model
/// pattern-accuracy and class-accuracy rows.
fn sweep_noise(
    data: &Dataset,
    beta: f64,
    models: &[(String, DiffusedHopfieldConfig)],
    levels: &[Noise],
    seed: u64,
) -> Result<(Vec<Row>, Vec<Row>)> {
    let stored = data.stored()?;
    let mut built = vec![("Hopfield".to_string(), Model::plain(beta)?)];
    for (name, cfg) in models {
        built.push((name.clone(), Model::diffused(cfg.clone())?));
    }
    // The same noisy queries for every model at a level.
    let queries: Vec<Tensor> = levels
        .iter()
        .enumerate()
        .map(|(i, &n)| data.queries(n, &mut StdRng::seed_from_u64(seed * 1000 + i as u64)))
        .collect::<Result<_>>()?;
    let (mut pat, mut cls) = (Vec::new(), Vec::new());
    for (name, model) in &built {
        let (mut p, mut c) = (Vec::new(), Vec::new());
        for q in &queries {
            match model.retrieve(&stored, q) {
                Ok(out) => {
                    let (a, b) = data.score(&out)?;
                    p.push(a);
                    c.push(b.unwrap_or(f64::NAN));
                }
                // A configuration the library rejects (e.g. an unstable factored eta) is a
                // result to report, not a reason to stop the run.
                Err(e) => {
                    let why = e.to_string();
                    let why = why.lines().next().unwrap_or("").to_string();
                    println!("\n> {} on {}: rejected: {why}", name, data.name);
                    p = vec![f64::NAN; queries.len()];
                    c = p.clone();
                    break;
                }
            }
        }
        pat.push((name.clone(), p));
        cls.push((name.clone(), c));
    }
    Ok((pat, cls))
}

/// For noise-free queries, the misretrievals of `DH keys`: how many land on one of the source's
/// key-graph neighbours (k = 10) or share its label, and how many distinct patterns they hit (a
/// few hub patterns would point to a norm effect rather than to neighbourhood blurring).
fn diagnose(data: &Dataset, beta: f64) -> Result<()> {
    let dh = DiffusedHopfield::new(recipe(beta), vb())?;
    let stored = data.stored()?;
    let q = data.queries(Noise::Gauss(0.0), &mut StdRng::seed_from_u64(0))?;
    let out = dh.forward_full(
        HopfieldInput::Triple {
            stored: &stored,
            state: &q,
            projection: &stored,
        },
        Masks::default(),
        false,
    )?;
    let neighbours: Vec<Vec<u32>> = out.key_graphs[0].neighbours.to_vec2()?;
    let flat = Tensor::from_slice(&data.x, (data.s, data.d), &Device::Cpu)?;
    let nearest: Vec<u32> = out
        .hopfield
        .output
        .squeeze(0)?
        .matmul(&flat.t()?)?
        .argmax(1)?
        .to_vec1()?;
    let wrong: Vec<(usize, usize)> = nearest
        .iter()
        .enumerate()
        .filter(|(i, &j)| *i != j as usize)
        .map(|(i, &j)| (i, j as usize))
        .collect();
    let in_graph = wrong
        .iter()
        .filter(|(i, j)| neighbours[*i].contains(&(*j as u32)))
        .count();
    let same_label = data
        .labels
        .as_ref()
        .map_or(0, |l| wrong.iter().filter(|(i, j)| l[*i] == l[*j]).count());
    let mut targets: Vec<usize> = wrong.iter().map(|w| w.1).collect();
    targets.sort_unstable();
    targets.dedup();
    let n = wrong.len().max(1) as f64;
    println!(
        "{} of {} queries misretrieved; {:.1}% of those land on one of the source's {} key-graph \
         neighbours, {:.1}% on a pattern with the same label; {} distinct patterns are hit",
        wrong.len(),
        data.s,
        100.0 * in_graph as f64 / n,
        neighbours.first().map_or(0, Vec::len),
        100.0 * same_label as f64 / n,
        targets.len()
    );
    Ok(())
}

fn print_table(title: &str, xname: &str, xs: &[String], rows: &[Row]) {
    println!("\n#### {title}\n");
    print!("| model \\ {xname} |");
    xs.iter().for_each(|x| print!(" {x} |"));
    print!("\n|---|");
    xs.iter().for_each(|_| print!("---|"));
    println!();
    for (name, vals) in rows {
        print!("| {name} |");
        // NaN marks a configuration the library rejected (reported above the table).
        vals.iter().for_each(|v| {
            if v.is_nan() {
                print!(" rejected |")
            } else {
                print!(" {v:.3} |")
            }
        });
        println!();
    }
}

const COLORS: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(127, 127, 127),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

type Panel<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Accuracy-vs-x line chart of `rows` in one panel.
fn panel(
    area: &Panel,
    title: &str,
    xlabel: &str,
    xs: &[f64],
    rows: &[Row],
) -> std::result::Result<(), Box<dyn Error>> {
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1, 0f64..1.02)?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc("accuracy")
        // Round away float noise (0.30000000000000004) in the tick labels.
        .x_label_formatter(&|x| format!("{}", (x * 1000.0).round() / 1000.0))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, ys)) in rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(LineSeries::new(
            xs.iter().copied().zip(ys.iter().copied()),
            color.stroke_width(2),
        ))?;
        chart.draw_series(
            xs.iter()
                .zip(ys)
                .map(|(&x, &y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    Ok(())
}

/// A PNG of panels on a grid, `cols` wide: (title, x label, xs, rows) each.
#[allow(clippy::type_complexity)]
fn figure(
    path: &Path,
    cols: usize,
    panels: &[(String, &str, Vec<f64>, Vec<Row>)],
) -> std::result::Result<(), Box<dyn Error>> {
    let rows = panels.len().div_ceil(cols);
    let h = rows as u32 * 420;
    let root = BitMapBackend::new(path, (cols as u32 * 560, h + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (grid, legend) = root.split_vertically(h);
    for (area, (title, xl, xs, r)) in grid.split_evenly((rows, cols)).iter().zip(panels) {
        panel(area, title, xl, xs, r)?;
    }
    // One legend strip under the grid (every panel of a figure shows the same models), so that
    // no legend box hides a curve.
    let mut x = 20;
    for (i, (name, _)) in panels[0].3.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        legend.draw(&PathElement::new(
            vec![(x, 20), (x + 30, 20)],
            color.stroke_width(3),
        ))?;
        legend.draw(&Text::new(
            name.clone(),
            (x + 36, 11),
            ("sans-serif", 16).into_font(),
        ))?;
        x += 60 + 8 * name.chars().count() as i32;
    }
    root.present()?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn levels_label(levels: &[Noise]) -> Vec<String> {
    levels
        .iter()
        .map(|n| match n {
            Noise::Gauss(s) => format!("σ={s}"),
            Noise::Mask(p) => format!("p={p}"),
        })
        .collect()
}

fn main() -> std::result::Result<(), Box<dyn Error>> {
    // Many large temporary tensors: keep freed memory instead of page-faulting it back in.
    hopfield_cuda::tune_allocator();
    let args = Args::parse();
    let t0 = Instant::now();
    std::fs::create_dir_all(&args.out_dir)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let datasets = vec![
        Dataset::digits()?,
        Dataset::random(args.random_s, 64, true, &mut rng),
        Dataset::random(args.random_s, 64, false, &mut rng),
    ];
    let beta = args.beta;
    println!(
        "# DAHN retrieval experiments (beta = {beta}, recipe: eta {ETA}, k {K}, iterative, T = {STEPS}, seed {})",
        args.seed
    );
    for d in &datasets {
        println!("- {}: S = {}, d = {}", d.name, d.s, d.d);
    }

    // 1. Noise robustness.
    println!("\n## 1. Noise robustness (pattern accuracy; digits also class accuracy)");
    let gauss: Vec<Noise> = SIGMAS.iter().map(|&s| Noise::Gauss(s)).collect();
    let mask: Vec<Noise> = MASKS.iter().map(|&p| Noise::Mask(p)).collect();
    let models = noise_models(beta);
    // Per dataset: the Gaussian level where plain Hopfield is closest to 50% pattern accuracy,
    // reused by the sweeps (a level where there is something to gain or lose).
    let mut mid_sigma = Vec::new();
    for (di, data) in datasets.iter().enumerate() {
        let t = Instant::now();
        let (gp, gc) = sweep_noise(data, beta, &models, &gauss, args.seed + di as u64)?;
        let (mp, mc) = sweep_noise(data, beta, &models, &mask, args.seed + 100 + di as u64)?;
        print_table(
            &format!("{}: Gaussian noise, pattern accuracy", data.name),
            "noise",
            &levels_label(&gauss),
            &gp,
        );
        print_table(
            &format!("{}: masking, pattern accuracy", data.name),
            "masked",
            &levels_label(&mask),
            &mp,
        );
        let mut panels = vec![
            (
                format!("{}: Gaussian noise (pattern)", data.name),
                "noise norm σ",
                SIGMAS.to_vec(),
                gp.clone(),
            ),
            (
                format!("{}: masking (pattern)", data.name),
                "masked fraction p",
                MASKS.to_vec(),
                mp,
            ),
        ];
        if data.labels.is_some() {
            print_table(
                &format!("{}: Gaussian noise, class accuracy", data.name),
                "noise",
                &levels_label(&gauss),
                &gc,
            );
            print_table(
                &format!("{}: masking, class accuracy", data.name),
                "masked",
                &levels_label(&mask),
                &mc,
            );
            panels.push((
                format!("{}: Gaussian noise (class)", data.name),
                "noise norm σ",
                SIGMAS.to_vec(),
                gc,
            ));
            panels.push((
                format!("{}: masking (class)", data.name),
                "masked fraction p",
                MASKS.to_vec(),
                mc,
            ));
        }
        let file = format!("dahn_noise_{}.png", data.slug);
        figure(&args.out_dir.join(file), 2, &panels)?;
        let base = &gp[0].1;
        let best = (0..SIGMAS.len())
            .min_by(|&a, &b| (base[a] - 0.5).abs().total_cmp(&(base[b] - 0.5).abs()))
            .unwrap_or(0);
        mid_sigma.push(SIGMAS[best]);
        println!("({} done in {:.1} s)", data.name, t.elapsed().as_secs_f64());
    }

    // 1b. Where do key-diffused retrievals go? Tests the mechanism proposed in the docs.
    println!("\n## 1b. Misretrievals of DH keys without noise (digits)");
    diagnose(&datasets[0], beta)?;

    // 2. Steps sweep.
    println!("\n## 2. Steps sweep (T = 1..10, Gaussian noise at the level where Hopfield is nearest 50%)");
    let ts: Vec<usize> = (1..=10).collect();
    let mut step_panels = Vec::new();
    for (di, data) in datasets.iter().enumerate() {
        let sigma = mid_sigma[di];
        let stored = data.stored()?;
        let q = data.queries(
            Noise::Gauss(sigma),
            &mut StdRng::seed_from_u64(args.seed + 500 + di as u64),
        )?;
        let (base, base_c) = data.score(&Model::plain(beta)?.retrieve(&stored, &q)?)?;
        let mut rows = vec![("Hopfield".to_string(), vec![base; ts.len()])];
        let mut crows = vec![(
            "Hopfield".to_string(),
            vec![base_c.unwrap_or(f64::NAN); ts.len()],
        )];
        for (name, cfg) in noise_models(beta) {
            let (mut accs, mut caccs) = (Vec::new(), Vec::new());
            for &t in &ts {
                let m = Model::diffused(cfg.clone().with_diffusion_steps(t))?;
                let (a, c) = data.score(&m.retrieve(&stored, &q)?)?;
                accs.push(a);
                caccs.push(c.unwrap_or(f64::NAN));
            }
            rows.push((name.clone(), accs));
            crows.push((name, caccs));
        }
        let tl: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
        print_table(
            &format!("{}: pattern accuracy vs T (σ = {sigma})", data.name),
            "T",
            &tl,
            &rows,
        );
        step_panels.push((
            format!("{} (σ = {sigma}, pattern)", data.name),
            "diffusion_steps T",
            ts.iter().map(|&t| t as f64).collect(),
            rows,
        ));
        if data.labels.is_some() {
            print_table(
                &format!("{}: class accuracy vs T (σ = {sigma})", data.name),
                "T",
                &tl,
                &crows,
            );
            step_panels.push((
                format!("{} (σ = {sigma}, class)", data.name),
                "diffusion_steps T",
                ts.iter().map(|&t| t as f64).collect(),
                crows,
            ));
        }
    }
    figure(&args.out_dir.join("dahn_steps.png"), 2, &step_panels)?;

    // 3. Diffusion modes (keys diffused), on a subset so that spectral's dense eigensolve is cheap.
    println!(
        "\n## 3. Diffusion modes (keys diffused, S = {} subset, Gaussian noise)",
        args.modes_s
    );
    let variants: Vec<(String, DiffusedHopfieldConfig)> = vec![
        ("loop only (eta=1e-9)".into(), recipe(beta).with_eta(1e-9)),
        (
            "simple".into(),
            recipe(beta).with_diffusion_mode(DiffusionMode::Simple),
        ),
        (
            "iterative".into(),
            recipe(beta).with_diffusion_mode(DiffusionMode::Iterative),
        ),
        (
            "spectral".into(),
            recipe(beta).with_diffusion_mode(DiffusionMode::Spectral),
        ),
        (
            "factored".into(),
            recipe(beta).with_diffusion_mode(DiffusionMode::Factored),
        ),
        (
            "factored, difflayers defaults (eta .1, k 5, T 3)".into(),
            DiffusedHopfieldConfig::new(HopfieldConfig::pure_static().with_scaling(beta)),
        ),
    ];
    for (di, data) in datasets.iter().enumerate() {
        let sub = data.subset(args.modes_s, &mut StdRng::seed_from_u64(args.seed + 900));
        let (p, _) = sweep_noise(&sub, beta, &variants, &gauss, args.seed + 1000 + di as u64)?;
        print_table(
            &format!("{} (S = {}): pattern accuracy by mode", data.name, sub.s),
            "noise",
            &levels_label(&gauss),
            &p,
        );
    }

    // 4. Logit vs feature (key) diffusion.
    println!("\n## 4. Logit diffusion (diffuse_key = false) vs key diffusion, Gaussian noise");
    let logit: Vec<(String, DiffusedHopfieldConfig)> = vec![
        ("DH keys (eta .15)".into(), recipe(beta)),
        (
            "logit diffusion (logit_eta .15)".into(),
            recipe(beta)
                .with_diffuse(false, false)
                .with_logit_diffusion(true, Some(ETA)),
        ),
        (
            "logit diffusion (logit_eta .5)".into(),
            recipe(beta)
                .with_diffuse(false, false)
                .with_logit_diffusion(true, Some(0.5)),
        ),
    ];
    for (di, data) in datasets.iter().enumerate() {
        let (p, c) = sweep_noise(data, beta, &logit, &gauss, args.seed + di as u64)?;
        print_table(
            &format!("{}: pattern accuracy", data.name),
            "noise",
            &levels_label(&gauss),
            &p,
        );
        if data.labels.is_some() {
            print_table(
                &format!("{}: class accuracy", data.name),
                "noise",
                &levels_label(&gauss),
                &c,
            );
        }
    }
    println!("\ntotal {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
