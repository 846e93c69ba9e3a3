use super::*;
use candle_core::{Device, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use rstest::rstest;

fn normal(rng: &mut StdRng, dims: &[usize]) -> Result<Tensor> {
    let n = dims.iter().product::<usize>();
    let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn max_abs(t: &Tensor) -> Result<f64> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// A random boolean padding mask `(N, S)` (u8, 1 = masked) with about a third masked, and
/// optionally one sample fully masked.
fn padding(rng: &mut StdRng, n: usize, s: usize, full_row: bool) -> Result<Tensor> {
    let mut v: Vec<u8> = (0..n * s)
        .map(|_| u8::from(rng.random::<f64>() < 0.33))
        .collect();
    if full_row {
        v[..s].iter_mut().for_each(|x| *x = 1);
    }
    Tensor::from_vec(v, (n, s), &Device::Cpu)
}

#[test]
fn hand_computed_tiny_case() -> Result<()> {
    // X = (+1, -1) in one dimension, xi = 1, beta = 1:
    // E = -log(e + 1/e) + 1/2 + log 2 + 1/2; dE/dxi = 1 - tanh(1).
    let x = Tensor::new(&[[[[1f64], [-1.]]]], &Device::Cpu)?;
    let xi = Tensor::new(&[[[[1f64]]]], &Device::Cpu)?;
    let spec = EnergySpec::new(1.0);
    let e = values(&hopfield_energy(&xi, &x, &spec, Masks::default())?)?[0];
    let expected = -(1f64.exp() + (-1f64).exp()).ln() + 1.0 + 2f64.ln();
    assert!((e - expected).abs() < 1e-14, "{e} vs {expected}");
    let g = values(&hopfield_energy_grad(&xi, &x, &spec, Masks::default())?)?[0];
    assert!((g - (1.0 - 1f64.tanh())).abs() < 1e-14);
    // With the zero pattern: lse = log(e + 1/e + 1), S' = 3.
    let z = spec.clone().with_zero_association(true);
    let e = values(&hopfield_energy(&xi, &x, &z, Masks::default())?)?[0];
    let expected = -(1f64.exp() + (-1f64).exp() + 1.0).ln() + 1.0 + 3f64.ln();
    assert!((e - expected).abs() < 1e-14, "{e} vs {expected}");
    Ok(())
}

/// Random states, patterns, betas, masks and zero patterns: one update never increases E, and
/// the energy is never below 0 (no additive biases) nor NaN.
#[rstest]
#[case(1, (1, 1, 1, 1, 1), 1.0, false, false)]
#[case(2, (2, 3, 4, 7, 5), 0.5, false, false)]
#[case(3, (2, 2, 5, 9, 8), 4.0, true, false)]
#[case(4, (3, 1, 2, 6, 3), 16.0, true, true)]
#[case(5, (1, 4, 3, 20, 16), 0.1, false, true)]
#[case(6, (2, 2, 6, 33, 4), 64.0, true, true)]
fn update_is_a_descent_step(
    #[values(
        Association::Softmax,
        Association::Sparsemax,
        Association::Entmax15,
        Association::Entmax(1.3)
    )]
    association: Association,
    #[case] seed: u64,
    #[case] (n, h, l, s, d): (usize, usize, usize, usize, usize),
    #[case] beta: f64,
    #[case] masked: bool,
    #[case] zero: bool,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = normal(&mut rng, &[n, h, s, d])?;
    let mut xi = (normal(&mut rng, &[n, h, l, d])? * 2.0)?;
    let betas: Vec<f64> = (0..h).map(|i| beta * (1.0 + i as f64)).collect();
    let spec = EnergySpec::new(1.0)
        .with_head_betas(betas)
        .with_zero_association(zero)
        .with_association(association);
    let pad = padding(&mut rng, n, s, masked && n > 1)?;
    let masks = Masks {
        stored_pattern_padding_mask: masked.then_some(&pad),
        association_mask: None,
    };
    let mut e = hopfield_energy(&xi, &x, &spec, masks)?;
    for _ in 0..4 {
        let v = values(&e)?;
        assert!(v.iter().all(|e| e.is_finite() && *e >= -1e-12), "{v:?}");
        xi = hopfield_update(&xi, &x, &spec, masks)?;
        let next = hopfield_energy(&xi, &x, &spec, masks)?;
        let rise = (next.clone() - &e)?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(rise <= 1e-10, "energy rose by {rise}");
        e = next;
    }
    Ok(())
}

/// The closed-form gradient, candle's autograd through the energy and central finite
/// differences agree (f64), with masks, per-head betas and the zero pattern.
#[rstest]
#[case(11, false, false)]
#[case(12, true, false)]
#[case(13, true, true)]
#[case(14, false, true)]
fn gradient_matches_autograd_and_finite_differences(
    #[values(
        Association::Softmax,
        Association::Sparsemax,
        Association::Entmax15,
        Association::Entmax(1.3),
        Association::EntmaxPerHead(vec![1.2, 2.0])
    )]
    association: Association,
    #[case] seed: u64,
    #[case] masked: bool,
    #[case] zero: bool,
) -> Result<()> {
    let (n, h, l, s, d) = (2, 2, 3, 5, 4);
    let mut rng = StdRng::seed_from_u64(seed);
    let x = normal(&mut rng, &[n, h, s, d])?;
    let xi0 = normal(&mut rng, &[n, h, l, d])?;
    let spec = EnergySpec::new(1.0)
        .with_head_betas(vec![0.7, 2.5])
        .with_zero_association(zero)
        .with_association(association);
    // An association mask per (sample, head) row, some rows fully masked.
    let mut am: Vec<u8> = (0..n * h * l * s)
        .map(|_| u8::from(rng.random::<f64>() < 0.3))
        .collect();
    am[..s].iter_mut().for_each(|m| *m = 1);
    let am = Tensor::from_vec(am, (n * h, l, s), &Device::Cpu)?;
    let masks = Masks {
        stored_pattern_padding_mask: None,
        association_mask: masked.then_some(&am),
    };
    let closed = hopfield_energy_grad(&xi0, &x, &spec, masks)?;
    let var = Var::from_tensor(&xi0)?;
    let e = hopfield_energy(var.as_tensor(), &x, &spec, masks)?;
    let grads = e.sum_all()?.backward()?;
    let auto = grads.get(&var).expect("gradient of the state");
    let d = max_abs(&(auto - &closed)?)?;
    assert!(d < 1e-10, "autograd vs closed form {d}");
    // Finite differences of the summed energy, every coordinate.
    let base = values(&xi0)?;
    let g = values(&closed)?;
    let step = 1e-6;
    for i in 0..base.len() {
        let at = |delta: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] += delta;
            let t = Tensor::from_vec(v, xi0.shape(), &Device::Cpu)?;
            hopfield_energy(&t, &x, &spec, masks)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let fd = (at(step)? - at(-step)?) / (2.0 * step);
        assert!(
            (fd - g[i]).abs() < 1e-7,
            "coordinate {i}: fd {fd} vs {}",
            g[i]
        );
    }
    Ok(())
}

#[test]
fn fully_masked_row_has_finite_energy_and_retrieves_zero() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let x = normal(&mut rng, &[1, 1, 4, 3])?;
    let xi = normal(&mut rng, &[1, 1, 2, 3])?;
    let pad = Tensor::new(&[[1u8, 1, 1, 1]], &Device::Cpu)?;
    let masks = Masks {
        stored_pattern_padding_mask: Some(&pad),
        association_mask: None,
    };
    let spec = EnergySpec::new(2.0);
    let e = values(&hopfield_energy(&xi, &x, &spec, masks)?)?;
    let m2 = values(&x.sqr()?.sum(D::Minus1)?.max(D::Minus1)?)?[0];
    let half: Vec<f64> = values(&(xi.sqr()?.sum(D::Minus1)? * 0.5)?)?;
    for (e, h) in e.iter().zip(&half) {
        assert!((e - (h + 0.5 * m2)).abs() < 1e-14);
    }
    assert_eq!(max_abs(&hopfield_update(&xi, &x, &spec, masks)?)?, 0.0);
    Ok(())
}

#[test]
fn masking_a_pattern_is_removing_it() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(8);
    let x = normal(&mut rng, &[1, 2, 5, 3])?;
    let xi = normal(&mut rng, &[1, 2, 4, 3])?;
    let pad = Tensor::new(&[[0u8, 0, 0, 0, 1]], &Device::Cpu)?;
    let masks = Masks {
        stored_pattern_padding_mask: Some(&pad),
        association_mask: None,
    };
    let spec = EnergySpec::new(1.5);
    let masked = hopfield_energy(&xi, &x, &spec, masks)?;
    // M is over all patterns of the (sample, head): add its difference back.
    let kept = x.narrow(2, 0, 4)?;
    let m2 = |t: &Tensor| -> Result<Tensor> { t.sqr()?.sum(D::Minus1)?.max_keepdim(D::Minus1) };
    let removed = hopfield_energy(&xi, &kept, &spec, Masks::default())?
        .broadcast_add(&((m2(&x)? - m2(&kept)?)? * 0.5)?)?;
    assert!(max_abs(&(masked - removed)?)? < 1e-13);
    Ok(())
}

/// With well-separated patterns and a large beta, each stored pattern is (nearly) a fixed
/// point and a local minimum: its gradient vanishes and small perturbations raise E.
#[test]
fn stored_patterns_are_minima_at_large_beta() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(9);
    let (s, d) = (6, 32);
    let x = normal(&mut rng, &[1, 1, s, d])?;
    let x = x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?; // unit norm
    let spec = EnergySpec::new(64.0);
    let e0 = values(&hopfield_energy(&x, &x, &spec, Masks::default())?)?;
    let g = hopfield_energy_grad(&x, &x, &spec, Masks::default())?;
    assert!(
        max_abs(&g)? < 1e-6,
        "gradient at the stored patterns {}",
        max_abs(&g)?
    );
    for _ in 0..8 {
        let moved = (&x + (normal(&mut rng, &[1, 1, s, d])? * 0.02)?)?;
        let e = values(&hopfield_energy(&moved, &x, &spec, Masks::default())?)?;
        assert!(e.iter().zip(&e0).all(|(e, e0)| e > e0));
    }
    Ok(())
}

#[test]
fn works_in_f32() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(10);
    let x = normal(&mut rng, &[2, 2, 6, 4])?;
    let xi = normal(&mut rng, &[2, 2, 3, 4])?;
    let spec = EnergySpec::new(1.0);
    let e64 = hopfield_energy(&xi, &x, &spec, Masks::default())?;
    let e32 = hopfield_energy(
        &xi.to_dtype(DType::F32)?,
        &x.to_dtype(DType::F32)?,
        &spec,
        Masks::default(),
    )?;
    assert_eq!(e32.dtype(), DType::F32);
    assert!(max_abs(&(e32.to_dtype(DType::F64)? - e64)?)? < 1e-5);
    Ok(())
}

#[test]
fn bad_input_is_a_typed_error() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 5, 4), DType::F64, &dev)?;
    let xi = Tensor::zeros((1, 2, 3, 4), DType::F64, &dev)?;
    let spec = EnergySpec::new(1.0);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let wrong_d = Tensor::zeros((1, 2, 3, 5), DType::F64, &dev)?;
    assert!(err(hopfield_energy(&wrong_d, &x, &spec, Masks::default())).contains("[1, 2, 3, 5]"));
    assert!(err(hopfield_energy(
        &xi.squeeze(0)?,
        &x,
        &spec,
        Masks::default()
    ))
    .contains("(N, H, L, d)"));
    let x32 = x.to_dtype(DType::F32)?;
    assert!(err(hopfield_energy(&xi, &x32, &spec, Masks::default())).contains("F32"));
    for b in [0.0, -1.0, f64::NAN] {
        assert!(err(hopfield_energy(
            &xi,
            &x,
            &EnergySpec::new(b),
            Masks::default()
        ))
        .contains("beta"));
    }
    let three = EnergySpec::new(1.0).with_head_betas(vec![1.0; 3]);
    assert!(err(hopfield_energy(&xi, &x, &three, Masks::default())).contains("one value per head"));
    let nan = (xi.clone() * f64::NAN)?;
    assert!(err(hopfield_energy(&nan, &x, &spec, Masks::default())).contains("non-finite"));
    let pad = Tensor::zeros((1, 4), DType::U8, &dev)?;
    let masks = Masks {
        stored_pattern_padding_mask: Some(&pad),
        association_mask: None,
    };
    assert!(err(hopfield_energy(&xi, &x, &spec, masks)).contains("stored_pattern_padding_mask"));
    Ok(())
}

#[test]
fn sparsemax_hand_computed_values() -> Result<()> {
    // X = (+1, -1), beta = 1. At xi = 0: p = (1/2, 1/2), Omega* = 0 + (1 - 1/2)/2 = 1/4, the
    // largest entropy over 2 patterns is 1/4 as well: E = 1/2 M^2 = 1/2. At xi = 1: z = (1, -1),
    // p = (1, 0), Omega* = 1: E = -1 + 1/4 + 1/2 + 1/2 = 1/4, and the gradient 1 - 1 = 0.
    let x = Tensor::new(&[[[[1f64], [-1.]]]], &Device::Cpu)?;
    let spec = EnergySpec::new(1.0).with_association(Association::Sparsemax);
    for (xi, e, g) in [(0.0, 0.5, 0.0), (1.0, 0.25, 0.0), (0.25, 0.0, 0.0)] {
        let t = Tensor::new(&[[[[xi]]]], &Device::Cpu)?;
        let energy = values(&hopfield_energy(&t, &x, &spec, Masks::default())?)?[0];
        let grad = values(&hopfield_energy_grad(&t, &x, &spec, Masks::default())?)?[0];
        if xi == 0.25 {
            // z = (1/4, -1/4): p = (3/4, 1/4); Omega* = 1/8 + (1 - 10/16)/2 = 5/16;
            // E = -5/16 + 1/4 + 1/32 + 1/2; gradient 1/4 - (3/4 - 1/4).
            let want = -5.0 / 16.0 + 0.25 + 1.0 / 32.0 + 0.5;
            assert!((energy - want).abs() < 1e-14, "{energy} vs {want}");
            assert!((grad - (0.25 - 0.5)).abs() < 1e-14);
        } else {
            assert!((energy - e).abs() < 1e-14, "xi {xi}: {energy} vs {e}");
            assert!((grad - g).abs() < 1e-14);
        }
    }
    Ok(())
}

/// alpha-entmax's energy tends to the softmax energy as alpha -> 1 (every term does).
#[test]
fn entmax_energy_tends_to_softmax_energy() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(12);
    let x = normal(&mut rng, &[2, 2, 7, 4])?;
    let xi = normal(&mut rng, &[2, 2, 3, 4])?;
    let spec = EnergySpec::new(0.8).with_zero_association(true);
    let soft = hopfield_energy(&xi, &x, &spec, Masks::default())?;
    let near = spec
        .clone()
        .with_association(Association::Entmax(1.0 + 1e-6));
    let near = hopfield_energy(&xi, &x, &near, Masks::default())?;
    let d = max_abs(&(near - soft)?)?;
    assert!(d < 1e-4, "{d}");
    Ok(())
}

#[test]
fn bad_alpha_is_a_typed_error() -> Result<()> {
    let x = Tensor::zeros((1, 2, 5, 4), DType::F64, &Device::Cpu)?;
    let spec = EnergySpec::new(1.0).with_association(Association::Entmax(2.5));
    let e = hopfield_energy(&x, &x, &spec, Masks::default()).unwrap_err();
    assert!(e.to_string().contains("alpha"), "{e}");
    let spec = EnergySpec::new(1.0).with_association(Association::EntmaxPerHead(vec![1.5]));
    let e = hopfield_update(&x, &x, &spec, Masks::default()).unwrap_err();
    assert!(e.to_string().contains("per head"), "{e}");
    Ok(())
}
