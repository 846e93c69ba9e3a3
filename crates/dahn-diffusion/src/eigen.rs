//! Symmetric eigendecomposition on f64 host data by the cyclic Jacobi method.
//!
//! Small N only (the spectral operator is O(N^3) by nature); Jacobi is simple, backward stable and
//! accurate to a few ulps, which is all the heat kernel needs.

/// Eigenvalues `lambda` and column eigenvectors `U` (row-major N x N, `U[i * n + j]` = component i
/// of eigenvector j) of the symmetric matrix `a` (row-major N x N, only the lower triangle is
/// read, like `torch.linalg.eigh`). `A = U diag(lambda) U^T`, `U^T U = I`.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            m[i * n + j] = a[i * n + j];
            m[j * n + i] = a[i * n + j];
        }
    }
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>();
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
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
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
    ((0..n).map(|i| m[i * n + i]).collect(), v)
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
        let (lam, u) = symmetric_eigen(&a, n);
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
        let (lam2, _) = symmetric_eigen(&[2.0, 0.0, 0.0, 2.0], 2);
        assert_eq!(lam2, vec![2.0, 2.0]);
    }
}
