//! Graph Laplacians of a dense adjacency, as difflayers' `compute_laplacian` /
//! `compute_normalized_laplacian`, differentiable w.r.t. the adjacency.
//!
//! Degrees are row sums (`A` need not be symmetric). In the normalised Laplacian an isolated node
//! (degree 0) gets `D^-1/2 = 0`, hence an all-zero row and column (`L_ii = 0`, as difflayers). Where
//! difflayers' autograd gradient is NaN for such a graph (bug D18), ours is finite: the inverse
//! square root is only ever evaluated at positive degrees.

use crate::{check, GraphError};
use candle_core::{DType, Result, Tensor, D};

fn diag(v: &Tensor) -> Result<Tensor> {
    let n = v.dim(0)?;
    Tensor::eye(n, v.dtype(), v.device())?.broadcast_mul(&v.unsqueeze(1)?)
}

/// `L = diag(A 1) - A`. Errors if `a` is not square, not float or holds NaN/inf, and
/// [`GraphError::Overflow`] (naming the row) when a degree overflows `a`'s dtype (the diagonal
/// is then not representable; `diag(inf)` would also put NaN off the diagonal).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let a = Tensor::new(&[[0f64, 1.], [1., 0.]], &Device::Cpu)?;
/// let l = dahn_graph::laplacian(&a)?;
/// assert_eq!(l.to_vec2::<f64>()?, vec![vec![1., -1.], vec![-1., 1.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn laplacian(a: &Tensor) -> Result<Tensor> {
    let what = "laplacian: adjacency";
    check::square(what, a)?;
    let d = a.sum(D::Minus1)?;
    if !hopfield_cuda::all_finite(&d)? {
        let host = check::host_f64(&d)?;
        let row = host.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(GraphError::Overflow {
            what,
            detail: format!(
                "the degree of node {row} (row sum) overflows {:?} ({}); use normalized_laplacian (scale-invariant) or a wider dtype",
                a.dtype(),
                host[row]
            ),
        }
        .into());
    }
    // Degrees are finite, but `diag(d) - a` can still overflow with weights of mixed sign.
    no_overflow(what, diag(&d)? - a)
}

/// A Laplacian computed from a finite adjacency must be finite (weights of mixed sign can make
/// `D^-1/2` or `D - A` overflow), else [`GraphError::Overflow`].
fn no_overflow(what: &'static str, l: Result<Tensor>) -> Result<Tensor> {
    let l = l?;
    if hopfield_cuda::all_finite(&l)? {
        return Ok(l);
    }
    Err(GraphError::Overflow {
        what,
        detail: format!(
            "the Laplacian overflows {:?} (weights of mixed sign or near the dtype's limit)",
            l.dtype()
        ),
    }
    .into())
}

/// `L = D^-1/2 (D - A) D^-1/2`, `D = diag(A 1)`, with `D^-1/2 = 0` at zero degree. Always finite
/// for finite `a`: when a degree overflows `a`'s dtype the (scale-invariant) result is computed
/// in f64 on rescaled weights and cast back (entries lie in [-1, 1]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let a = Tensor::new(&[[0f64, 4., 0.], [4., 0., 0.], [0., 0., 0.]], &Device::Cpu)?;
/// let l = dahn_graph::normalized_laplacian(&a)?.to_vec2::<f64>()?;
/// assert_eq!(l[0], vec![1., -1., 0.]);
/// assert_eq!(l[2], vec![0., 0., 0.]); // isolated node
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn normalized_laplacian(a: &Tensor) -> Result<Tensor> {
    let what = "normalized_laplacian: adjacency";
    check::square(what, a)?;
    let d = a.sum(D::Minus1)?;
    if hopfield_cuda::all_finite(&d)? {
        return no_overflow(what, normalized_core(a, d));
    }
    // Overflowing degrees only: f64 holds any f16/f32 row sum, and f64 input is scaled by a power
    // of two (exact), which leaves D^-1/2 A D^-1/2 unchanged. The scale is a constant, so the
    // gradient is the same function's gradient.
    let wide = a.to_dtype(DType::F64)?;
    let wide = if a.dtype() == DType::F64 {
        let n = a.dim(0)?.max(1) as f64;
        let max = a.abs()?.max_all()?.to_scalar::<f64>()?;
        let (s1, s2) = check::pow2_halves(max.log2() + n.log2());
        ((wide * s1)? * s2)?
    } else {
        wide
    };
    let d = wide.sum(D::Minus1)?;
    no_overflow(what, normalized_core(&wide, d)?.to_dtype(a.dtype()))
}

fn normalized_core(a: &Tensor, d: Tensor) -> Result<Tensor> {
    let pos = d.gt(0.0)?;
    // Evaluate d^-1/2 on a safe copy (1 where d = 0) so that neither the value nor its derivative
    // is infinite, then select 0 for isolated nodes.
    let safe = pos.where_cond(&d, &d.ones_like()?)?;
    let r = pos.where_cond(&safe.powf(-0.5)?, &d.zeros_like()?)?;
    let r2 = r.sqr()?;
    let off = a
        .broadcast_mul(&r.unsqueeze(1)?)?
        .broadcast_mul(&r.unsqueeze(0)?)?;
    let mut dr2 = (&d * r2)?;
    if !hopfield_cuda::all_finite(&dr2)? {
        // A degree below the dtype's smallest normal number: r^2 overflows, but d r^2 = 1.
        dr2 = pos.to_dtype(d.dtype())?;
    }
    diag(&dr2)? - off
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Csr, GraphError};
    use candle_core::{Device, Var};

    fn adjacency() -> Vec<Vec<f64>> {
        vec![
            vec![0.0, 0.5, 0.2, 0.0],
            vec![0.3, 0.0, 0.0, 0.0],
            vec![0.2, 0.7, 0.1, 0.0],
            vec![0.0, 0.0, 0.0, 0.0],
        ]
    }

    #[test]
    fn normalized_matches_elementwise_formula() -> Result<()> {
        let a = adjacency();
        let l = normalized_laplacian(&Tensor::new(a.clone(), &Device::Cpu)?)?.to_vec2::<f64>()?;
        let d: Vec<f64> = a.iter().map(|r| r.iter().sum()).collect();
        let r: Vec<f64> = d
            .iter()
            .map(|&x| if x > 0.0 { 1.0 / x.sqrt() } else { 0.0 })
            .collect();
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { d[i] * r[i] * r[i] } else { 0.0 } - r[i] * a[i][j] * r[j];
                assert!((l[i][j] - want).abs() < 1e-15, "{i},{j}");
            }
        }
        assert!(l[3].iter().all(|&v| v == 0.0));
        Ok(())
    }

    #[test]
    fn sparse_laplacians_equal_dense() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(adjacency(), &dev)?;
        let csr = Csr::from_dense(&a)?;
        for normalized in [false, true] {
            let dense = if normalized {
                normalized_laplacian(&a)?
            } else {
                laplacian(&a)?
            };
            let sparse = csr.laplacian(normalized).to_dense(a.dtype(), &dev)?;
            let diff = (dense - sparse)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-15, "normalized={normalized}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn isolated_node_gradient_is_finite() -> Result<()> {
        let a = Var::new(adjacency(), &Device::Cpu)?;
        let g = normalized_laplacian(a.as_tensor())?.sum_all()?.backward()?;
        let ga = g.get(a.as_tensor()).unwrap().to_vec2::<f64>()?;
        assert!(ga.iter().flatten().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn unnormalized_rows_sum_to_zero() -> Result<()> {
        let l = laplacian(&Tensor::new(adjacency(), &Device::Cpu)?)?;
        let s = l.sum(1)?.to_vec1::<f64>()?;
        assert!(s.iter().all(|v| v.abs() < 1e-15));
        Ok(())
    }

    #[test]
    fn non_square_is_typed_error() -> Result<()> {
        let a = Tensor::zeros((2, 3), candle_core::DType::F64, &Device::Cpu)?;
        let e = laplacian(&a).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::NotSquare { .. })
        ));
        let e = normalized_laplacian(&a).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::NotSquare { .. })
        ));
        Ok(())
    }
}
