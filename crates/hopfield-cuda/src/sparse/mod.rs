//! Sparse-diffusion kernels: products of a shared CSR matrix with dense tensors.
//!
//! - [`CsrMatrix`]: a square sparse matrix held once (`Arc`), with its transpose built on first
//!   use and cached (every backward pass reuses it).
//! - [`spmm`]: `y = W x` for dense `x` of shape (N, ...), differentiable in `x` (backward
//!   `W^T g`). The matrix's values are constants (host f64): no gradient flows to them.
//! - [`diffusion_step`]: the fused factored diffusion step `(1 - eta deg) ⊙ x + eta W x` (deg per
//!   row, eta a scalar), one pass over W and x; differentiable in `x` (backward: the same step on
//!   `W^T`) and in `deg` when `deg` is itself tracked.
//! - [`CsrMatrix::locality_order`] and [`CsrMatrix::permuted`]: a node numbering in which
//!   neighbours are close (reverse Cuthill-McKee), so products gather nearby rows of `x` (2-3x
//!   faster on a shuffled 10^5-node graph); [`CsrMatrix::locality`] decides once per graph
//!   whether that pays.
//!
//! The CPU kernel (f32, f64) partitions rows over rayon tasks; with the `cuda` feature a CUDA
//! kernel (`kernels/sparse.cu`, f32 and f64) runs on CUDA devices. Other dtypes and devices use
//! the composed forms ([`spmm_composed`], [`diffusion_step_composed`]: gather, scale,
//! scatter-add), which compute the same values.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use hopfield_cuda::sparse::{diffusion_step, spmm, CsrMatrix};
//! // W = [[0, 1], [1, 0]], deg = W 1
//! let w = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 0], vec![1.0, 1.0])?;
//! let x = Tensor::new(&[[1f64], [0.]], &Device::Cpu)?;
//! assert_eq!(spmm(&w, &x)?.to_vec2::<f64>()?, vec![vec![0.], vec![1.]]);
//! let deg = Tensor::new(&[1f64, 1.], &Device::Cpu)?;
//! let y = diffusion_step(&w, &deg, 0.25, &x)?;
//! assert_eq!(y.to_vec2::<f64>()?, vec![vec![0.75], vec![0.25]]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#[cfg(target_arch = "x86_64")]
mod avx512;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod locality;
mod matrix;
mod op;
mod order;

pub use locality::{Locality, LOCALITY_MIN_NODES};
pub use matrix::CsrMatrix;

use crate::error::{expect_float, expect_same_dtype};
use crate::KernelError;
use candle_core::{DType, Device, Result, Tensor};

/// A sparse argument that does not fit: shapes, or CSR arrays that break the format. (Dtype
/// problems are [`KernelError`](crate::KernelError)s.)
#[derive(Clone, PartialEq, thiserror::Error)]
pub enum SparseError {
    /// An operand's shape does not match the matrix.
    #[error("{op}: {detail}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What does not match, with the shapes.
        detail: String,
    },
    /// CSR arrays that are not a valid matrix.
    #[error("CsrMatrix: {0}")]
    InvalidCsr(String),
}

crate::candle_error!(SparseError, "hopfield-cuda");

/// Whether the fused kernels run for this dtype and device (else the composed forms do).
fn fused(a: &CsrMatrix, x: &Tensor) -> bool {
    let float = matches!(x.dtype(), DType::F32 | DType::F64);
    match x.device() {
        Device::Cpu => float,
        // An empty launch is invalid, and the kernels index rows with u32.
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => float && x.elem_count() > 0 && a.nnz() <= u32::MAX as usize,
        _ => {
            let _ = a;
            false
        }
    }
}

/// Checks `x` against `a` and returns it as a contiguous (N, m) tensor.
fn operand(op: &'static str, a: &CsrMatrix, x: &Tensor) -> Result<Tensor> {
    expect_float(op, "x", x)?;
    let dims = x.dims();
    if dims.first() != Some(&a.n()) {
        return Err(SparseError::Shape {
            op,
            detail: format!(
                "the matrix is {n} x {n} but x has shape {dims:?} (expected ({n}, ...))",
                n = a.n()
            ),
        }
        .into());
    }
    let m: usize = dims[1..].iter().product();
    x.reshape((a.n(), m))?.contiguous()
}

/// Checks the step's `deg` and `eta` against `x`.
fn step_args(a: &CsrMatrix, deg: &Tensor, eta: f64, x: &Tensor) -> Result<()> {
    const OP: &str = "diffusion_step";
    expect_float(OP, "deg", deg)?;
    expect_same_dtype(OP, ("deg", deg), ("x", x))?;
    if deg.dims() != [a.n()] {
        return Err(SparseError::Shape {
            op: OP,
            detail: format!(
                "the matrix is {n} x {n} but deg has shape {:?} (expected ({n}))",
                deg.dims(),
                n = a.n()
            ),
        }
        .into());
    }
    // Finite only: an eta beyond a half-precision dtype's range overflows the result, which the
    // caller's finiteness check reports (as diverging, for the diffusion operators).
    if !eta.is_finite() {
        return Err(KernelError::Param {
            op: OP,
            name: "eta",
            expected: "finite",
            value: eta,
        }
        .into());
    }
    Ok(())
}

/// `W x` for `x` of shape (N, ...) (the trailing dimensions are columns sharing the matrix), in
/// `x`'s dtype, same shape as `x`. Differentiable in `x`: the backward pass is `W^T g`, read
/// from the transpose cached in `a` (built at the first backward pass). The matrix is a constant.
///
/// Fused on the CPU (f32, f64; rows over rayon tasks, f32 products read f32 weights) and on CUDA
/// (feature `cuda`); composed elsewhere. Errors: `x` not floating point
/// ([`KernelError::NotFloat`](crate::KernelError)), `x.dim(0) != N` ([`SparseError::Shape`]).
/// Non-finite inputs propagate (no check here).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use hopfield_cuda::sparse::{spmm, CsrMatrix};
/// let w = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 1], vec![2.0, 3.0])?; // [[0, 2], [0, 3]]
/// let x = Var::new(&[[1f64], [1.]], &Device::Cpu)?;
/// let y = spmm(&w, x.as_tensor())?;
/// assert_eq!(y.to_vec2::<f64>()?, vec![vec![2.], vec![3.]]);
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f64>()?, vec![vec![0.], vec![5.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn spmm(a: &CsrMatrix, x: &Tensor) -> Result<Tensor> {
    let x2 = operand("spmm", a, x)?;
    let y = if fused(a, &x2) {
        x2.apply_op1(op::Spmm { a: a.clone() })?
    } else {
        composed_product(a, &x2)?
    };
    y.reshape(x.dims())
}

/// [`spmm`] from candle ops (gather the neighbour rows, scale, scatter-add): the reference the
/// fused kernels are tested against, and the path for f16/bf16 and devices without a kernel.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::sparse::{spmm, spmm_composed, CsrMatrix};
/// let w = CsrMatrix::new(2, vec![0, 2, 2], vec![0, 1], vec![0.5, 2.0])?;
/// let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
/// assert_eq!(spmm_composed(&w, &x)?.to_vec2::<f32>()?, spmm(&w, &x)?.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn spmm_composed(a: &CsrMatrix, x: &Tensor) -> Result<Tensor> {
    let x2 = operand("spmm", a, x)?;
    composed_product(a, &x2)?.reshape(x.dims())
}

fn composed_product(a: &CsrMatrix, x2: &Tensor) -> Result<Tensor> {
    let d = a.device_arrays(x2.dtype(), x2.device())?;
    let gathered = x2.index_select(&d.cols, 0)?.broadcast_mul(&d.vals)?;
    x2.zeros_like()?.index_add(&d.rows, &gathered, 0)
}

/// The fused factored diffusion step `(1 - eta deg) ⊙ x + eta W x` for `x` of shape (N, ...),
/// `deg` (N,) in `x`'s dtype and a finite `eta`: one pass over W and x instead of the composed
/// form's five (product, two scalings, broadcast product, sum). Per element it computes
/// `x * (1 - deg * eta) + (W x) * eta` in `x`'s dtype, the same operations as
/// [`diffusion_step_composed`] on the CPU.
///
/// Differentiable in `x` (the backward pass is the same step on the cached `W^T`) and in `deg`
/// when `deg` is tracked (`-eta * sum_j x_ij g_ij` per row). Errors: non-float `x`/`deg` or
/// differing dtypes ([`KernelError`](crate::KernelError)), shapes ([`SparseError::Shape`]), a
/// non-finite eta ([`KernelError::Param`](crate::KernelError)).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::sparse::{diffusion_step, diffusion_step_composed, CsrMatrix};
/// let w = CsrMatrix::new(3, vec![0, 1, 3, 3], vec![1, 0, 2], vec![1.0, 1.0, 0.5])?;
/// let deg = Tensor::new(&[1f32, 1.5, 0.], &Device::Cpu)?;
/// let x = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu)?;
/// let fused = diffusion_step(&w, &deg, 0.1, &x)?;
/// assert_eq!(fused.to_vec2::<f32>()?, diffusion_step_composed(&w, &deg, 0.1, &x)?.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn diffusion_step(a: &CsrMatrix, deg: &Tensor, eta: f64, x: &Tensor) -> Result<Tensor> {
    let x2 = operand("diffusion_step", a, x)?;
    step_args(a, deg, eta, &x2)?;
    let y = if fused(a, &x2) {
        x2.apply_op2(&deg.contiguous()?, op::Step { a: a.clone(), eta })?
    } else {
        composed_step(a, deg, eta, &x2)?
    };
    y.reshape(x.dims())
}

/// [`diffusion_step`] from candle ops: `x * (1 - deg * eta) + spmm_composed(W, x) * eta`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::sparse::{diffusion_step_composed, CsrMatrix};
/// let w = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 0], vec![1.0, 1.0])?;
/// let deg = Tensor::new(&[1f64, 1.], &Device::Cpu)?;
/// let y = diffusion_step_composed(&w, &deg, 0.5, &Tensor::new(&[2f64, 0.], &Device::Cpu)?)?;
/// assert_eq!(y.to_vec1::<f64>()?, vec![1., 1.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn diffusion_step_composed(
    a: &CsrMatrix,
    deg: &Tensor,
    eta: f64,
    x: &Tensor,
) -> Result<Tensor> {
    let x2 = operand("diffusion_step", a, x)?;
    step_args(a, deg, eta, &x2)?;
    composed_step(a, deg, eta, &x2)?.reshape(x.dims())
}

fn composed_step(a: &CsrMatrix, deg: &Tensor, eta: f64, x2: &Tensor) -> Result<Tensor> {
    let keep = (1.0 - (deg * eta)?)?.reshape((a.n(), 1))?;
    x2.broadcast_mul(&keep)? + (composed_product(a, x2)? * eta)?
}
