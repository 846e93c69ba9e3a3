//! Element-wise activations named as hflayers names them (`torch.<name>`).

use candle_core::{Module, Result, Tensor};
use hopfield_core::HopfieldError;

/// An activation applied to a module's output or inside a feed-forward block.
///
/// ```
/// use hopfield_nn::Activation;
/// assert_eq!(Activation::from_name("tanh")?, Activation::Tanh);
/// assert!(Activation::from_name("swishh").is_err());
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// 1 / (1 + exp(-x)).
    Sigmoid,
    /// GELU (erf form, PyTorch's default).
    Gelu,
    /// |x| (`torch.abs`).
    Abs,
    /// exp(x) (`torch.exp`).
    Exp,
    /// SELU (`torch.selu`): `scale (max(0, x) + min(0, alpha (exp(x) - 1)))`.
    Selu,
    /// CELU with alpha 1 (`torch.celu`): `max(0, x) + min(0, exp(x) - 1)`.
    Celu,
    /// x^2 (`torch.square`).
    Square,
    /// sin(x) (`torch.sin`).
    Sin,
    /// cos(x) (`torch.cos`).
    Cos,
}

impl Activation {
    /// Parses a PyTorch function name. Unlike hflayers, an unknown name is an error instead of
    /// silently meaning "no activation" (quirk Q9).
    pub fn from_name(name: &str) -> std::result::Result<Self, HopfieldError> {
        match name {
            "relu" => Ok(Self::Relu),
            "tanh" => Ok(Self::Tanh),
            "sigmoid" => Ok(Self::Sigmoid),
            "gelu" => Ok(Self::Gelu),
            "abs" => Ok(Self::Abs),
            "exp" => Ok(Self::Exp),
            "selu" => Ok(Self::Selu),
            "celu" => Ok(Self::Celu),
            "square" => Ok(Self::Square),
            "sin" => Ok(Self::Sin),
            "cos" => Ok(Self::Cos),
            other => Err(HopfieldError::Config {
                field: "activation",
                reason: format!(
                    "unknown activation {other:?} (expected one of relu, tanh, sigmoid, gelu, \
                     abs, exp, selu, celu, square, sin, cos)"
                ),
            }),
        }
    }

    /// Applies the activation (differentiable).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        if let Some(a) = self.candle() {
            return a.forward(x);
        }
        // The functions candle-nn has no activation for.
        match self {
            Self::Tanh => x.tanh(),
            Self::Abs => x.abs(),
            Self::Exp => x.exp(),
            Self::Square => x.sqr(),
            Self::Sin => x.sin(),
            Self::Cos => x.cos(),
            Self::Selu => {
                // torch's constants
                const ALPHA: f64 = 1.673_263_242_354_377_3;
                const SCALE: f64 = 1.050_700_987_355_480_5;
                (x.relu()? + x.minimum(0.0)?.exp()?.affine(ALPHA, -ALPHA)?)? * SCALE
            }
            Self::Celu => x.relu()? + x.minimum(0.0)?.exp()?.affine(1.0, -1.0)?,
            Self::Relu | Self::Sigmoid | Self::Gelu => unreachable!("candle-nn has these"),
        }
    }

    /// The same function as candle-nn's activation, where candle-nn has it (one implementation
    /// per function: hflayers' names map onto candle-nn's).
    ///
    /// ```
    /// use hopfield_nn::Activation;
    /// assert_eq!(Activation::Gelu.candle(), Some(candle_nn::Activation::Gelu));
    /// assert_eq!(Activation::Tanh.candle(), None);
    /// ```
    pub fn candle(self) -> Option<candle_nn::Activation> {
        match self {
            Self::Relu => Some(candle_nn::Activation::Relu),
            Self::Sigmoid => Some(candle_nn::Activation::Sigmoid),
            // torch.nn.functional.gelu's default is the erf form, candle-nn's `Gelu`.
            Self::Gelu => Some(candle_nn::Activation::Gelu),
            Self::Tanh
            | Self::Abs
            | Self::Exp
            | Self::Selu
            | Self::Celu
            | Self::Square
            | Self::Sin
            | Self::Cos => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every name against torch's formula at a few points (values from torch 2.15).
    #[test]
    fn torch_functions_match_torch() -> Result<()> {
        let x = Tensor::new(&[-2f64, -0.5, 0., 1.5], &Device::Cpu)?;
        let cases: [(&str, [f64; 4]); 7] = [
            ("abs", [2., 0.5, 0., 1.5]),
            ("exp", [(-2f64).exp(), (-0.5f64).exp(), 1., 1.5f64.exp()]),
            (
                "selu",
                [
                    -1.520_166_468_595_694_8,
                    -0.691_758_187_802_871_3,
                    0.,
                    1.576_051_481_033_220_7,
                ],
            ),
            (
                "celu",
                [-0.864_664_716_763_387_3, -0.393_469_340_287_366_6, 0., 1.5],
            ),
            ("square", [4., 0.25, 0., 2.25]),
            ("sin", [(-2f64).sin(), (-0.5f64).sin(), 0., 1.5f64.sin()]),
            ("cos", [(-2f64).cos(), (-0.5f64).cos(), 1., 1.5f64.cos()]),
        ];
        for (name, want) in cases {
            let got = Activation::from_name(name)
                .map_err(candle_core::Error::wrap)?
                .apply(&x)?
                .to_vec1::<f64>()?;
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{name}: {got:?} vs {want:?}");
            }
        }
        Ok(())
    }
}
