//! Cosine similarity between patterns, as difflayers' `build_similarity_matrix`.
//!
//! `S = Xn Xn^T` with `Xn = X / max(||x_i||, 1e-12)`, negative entries clamped to 0, diagonal 0 (no
//! self-loops). A zero pattern normalises to the zero vector, so its row and column are all 0 (as in
//! difflayers). Unlike difflayers (bug B1/D1) the result keeps the input's dtype.

use crate::{check, GraphError};
use candle_core::{DType, Result, Tensor, D};

/// The `F.normalize` floor on a row norm.
pub const NORM_EPS: f64 = 1e-12;

/// Rows scaled to unit length, `x / max(||x||, 1e-12)`. Differentiable, and finite-gradient even
/// for a zero row: the floor is applied to the squared norm before the square root, so the
/// derivative of `sqrt` is never taken at 0. Rows along the last dimension of any rank >= 1.
///
/// A squared norm that overflows the dtype (f16 rows of magnitude ~256, f32 ~1e19, f64 ~1e154)
/// would turn the row into zeros; such inputs are normalised in f64 after dividing each row by
/// its largest magnitude (the result is scale-invariant), then cast back. f16 rows are normalised
/// in f32 (f16 cannot represent the floor). Errors (typed): rank 0,
/// integer dtype, NaN/inf entries.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[3f64, 4.], [0., 0.]], &Device::Cpu)?;
/// let n = dahn_graph::normalize_rows(&x)?;
/// assert_eq!(n.to_vec2::<f64>()?, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let what = "normalize_rows: x";
    if x.rank() == 0 {
        return Err(GraphError::Rank {
            what,
            expected: "at least 1-D (rows along the last dimension)",
            got: vec![],
        }
        .into());
    }
    check::float_dtype(what, x)?;
    if x.dtype() == DType::F16 {
        // f16 cannot hold the 1e-24 floor (zero rows became 0 / 0 = NaN) nor squares above 65504.
        return normalize_rows(&x.to_dtype(DType::F32)?)?.to_dtype(DType::F16);
    }
    let sq = x.sqr()?.sum_keepdim(D::Minus1)?;
    if hopfield_cuda::all_finite(&sq)? {
        let norm = sq.maximum(NORM_EPS * NORM_EPS)?.sqrt()?;
        return x.broadcast_div(&norm);
    }
    check::finite(what, x)?;
    // x / max(||x||, eps) = (x / m) / max(||x / m||, eps / m) for m > 0; m = the row's largest
    // magnitude (a constant: the function, hence its gradient, is unchanged).
    let wide = x.to_dtype(DType::F64)?;
    let m = wide.detach().abs()?.max_keepdim(D::Minus1)?;
    let pos = m.gt(0.0)?;
    let m = pos.where_cond(&m, &m.ones_like()?)?;
    let scaled = wide.broadcast_div(&m)?;
    // Floor the square before the root, as above (finite gradient at zero rows).
    let floor = (m.recip()? * NORM_EPS)?.sqr()?;
    let norm = scaled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .maximum(&floor)?
        .sqrt()?;
    scaled.broadcast_div(&norm)?.to_dtype(x.dtype())
}

/// Dense cosine-similarity matrix (N, N) of the patterns `x` (N, d): negatives clamped to 0,
/// zero diagonal. Differentiable w.r.t. `x`. Errors (typed, [`crate::GraphError`]): `x` not 2-D,
/// N = 0, NaN/inf entries, integer dtype.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f64, 0.], [1., 1.], [-1., 0.]], &Device::Cpu)?;
/// let s = dahn_graph::cosine_similarity(&x)?.to_vec2::<f64>()?;
/// assert!((s[0][1] - 0.5f64.sqrt()).abs() < 1e-15);
/// assert_eq!(s[0][2], 0.0); // cos = -1 is clamped
/// assert_eq!(s[1][1], 0.0); // no self-loops
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn cosine_similarity(x: &Tensor) -> Result<Tensor> {
    let what = "cosine_similarity: patterns";
    let (n, _) = check::patterns_2d(what, x)?;
    check::can_allocate(what, &[n, n], x.dtype())?;
    let xn = normalize_rows(x)?;
    let s = xn.matmul(&xn.t()?)?.relu()?;
    let off_diag =
        (Tensor::ones((n, n), x.dtype(), x.device())? - Tensor::eye(n, x.dtype(), x.device())?)?;
    s * off_diag
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GraphError;
    use candle_core::{DType, Device, Var};

    fn naive(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let norms: Vec<f64> = x
            .iter()
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12))
            .collect();
        (0..x.len())
            .map(|i| {
                (0..x.len())
                    .map(|j| {
                        let dot: f64 = x[i].iter().zip(&x[j]).map(|(a, b)| a * b).sum();
                        if i == j {
                            0.0
                        } else {
                            (dot / norms[i] / norms[j]).max(0.0)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_naive_including_zero_row() -> Result<()> {
        let rows = vec![
            vec![1.0, 2.0, -0.5],
            vec![0.0, 0.0, 0.0],
            vec![-1.0, 0.3, 2.0],
            vec![2.0, 1.0, 0.1],
        ];
        let x = Tensor::new(rows.clone(), &Device::Cpu)?;
        let got = cosine_similarity(&x)?.to_vec2::<f64>()?;
        let want = naive(&rows);
        for i in 0..4 {
            for j in 0..4 {
                assert!((got[i][j] - want[i][j]).abs() < 1e-14, "{i},{j}");
            }
        }
        assert!(
            got[1].iter().all(|&v| v == 0.0),
            "zero pattern has no similarity"
        );
        Ok(())
    }

    #[test]
    fn zero_row_gradient_is_finite() -> Result<()> {
        let x = Var::new(&[[1f64, 2.0], [0.0, 0.0], [2.0, 1.0]], &Device::Cpu)?;
        let g = cosine_similarity(x.as_tensor())?.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f64>()?;
        // Finite (torch's F.normalize gives the same 1/eps-scaled value at a zero row), never NaN.
        assert!(gx.iter().flatten().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn keeps_dtype() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.0], [2.0, 1.0]], &Device::Cpu)?;
        assert_eq!(cosine_similarity(&x)?.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_typed_errors() -> Result<()> {
        let dev = Device::Cpu;
        let e = cosine_similarity(&Tensor::zeros((2, 3, 4), DType::F64, &dev)?).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::Rank { .. })
        ));
        let e = cosine_similarity(&Tensor::zeros((0, 4), DType::F64, &dev)?).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::Empty { .. })
        ));
        let x = Tensor::new(&[[1f64, f64::INFINITY], [1.0, 0.0]], &dev)?;
        let e = cosine_similarity(&x).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::NonFinite { .. })
        ));
        let e = cosine_similarity(&Tensor::zeros((2, 2), DType::U32, &dev)?).unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::DType { .. })
        ));
        Ok(())
    }
}
