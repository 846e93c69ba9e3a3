//! The associative memories the modern Hopfield network generalises, for comparisons such as the
//! paper's storage-capacity experiment: binary `±1` states and patterns, energies and update
//! rules in closed form.
//!
//! * [`ClassicalHopfield`] (Hopfield, 1982): Hebbian weights `W = X^T X / d` (zero diagonal),
//!   energy `E(s) = -1/2 s^T W s`, update `s <- sign(W s)`; stores about `0.14 d` random patterns.
//! * [`DenseAssociativeMemory`] (Krotov & Hopfield, 2016; Demircigil et al., 2017): energy
//!   `E(s) = -sum_mu F(x_mu . s)` with a polynomial `F(z) = z^n` or `F(z) = exp(z)`, update
//!   `s_i <- sign(sum_mu F(x_mu_i + sum_{j != i} x_mu_j s_j) - F(-x_mu_i + sum_{j != i} x_mu_j s_j))`
//!   (the sign that lowers the energy); stores about `d^(n-1)` (polynomial) or `2^(d/2)`
//!   (exponential) random patterns.
//!
//! Updates are synchronous (every unit at once from the same state), computed in f64 (the
//! exponential interaction reaches `exp(d)`); `sign(0)` is `+1`. Patterns and states of the wrong
//! shape or dtype, or with NaN/inf, are a [`HopfieldError`] naming the argument.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use hopfield_nn::classical::{ClassicalHopfield, DenseAssociativeMemory, Interaction};
//! let x = Tensor::new(&[[1f64, 1., 1., 1., -1., -1., -1., -1.], [1., -1., 1., -1., 1., -1., 1., -1.]], &Device::Cpu)?;
//! let noisy = Tensor::new(&[[1f64, 1., 1., -1., -1., -1., -1., -1.]], &Device::Cpu)?; // one bit flipped
//! let hebb = ClassicalHopfield::store(&x)?;
//! assert_eq!(hebb.update(&noisy)?.to_vec2::<f64>()?[0], x.to_vec2::<f64>()?[0]);
//! let dense = DenseAssociativeMemory::new(&x, Interaction::Exponential)?;
//! assert_eq!(dense.update(&noisy)?.to_vec2::<f64>()?[0], x.to_vec2::<f64>()?[0]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Result, Tensor, D};
use hopfield_core::HopfieldError;

/// `+1` where `x >= 0`, else `-1`.
fn sign(x: &Tensor) -> Result<Tensor> {
    let pos = x.ge(0.0)?.to_dtype(x.dtype())?;
    (pos * 2.0)? - 1.0
}

/// A float tensor `(rows, d)` (any `d` when `d` is `None`) without NaN or inf, as f64: the
/// patterns and states of these memories; anything else is a typed error naming `arg`.
fn checked(arg: &'static str, x: &Tensor, d: Option<usize>) -> Result<Tensor> {
    let ok = match (x.dims(), d) {
        ([_, k], Some(d)) => *k == d,
        ([_, _], None) => true,
        _ => false,
    };
    if !ok || !x.dtype().is_float() {
        let expected = match d {
            Some(d) => format!("(M, {d}) float"),
            None => "(N, d) float".into(),
        };
        return Err(HopfieldError::Shape {
            arg,
            expected,
            got: x.dims().to_vec(),
        }
        .into());
    }
    if !hopfield_cuda::all_finite(x)? {
        return Err(HopfieldError::NonFinite { arg }.into());
    }
    x.to_dtype(DType::F64)
}

/// States must be `(M, d)` for the memory's `d`.
fn states(arg: &'static str, s: &Tensor, d: usize) -> Result<Tensor> {
    checked(arg, s, Some(d))
}

/// The classical binary Hopfield network with Hebbian weights.
#[derive(Debug, Clone)]
pub struct ClassicalHopfield {
    /// `X^T X / d`, zero diagonal, `(d, d)`.
    w: Tensor,
}

impl ClassicalHopfield {
    /// Stores the `±1` patterns `x` `(N, d)` (Hebb's rule).
    pub fn store(x: &Tensor) -> Result<Self> {
        let x = checked("patterns", x, None)?;
        let (_, d) = x.dims2()?;
        let w = (x.t()?.matmul(&x)? / d.max(1) as f64)?;
        let off_diagonal = (Tensor::ones((d, d), DType::F64, x.device())?
            - Tensor::eye(d, DType::F64, x.device())?)?;
        Ok(Self {
            w: (w * off_diagonal)?,
        })
    }

    /// The weights `(d, d)`.
    pub fn weights(&self) -> &Tensor {
        &self.w
    }

    /// `E(s) = -1/2 s^T W s` for each state `s` (rows of `(M, d)`), `(M)`.
    pub fn energy(&self, s: &Tensor) -> Result<Tensor> {
        let s = states("s", s, self.w.dim(0)?)?;
        (s.matmul(&self.w)? * &s)?.sum(D::Minus1)? * -0.5
    }

    /// One synchronous update `s <- sign(W s)` of each state (rows of `(M, d)`).
    pub fn update(&self, s: &Tensor) -> Result<Tensor> {
        let s = states("s", s, self.w.dim(0)?)?;
        sign(&s.matmul(&self.w)?)
    }
}

/// The interaction function `F` of a [`DenseAssociativeMemory`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Interaction {
    /// `F(z) = z^n` (n = 2 is the classical network's energy).
    Polynomial(i32),
    /// `F(z) = exp(z)`.
    Exponential,
}

/// The dense associative memory of Krotov and Hopfield with a polynomial or exponential
/// interaction.
#[derive(Debug, Clone)]
pub struct DenseAssociativeMemory {
    /// The stored `±1` patterns `(N, d)`, f64.
    x: Tensor,
    f: Interaction,
}

impl DenseAssociativeMemory {
    /// Stores the `±1` patterns `x` `(N, d)`.
    pub fn new(x: &Tensor, f: Interaction) -> Result<Self> {
        let x = checked("patterns", x, None)?;
        if let Interaction::Polynomial(n) = f {
            if n < 1 {
                return Err(HopfieldError::Config {
                    field: "interaction",
                    reason: format!("polynomial degree {n} must be >= 1"),
                }
                .into());
            }
        }
        Ok(Self { x, f })
    }

    /// `E(s) = -sum_mu F(x_mu . s)` for each state (rows of `(M, d)`), `(M)`.
    pub fn energy(&self, s: &Tensor) -> Result<Tensor> {
        let s = states("s", s, self.x.dim(1)?)?;
        let z = s.matmul(&self.x.t()?)?;
        let f = match self.f {
            // z^n of negative z with a float power is NaN: integer powers by repeated products.
            Interaction::Polynomial(n) => (1..n).try_fold(z.clone(), |acc, _| acc * &z)?,
            Interaction::Exponential => z.exp()?,
        };
        f.sum(D::Minus1)?.neg()
    }

    /// One synchronous update of each state (rows of `(M, d)`): every unit takes the sign that
    /// gives the lower energy with the other units fixed.
    pub fn update(&self, s: &Tensor) -> Result<Tensor> {
        let s = states("s", s, self.x.dim(1)?)?;
        let (m, d) = s.dims2()?;
        let n = self.x.dim(0)?;
        // a[m, mu] = x_mu . s_m; without unit i: a - x_mu_i s_m_i, shape (M, N, d).
        let a = s.matmul(&self.x.t()?)?;
        let own = self.x.unsqueeze(0)?.broadcast_mul(&s.unsqueeze(1)?)?;
        let rest = a.unsqueeze(2)?.broadcast_as((m, n, d))?.sub(&own)?;
        let xb = self.x.unsqueeze(0)?.broadcast_as((m, n, d))?;
        let (plus, minus) = ((&rest + &xb)?, (&rest - &xb)?);
        let gain = match self.f {
            Interaction::Polynomial(k) => {
                let pow = |t: &Tensor| (1..k).try_fold(t.clone(), |acc, _| acc * t);
                (pow(&plus)?.sum(1)? - pow(&minus)?.sum(1)?)?
            }
            // sign(sum e^plus - sum e^minus) = sign(lse(plus) - lse(minus)): no overflow.
            Interaction::Exponential => (lse(&plus)? - lse(&minus)?)?,
        };
        sign(&gain)
    }
}

/// log-sum-exp over dim 1 of `(M, N, d)`.
fn lse(t: &Tensor) -> Result<Tensor> {
    let m = t.max_keepdim(1)?;
    (t.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + m)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random_patterns(n: usize, d: usize, seed: u64) -> Result<Tensor> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f64> = (0..n * d)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x & 1 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu)
    }

    fn fixed_points(s: &Tensor, next: &Tensor) -> Result<usize> {
        let same = s.eq(next)?.to_dtype(DType::F64)?.min(1)?;
        Ok(same.sum_all()?.to_scalar::<f64>()? as usize)
    }

    #[test]
    fn classical_stores_few_patterns_not_many() -> Result<()> {
        let few = random_patterns(3, 100, 1)?;
        let net = ClassicalHopfield::store(&few)?;
        assert_eq!(fixed_points(&few, &net.update(&few)?)?, 3);
        // 60 patterns in 100 units: far beyond 0.14 d, most are not fixed points.
        let many = random_patterns(60, 100, 2)?;
        let net = ClassicalHopfield::store(&many)?;
        assert!(fixed_points(&many, &net.update(&many)?)? < 30);
        Ok(())
    }

    #[test]
    fn dense_memories_store_many_patterns() -> Result<()> {
        // 32 units: the classical network holds ~4 patterns, the cubic one tens,
        // the exponential one exponentially many.
        for (n, f) in [
            (15, Interaction::Polynomial(3)),
            (200, Interaction::Exponential),
        ] {
            let many = random_patterns(n, 32, 3)?;
            let net = DenseAssociativeMemory::new(&many, f)?;
            assert_eq!(fixed_points(&many, &net.update(&many)?)?, n, "{f:?}");
        }
        Ok(())
    }

    /// The update takes each unit's lower-energy sign: for a single flipped unit, the update of
    /// that unit never raises the energy.
    #[test]
    fn the_update_lowers_the_energy_unit_by_unit() -> Result<()> {
        let x = random_patterns(20, 24, 4)?;
        let s = random_patterns(5, 24, 5)?;
        for f in [
            Interaction::Polynomial(2),
            Interaction::Polynomial(3),
            Interaction::Exponential,
        ] {
            let net = DenseAssociativeMemory::new(&x, f)?;
            let next = net.update(&s)?.to_vec2::<f64>()?;
            let rows = s.to_vec2::<f64>()?;
            for (row, upd) in rows.iter().zip(&next) {
                for i in 0..24 {
                    let mut one = row.clone();
                    one[i] = upd[i];
                    let e = |v: &Vec<f64>| -> Result<f64> {
                        let t = Tensor::new(v.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
                        net.energy(&t)?.squeeze(0)?.to_scalar::<f64>()
                    };
                    assert!(e(&one)? <= e(row)? + 1e-9 * e(row)?.abs().max(1.0), "{f:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_input_is_a_typed_error() -> Result<()> {
        let x = random_patterns(4, 6, 8)?;
        let kind = |e: candle_core::Error| HopfieldError::find(&e).map(|k| k.to_string());
        let net = ClassicalHopfield::store(&x)?;
        let wrong = random_patterns(2, 5, 9)?;
        let e = kind(net.update(&wrong).unwrap_err()).expect("typed");
        assert!(e.contains("(M, 6)") && e.contains("[2, 5]"), "{e}");
        let nan = Tensor::full(f64::NAN, (1, 6), &Device::Cpu)?;
        let e = kind(net.energy(&nan).unwrap_err()).expect("typed");
        assert!(e.contains("non-finite"), "{e}");
        let ints = Tensor::zeros((4, 6), DType::U32, &Device::Cpu)?;
        assert!(kind(ClassicalHopfield::store(&ints).unwrap_err()).is_some());
        let flat = Tensor::zeros(6, DType::F64, &Device::Cpu)?;
        assert!(
            kind(DenseAssociativeMemory::new(&flat, Interaction::Exponential).unwrap_err())
                .is_some()
        );
        let e = DenseAssociativeMemory::new(&x, Interaction::Polynomial(0)).unwrap_err();
        assert!(kind(e).expect("typed").contains("degree 0"));
        Ok(())
    }

    #[test]
    fn classical_energy_is_the_quadratic_form() -> Result<()> {
        let x = random_patterns(4, 10, 6)?;
        let net = ClassicalHopfield::store(&x)?;
        let s = random_patterns(1, 10, 7)?;
        let w = net.weights().to_vec2::<f64>()?;
        let v = s.to_vec2::<f64>()?[0].clone();
        let direct: f64 = -0.5
            * (0..10)
                .flat_map(|i| (0..10).map(move |j| (i, j)))
                .map(|(i, j)| v[i] * w[i][j] * v[j])
                .sum::<f64>();
        let e = net.energy(&s)?.to_vec1::<f64>()?[0];
        assert!((e - direct).abs() < 1e-12);
        Ok(())
    }
}
