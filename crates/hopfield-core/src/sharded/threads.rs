//! P ranks as P threads of one process: the multi-rank semantics of the NCCL backend (each rank
//! holds only its own shard and calls the collectives with its own part; the collectives cross
//! ranks forward and backward), testable on a CPU.

use super::autograd::{tracked, with_gradient};
use super::{Communicator, ShardError};
use candle_core::{Device, Result, Tensor};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// One rank's end of a group of ranks run as threads of this process (see the module docs):
/// the collectives meet in shared slots behind a barrier, and sum in rank order, so every rank
/// receives bitwise the same result. Like NCCL's, a rank that makes a call the others do not
/// make waits for them; here it gives up with a typed error after the group's timeout (60 s
/// unless [`group_with_timeout`](Self::group_with_timeout)), after which the group is unusable.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::sharded::{Shard, ShardedMemory, ThreadCommunicator};
/// use hopfield_cuda::retrieval::{retrieve, Retrieval};
/// use std::sync::Arc;
/// let dev = Device::Cpu;
/// let keys = Tensor::randn(0f64, 1., (1, 30, 1, 4), &dev)?;
/// let q = Tensor::randn(0f64, 1., (1, 5, 1, 4), &dev)?;
/// let cfg = Retrieval::new(0.5);
/// let ranks = ThreadCommunicator::group(3);
/// let outs = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks.into_iter().enumerate().map(|(r, comm)| {
///         let (keys, q, cfg) = (&keys, &q, &cfg);
///         s.spawn(move || -> candle_core::Result<Tensor> {
///             let mine = keys.narrow(1, 10 * r, 10)?; // each rank holds 10 patterns
///             let shard = Shard { keys: mine.clone(), values: mine };
///             let memory = ShardedMemory::new(vec![shard])?.with_communicator(Arc::new(comm));
///             // Rank 0's queries are retrieved; the others pass a buffer of the same shape.
///             let q = if r == 0 { q.clone() } else { q.zeros_like()? };
///             memory.retrieve(&q, cfg)
///         })
///     }).collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect::<candle_core::Result<Vec<_>>>()
/// })?;
/// let one = retrieve(&q, &keys, &keys, &cfg)?;
/// for out in outs {
///     assert!((out - &one)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone)]
pub struct ThreadCommunicator {
    rank: usize,
    group: Arc<Group>,
}

impl std::fmt::Debug for ThreadCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadCommunicator")
            .field("rank", &self.rank)
            .field("world_size", &self.group.world)
            .finish()
    }
}

struct Group {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    turn: Condvar,
}

struct State {
    slots: Vec<Option<Tensor>>,
    arrived: usize,
    generation: u64,
}

fn err(reason: impl Into<String>) -> candle_core::Error {
    ShardError::Communicator {
        name: "threads",
        reason: reason.into(),
    }
    .into()
}

impl ThreadCommunicator {
    /// The communicators of a group of `world_size` ranks, rank `r`'s at index `r`: give each
    /// to its own thread.
    pub fn group(world_size: usize) -> Vec<Self> {
        Self::group_with_timeout(world_size, Duration::from_secs(60))
    }

    /// [`group`](Self::group), a rank waiting at most `timeout` for the others at a collective.
    pub fn group_with_timeout(world_size: usize, timeout: Duration) -> Vec<Self> {
        let group = Arc::new(Group {
            world: world_size,
            timeout,
            state: Mutex::new(State {
                slots: vec![None; world_size],
                arrived: 0,
                generation: 0,
            }),
            turn: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| Self {
                rank,
                group: group.clone(),
            })
            .collect()
    }

    /// Waits until every rank has arrived here.
    fn barrier(&self, what: &str) -> Result<()> {
        let g = &*self.group;
        let st = g.state.lock().map_err(|_| err("a rank panicked"))?;
        let mut st = st;
        let gen = st.generation;
        st.arrived += 1;
        if st.arrived == g.world {
            st.arrived = 0;
            st.generation += 1;
            g.turn.notify_all();
            return Ok(());
        }
        let (st, _) = g
            .turn
            .wait_timeout_while(st, g.timeout, |s| s.generation == gen)
            .map_err(|_| err("a rank panicked"))?;
        if st.generation == gen {
            return Err(err(format!(
                "rank {} waited {:?} for the other ranks at {what}: every rank must make the \
                 same collective calls in the same order",
                self.rank, g.timeout
            )));
        }
        Ok(())
    }

    /// Every rank's `x` (detached), in rank order, once all have given theirs; all of one shape
    /// and dtype, or the same typed error on every rank.
    fn exchange(&self, x: &Tensor, what: &str) -> Result<Vec<Tensor>> {
        let lock = || self.group.state.lock().map_err(|_| err("a rank panicked"));
        lock()?.slots[self.rank] = Some(x.detach());
        self.barrier(what)?;
        let all: Vec<Tensor> = lock()?.slots.iter().flatten().cloned().collect();
        // Nobody writes the next collective's slot before everyone has read this one's.
        self.barrier(what)?;
        if let Some(bad) = all
            .iter()
            .position(|t| t.dims() != x.dims() || t.dtype() != x.dtype())
        {
            return Err(err(format!(
                "{what}: rank {bad} gave {:?} {:?}, rank {} {:?} {:?}",
                all[bad].dtype(),
                all[bad].dims(),
                self.rank,
                x.dtype(),
                x.dims()
            )));
        }
        Ok(all)
    }

    fn sum(all: &[Tensor], dev: &Device) -> Result<Tensor> {
        let mut acc = all[0].to_device(dev)?;
        for t in &all[1..] {
            acc = (acc + t.to_device(dev)?)?;
        }
        Ok(acc)
    }

    fn one<'a, T>(&self, parts: &'a [T]) -> Result<&'a T> {
        match parts {
            [one] => Ok(one),
            _ => Err(err(format!(
                "one part per rank (this rank's shard), got {}; build one ShardedMemory per rank",
                parts.len()
            ))),
        }
    }
}

impl Communicator for ThreadCommunicator {
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        let dev = self.one(devices)?.clone();
        let x = tracked(x.to_device(&dev)?)?;
        let root = self.exchange(&x, "broadcast")?[0].to_device(&dev)?;
        let this = self.clone();
        let back = dev.clone();
        let y = with_gradient(&x, &root, move |g| {
            this.broadcast_backward(std::slice::from_ref(g), &back)
        })?;
        Ok(vec![y])
    }

    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>> {
        let part = self.one(parts)?;
        let dev = part.device();
        let all = self.exchange(part, "all-reduce max")?;
        let mut m = all[0].to_device(dev)?;
        for t in &all[1..] {
            m = m.maximum(&t.to_device(dev)?)?;
        }
        Ok(vec![m])
    }

    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor> {
        let part = self.one(parts)?;
        let dev = part.device().clone();
        let total = Self::sum(&self.exchange(part, "all-reduce sum")?, &dev)?;
        let this = self.clone();
        let back = dev.clone();
        let total = with_gradient(part, &total, move |g| {
            Ok(this
                .reduce_sum_backward(g, std::slice::from_ref(&back))?
                .remove(0))
        })?;
        total.to_device(root)
    }

    fn broadcast_backward(&self, grads: &[Tensor], root: &Device) -> Result<Tensor> {
        let g = self.one(grads)?;
        let all = self.exchange(g, "reduce of the broadcast's gradients")?;
        if self.rank == 0 {
            Self::sum(&all, root)
        } else {
            g.zeros_like()?.to_device(root)
        }
    }

    fn reduce_sum_backward(&self, grad: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        let dev = self.one(devices)?;
        let all = self.exchange(grad, "all-reduce of the sum's gradients")?;
        Ok(vec![Self::sum(&all, dev)?])
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world
    }
}
