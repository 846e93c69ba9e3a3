//! The fused retrieval path (`hopfield_core_output`) against the explicit association path
//! (`hopfield_core_forward`) on randomized shapes, heads, betas, masks and options: the same
//! outputs and the same gradients for inputs and weights, with and without iterated update steps
//! (whose fused form tests convergence on the association change computed from log-sum-exps).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use hopfield_core::{
    hopfield_core_forward, hopfield_core_output, CoreConfig, CoreLayout, CoreWeights, Masks,
    OnNoConvergence, Scaling, StepsEps, UpdateSteps,
};

/// A small seeded generator (candle's CPU RNG cannot be seeded).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let len: usize = shape.iter().product();
        let v: Vec<f64> = (0..len)
            .map(|_| self.next() as f64 / (1u64 << 31) as f64 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn fused_and_explicit_paths_agree_on_random_cases() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Lcg(7);
    for case in 0..60 {
        let heads = [1, 2, 4][rng.pick(3)];
        let hd = [2, 4, 8][rng.pick(3)];
        let e = heads * hd;
        let (n, l, s) = (1 + rng.pick(3), 1 + rng.pick(9), 1 + rng.pick(80));
        let map = VarMap::new();
        let w = CoreWeights::load(
            CoreLayout::new(e, heads),
            VarBuilder::from_varmap(&map, DType::F64, &dev),
        )?;
        for var in map.all_vars() {
            var.set(&(rng.tensor(var.dims()) * 0.7)?)?;
        }
        let scaling = if rng.pick(2) == 0 {
            Scaling::Scalar(0.2 + rng.pick(10) as f64 * 0.3)
        } else {
            Scaling::PerHead((0..heads).map(|h| 0.5 + h as f64).collect())
        };
        // Update steps: none, a fixed budget, per head (one until convergence), or until
        // convergence with a cap; a coarse eps lets some pairs stop early while others go on.
        let steps = match rng.pick(5) {
            0 | 1 => UpdateSteps::Max(0),
            2 => UpdateSteps::Max(1 + rng.pick(3)),
            3 => UpdateSteps::PerHead((0..heads).map(|h| (h > 0).then_some(h)).collect()),
            _ => UpdateSteps::UntilConvergence,
        };
        let eps = [1e-4, 0.05][rng.pick(2)];
        let cfg = CoreConfig::default()
            .with_scaling(scaling)
            .with_add_zero_association(rng.pick(2) == 0)
            .with_normalize_pattern(rng.pick(3) == 0)
            .with_update_steps_max(steps)
            .with_update_steps_eps(StepsEps::Scalar(eps))
            .with_max_convergence_steps(6)
            .with_on_no_convergence(OnNoConvergence::Stop);
        let q = Var::from_tensor(&rng.tensor(&[n, l, e]))?;
        let k = Var::from_tensor(&rng.tensor(&[n, s, e]))?;
        let v = Var::from_tensor(&rng.tensor(&[n, s, e]))?;
        // Padding (boolean, u8) and association masks (boolean 2-D, or additive float 3-D).
        let pad: Vec<u8> = (0..n * s).map(|_| u8::from(rng.pick(4) == 0)).collect();
        let pad = Tensor::from_vec(pad, (n, s), &dev)?;
        let assoc = match rng.pick(3) {
            0 => None,
            1 => Some(Tensor::from_vec(
                (0..l * s)
                    .map(|_| u8::from(rng.pick(5) == 0))
                    .collect::<Vec<u8>>(),
                (l, s),
                &dev,
            )?),
            _ => Some(rng.tensor(&[n * heads, l, s]).ge(0.8)?.where_cond(
                &Tensor::full(f64::NEG_INFINITY, (n * heads, l, s), &dev)?,
                &(rng.tensor(&[n * heads, l, s]) * 0.3)?,
            )?),
        };
        let masks = Masks {
            stored_pattern_padding_mask: (rng.pick(2) == 0).then_some(&pad),
            association_mask: assoc.as_ref(),
        };
        let cot = rng.tensor(&[n, l, e]);
        let run = |fused: bool| -> Result<(Tensor, Vec<Tensor>)> {
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let y = if fused {
                hopfield_core_output(qt, kt, vt, &w, &cfg, masks, false)?
            } else {
                hopfield_core_forward(qt, kt, vt, &w, &cfg, masks, false)?.output
            };
            let g = (&y * &cot)?.sum_all()?.backward()?;
            let mut grads = vec![];
            for t in [qt, kt, vt] {
                grads.push(g.get(t).unwrap().clone());
            }
            for var in map.all_vars() {
                grads.push(g.get(var.as_tensor()).unwrap().clone());
            }
            Ok((y, grads))
        };
        let (yf, gf) = run(true)?;
        let (ye, ge) = run(false)?;
        assert!(
            max_diff(&yf, &ye) < 1e-12,
            "case {case}: output {}",
            max_diff(&yf, &ye)
        );
        for (i, (a, b)) in gf.iter().zip(&ge).enumerate() {
            let scale = 1.0 + b.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(
                max_diff(a, b) < 1e-10 * scale,
                "case {case}: gradient {i}: {}",
                max_diff(a, b)
            );
        }
    }
    Ok(())
}
