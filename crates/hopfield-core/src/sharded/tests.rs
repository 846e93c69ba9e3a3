use super::*;
use candle_core::Var;
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use rstest::rstest;

fn normal(rng: &mut StdRng, dims: &[usize]) -> Result<Tensor> {
    let n = dims.iter().product::<usize>();
    let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn max_abs(t: &Tensor) -> Result<f64> {
    if t.elem_count() == 0 {
        return Ok(0.0);
    }
    t.to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

/// `-inf` entries replaced by 0, so differences of lse tensors are finite where both agree.
fn finite(t: &Tensor) -> Result<Tensor> {
    t.ne(f64::NEG_INFINITY)?.where_cond(t, &t.zeros_like()?)
}

/// Shard sizes summing to `s` (some possibly 0).
fn sizes(rng: &mut StdRng, s: usize, parts: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..parts - 1).map(|_| rng.random_range(0..=s)).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(parts);
    let mut prev = 0;
    for c in cuts.into_iter().chain([s]) {
        out.push(c - prev);
        prev = c;
    }
    out
}

struct Case {
    q: Var,
    keys: Vec<Var>,
    values: Vec<Var>,
    cfg: Retrieval,
}

fn case(
    seed: u64,
    (n, l, s, h, hd, pd): (usize, usize, usize, usize, usize, usize),
    parts: usize,
    masked: bool,
    zero: bool,
) -> Result<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let q = Var::from_tensor(&normal(&mut rng, &[n, l, h, hd])?)?;
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for len in sizes(&mut rng, s, parts) {
        keys.push(Var::from_tensor(&normal(&mut rng, &[n, len, h, hd])?)?);
        values.push(Var::from_tensor(&normal(&mut rng, &[n, len, h, pd])?)?);
    }
    let betas: Vec<f64> = (0..h).map(|_| rng.random_range(0.05..4.0)).collect();
    let mask = if masked {
        // Additive: -inf for about a third, finite biases elsewhere, the first row fully masked.
        let mut v: Vec<f64> = (0..n * h * l * s)
            .map(|_| {
                if rng.random::<f64>() < 0.33 {
                    f64::NEG_INFINITY
                } else {
                    rng.random_range(-1.0..1.0)
                }
            })
            .collect();
        v[..s].iter_mut().for_each(|x| *x = f64::NEG_INFINITY);
        Some(Tensor::from_vec(v, (n, h, l, s), &Device::Cpu)?)
    } else {
        None
    };
    let cfg = Retrieval::new(1.0)
        .with_head_betas(betas)
        .with_mask(mask)
        .with_zero_association(zero);
    Ok(Case {
        q,
        keys,
        values,
        cfg,
    })
}

/// Sharded against single memory: output, lse and the gradients of a loss through both with
/// respect to the queries and every shard's keys and values.
fn check_against_single(c: &Case, tol: f64) -> Result<()> {
    let shards: Vec<Shard> = c
        .keys
        .iter()
        .zip(&c.values)
        .map(|(k, v)| Shard {
            keys: k.as_tensor().clone(),
            values: v.as_tensor().clone(),
        })
        .collect();
    let memory = ShardedMemory::new(shards)?;
    let (out, lse) = memory.retrieve_with_lse(c.q.as_tensor(), &c.cfg)?;
    let k = Tensor::cat(&c.keys.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(), 1)?;
    let v = Tensor::cat(
        &c.values.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(),
        1,
    )?;
    let (one, one_lse) = retrieve_with_lse(c.q.as_tensor(), &k, &v, &c.cfg)?;
    assert!(
        max_abs(&(&out - &one)?)? < tol,
        "output {}",
        max_abs(&(&out - &one)?)?
    );
    assert_eq!(
        lse.eq(f64::NEG_INFINITY)?.to_vec3::<u8>()?,
        one_lse.eq(f64::NEG_INFINITY)?.to_vec3::<u8>()?
    );
    assert!(max_abs(&(finite(&lse)? - finite(&one_lse)?)?)? < tol);
    // A loss that weighs every output and (finite) lse entry differently.
    let mut rng = StdRng::seed_from_u64(99);
    let wo = normal(&mut rng, out.dims())?.to_dtype(out.dtype())?;
    let wl = normal(&mut rng, lse.dims())?.to_dtype(out.dtype())?;
    let loss = |o: &Tensor, l: &Tensor| -> Result<Tensor> {
        (o * &wo)?.sum_all()? + (finite(l)? * &wl)?.sum_all()?
    };
    let g = loss(&out, &lse)?.backward()?;
    let g1 = loss(&one, &one_lse)?.backward()?;
    let vars = std::iter::once(&c.q).chain(&c.keys).chain(&c.values);
    for var in vars {
        match (g.get(var), g1.get(var)) {
            (Some(a), Some(b)) => {
                let d = max_abs(&(a - b)?)?;
                assert!(
                    d < tol * 10.0,
                    "gradient of {:?} differs by {d}",
                    var.dims()
                );
            }
            (None, None) => {}
            (a, b) => assert!(
                a.or(b).map_or(Ok(0.0), max_abs)? == 0.0,
                "a gradient missing on one side for {:?}",
                var.dims()
            ),
        }
    }
    Ok(())
}

#[rstest]
#[case::one_shard(1, (1, 3, 7, 1, 4, 2), 1, false, false)]
#[case::two(2, (2, 4, 9, 2, 3, 5), 2, false, false)]
#[case::masked(3, (2, 5, 12, 2, 4, 3), 3, true, false)]
#[case::zero_pattern(4, (1, 2, 8, 3, 2, 2), 4, false, true)]
#[case::masked_zero(5, (3, 3, 10, 1, 5, 4), 5, true, true)]
#[case::empty_shards(6, (1, 4, 3, 2, 3, 3), 6, true, false)]
fn sharded_equals_single_memory(
    #[case] seed: u64,
    #[case] dims: (usize, usize, usize, usize, usize, usize),
    #[case] parts: usize,
    #[case] masked: bool,
    #[case] zero: bool,
) -> Result<()> {
    check_against_single(&case(seed, dims, parts, masked, zero)?, 1e-12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sharded_equals_single_memory_random(
        seed in 0u64..1_000_000,
        n in 1usize..3, l in 1usize..5, s in 0usize..20, h in 1usize..3,
        hd in 1usize..6, pd in 1usize..6, parts in 1usize..6,
        masked: bool, zero: bool,
    ) {
        let c = case(seed, (n, l, s, h, hd, pd), parts, masked, zero).unwrap();
        check_against_single(&c, 1e-11).unwrap();
    }
}

#[test]
fn f32_matches_to_float_tolerance() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(21);
    let k = normal(&mut rng, &[1, 500, 2, 16])?.to_dtype(DType::F32)?;
    let v = normal(&mut rng, &[1, 500, 2, 8])?.to_dtype(DType::F32)?;
    let q = normal(&mut rng, &[1, 40, 2, 16])?.to_dtype(DType::F32)?;
    let cfg = Retrieval::new(0.5);
    let memory = ShardedMemory::split(&k, &v, 4, &[Device::Cpu])?;
    let out = memory.retrieve(&q, &cfg)?;
    let one = hopfield_cuda::retrieval::retrieve(&q, &k, &v, &cfg)?;
    assert!(max_abs(&(out - one)?)? < 1e-5);
    Ok(())
}

/// The bytes a retrieval moves depend on the queries and P, not on the memory's size: for
/// N L H rows, `(P-1) N L H (hd + 2 + pd + 1) b` (broadcast, all-reduce max, reduce).
#[test]
fn traffic_is_independent_of_memory_size() -> Result<()> {
    let (n, l, h, hd, pd) = (1, 16, 2, 8, 4);
    let mut rng = StdRng::seed_from_u64(5);
    let q = normal(&mut rng, &[n, l, h, hd])?.to_dtype(DType::F32)?;
    for parts in 1..=4usize {
        let mut seen = Vec::new();
        for s in [64, 640] {
            let k = normal(&mut rng, &[n, s, h, hd])?.to_dtype(DType::F32)?;
            let v = normal(&mut rng, &[n, s, h, pd])?.to_dtype(DType::F32)?;
            let comm = Arc::new(CountingCommunicator::new(LocalCommunicator));
            let memory = ShardedMemory::split(&k, &v, parts, &[Device::Cpu])?
                .with_communicator(comm.clone());
            memory.retrieve(&q, &Retrieval::new(1.0))?;
            seen.push(comm.traffic());
        }
        assert_eq!(seen[0], seen[1]);
        let rows = (parts as u64 - 1) * (n * l * h) as u64 * 4;
        assert_eq!(seen[0].broadcast, rows * hd as u64);
        assert_eq!(seen[0].max, rows * 2);
        assert_eq!(seen[0].sum, rows * (pd as u64 + 1));
    }
    Ok(())
}

#[test]
fn bad_shards_and_queries_are_typed_errors() -> Result<()> {
    let dev = Device::Cpu;
    let z = |d: &[usize], t: DType| Tensor::zeros(d, t, &dev);
    let err = |r: Result<ShardedMemory>| {
        let e = r.unwrap_err();
        (ShardError::find(&e).cloned(), e.to_string())
    };
    assert_eq!(
        err(ShardedMemory::new(vec![])).0,
        Some(ShardError::NoShards)
    );
    let good = Shard {
        keys: z(&[1, 3, 2, 4], DType::F32)?,
        values: z(&[1, 3, 2, 5], DType::F32)?,
    };
    let wrong_hd = Shard {
        keys: z(&[1, 2, 2, 3], DType::F32)?,
        values: z(&[1, 2, 2, 5], DType::F32)?,
    };
    let (e, msg) = err(ShardedMemory::new(vec![good.clone(), wrong_hd]));
    assert!(
        matches!(
            e,
            Some(ShardError::Shape {
                shard: 1,
                arg: "keys",
                ..
            })
        ),
        "{msg}"
    );
    assert!(msg.contains("[1, 2, 2, 3]"));
    let wrong_s = Shard {
        keys: z(&[1, 2, 2, 4], DType::F32)?,
        values: z(&[1, 3, 2, 5], DType::F32)?,
    };
    let (e, _) = err(ShardedMemory::new(vec![good.clone(), wrong_s]));
    assert!(matches!(
        e,
        Some(ShardError::Shape {
            shard: 1,
            arg: "values",
            ..
        })
    ));
    let f64_shard = Shard {
        keys: z(&[1, 2, 2, 4], DType::F64)?,
        values: z(&[1, 2, 2, 5], DType::F64)?,
    };
    let (e, _) = err(ShardedMemory::new(vec![good.clone(), f64_shard]));
    assert!(matches!(e, Some(ShardError::Dtype { shard: 1, .. })));
    let ints = Shard {
        keys: z(&[1, 2, 2, 4], DType::U32)?,
        values: z(&[1, 2, 2, 5], DType::U32)?,
    };
    assert!(matches!(
        err(ShardedMemory::new(vec![ints])).0,
        Some(ShardError::Dtype { .. })
    ));
    let k = z(&[1, 8, 2, 4], DType::F32)?;
    let (e, _) = err(ShardedMemory::split(&k, &k, 3, &[dev.clone(), dev.clone()]));
    assert!(matches!(
        e,
        Some(ShardError::Devices {
            shards: 3,
            devices: 2
        })
    ));
    let (e, _) = err(ShardedMemory::split(
        &k,
        &k.narrow(1, 0, 7)?,
        2,
        std::slice::from_ref(&dev),
    ));
    assert!(matches!(e, Some(ShardError::Shape { arg: "values", .. })));

    let memory = ShardedMemory::new(vec![good])?;
    let cfg = Retrieval::new(1.0);
    let q_err = |q: &Tensor, cfg: &Retrieval| memory.retrieve(q, cfg).unwrap_err().to_string();
    assert!(q_err(&z(&[1, 5, 2, 3], DType::F32)?, &cfg).contains("queries"));
    assert!(q_err(&z(&[1, 5, 2, 4], DType::F64)?, &cfg).contains("F64"));
    let bad_mask = cfg.clone().with_mask(Some(z(&[4, 4], DType::F32)?));
    assert!(q_err(&z(&[1, 5, 2, 4], DType::F32)?, &bad_mask).contains("mask"));
    // What the kernel checks (beta) stays its typed error.
    let bad_beta = Retrieval::new(1.0).with_head_betas(vec![1.0; 3]);
    assert!(q_err(&z(&[1, 5, 2, 4], DType::F32)?, &bad_beta).contains("beta"));
    Ok(())
}
