//! Symmetric eigendecomposition on f64 host data by the cyclic Jacobi method.
//!
//! Small N only (the spectral operator is O(N^3) by nature); Jacobi is simple, backward stable and
//! accurate to a few ulps, which is all the heat kernel needs.

use crate::{validate, DiffusionError};
use candle_core::Result;

/// Eigenvalues `lambda` and column eigenvectors `U` (row-major N x N, `U[i * n + j]` = component i
/// of eigenvector j) of the symmetric matrix `a` (row-major N x N, only the lower triangle is
/// read, like `torch.linalg.eigh`). `A = U diag(lambda) U^T`, `U^T U = I`. At most 100 sweeps of
/// O(N^3) each. Errors (typed): `a.len() != n * n`, NaN/inf entries, N x N buffers that cannot be
/// allocated, eigenvalues beyond f64 ([`DiffusionError::Overflow`]). Entries beyond ~1e154 are
/// handled by an exact power-of-two rescaling.
///
/// ```
/// let (lam, _) = dahn_diffusion::symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2)?;
/// let mut lam = lam;
/// lam.sort_by(f64::total_cmp);
/// assert!((lam[0] - 1.0).abs() < 1e-15 && (lam[1] - 3.0).abs() < 1e-15);
/// assert!(dahn_diffusion::symmetric_eigen(&[1.0], 2).is_err());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let what = "symmetric_eigen";
    let elems = validate::can_allocate(what, &[n, n, 2], 8)? / 2;
    if a.len() != elems {
        return Err(DiffusionError::ShapeMismatch(format!(
            "{what}: a has {} entries, expected n * n = {elems}",
            a.len()
        ))
        .into());
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(DiffusionError::NonFinite {
            what: "symmetric_eigen: a",
        }
        .into());
    }
    let mut m = vec![0f64; elems];
    for i in 0..n {
        for j in 0..=i {
            m[i * n + j] = a[i * n + j];
            m[j * n + i] = a[i * n + j];
        }
    }
    let mut v = vec![0f64; elems];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let mut scale: f64 = m.iter().map(|x| x * x).sum::<f64>();
    // Squares beyond f64 would end the sweeps at once (off <= inf): work on A / 2^e (exact) and
    // scale the eigenvalues back.
    let mut unscale = (1.0, 1.0);
    if !scale.is_finite() {
        let max = m.iter().fold(0f64, |a, x| a.max(x.abs()));
        let e = max.log2().ceil() as i32 + (n as f64).log2().ceil() as i32;
        // Two half steps: 2^e alone can overflow when the entries are near f64::MAX.
        let half = 2f64.powi(-(e / 2));
        let rest = 2f64.powi(-(e - e / 2));
        m.iter_mut().for_each(|x| *x = *x * half * rest);
        unscale = (half, rest);
        scale = m.iter().map(|x| x * x).sum::<f64>();
    }
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += m[p * n + q] * m[p * n + q];
            }
        }
        if off <= scale * 1e-32 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                // theta^2 overflows for |theta| > 1e154; there t = 1 / (2 theta) to full precision.
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * apk - s * aqk;
                    m[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let lam: Vec<f64> = (0..n)
        .map(|i| m[i * n + i] / unscale.0 / unscale.1)
        .collect();
    if lam.iter().any(|l| !l.is_finite()) {
        // Entries near f64::MAX can have eigenvalues beyond it (e.g. [[M, M], [M, M]]: 2M).
        return Err(DiffusionError::Overflow {
            what: "symmetric_eigen: eigenvalues",
            dtype: "F64".into(),
        }
        .into());
    }
    Ok((lam, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstructs_and_is_orthogonal() {
        let n = 7;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let x = ((i * 31 + j * 17) % 11) as f64 / 7.0 - 0.6;
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        // Repeated eigenvalues too: a block diagonal with two equal blocks.
        let (lam, u) = symmetric_eigen(&a, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|k| u[i * n + k] * lam[k] * u[j * n + k]).sum();
                assert!((r - a[i * n + j]).abs() < 1e-13, "reconstruction {i},{j}");
                let o: f64 = (0..n).map(|k| u[k * n + i] * u[k * n + j]).sum();
                assert!(
                    (o - if i == j { 1.0 } else { 0.0 }).abs() < 1e-13,
                    "orthogonality {i},{j}"
                );
            }
        }
        let (lam2, _) = symmetric_eigen(&[2.0, 0.0, 0.0, 2.0], 2).unwrap();
        assert_eq!(lam2, vec![2.0, 2.0]);
    }
}
