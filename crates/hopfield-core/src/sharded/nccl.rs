//! The NCCL backend of [`Communicator`]: one process (rank) per GPU, on one machine or many.
//!
//! Each rank builds a [`ShardedMemory`](super::ShardedMemory) of its own shard(s) on its GPU
//! with an [`NcclCommunicator`]; the collectives then run across ranks: the queries are broadcast
//! from rank 0 (other ranks pass a buffer of the same shape), the maxima are an all-reduce max,
//! and the rescaled partial sums an all-reduce sum, so every rank ends with the whole memory's
//! output. The zero pattern of `add_zero_association` is counted by rank 0 only.
//!
//! The backward pass crosses ranks too: the broadcast's transpose is a reduce-sum of the ranks'
//! query gradients to rank 0, the all-reduce sum's an all-reduce sum of its gradients (the
//! maxima need none, see [`sharded`](super)); the gradients are those of the sum of the ranks'
//! losses, and every rank must run `backward` (the module docs of [`sharded`](super)). The same
//! semantics run on CPU threads, tested, in [`ThreadCommunicator`](super::ThreadCommunicator).
//! Built with the `nccl` feature (candle-core's `nccl`, cudarc's NCCL bindings, loaded at run
//! time); compile-checked without a GPU, not run in CI.

use super::autograd::{tracked, with_gradient};
use super::{Communicator, ShardError};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// An NCCL communicator, movable between threads.
struct SendComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap (NCCL's thread-safety rules); every use goes through the `Mutex` below.
unsafe impl Send for SendComm {}

/// This rank's end of an NCCL communicator over `world_size` ranks (see the module docs).
#[derive(Clone)]
pub struct NcclCommunicator {
    comm: Arc<Mutex<SendComm>>,
    rank: usize,
    world_size: usize,
    device: Device,
}

fn nccl_err(e: impl std::fmt::Debug) -> candle_core::Error {
    ShardError::Communicator {
        name: "nccl",
        reason: format!("{e:?}"),
    }
    .into()
}

impl NcclCommunicator {
    /// A new unique id: created on rank 0 and sent to the other ranks (its bytes are
    /// `Id::internal()`, rebuilt there with `Id::uninit`) before each calls [`new`](Self::new).
    pub fn unique_id() -> Result<Id> {
        Id::new().map_err(nccl_err)
    }

    /// Joins the communicator `id` as `rank` of `world_size`, on the CUDA `device` (its candle
    /// stream, so the collectives are ordered with candle's kernels).
    pub fn new(device: &Device, rank: usize, world_size: usize, id: Id) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(ShardError::Communicator {
                name: "nccl",
                reason: format!("needs a CUDA device, got {:?}", device.location()),
            }
            .into());
        };
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world_size, id).map_err(nccl_err)?;
        Ok(Self {
            comm: Arc::new(Mutex::new(SendComm(comm))),
            rank,
            world_size,
            device: device.clone(),
        })
    }

    fn run(&self, x: &Tensor, kind: Collective) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&NcclOp {
            comm: self.comm.clone(),
            rank: self.rank,
            kind,
        })
    }

    fn local<'a, T>(&self, parts: &'a [T]) -> Result<&'a T> {
        match parts {
            [one] => Ok(one),
            _ => Err(ShardError::Communicator {
                name: "nccl",
                reason: format!(
                    "one part per rank (this rank's shard), got {}; build one ShardedMemory per rank",
                    parts.len()
                ),
            }
            .into()),
        }
    }
}

impl Communicator for NcclCommunicator {
    fn broadcast(&self, x: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        if devices.len() != 1 || !devices[0].same_device(&self.device) {
            return Err(ShardError::Communicator {
                name: "nccl",
                reason: "one shard per rank, on the communicator's device".into(),
            }
            .into());
        }
        let x = tracked(x.to_device(&self.device)?)?;
        let root = self.run(&x.detach(), Collective::Broadcast)?;
        let (this, dev) = (self.clone(), self.device.clone());
        let y = with_gradient(&x, &root, move |g| {
            this.broadcast_backward(std::slice::from_ref(g), &dev)
        })?;
        Ok(vec![y])
    }

    fn all_reduce_max(&self, parts: &[Tensor]) -> Result<Vec<Tensor>> {
        let local = self.local(parts)?.detach();
        Ok(vec![self.run(&local, Collective::Max)?])
    }

    fn reduce_sum(&self, parts: &[Tensor], root: &Device) -> Result<Tensor> {
        let local = self.local(parts)?;
        let total = self.run(&local.detach(), Collective::Sum)?;
        let (this, dev) = (self.clone(), local.device().clone());
        with_gradient(local, &total, move |g| {
            Ok(this
                .reduce_sum_backward(g, std::slice::from_ref(&dev))?
                .remove(0))
        })?
        .to_device(root)
    }

    fn broadcast_backward(&self, grads: &[Tensor], root: &Device) -> Result<Tensor> {
        let g = self.local(grads)?.to_device(&self.device)?;
        self.run(&g, Collective::ReduceToRoot)?.to_device(root)
    }

    fn reduce_sum_backward(&self, grad: &Tensor, devices: &[Device]) -> Result<Vec<Tensor>> {
        let dev = self.local(devices)?;
        let g = grad.to_device(&self.device)?;
        Ok(vec![self.run(&g, Collective::Sum)?.to_device(dev)?])
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }
}

#[derive(Debug, Clone, Copy)]
enum Collective {
    /// From rank 0 to every rank.
    Broadcast,
    /// All-reduce, element-wise maximum.
    Max,
    /// All-reduce, sum.
    Sum,
    /// Reduce, sum, to rank 0 (zeros on the other ranks).
    ReduceToRoot,
}

struct NcclOp {
    comm: Arc<Mutex<SendComm>>,
    rank: usize,
    kind: Collective,
}

impl NcclOp {
    fn collective<T: NcclType + DeviceRepr>(
        &self,
        comm: &Comm,
        src: &CudaView<'_, T>,
        dst: &mut CudaSlice<T>,
    ) -> Result<()> {
        match self.kind {
            Collective::Broadcast => {
                let send = (self.rank == 0).then_some(src);
                comm.broadcast(send, dst, 0)
            }
            Collective::Max => comm.all_reduce(src, dst, &ReduceOp::Max),
            Collective::Sum => comm.all_reduce(src, dst, &ReduceOp::Sum),
            Collective::ReduceToRoot => {
                let recv = (self.rank == 0).then_some(dst);
                comm.reduce(src, recv, &ReduceOp::Sum, 0)
            }
        }
        .map(|_| ())
        .map_err(nccl_err)
    }
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(ShardError::Communicator {
            name: "nccl",
            reason: "the NCCL collectives take CUDA tensors".into(),
        }
        .into())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| nccl_err("a contiguous input"))?;
        let dev = s.device().clone();
        let guard = self
            .comm
            .lock()
            .map_err(|_| nccl_err("the communicator's lock is poisoned"))?;
        let out = match s.dtype() {
            DType::F32 => {
                let src = s.as_cuda_slice::<f32>()?.slice(start..end);
                let mut dst = dev.alloc_zeros::<f32>(end - start)?;
                self.collective(&guard.0, &src, &mut dst)?;
                CudaStorage::wrap_cuda_slice(dst, dev)
            }
            DType::F64 => {
                let src = s.as_cuda_slice::<f64>()?.slice(start..end);
                let mut dst = dev.alloc_zeros::<f64>(end - start)?;
                self.collective(&guard.0, &src, &mut dst)?;
                CudaStorage::wrap_cuda_slice(dst, dev)
            }
            other => {
                return Err(nccl_err(format!(
                    "f32 and f64 only, got {other:?} (convert before retrieving)"
                )))
            }
        };
        Ok((out, l.shape().clone()))
    }
}
