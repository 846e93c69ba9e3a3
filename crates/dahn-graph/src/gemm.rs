//! The dense product both kNN builders are made of: `a b^T` into a caller's buffer through the
//! `gemm` crate (candle's own matmul allocates and zeroes a fresh output on every call).

use candle_core::WithDType;
use gemm::Parallelism;

/// `dst (m, n) = a (m, d) b (n, d)^T`, row-major; on all of rayon's threads when `parallel`,
/// else on the calling one.
pub(crate) fn gemm_abt<T: WithDType>(
    dst: &mut [T],
    a: &[T],
    b: &[T],
    (m, n, d): (usize, usize, usize),
    parallel: bool,
) {
    assert!(dst.len() >= m * n && a.len() >= m * d && b.len() >= n * d);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the three slices hold the matrices (checked above) and `dst` is borrowed mutably,
    // so it overlaps neither factor. b^T is read in place with swapped strides; with `read_dst`
    // false, dst is only written (`dst = 1 * a b^T`).
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            d as isize,
            b.as_ptr(),
            d as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            if parallel {
                Parallelism::Rayon(0)
            } else {
                Parallelism::None
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_dot_products() {
        let (m, n, d) = (5, 7, 3);
        let a: Vec<f64> = (0..m * d).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..n * d).map(|i| (i as f64 * 0.71).cos()).collect();
        for parallel in [false, true] {
            let mut dst = vec![f64::NAN; m * n];
            gemm_abt(&mut dst, &a, &b, (m, n, d), parallel);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..d).map(|t| a[i * d + t] * b[j * d + t]).sum();
                    assert!((dst[i * n + j] - want).abs() < 1e-12);
                }
            }
        }
    }
}
