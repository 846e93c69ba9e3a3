//! The collectives a sharded retrieval needs, behind one trait: broadcast the queries to the
//! shards, all-reduce the row maxima of the shards' log-sum-exps, reduce the rescaled partial
//! sums to the queries' device, and the transposes of the broadcast and the reduce, which carry
//! the gradients back. [`LocalCommunicator`] does it with candle's device copies (CPU threads, or
//! GPUs of one process); [`ThreadCommunicator`](super::ThreadCommunicator) runs P ranks as P
//! threads, each holding only its own shard, as NCCL's processes do;
//! [`CountingCommunicator`] wraps any communicator and counts the bytes an NCCL-style ring
//! would move for each call, forward and backward, which is what `docs/sharded-memory.md`
//! measures.

use super::autograd::with_gradient;
use candle_core::{Device, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The collectives of a sharded retrieval and the transposes that carry its gradients back.
///
/// The forward methods keep candle's autograd intact: the broadcast's copies and the reduced sum
/// are differentiable with respect to their inputs, and their gradients are exactly
/// [`broadcast_backward`](Self::broadcast_backward) (a reduce-sum of the copies' gradients to
/// the source) and [`reduce_sum_backward`](Self::reduce_sum_backward) (the sum's gradient back
/// to every part). A backend whose collectives candle can follow (device copies in one process)
/// gets that from candle; one that crosses threads or processes attaches its transposes with
/// [`with_gradient`](super::with_gradient). [`all_reduce_max`](Self::all_reduce_max) carries no
/// gradient: its result only shifts the merge's exponents, and the merge's output and lse do not
/// depend on the shift (the module docs of [`sharded`](super) show it), so a stop-gradient is
/// exact.
///
/// Across ranks (processes or threads, [`world_size`](Self::world_size) > 1) every rank makes
/// the same calls in the same order, forward and backward, and each passes one part: its own.
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
/// // The transposes: the gradient of a sum goes to every part, those of copies add up.
/// let back = comm.reduce_sum_backward(&sum, &[Device::Cpu, Device::Cpu])?;
/// assert_eq!(back[0].to_vec1::<f32>()?, vec![4., 7.]);
/// assert_eq!(comm.broadcast_backward(&parts, &Device::Cpu)?.to_vec1::<f32>()?, vec![4., 7.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait Communicator: Send + Sync {
    /// A copy of `x` on each of `devices`, in order; differentiable. Across ranks, rank 0's `x`
    /// (the other ranks pass a buffer of the same shape and dtype).
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>>;

    /// The element-wise maximum of `parts` (one per shard, same shape, each on its shard's
    /// device), on every shard's device; no gradient.
    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>>;

    /// The sum of `parts` (one per shard, same shape), on `root`; differentiable. Across ranks,
    /// every rank receives the sum (an all-reduce), on its `root`.
    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor>;

    /// The transpose of [`broadcast`](Self::broadcast): the sum of `grads`, the gradients of the
    /// copies (one per device of the broadcast, in order), on `root`, the source's device.
    /// Across ranks, a reduce to rank 0: the sum there, zeros on the other ranks (their buffers
    /// did not reach the copies).
    fn broadcast_backward(&self, grads: &[Tensor], root: &Device) -> Result<Tensor>;

    /// The transpose of [`reduce_sum`](Self::reduce_sum): `grad`, the gradient of the sum, on
    /// each of `devices` (the parts' devices, in order). Across ranks, where every rank holds
    /// the sum, the all-reduce sum of the ranks' gradients of it.
    fn reduce_sum_backward(&self, grad: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>>;

    /// This process's rank among those sharing the memory (0 where one process holds every
    /// shard): rank 0's first shard holds the zero pattern of `add_zero_association`, and rank
    /// 0's queries are the ones retrieved.
    fn rank(&self) -> usize {
        0
    }

    /// The number of ranks sharing the memory, each calling the collectives with its own
    /// part(s): 1 where one process holds every shard.
    fn world_size(&self) -> usize {
        1
    }
}

/// Candle's own device copies: shards on the CPU (threads) or on GPUs one process drives.
/// Candle differentiates the copies itself; its gradients are this communicator's
/// [`broadcast_backward`](Communicator::broadcast_backward) and
/// [`reduce_sum_backward`](Communicator::reduce_sum_backward).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCommunicator;

fn sum_on(parts: &[Tensor], root: &Device) -> Result<Tensor> {
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
        sum_on(parts, root)
    }

    fn broadcast_backward(&self, grads: &[Tensor], root: &Device) -> Result<Tensor> {
        sum_on(grads, root)
    }

    fn reduce_sum_backward(&self, grad: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        devices.iter().map(|d| grad.to_device(d)).collect()
    }
}

/// Bytes moved by the collectives of one or more retrievals, by kind: the forward collectives
/// and, once a backward pass ran through them, their transposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Query broadcasts.
    pub broadcast: u64,
    /// All-reduces of the row maxima.
    pub max: u64,
    /// Reductions of the rescaled partial sums.
    pub sum: u64,
    /// Backward: reduces of the queries' gradients to the root (the broadcasts' transposes).
    pub broadcast_grad: u64,
    /// Backward: the partial sums' gradients back to the shards (the reductions' transposes).
    pub sum_grad: u64,
}

impl Traffic {
    /// All bytes, forward and backward.
    pub fn total(&self) -> u64 {
        self.forward() + self.backward()
    }

    /// The forward collectives' bytes.
    pub fn forward(&self) -> u64 {
        self.broadcast + self.max + self.sum
    }

    /// The backward collectives' bytes.
    pub fn backward(&self) -> u64 {
        self.broadcast_grad + self.sum_grad
    }
}

#[derive(Debug, Default)]
struct Counters {
    broadcast: AtomicU64,
    max: AtomicU64,
    sum: AtomicU64,
    broadcast_grad: AtomicU64,
    sum_grad: AtomicU64,
}

/// Wraps a communicator and counts, per call, the bytes the same collective moves over the
/// links of `P` devices in NCCL's ring algorithms: a broadcast or a reduce of `B` bytes moves
/// `(P-1) B`, an all-reduce `2 (P-1) B`. `P` is all the parts of the call on all ranks; across
/// ranks the reduction of the partial sums is an all-reduce (every rank receives the sum), and
/// each rank's counter counts the whole collective. The backward traffic (the transposes:
/// a reduce of the queries' gradients, and the sums' gradients back to the parts, a broadcast
/// in one process, an all-reduce across ranks) is counted when a backward pass runs through the
/// results. The data still goes through the wrapped communicator, so results are unchanged.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use hopfield_core::sharded::{Communicator, CountingCommunicator, LocalCommunicator};
/// let comm = CountingCommunicator::new(LocalCommunicator);
/// let x = Var::zeros(256, candle_core::DType::F32, &Device::Cpu)?; // 1 KiB
/// let copies = comm.broadcast(&x, &[Device::Cpu, Device::Cpu, Device::Cpu])?;
/// assert_eq!(comm.traffic().broadcast, 2 * 1024);
/// Tensor::stack(&copies, 0)?.sum_all()?.backward()?;
/// assert_eq!(comm.traffic().broadcast_grad, 2 * 1024); // (P-1) B, a reduce of the gradients
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct CountingCommunicator<C> {
    inner: C,
    counts: Arc<Counters>,
}

impl<C: Communicator> CountingCommunicator<C> {
    /// Counts the traffic of `inner`, from zero.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            counts: Arc::default(),
        }
    }

    /// The bytes counted so far.
    pub fn traffic(&self) -> Traffic {
        let c = &*self.counts;
        Traffic {
            broadcast: c.broadcast.load(Ordering::Relaxed),
            max: c.max.load(Ordering::Relaxed),
            sum: c.sum.load(Ordering::Relaxed),
            broadcast_grad: c.broadcast_grad.load(Ordering::Relaxed),
            sum_grad: c.sum_grad.load(Ordering::Relaxed),
        }
    }

    /// Starts counting from zero again.
    pub fn reset(&self) {
        let c = &*self.counts;
        for c in [&c.broadcast, &c.max, &c.sum, &c.broadcast_grad, &c.sum_grad] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Devices on the far side of a collective of `parts` parts per rank: `P - 1`.
    fn links(&self, parts: usize) -> u64 {
        (self.inner.world_size() * parts).saturating_sub(1) as u64
    }

    /// The bytes of the all-reduce or reduce of the partial sums (and of its transpose).
    fn sum_bytes(&self, parts: usize, b: u64) -> u64 {
        let across = if self.inner.world_size() > 1 { 2 } else { 1 };
        across * self.links(parts) * b
    }

    /// `y` with a backward pass that counts `n` bytes into `counter` (and passes the gradient).
    fn count_backward(
        &self,
        y: Tensor,
        counter: fn(&Counters) -> &AtomicU64,
        n: u64,
    ) -> Result<Tensor> {
        if n == 0 || !y.track_op() {
            return Ok(y);
        }
        let counts = self.counts.clone();
        with_gradient(&y, &y, move |g| {
            counter(&counts).fetch_add(n, Ordering::Relaxed);
            Ok(g.clone())
        })
    }
}

fn bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

impl<C: Communicator> Communicator for CountingCommunicator<C> {
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        let b = bytes(x);
        self.counts
            .broadcast
            .fetch_add(self.links(devices.len()) * b, Ordering::Relaxed);
        let copies = self.inner.broadcast(x, devices)?;
        let across = self.inner.world_size() > 1;
        copies
            .into_iter()
            .enumerate()
            .map(|(i, y)| {
                // The reduce of the copies' gradients, (P-1) B: in one process each copy but
                // the first crosses one link; across ranks each rank counts the whole reduce.
                let n = match (across, i) {
                    (true, _) => self.links(1) * b,
                    (false, 0) => 0,
                    (false, _) => b,
                };
                self.count_backward(y, |c| &c.broadcast_grad, n)
            })
            .collect()
    }

    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>> {
        if let Some(p) = parts.first() {
            self.counts
                .max
                .fetch_add(2 * self.links(parts.len()) * bytes(p), Ordering::Relaxed);
        }
        self.inner.all_reduce_max(parts)
    }

    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor> {
        let n = parts
            .first()
            .map_or(0, |p| self.sum_bytes(parts.len(), bytes(p)));
        self.counts.sum.fetch_add(n, Ordering::Relaxed);
        let total = self.inner.reduce_sum(parts, root)?;
        self.count_backward(total, |c| &c.sum_grad, n)
    }

    fn broadcast_backward(&self, grads: &[Tensor], root: &Device) -> Result<Tensor> {
        if let Some(g) = grads.first() {
            self.counts
                .broadcast_grad
                .fetch_add(self.links(grads.len()) * bytes(g), Ordering::Relaxed);
        }
        self.inner.broadcast_backward(grads, root)
    }

    fn reduce_sum_backward(&self, grad: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        self.counts.sum_grad.fetch_add(
            self.sum_bytes(devices.len(), bytes(grad)),
            Ordering::Relaxed,
        );
        self.inner.reduce_sum_backward(grad, devices)
    }

    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
}
