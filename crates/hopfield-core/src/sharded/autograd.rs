//! Gradients for collectives that candle cannot differentiate by itself: those that cross
//! processes (NCCL) or threads ([`ThreadCommunicator`](super::ThreadCommunicator)), where each
//! rank only sees its own end of the collective.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, Var};

type GradFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

/// `value` (a collective's result), whose gradient with respect to `input` (this rank's
/// contribution to the collective) is `grad(d value)`: the transposed collective, run when
/// candle's backward pass reaches it. Where `input` is not tracked by autograd this is `value`
/// itself, detached. The two must be on one device; `value` is copied once.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use hopfield_core::sharded::with_gradient;
/// let x = Var::new(&[1f64, 2.], &Device::Cpu)?;
/// // A stand-in for a collective: the value 10 x, its transpose 10 g.
/// let value = (x.as_tensor() * 10.)?.detach();
/// let y = with_gradient(x.as_tensor(), &value, |g| g * 10.)?;
/// assert_eq!(y.to_vec1::<f64>()?, vec![10., 20.]);
/// let grads = (y.sqr()?.sum_all()?).backward()?;
/// assert_eq!(grads.get(&x).unwrap().to_vec1::<f64>()?, vec![200., 400.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_gradient(
    input: &Tensor,
    value: &Tensor,
    grad: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value.detach());
    }
    input.apply_op2(&value.detach(), Hook(Box::new(grad)))
}

/// `x`, tracked by autograd even where it is a plain buffer (a fresh variable copy of it).
///
/// Every rank must run the same transposed collectives in the same order in its backward pass,
/// but candle only runs the backward of ops whose inputs it tracks: a rank other than the root
/// passes an untracked buffer to the query broadcast, and without this its backward would skip
/// the broadcast's transpose (the reduce of `dq` to the root) that the root waits in.
pub(crate) fn tracked(x: Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(x)
    } else {
        Ok(Var::from_tensor(&x)?.as_tensor().clone())
    }
}

struct Hook(Box<GradFn>);

fn copy<S>(s: &S, l: &Layout) -> Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let mut dst = s.device().zeros_impl(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok(dst)
}

impl CustomOp2 for Hook {
    fn name(&self) -> &'static str {
        "sharded-collective"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((copy(value, l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
        value: &candle_core::cuda_backend::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        Ok((copy(value, l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.0)(grad)?), None))
    }
}
