//! The collectives a sharded retrieval needs, behind one trait: broadcast the queries to the
//! shards, all-reduce the row maxima of the shards' log-sum-exps, reduce the rescaled partial
//! sums to the queries' device. [`LocalCommunicator`] does it with candle's device copies (CPU
//! threads, or GPUs of one process); [`CountingCommunicator`] wraps any communicator and counts
//! the bytes an NCCL-style ring would move for each call, which is what
//! `docs/sharded-memory.md` measures.

use candle_core::{Device, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// The collectives of a sharded retrieval. Every method keeps candle's autograd intact (the
/// partial sums' gradient flows back to each shard), except [`all_reduce_max`]
/// (Self::all_reduce_max), whose result is only a stabiliser and carries no gradient.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::sharded::{Communicator, LocalCommunicator};
/// let parts = [Tensor::new(&[1f32, 5.], &Device::Cpu)?, Tensor::new(&[3f32, 2.], &Device::Cpu)?];
/// let comm = LocalCommunicator;
/// let max = comm.all_reduce_max(&parts)?;
/// assert_eq!(max[1].to_vec1::<f32>()?, vec![3., 5.]);
/// let sum = comm.reduce_sum(&parts, &Device::Cpu)?;
/// assert_eq!(sum.to_vec1::<f32>()?, vec![4., 7.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait Communicator: Send + Sync {
    /// A copy of `x` on each of `devices`, in order.
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>>;

    /// The element-wise maximum of `parts` (one per shard, same shape, each on its shard's
    /// device), on every shard's device; no gradient.
    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>>;

    /// The sum of `parts` (one per shard, same shape), on `root`; differentiable.
    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor>;

    /// This process's rank among those sharing the memory (0 where one process holds every
    /// shard): rank 0's first shard holds the zero pattern of `add_zero_association`.
    fn rank(&self) -> usize {
        0
    }
}

/// Candle's own device copies: shards on the CPU (threads) or on GPUs one process drives.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCommunicator;

impl Communicator for LocalCommunicator {
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        devices.iter().map(|d| x.to_device(d)).collect()
    }

    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>> {
        let Some(first) = parts.first() else {
            return Ok(Vec::new());
        };
        let home = first.device();
        let mut m = first.detach();
        for p in &parts[1..] {
            m = m.maximum(&p.detach().to_device(home)?)?;
        }
        parts.iter().map(|p| m.to_device(p.device())).collect()
    }

    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        for p in parts {
            let p = p.to_device(root)?;
            acc = Some(match acc {
                Some(a) => (a + p)?,
                None => p,
            });
        }
        acc.ok_or_else(|| super::ShardError::NoShards.into())
    }
}

/// Bytes moved by the collectives of one or more retrievals, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Query broadcasts.
    pub broadcast: u64,
    /// All-reduces of the row maxima.
    pub max: u64,
    /// Reductions of the rescaled partial sums.
    pub sum: u64,
}

impl Traffic {
    /// All bytes.
    pub fn total(&self) -> u64 {
        self.broadcast + self.max + self.sum
    }
}

/// Wraps a communicator and counts, per call, the bytes the same collective moves over the
/// links of `P` devices in NCCL's ring algorithms: a broadcast of `B` bytes moves `(P-1) B`,
/// an all-reduce `2 (P-1) B`, a reduce `(P-1) B`. The data still goes through the wrapped
/// communicator, so results are unchanged.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::sharded::{Communicator, CountingCommunicator, LocalCommunicator};
/// let comm = CountingCommunicator::new(LocalCommunicator);
/// let x = Tensor::zeros(256, candle_core::DType::F32, &Device::Cpu)?; // 1 KiB
/// comm.broadcast(&x, &[Device::Cpu, Device::Cpu, Device::Cpu])?;
/// assert_eq!(comm.traffic().broadcast, 2 * 1024);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct CountingCommunicator<C> {
    inner: C,
    broadcast: AtomicU64,
    max: AtomicU64,
    sum: AtomicU64,
}

impl<C: Communicator> CountingCommunicator<C> {
    /// Counts the traffic of `inner`, from zero.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            broadcast: AtomicU64::new(0),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// The bytes counted so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            broadcast: self.broadcast.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }

    /// Starts counting from zero again.
    pub fn reset(&self) {
        for c in [&self.broadcast, &self.max, &self.sum] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

fn bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

impl<C: Communicator> Communicator for CountingCommunicator<C> {
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        let links = devices.len().saturating_sub(1) as u64;
        self.broadcast
            .fetch_add(links * bytes(x), Ordering::Relaxed);
        self.inner.broadcast(x, devices)
    }

    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>> {
        let links = parts.len().saturating_sub(1) as u64;
        if let Some(p) = parts.first() {
            self.max.fetch_add(2 * links * bytes(p), Ordering::Relaxed);
        }
        self.inner.all_reduce_max(parts)
    }

    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor> {
        let links = parts.len().saturating_sub(1) as u64;
        if let Some(p) = parts.first() {
            self.sum.fetch_add(links * bytes(p), Ordering::Relaxed);
        }
        self.inner.reduce_sum(parts, root)
    }

    fn rank(&self) -> usize {
        self.inner.rank()
    }
}
