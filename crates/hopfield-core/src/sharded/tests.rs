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

impl Case {
    /// The case's stored patterns as one memory of its shards.
    fn memory(&self) -> Result<ShardedMemory> {
        let shards = self.keys.iter().zip(&self.values).map(|(k, v)| Shard {
            keys: k.as_tensor().clone(),
            values: v.as_tensor().clone(),
        });
        ShardedMemory::new(shards.collect())
    }
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
    let memory = c.memory()?;
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

/// One rank's results: output, lse, the loss it ran backward on and its gradients (the
/// queries' on rank 0 only).
struct RankRun {
    out: Tensor,
    lse: Tensor,
    loss: f64,
    dq: Option<Tensor>,
    dk: Option<Tensor>,
    dv: Option<Tensor>,
}

/// The loss every test weighs: each output and (finite) lse entry by its own fixed weight.
fn weighted_loss(out: &Tensor, lse: &Tensor) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(99);
    let wo = normal(&mut rng, out.dims())?.to_dtype(out.dtype())?;
    let wl = normal(&mut rng, lse.dims())?.to_dtype(out.dtype())?;
    (out * &wo)?.sum_all()? + (finite(lse)? * &wl)?.sum_all()?
}

/// Runs the case's shards as ranks, one thread each holding only its own shard (and its mask
/// columns), rank 0 the queries and the others a zero buffer; rank r runs backward on
/// `weights[r]` times the loss. `comms` are the ranks' communicators.
fn run_ranks(c: &Case, weights: &[f64], comms: Vec<Arc<dyn Communicator>>) -> Result<Vec<RankRun>> {
    let mut offsets = vec![0];
    for k in &c.keys {
        offsets.push(offsets.last().unwrap() + k.dims()[1]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                let offsets = &offsets;
                scope.spawn(move || -> Result<RankRun> {
                    let (k, v) = (c.keys[r].as_tensor(), c.values[r].as_tensor());
                    let shard = Shard {
                        keys: k.clone(),
                        values: v.clone(),
                    };
                    let memory = ShardedMemory::new(vec![shard])?.with_communicator(comm);
                    let q = if r == 0 {
                        c.q.as_tensor().clone()
                    } else {
                        c.q.zeros_like()?
                    };
                    let mut cfg = c.cfg.clone();
                    cfg.mask = match &c.cfg.mask {
                        Some(m) => Some(m.narrow(3, offsets[r], k.dims()[1])?),
                        None => None,
                    };
                    let (out, lse) = memory.retrieve_with_lse(&q, &cfg)?;
                    // A weight tensor, not `loss * w`: candle drops a multiplication by the
                    // constant 0 from the backward pass, and this rank's transposed
                    // collectives with it.
                    let w = Tensor::new(weights[r], &Device::Cpu)?;
                    let loss = weighted_loss(&out, &lse)?.broadcast_mul(&w)?;
                    let g = loss.backward()?;
                    Ok(RankRun {
                        loss: loss.to_scalar::<f64>()?,
                        dq: if r == 0 { g.get(&c.q).cloned() } else { None },
                        dk: g.get(k).cloned(),
                        dv: g.get(v).cloned(),
                        out,
                        lse,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank panicked"))
            .collect()
    })
}

fn thread_comms(p: usize) -> Vec<Arc<dyn Communicator>> {
    ThreadCommunicator::group(p)
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Communicator>)
        .collect()
}

/// Weights of the ranks' losses adding up to 1: rank 0 only, or random.
fn rank_weights(rng: &mut StdRng, p: usize, root_only: bool) -> Vec<f64> {
    if root_only {
        return (0..p).map(|r| f64::from(u8::from(r == 0))).collect();
    }
    let w: Vec<f64> = (0..p).map(|_| rng.random_range(0.1..1.0)).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|x| x / sum).collect()
}

/// A gradient that candle left out is a zero one.
fn diff_or_zero(a: Option<&Tensor>, b: Option<&Tensor>) -> Result<f64> {
    match (a, b) {
        (Some(a), Some(b)) => max_abs(&(a - b)?),
        (a, b) => a.or(b).map_or(Ok(0.0), max_abs),
    }
}

/// Ranks as threads against the single memory: every rank's output and lse, every rank's
/// `dK_p`, `dV_p` and the root's `dq`.
fn check_ranks_against_single(c: &Case, weights: &[f64], tol: f64) -> Result<()> {
    let runs = run_ranks(c, weights, thread_comms(c.keys.len()))?;
    let k = Tensor::cat(&c.keys.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(), 1)?;
    let v = Tensor::cat(
        &c.values.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(),
        1,
    )?;
    let (one, one_lse) = retrieve_with_lse(c.q.as_tensor(), &k, &v, &c.cfg)?;
    let g1 = weighted_loss(&one, &one_lse)?.backward()?;
    for (r, run) in runs.iter().enumerate() {
        let d = max_abs(&(&run.out - &one)?)?;
        assert!(d < tol, "rank {r}: output differs by {d}");
        assert_eq!(
            run.lse.eq(f64::NEG_INFINITY)?.to_vec3::<u8>()?,
            one_lse.eq(f64::NEG_INFINITY)?.to_vec3::<u8>()?
        );
        assert!(max_abs(&(finite(&run.lse)? - finite(&one_lse)?)?)? < tol);
        let dk = diff_or_zero(run.dk.as_ref(), g1.get(&c.keys[r]))?;
        let dv = diff_or_zero(run.dv.as_ref(), g1.get(&c.values[r]))?;
        assert!(dk < tol * 10.0, "rank {r}: dK differs by {dk}");
        assert!(dv < tol * 10.0, "rank {r}: dV differs by {dv}");
    }
    let dq = diff_or_zero(runs[0].dq.as_ref(), g1.get(&c.q))?;
    assert!(dq < tol * 10.0, "root's dq differs by {dq}");
    Ok(())
}

#[rstest]
#[case::one_rank(11, (1, 3, 7, 1, 4, 2), 1, false, false, true)]
#[case::two(12, (2, 4, 9, 2, 3, 5), 2, false, false, true)]
#[case::masked(13, (2, 5, 12, 2, 4, 3), 3, true, false, false)]
#[case::zero_pattern(14, (1, 2, 8, 3, 2, 2), 4, false, true, false)]
#[case::masked_zero(15, (3, 3, 10, 1, 5, 4), 5, true, true, true)]
#[case::empty_shards(16, (1, 4, 3, 2, 3, 3), 6, true, false, false)]
fn ranks_as_threads_equal_single_memory(
    #[case] seed: u64,
    #[case] dims: (usize, usize, usize, usize, usize, usize),
    #[case] parts: usize,
    #[case] masked: bool,
    #[case] zero: bool,
    #[case] root_only: bool,
) -> Result<()> {
    let c = case(seed, dims, parts, masked, zero)?;
    let w = rank_weights(&mut StdRng::seed_from_u64(seed), parts, root_only);
    check_ranks_against_single(&c, &w, 1e-12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn ranks_as_threads_equal_single_memory_random(
        seed in 0u64..1_000_000,
        n in 1usize..3, l in 1usize..5, s in 0usize..20, h in 1usize..3,
        hd in 1usize..6, pd in 1usize..6, parts in 1usize..6,
        masked: bool, zero: bool, root_only: bool,
    ) {
        let c = case(seed, (n, l, s, h, hd, pd), parts, masked, zero).unwrap();
        let w = rank_weights(&mut StdRng::seed_from_u64(seed), parts, root_only);
        check_ranks_against_single(&c, &w, 1e-11).unwrap();
    }
}

/// The ranks' gradients against central finite differences of the sum of the ranks' losses,
/// every coordinate of the queries, keys and values of a small masked case with the zero
/// pattern.
#[test]
fn rank_gradients_match_finite_differences() -> Result<()> {
    let c = case(31, (1, 3, 7, 2, 2, 2), 3, true, true)?;
    let w = [0.5, 0.2, 0.3];
    let total = |c: &Case| -> Result<f64> {
        Ok(run_ranks(c, &w, thread_comms(3))?
            .iter()
            .map(|r| r.loss)
            .sum())
    };
    let runs = run_ranks(&c, &w, thread_comms(3))?;
    // (which tensor, its analytic gradient): 0 the queries, 1 + r rank r's keys, 4 + r values.
    let mut analytic = vec![runs[0].dq.clone()];
    analytic.extend(runs.iter().map(|r| r.dk.clone()));
    analytic.extend(runs.iter().map(|r| r.dv.clone()));
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for (which, grad) in analytic.iter().enumerate() {
        let var = match which {
            0 => &c.q,
            i if i <= 3 => &c.keys[i - 1],
            i => &c.values[i - 4],
        };
        let base = var.flatten_all()?.to_vec1::<f64>()?;
        let grad = match grad {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => vec![0.0; base.len()],
        };
        for i in 0..base.len() {
            let mut fd = [0.0; 2];
            for (j, sign) in [1.0, -1.0].into_iter().enumerate() {
                let mut x = base.clone();
                x[i] += sign * eps;
                let t = Var::from_tensor(&Tensor::from_vec(x, var.dims(), &Device::Cpu)?)?;
                let mut d = Case {
                    q: c.q.clone(),
                    keys: c.keys.clone(),
                    values: c.values.clone(),
                    cfg: c.cfg.clone(),
                };
                match which {
                    0 => d.q = t,
                    i if i <= 3 => d.keys[i - 1] = t,
                    i => d.values[i - 4] = t,
                }
                fd[j] = total(&d)?;
            }
            let fd = (fd[0] - fd[1]) / (2.0 * eps);
            worst = worst.max((fd - grad[i]).abs() / (1.0 + fd.abs()));
        }
    }
    assert!(worst < 1e-7, "finite differences differ by {worst}");
    Ok(())
}

/// A communicator whose row maxima are shifted by a fixed amount.
struct Shifted(f64);

impl Communicator for Shifted {
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        LocalCommunicator.broadcast(x, devices)
    }
    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>> {
        LocalCommunicator
            .all_reduce_max(parts)?
            .iter()
            .map(|m| m + self.0)
            .collect()
    }
    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor> {
        LocalCommunicator.reduce_sum(parts, root)
    }
    fn broadcast_backward(&self, grads: &[Tensor], root: &Device) -> Result<Tensor> {
        LocalCommunicator.broadcast_backward(grads, root)
    }
    fn reduce_sum_backward(&self, grad: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        LocalCommunicator.reduce_sum_backward(grad, devices)
    }
}

/// The merge does not depend on the maxima (they only shift the exponents), which is why the
/// all-reduce max carries no gradient: shifting them leaves output, lse and gradients alone.
#[rstest]
#[case(-20.0)]
#[case(-1.5)]
#[case(3.0)]
#[case(20.0)]
fn merge_is_invariant_to_the_maxima(#[case] shift: f64) -> Result<()> {
    let c = case(41, (2, 4, 12, 2, 3, 3), 3, true, true)?;
    let memory = c.memory()?;
    let run = |comm: Arc<dyn Communicator>| -> Result<(Tensor, Tensor, Vec<Option<Tensor>>)> {
        let (out, lse) = memory
            .clone()
            .with_communicator(comm)
            .retrieve_with_lse(c.q.as_tensor(), &c.cfg)?;
        let g = weighted_loss(&out, &lse)?.backward()?;
        let vars = std::iter::once(&c.q).chain(&c.keys).chain(&c.values);
        let grads = vars.map(|v| g.get(v).cloned()).collect();
        Ok((out, lse, grads))
    };
    let (out, lse, g) = run(Arc::new(LocalCommunicator))?;
    let (out_s, lse_s, g_s) = run(Arc::new(Shifted(shift)))?;
    assert!(max_abs(&(out - out_s)?)? < 1e-12);
    assert!(max_abs(&(finite(&lse)? - finite(&lse_s)?)?)? < 1e-12);
    for (a, b) in g.iter().zip(&g_s) {
        assert!(diff_or_zero(a.as_ref(), b.as_ref())? < 1e-11);
    }
    Ok(())
}

/// The bytes of a forward and backward pass, in one process and across ranks, against the
/// model: with `R = N L H` rows and `b` bytes per element, the broadcast and its transpose
/// move `(P-1) R hd b` each, the maxima `2 (P-1) R b`, the partial sums and their gradients
/// `(P-1) R (pd+1) b` each in one process (a reduce, a broadcast) and twice that across ranks
/// (all-reduces).
#[test]
fn backward_traffic_follows_the_model() -> Result<()> {
    let (n, l, s, h, hd, pd, p) = (1, 6, 24, 2, 4, 3, 4);
    let c = case(51, (n, l, s, h, hd, pd), p, false, false)?;
    let rows = (p as u64 - 1) * (n * l * h) as u64 * 8;
    let model = |across: u64| Traffic {
        broadcast: rows * hd as u64,
        max: 2 * rows,
        sum: across * rows * (pd as u64 + 1),
        broadcast_grad: rows * hd as u64,
        sum_grad: across * rows * (pd as u64 + 1),
    };
    // In one process.
    let comm = Arc::new(CountingCommunicator::new(LocalCommunicator));
    let memory = c.memory()?.with_communicator(comm.clone());
    let (out, lse) = memory.retrieve_with_lse(c.q.as_tensor(), &c.cfg)?;
    assert_eq!(comm.traffic().backward(), 0);
    weighted_loss(&out, &lse)?.backward()?;
    assert_eq!(comm.traffic(), model(1));
    // Across ranks: every rank's counter counts the whole collectives.
    let counters: Vec<_> = ThreadCommunicator::group(p)
        .into_iter()
        .map(|t| Arc::new(CountingCommunicator::new(t)))
        .collect();
    let comms = counters
        .iter()
        .map(|c| c.clone() as Arc<dyn Communicator>)
        .collect();
    run_ranks(&c, &[1.0, 0.0, 0.0, 0.0], comms)?;
    for counter in &counters {
        assert_eq!(counter.traffic(), model(2));
    }
    Ok(())
}

#[test]
fn thread_ranks_that_disagree_get_typed_errors() -> Result<()> {
    // Different shapes at one collective: the same error on every rank.
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadCommunicator::group(3)
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                s.spawn(move || {
                    let x = Tensor::zeros(1 + usize::from(r == 2), DType::F32, &Device::Cpu)?;
                    comm.reduce_sum(&[x], &Device::Cpu)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().unwrap_err().to_string())
            .collect()
    });
    assert!(errs
        .iter()
        .all(|e| e.contains("threads") && e.contains("rank")));
    // A rank alone at a collective gives up after the timeout.
    let mut group = ThreadCommunicator::group_with_timeout(2, std::time::Duration::from_millis(50));
    let lone = group.remove(0);
    let x = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
    let e = lone.all_reduce_max(std::slice::from_ref(&x)).unwrap_err();
    assert!(matches!(
        ShardError::find(&e),
        Some(ShardError::Communicator {
            name: "threads",
            ..
        })
    ));
    // More than one part per rank is refused.
    let e = lone.all_reduce_max(&[x.clone(), x]).unwrap_err();
    assert!(e.to_string().contains("one part per rank"));
    Ok(())
}
