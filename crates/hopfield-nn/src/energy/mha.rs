//! `EnergyMHA`: the Energy Transformer's attention energy, with per-head query/key weights and a
//! learnable beta per head.
//!
//! With `q_A = Wq^h x_A`, `k_B = Wk^h x_B`, `A_AB = q_A . k_B`, `P = softmax_B(beta_h A)`:
//! `E = -sum_h 1/beta_h sum_A logsumexp_B(beta_h A_AB)` and
//! `dE/dx_C = -sum_h [Wq^h^T sum_B P_CB k_B + Wk^h^T sum_A P_AC q_A]` (the `1/beta` cancels).

use super::validate::{self, compute_dtype, param_name, upcast};
use super::{as_batched, lse_softmax, Energy, EtError};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The attention energy. State-dict names (under its prefix): `Wq`, `Wk` `(H, D/H, D)`, `beta` `(H,)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
/// use hopfield_nn::energy::{Energy, EnergyMHA};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
/// let mha = EnergyMHA::new(8, 2, vb.pp("mha"))?;
/// let x = Tensor::randn(0f64, 1., (2, 5, 8), &Device::Cpu)?;
/// let g = mha.forward(&x)?; // the port's forward = dE/dx
/// assert_eq!(g.dims(), &[2, 5, 8]);
/// assert_eq!(mha.energy(&x)?.dims(), &[] as &[usize]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EnergyMHA {
    wq: Tensor,
    wk: Tensor,
    beta: Tensor,
    n_heads: usize,
    dim: usize,
    exclude_self: bool,
    /// State-dict names of `Wq`, `Wk`, `beta`, for errors.
    names: [String; 3],
}

impl EnergyMHA {
    /// The port's defaults: beta `1/sqrt(D/H)` (exact, the port rounds it to f32), weights
    /// `0.002 N(0, 1)`, self-attention included.
    pub fn new(embed_dim: usize, n_heads: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_options(embed_dim, n_heads, None, 0.002, false, vb)
    }

    /// Full control: initial betas (one per head), init std of `Wq`/`Wk`, and whether a token's
    /// attention to itself is excluded (the paper's formula; for a single token the energy is then 0
    /// and the gradient 0).
    pub fn with_options(
        embed_dim: usize,
        n_heads: usize,
        beta: Option<&[f64]>,
        init_scale: f64,
        exclude_self: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if embed_dim == 0 || n_heads == 0 || !embed_dim.is_multiple_of(n_heads) {
            return Err(EtError::Config {
                field: "n_heads",
                value: format!("{n_heads} (embed_dim {embed_dim})"),
                reason: "must be > 0 and divide embed_dim",
            }
            .into());
        }
        validate::scalar("init_scale", init_scale, true)?;
        validate::model_dtype(vb.dtype())?;
        validate::representable("init_scale", init_scale, vb.dtype())?;
        if let Some(b) = beta {
            if b.len() != n_heads {
                return Err(EtError::Config {
                    field: "beta",
                    value: format!("{b:?}"),
                    reason: "needs one beta per head",
                }
                .into());
            }
            if b.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(EtError::Config {
                    field: "beta",
                    value: format!("{b:?}"),
                    reason: "must be finite and > 0",
                }
                .into());
            }
            for &v in b {
                validate::representable("beta", v, vb.dtype())?;
            }
        }
        let head_dim = embed_dim / n_heads;
        let names = ["Wq", "Wk", "beta"].map(|n| param_name(&vb, n));
        for name in &names[..2] {
            validate::alloc(
                name,
                &[n_heads, head_dim, embed_dim],
                vb.dtype(),
                vb.device(),
            )?;
        }
        validate::alloc(&names[2], &[n_heads], vb.dtype(), vb.device())?;
        let w_init = Init::Randn {
            mean: 0.0,
            stdev: init_scale,
        };
        let wq = hopfield_core::checked_param(&vb, (n_heads, head_dim, embed_dim), "Wq", w_init)?;
        let wk = hopfield_core::checked_param(&vb, (n_heads, head_dim, embed_dim), "Wk", w_init)?;
        let beta = match beta {
            Some(b) => {
                let existed = vb.contains_tensor("beta");
                let t = hopfield_core::checked_param(&vb, n_heads, "beta", Init::Const(1.0))?;
                if !existed {
                    init_values(&t, b)?;
                }
                t
            }
            None => hopfield_core::checked_param(
                &vb,
                n_heads,
                "beta",
                Init::Const(1.0 / (head_dim as f64).sqrt()),
            )?,
        };
        let mha = Self {
            wq,
            wk,
            beta,
            n_heads,
            dim: embed_dim,
            exclude_self,
            names,
        };
        mha.check_params(false)?;
        Ok(mha)
    }

    /// Errors naming the first parameter holding NaN or infinities (in the model's dtype, so an
    /// init scale or beta the dtype cannot hold is caught), or with `betas` a zero beta.
    pub(crate) fn check_params(&self, betas: bool) -> Result<()> {
        validate::param(&self.names[0], &self.wq)?;
        validate::param(&self.names[1], &self.wk)?;
        validate::param(&self.names[2], &self.beta)?;
        if betas {
            validate::nonzero_beta(&self.names[2], &self.beta)?;
        }
        Ok(())
    }

    /// Validates tokens `x` `(..., L, D)` and that the attention scores `(B, H, L, L)` they need
    /// can be allocated.
    pub(crate) fn check_input(&self, arg: &'static str, x: &Tensor) -> Result<()> {
        validate::tokens(arg, x, &self.wq, self.dim, 2)?;
        self.check_work(arg, x)
    }

    /// That the intermediates for (already validated) tokens `x` can be allocated.
    pub(crate) fn check_work(&self, arg: &'static str, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let r = dims.len();
        let b = validate::elem_count(arg, &dims[..r - 2])?;
        let l = dims[r - 2];
        let scores = [b, self.n_heads, l, l];
        let dtype = compute_dtype(x.dtype());
        validate::alloc("attention scores (B, H, L, L)", &scores, dtype, x.device())?;
        if self.exclude_self {
            validate::alloc(
                "self-attention mask (L, L)",
                &[l, l],
                DType::F64,
                x.device(),
            )?;
        }
        Ok(())
    }

    /// `Wq`, `(H, D/H, D)`.
    pub fn wq(&self) -> &Tensor {
        &self.wq
    }
    /// `Wk`, `(H, D/H, D)`.
    pub fn wk(&self) -> &Tensor {
        &self.wk
    }
    /// The per-head betas, `(H,)`.
    pub fn beta(&self) -> &Tensor {
        &self.beta
    }
    /// Model dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `q`, `k` `(B, H, L, Z)` and the scaled scores `beta_h A` `(B, H, L, L)` (diagonal at -inf when
    /// self-attention is excluded).
    fn scores(&self, x3: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        hopfield_cuda::attention_scores(
            x3,
            &upcast(&self.wq)?,
            &upcast(&self.wk)?,
            &upcast(&self.beta)?,
            self.exclude_self,
        )
    }

    /// Whether the energy is identically zero: no tokens (an empty sum), or a single token with
    /// self-attention excluded.
    fn degenerate(&self, x3: &Tensor) -> Result<bool> {
        Ok(x3.elem_count() == 0 || (self.exclude_self && x3.dim(1)? < 2))
    }

    /// Closed-form `dE/dWq`, `dE/dWk`, `dE/dbeta` (first order), e.g. for checks or custom optimisers.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::energy::EnergyMHA;
    /// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
    /// let mha = EnergyMHA::new(4, 2, vb)?;
    /// let x = Tensor::randn(0f64, 1., (3, 4), &Device::Cpu)?;
    /// let (gq, gk, gb) = mha.param_grads(&x)?;
    /// assert_eq!((gq.dims(), gk.dims(), gb.dims()), (&[2, 2, 4][..], &[2, 2, 4][..], &[2][..]));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn param_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.check_input("x", x)?;
        let g = self.raw_param_grads(x).map(|(q, k, b)| vec![q, k, b]);
        let g = validate::results("attention parameter gradients", "x", x, g, || {
            self.check_params(true)
        })?;
        Ok((g[0].clone(), g[1].clone(), g[2].clone()))
    }

    fn raw_param_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (x3, _) = as_batched(x)?;
        if self.degenerate(&x3)? {
            return Ok((
                self.wq.zeros_like()?,
                self.wk.zeros_like()?,
                self.beta.zeros_like()?,
            ));
        }
        let x3 = upcast(&x3)?;
        let (q, k, s) = self.scores(&x3)?;
        let (lse, p) = lse_softmax(&s)?;
        let a = q.matmul(&k.t()?)?;
        let xb = x3.unsqueeze(1)?; // (B, 1, L, D)
                                   // dE/dWq^h = -sum_A (P k)_A x_A^T; dE/dWk^h = -sum_B (P^T q)_B x_B^T.
        let pk = p.matmul(&k)?;
        let ptq = p.t()?.matmul(&q)?;
        let gq = pk.t()?.broadcast_matmul(&xb)?.sum(0)?.neg()?;
        let gk = ptq.t()?.broadcast_matmul(&xb)?.sum(0)?.neg()?;
        // dE/dbeta_h = 1/beta^2 sum lse - 1/beta sum P A (masked entries have P = 0).
        let lse_h = lse.sum((0, 2, 3))?;
        let pa = p.mul(&a)?.sum((0, 2, 3))?;
        let inv = upcast(&self.beta)?.recip()?;
        let gb = ((lse_h * inv.sqr()?)? - (pa * inv)?)?;
        let dt = self.wq.dtype();
        Ok((gq.to_dtype(dt)?, gk.to_dtype(dt)?, gb.to_dtype(dt)?))
    }
}

/// Writes `values` into a variable a `VarMap` has just created (in place, so the map keeps tracking
/// it); a checkpoint's tensors are never overwritten because they already exist.
pub(crate) fn init_values(t: &Tensor, values: &[f64]) -> Result<()> {
    let n = t.elem_count();
    let v = Tensor::new(values, t.device())?
        .to_dtype(t.dtype())?
        .reshape(n)?;
    // A contiguous reshape shares the storage, which also covers 0-d tensors.
    t.reshape(n)?.slice_set(&v, 0, 0)
}

impl Energy for EnergyMHA {
    /// The energy; in f32 for an f16/bf16 model (see the module docs on hostile input).
    fn energy(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input("x", x)?;
        let e = self.raw_energy(x);
        validate::result("attention energy", "x", x, e, || self.check_params(true))
    }

    fn grad(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input("x", x)?;
        let g = self.raw_grad(x);
        validate::result("attention energy gradient", "x", x, g, || {
            self.check_params(true)
        })
    }
}

impl EnergyMHA {
    /// The energy without input validation (the block validates once per call), in the compute
    /// dtype.
    pub(crate) fn raw_energy(&self, x: &Tensor) -> Result<Tensor> {
        let (x3, _) = as_batched(x)?;
        if self.degenerate(&x3)? {
            return Tensor::zeros((), compute_dtype(x.dtype()), x.device());
        }
        let (_, _, s) = self.scores(&upcast(&x3)?)?;
        let (lse, _) = lse_softmax(&s)?;
        // -sum_h (1/beta_h) sum_{b, A} lse
        lse.sum((0, 2, 3))?
            .div(&upcast(&self.beta)?)?
            .sum_all()?
            .neg()
    }

    /// The gradient without input validation, in `x`'s dtype.
    pub(crate) fn raw_grad(&self, x: &Tensor) -> Result<Tensor> {
        let (x3, dims) = as_batched(x)?;
        if self.degenerate(&x3)? {
            return x.zeros_like();
        }
        // One fused node (and its closed-form backward) on the CPU; composed ops elsewhere.
        hopfield_cuda::attention_energy_grad(
            &upcast(&x3)?,
            &upcast(&self.wq)?,
            &upcast(&self.wk)?,
            &upcast(&self.beta)?,
            self.exclude_self,
        )?
        .reshape(dims)?
        .to_dtype(x.dtype())
    }
}

impl Module for EnergyMHA {
    /// The port's `forward`: `dE/dx`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.grad(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    pub(crate) fn mha(h: usize, d: usize, exclude_self: bool) -> Result<EnergyMHA> {
        let dev = Device::Cpu;
        let z = d / h;
        let wq = Tensor::randn(0f64, 1.0 / (d as f64).sqrt(), (h, z, d), &dev)?;
        let wk = Tensor::randn(0f64, 1.0 / (d as f64).sqrt(), (h, z, d), &dev)?;
        let beta = Tensor::rand(0.5f64, 1.5, h, &dev)?;
        let map = [("Wq", wq), ("Wk", wk), ("beta", beta)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let vb = VarBuilder::from_tensors(map, DType::F64, &dev);
        EnergyMHA::with_options(d, h, None, 0.0, exclude_self, vb)
    }

    #[test]
    fn single_token_without_self_attention_has_zero_energy() -> Result<()> {
        let m = mha(2, 4, true)?;
        let x = Tensor::randn(0f64, 1., (3, 1, 4), &Device::Cpu)?;
        assert_eq!(m.energy(&x)?.to_scalar::<f64>()?, 0.0);
        let g = m.grad(&x)?.abs()?.sum_all()?.to_scalar::<f64>()?;
        assert_eq!(g, 0.0);
        Ok(())
    }

    #[test]
    fn wrong_token_dim_is_a_typed_error() -> Result<()> {
        let m = mha(2, 4, false)?;
        let x = Tensor::zeros((2, 3, 5), DType::F64, &Device::Cpu)?;
        let e = m.energy(&x).unwrap_err().to_string();
        assert!(
            e.contains("x: expected tokens of dimension 4") && e.contains("[2, 3, 5]"),
            "{e}"
        );
        Ok(())
    }
}
