//! The products as candle custom ops: [`Spmm`] (`W x`, one input) and [`Step`] (the fused
//! diffusion step, inputs `x` and `deg`). Their backward passes are the same ops on the cached
//! transpose, so a training step builds no matrix.

use super::{cpu, CsrMatrix};
use crate::rows::contiguous;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

pub(crate) struct Spmm {
    pub a: CsrMatrix,
}

pub(crate) struct Step {
    pub a: CsrMatrix,
    pub eta: f64,
}

/// The columns per row of an (N, m) input.
fn width(l: &Layout) -> usize {
    l.dims().get(1).copied().unwrap_or(1)
}

fn run<T: WithDType + Default>(
    a: &CsrMatrix,
    vals: &[T],
    x: &[T],
    lx: &Layout,
    step: Option<(&[T], f64)>,
) -> CpuStorage {
    let step = step.map(|(d, eta)| (d, T::from_f64(eta)));
    T::to_cpu_storage_owned(cpu::product(a, vals, x, width(lx), step))
}

impl CustomOp1 for Spmm {
    fn name(&self) -> &'static str {
        "sparse-spmm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => {
                let x = contiguous(v, l)?;
                run(&self.a, self.a.values_f32(), x, l, None)
            }
            CpuStorage::F64(v) => {
                let x = contiguous(v, l)?;
                run(&self.a, self.a.values(), x, l, None)
            }
            _ => candle_core::bail!("spmm: the fused CPU kernel takes f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::product(&self.a, (s, l), None)
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // d(W x)/dx applied to g is W^T g.
        Ok(Some(super::spmm(self.a.transpose(), g)?))
    }
}

impl CustomOp2 for Step {
    fn name(&self) -> &'static str {
        "sparse-diffusion-step"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s, sd) {
            (CpuStorage::F32(v), CpuStorage::F32(d)) => {
                let (x, d) = (contiguous(v, l)?, contiguous(d, ld)?);
                run(&self.a, self.a.values_f32(), x, l, Some((d, self.eta)))
            }
            (CpuStorage::F64(v), CpuStorage::F64(d)) => {
                let (x, d) = (contiguous(v, l)?, contiguous(d, ld)?);
                run(&self.a, self.a.values(), x, l, Some((d, self.eta)))
            }
            _ => candle_core::bail!("diffusion_step: the fused CPU kernel takes f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        sd: &candle_core::CudaStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::product(&self.a, (s, l), Some((sd, ld, self.eta)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        deg: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The step is (diag(1 - eta deg) + eta W) x: its transpose is the same step on W^T.
        let gx = super::diffusion_step(self.a.transpose(), deg, self.eta, g)?;
        // Only a deg that is itself being differentiated pays the extra pass over x and g.
        let gdeg = if deg.track_op() {
            Some(((x * g)?.sum(1)? * (-self.eta))?)
        } else {
            None
        };
        Ok((Some(gx), gdeg))
    }
}
