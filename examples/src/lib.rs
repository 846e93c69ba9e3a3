//! The tooling around the hopfield-rs modules, and the shared helpers of the example binaries.
//!
//! - [`conformance`]: the conformance runner and its case format, which replays reference cases
//!   exported from the PyTorch originals (the `conformance` binary, and the golden tests of
//!   `cargo test --workspace`).
//! - [`plot`]: PNG grids of 8x8 digits (query / retrieved / original pictures).
//! - [`data`]: the synthetic data sets of hflayers' demo notebooks (bit-pattern bags, latch
//!   sequences), used by `train_hflayers`.
//! - At the crate root: device choice, the bundled handwritten digits, mini-batching, binary
//!   accuracy, a numerically stable BCE-with-logits and gradient clipping (the pieces of hflayers'
//!   notebook training loops that candle-nn does not ship).
//!
//! ```
//! use hopfield_examples::{device, digits_path, load_digits, DeviceChoice};
//! let dev = device(DeviceChoice::Cpu)?;
//! let (images, labels) = load_digits(digits_path())?;
//! assert_eq!((images.dims(), labels.len()), (&[1797usize, 64][..], 1797));
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod conformance;
pub mod data;
pub mod plot;

/// Every Rust block of `docs/guide.md` runs as a doctest of this crate, so the guide's code
/// stays true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct GuideDoctests;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::init::Init;
use candle_nn::{Linear, VarBuilder};
pub use hopfield_cuda::DeviceChoice;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The device of a `--device auto|cpu|cuda|cuda:N` choice (see [`DeviceChoice`]): `auto` is the
/// first CUDA device when built with the `cuda` feature and a GPU is present, else the CPU.
///
/// ```
/// assert!(hopfield_examples::device("cpu".parse()?)?.is_cpu());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn device(choice: DeviceChoice) -> Result<Device> {
    choice.device()
}

/// Centres every row of `x` `(n, d)` and scales it to unit L2 norm: the patterns of the modern
/// Hopfield network live on a sphere, where the largest dot product is the nearest pattern (raw
/// pixel dot products favour images with more ink).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 3.]], &Device::Cpu)?;
/// let y = hopfield_examples::normalize_rows(&x)?.to_vec2::<f32>()?;
/// assert!((y[0][0] + 0.70710677).abs() < 1e-6 && (y[0][1] - 0.70710677).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)?;
    let norm = centred
        .sqr()?
        .sum_keepdim(candle_core::D::Minus1)?
        .sqrt()?
        .clamp(1e-6, f64::INFINITY)?;
    centred.broadcast_div(&norm)
}

/// One standard normal draw by Box-Muller from two uniforms of `rng`, so that noise is
/// reproducible from the seed alone.
///
/// ```
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let z = hopfield_examples::standard_normal(&mut rng);
/// assert!(z.is_finite());
/// ```
pub fn standard_normal(rng: &mut StdRng) -> f64 {
    use rand::Rng;
    let (u1, u2) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `len` independent random signs (+1 or -1, one draw of `rng` each): the random binary patterns
/// of the paper's capacity experiments and of the million-pattern examples.
///
/// ```
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let x: Vec<f32> = hopfield_examples::random_signs(&mut rng, 8);
/// assert!(x.iter().all(|v| v.abs() == 1.0));
/// ```
pub fn random_signs<T: candle_core::WithDType>(rng: &mut StdRng, len: usize) -> Vec<T> {
    use rand::Rng;
    (0..len)
        .map(|_| T::from_f64(if rng.random::<bool>() { 1.0 } else { -1.0 }))
        .collect()
}

/// Peak resident memory of this process in MiB (`VmHWM` of `/proc/self/status`; `None` where
/// that file does not exist, i.e. off Linux).
///
/// ```
/// if let Some(mib) = hopfield_examples::peak_rss_mib() {
///     assert!(mib > 0.0);
/// }
/// ```
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Path of the bundled UCI handwritten digits (`examples/data/digits/digits.csv.gz`, CC BY 4.0,
/// see the README next to it).
pub fn digits_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv.gz")
}

/// Loads a gzip CSV of 8x8 digits (64 pixels in 0..=16, then the label) as `(images, labels)`:
/// images `(n, 64)` f32 scaled to `[0, 1]` on the CPU, labels `0..=9`.
///
/// ```
/// use hopfield_examples::{digits_path, load_digits};
/// let (images, labels) = load_digits(digits_path())?;
/// assert_eq!(images.dims(), &[1797, 64]);
/// assert_eq!(images.max_all()?.to_scalar::<f32>()?, 1.0);
/// assert!(labels.iter().all(|&l| l < 10));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn load_digits(path: impl AsRef<Path>) -> Result<(Tensor, Vec<u8>)> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| candle_core::Error::Msg(format!("cannot open {}: {e}", path.display())))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| candle_core::Error::Msg(format!("cannot gunzip {}: {e}", path.display())))?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad =
            |why: &str| candle_core::Error::Msg(format!("{}:{}: {why}", path.display(), n + 1));
        let values = line
            .split(',')
            .map(|v| v.trim().parse::<f32>().map_err(|e| bad(&e.to_string())))
            .collect::<Result<Vec<f32>>>()?;
        if values.len() != 65 {
            return Err(bad(&format!("expected 65 values, got {}", values.len())));
        }
        if values[..64].iter().any(|&p| !(0.0..=16.0).contains(&p))
            || !(0.0..10.0).contains(&values[64])
        {
            return Err(bad("pixel outside 0..=16 or label outside 0..=9"));
        }
        pixels.extend(values[..64].iter().map(|p| p / 16.0));
        labels.push(values[64] as u8);
    }
    let images = Tensor::from_vec(pixels, (labels.len(), 64), &Device::Cpu)?;
    Ok((images, labels))
}

/// hflayers' notebook split: the middle `first..n-first` trains, the first `first` plus the
/// last `first` items evaluate (bags are ordered positives first, so both parts are balanced).
///
/// ```
/// let (train, eval) = hopfield_examples::notebook_split(10, 2);
/// assert_eq!(train, [2, 3, 4, 5, 6, 7]);
/// assert_eq!(eval, [0, 1, 8, 9]);
/// ```
pub fn notebook_split(n: usize, first: usize) -> (Vec<u32>, Vec<u32>) {
    let train = (first..n - first).map(|i| i as u32).collect();
    let eval = (0..first).chain(n - first..n).map(|i| i as u32).collect();
    (train, eval)
}

/// Splits `indices` into mini-batches of `batch_size` (the last may be shorter), shuffled first
/// when an rng is given (a `DataLoader(shuffle=True)`).
///
/// ```
/// use rand::SeedableRng;
/// let idx: Vec<u32> = (0..5).collect();
/// assert_eq!(hopfield_examples::batches(&idx, 2, None), [vec![0, 1], vec![2, 3], vec![4]]);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let shuffled = hopfield_examples::batches(&idx, 5, Some(&mut rng));
/// assert_eq!(shuffled[0].len(), 5);
/// ```
pub fn batches(indices: &[u32], batch_size: usize, rng: Option<&mut StdRng>) -> Vec<Vec<u32>> {
    let mut idx = indices.to_vec();
    if let Some(rng) = rng {
        idx.shuffle(rng);
    }
    idx.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect()
}

/// Rows `idx` of `x` along dim 0, on `x`'s device.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[10f32, 11., 12.], &Device::Cpu)?;
/// assert_eq!(hopfield_examples::select(&x, &[2, 0])?.to_vec1::<f32>()?, [12., 10.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn select(x: &Tensor, idx: &[u32]) -> Result<Tensor> {
    let ids = Tensor::from_slice(idx, idx.len(), x.device())?;
    x.index_select(&ids, 0)
}

/// Fraction of `round(sigmoid(logit)) == target` (hflayers' notebook accuracy). Computed as
/// `logit > 0`, which is what torch's round-half-to-even gives at exactly 0.5.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[2f32, -1., 0.5, 0.], &Device::Cpu)?;
/// let targets = Tensor::new(&[1f32, 0., 0., 0.], &Device::Cpu)?;
/// assert_eq!(hopfield_examples::binary_accuracy(&logits, &targets)?, 0.75);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn binary_accuracy(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    let predicted = logits.gt(0.0)?.to_dtype(DType::F32)?;
    let targets = targets.to_dtype(DType::F32)?.reshape(predicted.shape())?;
    let correct = predicted.eq(&targets)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(correct.to_scalar::<f32>()? as f64 / targets.elem_count().max(1) as f64)
}

/// A `Linear(in_dim -> out_dim)` initialised like PyTorch's `nn.Linear` (weight and bias
/// uniform in `±1/sqrt(in_dim)`), so heads start as in hflayers' notebooks; `candle_nn::linear`
/// draws the weight from a Kaiming normal, about 2.5 times wider.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// let map = VarMap::new();
/// let head = hopfield_examples::torch_linear(16, 1, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// assert!(head.weight().abs()?.max_all()?.to_scalar::<f32>()? <= 0.25);
/// assert_eq!(head.forward(&Tensor::zeros((3, 16), DType::F32, &Device::Cpu)?)?.dims(), &[3, 1]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn torch_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    // Through checked_param: sizes checked, and seeded by hopfield_core::rng::seed.
    let weight = hopfield_core::checked_param(&vb, (out_dim, in_dim), "weight", init)?;
    let bias = hopfield_core::checked_param(&vb, out_dim, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// Mean binary cross-entropy of `logits` against 0/1 `targets`, as PyTorch's
/// `BCEWithLogitsLoss`: `max(x, 0) - x t + log(1 + exp(-|x|))`.
///
/// Why not `candle_nn::loss::binary_cross_entropy_with_logit`: it takes `log(sigmoid(x))`,
/// which in f32 is `log(0)` once `|x|` exceeds ~17, so a confident model (the latch task reaches
/// accuracy 1.0 quickly) gets a NaN loss and NaN gradients. Values agree otherwise.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[0.3f32, -1.2, 2.0], &Device::Cpu)?;
/// let t = Tensor::new(&[1f32, 0., 0.], &Device::Cpu)?;
/// let ours = hopfield_examples::bce_with_logits(&x, &t)?.to_scalar::<f32>()?;
/// let candle = candle_nn::loss::binary_cross_entropy_with_logit(&x, &t)?.to_scalar::<f32>()?;
/// assert!((ours - candle).abs() < 1e-6);
/// let big = Tensor::new(&[40f32, -40.], &Device::Cpu)?;
/// let loss = hopfield_examples::bce_with_logits(&big, &Tensor::new(&[1f32, 0.], &Device::Cpu)?)?;
/// assert!(loss.to_scalar::<f32>()?.is_finite());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.reshape(logits.shape())?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (logits.relu()? - (logits * targets)?)?
        .add(&softplus_neg_abs)?
        .mean_all()
}

/// Scales the gradients of `vars` in place so that their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`, same `max_norm / (norm + 1e-6)` factor), and returns the norm
/// before clipping. Variables without a gradient are skipped.
///
/// ```
/// use candle_core::{Device, Var};
/// let w = Var::new(&[3f32, 4.], &Device::Cpu)?;
/// let mut grads = (w.as_tensor() * 1.0)?.sum_all()?.backward()?; // gradient [1, 1]
/// let norm = hopfield_examples::clip_grad_norm(&mut grads, &[w.clone()], 1.0)?;
/// assert!((norm - 2f64.sqrt()).abs() < 1e-6);
/// let g = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>()?;
/// assert!((g[0] - 0.5f32.sqrt()).abs() < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sum_sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum_sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sum_sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}
