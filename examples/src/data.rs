//! Synthetic data sets of hflayers' demo notebooks (`hflayers/auxiliary/data.py`).
//!
//! * [`BitPatternSet`]: binary multiple-instance learning. Every bag holds `num_instances` random
//!   bit rows; the first `num_targets_high` bags are positive and each has `num_signals_per_bag`
//!   *signal* rows implanted at distinct positions. Negative bags contain no signal at all.
//! * [`LatchSequenceSet`]: one-hot sequences whose first token is the target bit (0 or 1) and
//!   whose other tokens are noise drawn from `2..num_characters`, so a model must "latch" the
//!   first position over the whole sequence.
//!
//! Parameters, defaults, validation and generating process follow hflayers, but the random
//! numbers come from `rand`'s seeded [`StdRng`], not from torch's CPU generator: the seeds give
//! reproducible sets from the **same distribution** as hflayers', not bit-identical samples.
//!
//! ```
//! use candle_core::Device;
//! use hopfield_examples::data::{BitPatternConfig, BitPatternSet};
//! let set = BitPatternSet::new(&BitPatternConfig::new(64, 16, 8), &Device::Cpu)?;
//! assert_eq!(set.bags().dims(), &[64, 16, 8]);
//! assert_eq!((set.num_targets_high(), set.num_targets_low()), (32, 32));
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Device, Result, Tensor};
use hopfield_core::HopfieldError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;

fn config_error(field: &'static str, reason: impl Into<String>) -> HopfieldError {
    HopfieldError::Config {
        field,
        reason: reason.into(),
    }
}

/// Parameters of [`BitPatternSet`], hflayers' `BitPatternSet` arguments with the same defaults.
/// `Default` is the bit-pattern notebook's set: 2048 bags of 16 instances, 8 signals, 8 bits.
///
/// ```
/// use hopfield_examples::data::BitPatternConfig;
/// let cfg = BitPatternConfig::new(100, 10, 4).with_num_bits(4).with_fraction_targets(0.25);
/// assert_eq!(cfg.num_targets(), 25);
/// assert!(BitPatternConfig::new(100, 10, 15).with_num_bits(4).validate().is_err()); // 15 >= 2^4 - 1
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BitPatternConfig {
    /// Number of bags.
    pub num_bags: usize,
    /// Instances (bit rows) per bag.
    pub num_instances: usize,
    /// Number of distinct signal patterns.
    pub num_signals: usize,
    /// Signals implanted into every positive bag, at distinct positions (default 1).
    pub num_signals_per_bag: usize,
    /// Fraction of positive bags, in (0, 1) (default 0.5).
    pub fraction_targets: f64,
    /// Bits per instance (default 8).
    pub num_bits: usize,
    /// Seed of the signal patterns (default 43).
    pub seed_signals: u64,
    /// Seed of the bags (default 44).
    pub seed_data: u64,
}

impl Default for BitPatternConfig {
    fn default() -> Self {
        Self::new(2048, 16, 8)
    }
}

impl BitPatternConfig {
    /// hflayers' defaults for everything but the three required arguments.
    pub fn new(num_bags: usize, num_instances: usize, num_signals: usize) -> Self {
        Self {
            num_bags,
            num_instances,
            num_signals,
            num_signals_per_bag: 1,
            fraction_targets: 0.5,
            num_bits: 8,
            seed_signals: 43,
            seed_data: 44,
        }
    }

    /// Sets `num_signals_per_bag`.
    pub fn with_num_signals_per_bag(mut self, v: usize) -> Self {
        self.num_signals_per_bag = v;
        self
    }

    /// Sets `fraction_targets`.
    pub fn with_fraction_targets(mut self, v: f64) -> Self {
        self.fraction_targets = v;
        self
    }

    /// Sets `num_bits`.
    pub fn with_num_bits(mut self, v: usize) -> Self {
        self.num_bits = v;
        self
    }

    /// Sets `seed_signals`.
    pub fn with_seed_signals(mut self, v: u64) -> Self {
        self.seed_signals = v;
        self
    }

    /// Sets `seed_data`.
    pub fn with_seed_data(mut self, v: u64) -> Self {
        self.seed_data = v;
        self
    }

    /// Number of positive bags: `min(num_bags, max(1, ceil(num_bags * fraction_targets)))`.
    pub fn num_targets(&self) -> usize {
        let t = (self.num_bags as f64 * self.fraction_targets).ceil() as usize;
        t.max(1).min(self.num_bags)
    }

    /// hflayers' assertions, as typed errors.
    pub fn validate(&self) -> std::result::Result<(), HopfieldError> {
        if self.num_bags == 0 {
            return Err(config_error("num_bags", "must be >= 1"));
        }
        if self.num_instances == 0 {
            return Err(config_error("num_instances", "must be >= 1"));
        }
        if self.num_signals == 0 {
            return Err(config_error("num_signals", "must be >= 1"));
        }
        if self.num_signals_per_bag > self.num_instances {
            return Err(config_error(
                "num_signals_per_bag",
                format!(
                    "{} exceeds num_instances = {}",
                    self.num_signals_per_bag, self.num_instances
                ),
            ));
        }
        if !(self.fraction_targets > 0.0 && self.fraction_targets < 1.0) {
            return Err(config_error(
                "fraction_targets",
                format!("{} is not in (0, 1)", self.fraction_targets),
            ));
        }
        if self.num_bits == 0 {
            return Err(config_error("num_bits", "must be >= 1"));
        }
        // There are 2^bits - 1 nonzero patterns; at least one must stay free for the noise
        // instances, which are never zero and never a signal (hflayers asserts the same).
        let nonzero = 1u128
            .checked_shl(self.num_bits.min(127) as u32)
            .map_or(u128::MAX, |p| p - 1);
        if self.num_signals as u128 >= nonzero {
            return Err(config_error(
                "num_signals",
                format!(
                    "{} must be smaller than 2^num_bits - 1 = {nonzero}",
                    self.num_signals
                ),
            ));
        }
        Ok(())
    }
}

/// hflayers' `BitPatternSet`: bags of random bit rows, positives marked by implanted signals.
///
/// Generation (as in hflayers): `num_signals` distinct nonzero random rows, sorted
/// lexicographically (hflayers' `torch.unique`), from `seed_signals`; then, from `seed_data`,
/// uniform random bits for every instance, resampled while an instance is all-zero or equals a
/// signal; the first [`num_targets_high`](Self::num_targets_high) bags get target 1 and
/// `num_signals_per_bag` uniformly chosen signals at distinct uniformly chosen positions.
///
/// ```
/// use candle_core::{DType, Device};
/// use hopfield_examples::data::{BitPatternConfig, BitPatternSet};
/// let cfg = BitPatternConfig::new(10, 4, 3).with_num_bits(4);
/// let set = BitPatternSet::with_dtype(&cfg, DType::F64, &Device::Cpu)?;
/// assert_eq!(set.signals().dims(), &[3, 4]);
/// assert_eq!(set.targets().to_vec1::<f64>()?, [1., 1., 1., 1., 1., 0., 0., 0., 0., 0.]);
/// let (bag, target) = set.get(0)?;
/// assert_eq!((bag.dims(), target.to_scalar::<f64>()?), (&[4usize, 4][..], 1.0));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BitPatternSet {
    config: BitPatternConfig,
    bags: Tensor,
    targets: Tensor,
    signals: Tensor,
}

/// Uniform random bit row.
fn random_row(rng: &mut StdRng, bits: usize) -> Vec<u8> {
    (0..bits).map(|_| rng.random_range(0..2u8)).collect()
}

/// Distinct nonzero signal rows, sorted, following hflayers' unique/filter/refill loop.
fn generate_signals(cfg: &BitPatternConfig) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(cfg.seed_signals);
    let mut signals: Vec<Vec<u8>> = (0..cfg.num_signals)
        .map(|_| random_row(&mut rng, cfg.num_bits))
        .collect();
    loop {
        signals.sort();
        signals.dedup();
        signals.retain(|r| r.iter().any(|&b| b != 0));
        let missing = cfg.num_signals - signals.len();
        if missing == 0 {
            return signals;
        }
        signals.extend((0..missing).map(|_| random_row(&mut rng, cfg.num_bits)));
    }
}

/// `(bags, targets)` as flat 0/1 vectors.
fn generate_bags(cfg: &BitPatternConfig, signals: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(cfg.seed_data);
    let lookup: HashSet<&[u8]> = signals.iter().map(|s| s.as_slice()).collect();
    let (l, b) = (cfg.num_instances, cfg.num_bits);
    let mut data = Vec::with_capacity(cfg.num_bags * l * b);
    for _ in 0..cfg.num_bags * l {
        // Resampling each invalid row on its own gives the same distribution as hflayers'
        // batched resampling: uniform over the rows that are neither zero nor a signal.
        let row = loop {
            let r = random_row(&mut rng, b);
            if r.iter().any(|&x| x != 0) && !lookup.contains(r.as_slice()) {
                break r;
            }
        };
        data.extend_from_slice(&row);
    }
    let num_targets = cfg.num_targets();
    for bag in 0..num_targets {
        let mut positions: Vec<usize> = Vec::with_capacity(cfg.num_signals_per_bag);
        for _ in 0..cfg.num_signals_per_bag {
            let pos = loop {
                let p = rng.random_range(0..l);
                if !positions.contains(&p) {
                    break p;
                }
            };
            positions.push(pos);
            let signal = &signals[rng.random_range(0..signals.len())];
            let start = (bag * l + pos) * b;
            data[start..start + b].copy_from_slice(signal);
        }
    }
    let targets = (0..cfg.num_bags)
        .map(|i| u8::from(i < num_targets))
        .collect();
    (data, targets)
}

fn to_tensor(v: Vec<u8>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = v.into_iter().map(f32::from).collect();
    Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
}

impl BitPatternSet {
    /// Generates the set as `f32` tensors on `device`.
    pub fn new(config: &BitPatternConfig, device: &Device) -> Result<Self> {
        Self::with_dtype(config, DType::F32, device)
    }

    /// Generates the set with tensors of `dtype` (0/1 values are exact in every float dtype).
    pub fn with_dtype(config: &BitPatternConfig, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let signals = generate_signals(config);
        let (bags, targets) = generate_bags(config, &signals);
        let (n, l, b) = (config.num_bags, config.num_instances, config.num_bits);
        Ok(Self {
            bags: to_tensor(bags, &[n, l, b], dtype, device)?,
            targets: to_tensor(targets, &[n], dtype, device)?,
            signals: to_tensor(signals.concat(), &[config.num_signals, b], dtype, device)?,
            config: config.clone(),
        })
    }

    /// The parameters the set was generated with.
    pub fn config(&self) -> &BitPatternConfig {
        &self.config
    }

    /// All bags, `(num_bags, num_instances, num_bits)`.
    pub fn bags(&self) -> &Tensor {
        &self.bags
    }

    /// Targets (1 = positive), `(num_bags,)`.
    pub fn targets(&self) -> &Tensor {
        &self.targets
    }

    /// The signal patterns, `(num_signals, num_bits)`.
    pub fn signals(&self) -> &Tensor {
        &self.signals
    }

    /// Bag `i` `(num_instances, num_bits)` and its scalar target.
    pub fn get(&self, i: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.bags.get(i)?, self.targets.get(i)?))
    }

    /// Number of bags.
    pub fn len(&self) -> usize {
        self.config.num_bags
    }

    /// Always false (a set has at least one bag).
    pub fn is_empty(&self) -> bool {
        self.config.num_bags == 0
    }

    /// Number of bags.
    pub fn num_bags(&self) -> usize {
        self.config.num_bags
    }

    /// Instances per bag.
    pub fn num_instances(&self) -> usize {
        self.config.num_instances
    }

    /// Bits per instance.
    pub fn num_bits(&self) -> usize {
        self.config.num_bits
    }

    /// Number of positive bags (the first ones).
    pub fn num_targets_high(&self) -> usize {
        self.config.num_targets()
    }

    /// Number of negative bags.
    pub fn num_targets_low(&self) -> usize {
        self.config.num_bags - self.config.num_targets()
    }

    /// Number of signal patterns.
    pub fn num_signals(&self) -> usize {
        self.config.num_signals
    }

    /// Signals per positive bag.
    pub fn num_signals_per_bag(&self) -> usize {
        self.config.num_signals_per_bag
    }
}

/// Parameters of [`LatchSequenceSet`], hflayers' `LatchSequenceSet` arguments with the same
/// defaults (20 instances, 6 characters, seed 43); `Default` has 4096 samples.
///
/// ```
/// use hopfield_examples::data::LatchSequenceConfig;
/// let cfg = LatchSequenceConfig::new(4096).with_num_instances(32).with_num_characters(20);
/// assert!(cfg.validate().is_ok());
/// assert!(cfg.with_num_characters(2).validate().is_err()); // no room for noise tokens
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LatchSequenceConfig {
    /// Number of sequences.
    pub num_samples: usize,
    /// Sequence length (default 20).
    pub num_instances: usize,
    /// Alphabet size = one-hot width (default 6): 0 and 1 are the signal, the rest noise.
    pub num_characters: usize,
    /// Seed (default 43).
    pub seed: u64,
}

impl Default for LatchSequenceConfig {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl LatchSequenceConfig {
    /// hflayers' defaults for everything but `num_samples`.
    pub fn new(num_samples: usize) -> Self {
        Self {
            num_samples,
            num_instances: 20,
            num_characters: 6,
            seed: 43,
        }
    }

    /// Sets `num_instances`.
    pub fn with_num_instances(mut self, v: usize) -> Self {
        self.num_instances = v;
        self
    }

    /// Sets `num_characters`.
    pub fn with_num_characters(mut self, v: usize) -> Self {
        self.num_characters = v;
        self
    }

    /// Sets `seed`.
    pub fn with_seed(mut self, v: u64) -> Self {
        self.seed = v;
        self
    }

    /// Checks the sizes. Stricter than hflayers on `num_characters`: hflayers accepts 1 or 2
    /// and then fails inside `torch.randint(2, num_characters)`.
    pub fn validate(&self) -> std::result::Result<(), HopfieldError> {
        if self.num_samples == 0 {
            return Err(config_error("num_samples", "must be >= 1"));
        }
        if self.num_instances == 0 {
            return Err(config_error("num_instances", "must be >= 1"));
        }
        if self.num_characters < 3 {
            return Err(config_error(
                "num_characters",
                format!(
                    "{} < 3: characters 0 and 1 are the signal, noise needs at least one more",
                    self.num_characters
                ),
            ));
        }
        Ok(())
    }
}

/// hflayers' `LatchSequenceSet`: one-hot sequences `(num_samples, num_instances,
/// num_characters)`; token 0 is the target (0 or 1, uniform), the other tokens are uniform over
/// `2..num_characters`.
///
/// ```
/// use candle_core::Device;
/// use hopfield_examples::data::{LatchSequenceConfig, LatchSequenceSet};
/// let set = LatchSequenceSet::new(&LatchSequenceConfig::new(8), &Device::Cpu)?;
/// assert_eq!(set.data().dims(), &[8, 20, 6]);
/// // The first one-hot row is [1-t, t, 0, 0, 0, 0] for target t.
/// let first = set.data().narrow(1, 0, 1)?.squeeze(1)?.narrow(1, 1, 1)?.squeeze(1)?;
/// assert_eq!(first.to_vec1::<f32>()?, set.targets().to_vec1::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LatchSequenceSet {
    config: LatchSequenceConfig,
    data: Tensor,
    targets: Tensor,
}

impl LatchSequenceSet {
    /// Generates the set as `f32` tensors on `device`.
    pub fn new(config: &LatchSequenceConfig, device: &Device) -> Result<Self> {
        Self::with_dtype(config, DType::F32, device)
    }

    /// Generates the set with tensors of `dtype`.
    pub fn with_dtype(config: &LatchSequenceConfig, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let (n, l, c) = (
            config.num_samples,
            config.num_instances,
            config.num_characters,
        );
        let mut rng = StdRng::seed_from_u64(config.seed);
        // Same draw order as hflayers: all noise tokens, then the signals.
        let mut tokens: Vec<usize> = (0..n * l).map(|_| rng.random_range(2..c)).collect();
        let signals: Vec<u8> = (0..n).map(|_| rng.random_range(0..2u8)).collect();
        for (i, &s) in signals.iter().enumerate() {
            tokens[i * l] = usize::from(s);
        }
        let mut one_hot = vec![0u8; n * l * c];
        for (i, &t) in tokens.iter().enumerate() {
            one_hot[i * c + t] = 1;
        }
        Ok(Self {
            data: to_tensor(one_hot, &[n, l, c], dtype, device)?,
            targets: to_tensor(signals, &[n], dtype, device)?,
            config: config.clone(),
        })
    }

    /// The parameters the set was generated with.
    pub fn config(&self) -> &LatchSequenceConfig {
        &self.config
    }

    /// One-hot sequences, `(num_samples, num_instances, num_characters)`.
    pub fn data(&self) -> &Tensor {
        &self.data
    }

    /// Targets (the first token), `(num_samples,)`.
    pub fn targets(&self) -> &Tensor {
        &self.targets
    }

    /// Sample `i` `(num_instances, num_characters)` and its scalar target.
    pub fn get(&self, i: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.data.get(i)?, self.targets.get(i)?))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.config.num_samples
    }

    /// Always false (a set has at least one sample).
    pub fn is_empty(&self) -> bool {
        self.config.num_samples == 0
    }

    /// Number of samples.
    pub fn num_samples(&self) -> usize {
        self.config.num_samples
    }

    /// Sequence length.
    pub fn num_instances(&self) -> usize {
        self.config.num_instances
    }

    /// One-hot width.
    pub fn num_characters(&self) -> usize {
        self.config.num_characters
    }

    /// The seed.
    pub fn initial_seed(&self) -> u64 {
        self.config.seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<u8>> {
        t.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|x| x as u8).collect())
            .collect()
    }

    #[test]
    fn bit_patterns_positives_hold_exactly_their_signals() -> Result<()> {
        let cfg = BitPatternConfig::new(200, 16, 8).with_num_signals_per_bag(2);
        let set = BitPatternSet::new(&cfg, &Device::Cpu)?;
        assert_eq!((set.num_targets_high(), set.num_targets_low()), (100, 100));
        let signals: HashSet<Vec<u8>> = rows(set.signals()).into_iter().collect();
        assert_eq!(signals.len(), 8);
        assert!(signals.iter().all(|s| s.contains(&1)));
        let targets = set.targets().to_vec1::<f32>()?;
        for (i, &t) in targets.iter().enumerate() {
            let bag = rows(&set.bags().get(i)?);
            let hits = bag.iter().filter(|r| signals.contains(*r)).count();
            assert_eq!(hits, if i < 100 { 2 } else { 0 }, "bag {i}");
            assert_eq!(t, if i < 100 { 1.0 } else { 0.0 });
            assert!(bag.iter().all(|r| r.contains(&1)), "zero row in bag {i}");
        }
        Ok(())
    }

    #[test]
    fn bit_patterns_signals_sorted_and_seeded() -> Result<()> {
        let cfg = BitPatternConfig::new(20, 4, 5).with_num_bits(3);
        let a = BitPatternSet::new(&cfg, &Device::Cpu)?;
        let b = BitPatternSet::new(&cfg, &Device::Cpu)?;
        let s = rows(a.signals());
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.bags().to_vec3::<f32>()?, b.bags().to_vec3::<f32>()?);
        let c = BitPatternSet::new(&cfg.clone().with_seed_data(7), &Device::Cpu)?;
        assert_eq!(rows(c.signals()), s);
        assert_ne!(a.bags().to_vec3::<f32>()?, c.bags().to_vec3::<f32>()?);
        Ok(())
    }

    #[test]
    fn bit_patterns_target_counts_round_up() {
        let cfg = BitPatternConfig::new(7, 2, 1).with_fraction_targets(0.3);
        assert_eq!(cfg.num_targets(), 3); // ceil(2.1)
        assert_eq!(cfg.with_fraction_targets(0.01).num_targets(), 1); // at least one
    }

    #[test]
    fn bit_patterns_reject_bad_configs() {
        let field = |c: BitPatternConfig| match c.validate() {
            Err(HopfieldError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = BitPatternConfig::new(10, 4, 3);
        assert_eq!(field(base.clone().with_num_bits(2)), "num_signals");
        assert_eq!(
            field(base.clone().with_num_signals_per_bag(5)),
            "num_signals_per_bag"
        );
        assert_eq!(
            field(base.clone().with_fraction_targets(1.0)),
            "fraction_targets"
        );
        assert_eq!(field(BitPatternConfig::new(0, 4, 3)), "num_bags");
        assert!(base.with_num_bits(3).validate().is_ok()); // 3 < 7
        let err = BitPatternSet::new(&BitPatternConfig::new(1, 1, 300), &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("num_signals"), "{err}");
    }

    #[test]
    fn latch_first_position_is_target() -> Result<()> {
        let cfg = LatchSequenceConfig::new(300)
            .with_num_instances(32)
            .with_num_characters(20);
        let set = LatchSequenceSet::with_dtype(&cfg, DType::F64, &Device::Cpu)?;
        assert_eq!(set.data().dims(), &[300, 32, 20]);
        let data = set.data().to_vec3::<f64>()?;
        let targets = set.targets().to_vec1::<f64>()?;
        let positives = targets.iter().filter(|&&t| t == 1.0).count();
        assert!((100..200).contains(&positives), "{positives}");
        for (seq, &t) in data.iter().zip(&targets) {
            assert_eq!(&seq[0][..2], &[1.0 - t, t]);
            assert_eq!(seq[0][2..].iter().sum::<f64>(), 0.0);
            for tok in &seq[1..] {
                assert_eq!(tok.iter().sum::<f64>(), 1.0);
                assert_eq!(
                    tok[0] + tok[1],
                    0.0,
                    "noise never uses the signal characters"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn latch_rejects_small_alphabets() {
        let err = LatchSequenceSet::new(
            &LatchSequenceConfig::new(4).with_num_characters(2),
            &Device::Cpu,
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_characters"), "{err}");
    }
}
