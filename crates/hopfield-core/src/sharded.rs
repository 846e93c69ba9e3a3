//! A memory of stored patterns split into P shards, each on its own device (or CPU thread),
//! retrieved from as if it were one.
//!
//! Softmax retrieval over a memory split along its patterns is exactly recoverable from each
//! shard's log-sum-exp `lse_p` and output `out_p = softmax_p(beta q K_p^T) V_p` per query row:
//!
//! ```text
//! m   = max_p lse_p                         (all-reduce max, a stabiliser without gradient)
//! w_p = exp(lse_p - m)                      (shard p's share of the normaliser, rescaled)
//! out = sum_p w_p out_p / sum_p w_p         (one reduce of [w_p out_p | w_p])
//! lse = m + log sum_p w_p
//! ```
//!
//! which is the single memory's `softmax(beta q K^T) V` and its lse, to rounding. The shards run
//! the fused retrieval ([`hopfield_cuda::retrieval::retrieve_with_lse`]) in parallel, and the
//! merge is candle ops, so the whole is differentiable. Its backward is exact and local: the
//! merge hands shard p `d out_p = (w_p / sum w) d out` and `d lse_p` such that the shard's
//! FlashAttention backward, which recomputes the association from `lse_p`, works with
//! `exp(s - lse_p) w_p / sum w = exp(s - lse)`: the global association. So each shard computes its
//! own `dK_p`, `dV_p` and its part of `dq` from the global normaliser, and the `dq` parts add up.
//!
//! The maximum `m` needs no gradient: `out` and `lse` do not depend on it (`w_p` and `sum_p w_p`
//! both carry the factor `exp(-m)`, which cancels in `out`, and in `lse` the `m` outside the
//! log cancels the `-m` inside: `lse = log sum_p exp(lse_p)`), so
//! their derivatives along `m` are zero and a stop-gradient is exact; the unit tests check the
//! invariance by shifting `m`.
//!
//! Across ranks (one process or thread per shard, `NcclCommunicator` under the
//! `nccl` feature, [`ThreadCommunicator`] on a CPU), the collectives carry the gradients too:
//! the transpose of the query broadcast is a reduce-sum of the ranks' `dq` to rank 0, that of
//! the all-reduce of `[w_p out_p | w_p]` an all-reduce of its gradients. The gradients are those
//! of the sum of the ranks' losses: every rank runs `backward` on a loss built the same way
//! from its (identical) output, weighted so that the weights add up to 1 (`1/P` everywhere, or
//! 1 on rank 0 and 0 elsewhere), because every rank must run the same transposed collectives in
//! the same order. A zero weight must be a tensor (`loss.broadcast_mul(&zero)`), not `loss *
//! 0.0`: candle drops a multiplication by the constant 0 from the backward pass, and with it
//! that rank's part in the collectives, which the other ranks then wait for.
//!
//! What moves between devices per retrieval is the queries, one value per query row and head
//! (the maxima), and `pd + 1` values per query row and head (the partial sums): O(L d P), not
//! O(S); the backward pass moves the same sizes back. `docs/sharded-memory.md` has the byte
//! model and its measurement by [`CountingCommunicator`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use hopfield_core::sharded::ShardedMemory;
//! use hopfield_cuda::retrieval::{retrieve_with_lse, Retrieval};
//! let dev = Device::Cpu;
//! let keys = Tensor::randn(0f64, 1., (1, 100, 2, 8), &dev)?;   // (N, S, H, hd)
//! let values = Tensor::randn(0f64, 1., (1, 100, 2, 4), &dev)?; // (N, S, H, pd)
//! let memory = ShardedMemory::split(&keys, &values, 4, &[dev.clone()])?;
//! let q = Tensor::randn(0f64, 1., (1, 5, 2, 8), &dev)?;        // (N, L, H, hd)
//! let cfg = Retrieval::new(0.5);
//! let (out, lse) = memory.retrieve_with_lse(&q, &cfg)?;
//! let (one, one_lse) = retrieve_with_lse(&q, &keys, &values, &cfg)?;
//! assert!((out - one)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
//! assert!((lse - one_lse)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod autograd;
mod communicator;
mod error;
#[cfg(feature = "nccl")]
mod nccl;
mod threads;

pub use autograd::with_gradient;
pub use communicator::{Communicator, CountingCommunicator, LocalCommunicator, Traffic};
pub use error::ShardError;
#[cfg(feature = "nccl")]
pub use nccl::NcclCommunicator;
pub use threads::ThreadCommunicator;

use candle_core::{DType, Device, Result, Tensor};
use hopfield_cuda::retrieval::{retrieve_with_lse, Retrieval};
use rayon::prelude::*;
use std::sync::Arc;

/// One shard: its stored patterns (keys) `(N, S_p, H, hd)` and pattern projections (values)
/// `(N, S_p, H, pd)`, both on the shard's device.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Keys `(N, S_p, H, hd)`.
    pub keys: Tensor,
    /// Values `(N, S_p, H, pd)`.
    pub values: Tensor,
}

impl Shard {
    /// The shard's device.
    pub fn device(&self) -> &Device {
        self.keys.device()
    }

    /// Its number of stored patterns `S_p`.
    pub fn len(&self) -> usize {
        self.keys.dims().get(1).copied().unwrap_or(0)
    }

    /// Whether it holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The sizes every shard shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    n: usize,
    h: usize,
    hd: usize,
    pd: usize,
}

/// A memory of stored patterns split into shards, retrieved from as one (see the module docs).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::sharded::{CountingCommunicator, LocalCommunicator, ShardedMemory};
/// use hopfield_cuda::retrieval::Retrieval;
/// use std::sync::Arc;
/// let dev = Device::Cpu;
/// let keys = Tensor::randn(0f32, 1., (1, 1000, 1, 16), &dev)?;
/// let comm = Arc::new(CountingCommunicator::new(LocalCommunicator));
/// let memory = ShardedMemory::split(&keys, &keys, 4, &[dev.clone()])?.with_communicator(comm.clone());
/// let q = Tensor::randn(0f32, 1., (1, 32, 1, 16), &dev)?;
/// let out = memory.retrieve(&q, &Retrieval::new(0.25))?;
/// assert_eq!(out.dims(), &[1, 32, 1, 16]);
/// assert!(comm.traffic().total() > 0);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone)]
pub struct ShardedMemory {
    shards: Vec<Shard>,
    dims: Dims,
    dtype: DType,
    comm: Arc<dyn Communicator>,
}

impl std::fmt::Debug for ShardedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedMemory")
            .field(
                "shards",
                &self.shards.iter().map(Shard::len).collect::<Vec<_>>(),
            )
            .field("dims", &self.dims)
            .field("dtype", &self.dtype)
            .finish()
    }
}

fn shape_err(shard: usize, arg: &'static str, expected: String, t: &Tensor) -> candle_core::Error {
    ShardError::Shape {
        shard,
        arg,
        expected,
        got: t.dims().to_vec(),
    }
    .into()
}

impl ShardedMemory {
    /// A memory of these shards, checked: keys and values of every shard 4-D, sharing `N`, `H`,
    /// `hd`, `pd` and a float dtype, each shard's two tensors on one device. Retrieval uses the
    /// [`LocalCommunicator`] until [`with_communicator`](Self::with_communicator).
    pub fn new(shards: Vec<Shard>) -> Result<Self> {
        let first = shards.first().ok_or(ShardError::NoShards)?;
        let (n, _, h, hd) = first
            .keys
            .dims4()
            .map_err(|_| shape_err(0, "keys", "(N, S_p, H, hd)".into(), &first.keys))?;
        let pd = first
            .values
            .dims4()
            .map_err(|_| shape_err(0, "values", "(N, S_p, H, pd)".into(), &first.values))?
            .3;
        let dims = Dims { n, h, hd, pd };
        let dtype = first.keys.dtype();
        for (i, s) in shards.iter().enumerate() {
            let ok = |t: &Tensor, d: usize| {
                t.dims4()
                    .is_ok_and(|(tn, ts, th, td)| (tn, ts, th, td) == (n, s.len(), h, d))
            };
            if !ok(&s.keys, hd) {
                let want = format!("(N, S_p, H, hd) = ({n}, S_p, {h}, {hd}) as shard 0");
                return Err(shape_err(i, "keys", want, &s.keys));
            }
            if !ok(&s.values, pd) {
                let want = format!("(N, S_p, H, pd) = ({n}, {}, {h}, {pd})", s.len());
                return Err(shape_err(i, "values", want, &s.values));
            }
            for (arg, t) in [("keys", &s.keys), ("values", &s.values)] {
                if t.dtype() != dtype || !dtype.is_float() {
                    return Err(ShardError::Dtype {
                        shard: i,
                        arg,
                        expected: format!("a float dtype, the same in every shard ({dtype:?})"),
                        got: format!("{:?}", t.dtype()),
                    }
                    .into());
                }
            }
            if !s.keys.device().same_device(s.values.device()) {
                return Err(ShardError::Device {
                    shard: i,
                    keys: format!("{:?}", s.keys.device().location()),
                    values: format!("{:?}", s.values.device().location()),
                }
                .into());
            }
        }
        Ok(Self {
            shards,
            dims,
            dtype,
            comm: Arc::new(LocalCommunicator),
        })
    }

    /// Splits one memory, keys `(N, S, H, hd)` and values `(N, S, H, pd)`, along its patterns
    /// into `parts` shards of near-equal size (the first `S % parts` one pattern larger), shard
    /// `p` moved to `devices[p]`, or all to `devices[0]` when one device is given. A shard on
    /// the memory's own device is a view of it (no copy); one elsewhere receives its rows only.
    pub fn split(keys: &Tensor, values: &Tensor, parts: usize, devices: &[Device]) -> Result<Self> {
        if parts == 0 {
            return Err(ShardError::NoShards.into());
        }
        if devices.is_empty() || (devices.len() != 1 && devices.len() != parts) {
            return Err(ShardError::Devices {
                shards: parts,
                devices: devices.len(),
            }
            .into());
        }
        let s = keys
            .dims4()
            .map_err(|_| shape_err(0, "keys", "(N, S, H, hd)".into(), keys))?
            .1;
        if values.dims4().map(|d| d.1).ok() != Some(s) {
            return Err(shape_err(0, "values", format!("(N, {s}, H, pd)"), values));
        }
        let mut shards = Vec::with_capacity(parts);
        let mut from = 0;
        for p in 0..parts {
            let len = s / parts + usize::from(p < s % parts);
            let dev = &devices[p.min(devices.len() - 1)];
            // On the source's device a shard is a view; elsewhere only its own rows travel
            // (candle's `to_device` of a view copies the whole underlying buffer).
            let place = |t: &Tensor| -> Result<Tensor> {
                let part = t.narrow(1, from, len)?;
                if part.device().same_device(dev) {
                    Ok(part)
                } else {
                    part.force_contiguous()?.to_device(dev)
                }
            };
            shards.push(Shard {
                keys: place(keys)?,
                values: place(values)?,
            });
            from += len;
        }
        Self::new(shards)
    }

    /// The same shards, their collectives run by `comm`.
    pub fn with_communicator(mut self, comm: Arc<dyn Communicator>) -> Self {
        self.comm = comm;
        self
    }

    /// The shards.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Stored patterns over all shards, `S`.
    pub fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    /// Whether no shard holds a pattern.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory's dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `softmax(beta q K^T + mask) V` over the whole memory, `(N, L, H, pd)` on the queries'
    /// device: [`retrieve_with_lse`](Self::retrieve_with_lse) without the lse.
    pub fn retrieve(&self, q: &Tensor, cfg: &Retrieval) -> Result<Tensor> {
        Ok(self.retrieve_with_lse(q, cfg)?.0)
    }

    /// The retrieval of queries `q` `(N, L, H, hd)` from the whole memory and the log-sum-exp of
    /// each query row, `(N, H, L)`, both on the queries' device and differentiable with respect
    /// to the queries and every shard's keys and values: the same values (to rounding) as
    /// [`hopfield_cuda::retrieval::retrieve_with_lse`] on the concatenated memory. `cfg` is that
    /// of the single memory: its mask is broadcastable to `(N, H, L, S)` over all `S` patterns
    /// (each shard gets its columns), and the zero pattern of `zero_association` is counted
    /// once. Shards run in parallel (rayon). Across ranks (a communicator with
    /// [`world_size`](Communicator::world_size) > 1) the memory is this rank's shard, so the
    /// mask covers its own patterns, and rank 0's `q` is retrieved (see the module docs for the
    /// backward pass).
    pub fn retrieve_with_lse(&self, q: &Tensor, cfg: &Retrieval) -> Result<(Tensor, Tensor)> {
        let Dims { n, h, hd, pd } = self.dims;
        let (qn, l, qh, qd) = q.dims4().map_err(|_| {
            shape_err(
                0,
                "queries",
                format!("(N, L, H, hd) = ({n}, L, {h}, {hd})"),
                q,
            )
        })?;
        if (qn, qh, qd) != (n, h, hd) {
            let want = format!("(N, L, H, hd) = ({n}, L, {h}, {hd}), the memory's");
            return Err(shape_err(0, "queries", want, q));
        }
        if q.dtype() != self.dtype {
            return Err(ShardError::Dtype {
                shard: 0,
                arg: "queries",
                expected: format!("{:?}, the memory's", self.dtype),
                got: format!("{:?}", q.dtype()),
            }
            .into());
        }
        let s = self.len();
        let mask = match &cfg.mask {
            Some(m) => Some(m.detach().broadcast_as((n, h, l, s)).map_err(|_| {
                shape_err(
                    0,
                    "mask",
                    format!("broadcastable to (N, H, L, S) = ({n}, {h}, {l}, {s})"),
                    m,
                )
            })?),
            None => None,
        };
        let devices: Vec<Device> = self.shards.iter().map(|s| s.device().clone()).collect();
        let queries = self.comm.broadcast(q, &devices)?;
        let mut offsets = Vec::with_capacity(self.shards.len());
        let mut from = 0;
        for sh in &self.shards {
            offsets.push(from);
            from += sh.len();
        }
        let zero_rank = self.comm.rank() == 0;
        let parts: Vec<(Tensor, Tensor)> = self
            .shards
            .par_iter()
            .zip(queries.par_iter())
            .zip(offsets.par_iter())
            .enumerate()
            .map(|(p, ((sh, qp), &off))| {
                let mask = match &mask {
                    Some(m) => Some(m.narrow(3, off, sh.len())?.to_device(sh.device())?),
                    None => None,
                };
                // The zero pattern belongs to one shard, so it is counted once.
                let cfg_p = Retrieval {
                    beta: cfg.beta.clone(),
                    mask,
                    zero_association: cfg.zero_association && p == 0 && zero_rank,
                };
                retrieve_with_lse(qp, &sh.keys, &sh.values, &cfg_p)
            })
            .collect::<Result<_>>()?;
        merge(&*self.comm, &parts, q.device(), (n, l, h, pd))
    }
}

/// The exact merge of the shards' `(out_p, lse_p)` (module docs), on `root`.
fn merge(
    comm: &dyn Communicator,
    parts: &[(Tensor, Tensor)],
    root: &Device,
    (n, l, h, pd): (usize, usize, usize, usize),
) -> Result<(Tensor, Tensor)> {
    let lses: Vec<Tensor> = parts.iter().map(|(_, lse)| lse.clone()).collect();
    let maxima = comm.all_reduce_max(&lses)?;
    let mut partial = Vec::with_capacity(parts.len());
    for ((out, lse), m) in parts.iter().zip(&maxima) {
        // A row that no shard has a pattern for has m = -inf; any finite stand-in leaves its
        // weights exp(-inf - m) = 0.
        let m = m.ne(f64::NEG_INFINITY)?.where_cond(m, &m.zeros_like()?)?;
        let w = (lse - m)?.exp()?.transpose(1, 2)?.unsqueeze(3)?; // (N, L, H, 1)
        partial.push(Tensor::cat(&[&out.broadcast_mul(&w)?, &w], 3)?);
    }
    let total = comm.reduce_sum(&partial, root)?; // (N, L, H, pd + 1)
    let num = total.narrow(3, 0, pd)?;
    let den = total.narrow(3, pd, 1)?;
    let some = den.gt(0.0)?;
    let safe = some.where_cond(&den, &den.ones_like()?)?;
    let out = num.broadcast_div(&safe)?;
    let den = den.squeeze(3)?.transpose(1, 2)?; // (N, H, L)
    let some = some.squeeze(3)?.transpose(1, 2)?;
    let m = maxima[0].to_device(root)?;
    let m = m.ne(f64::NEG_INFINITY)?.where_cond(&m, &m.zeros_like()?)?;
    let lse = (some.where_cond(&den, &den.ones_like()?)?.log()? + m)?;
    let ninf = Tensor::full(f64::NEG_INFINITY, (n, h, l), root)?.to_dtype(lse.dtype())?;
    let lse = some.where_cond(&lse, &ninf)?;
    Ok((out, lse))
}

#[cfg(test)]
mod tests;
