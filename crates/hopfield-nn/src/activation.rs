//! Element-wise activations named as hflayers names them (`torch.<name>`).

use candle_core::{Result, Tensor};
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
            other => Err(HopfieldError::Config {
                field: "activation",
                reason: format!(
                    "unknown activation {other:?} (expected relu, tanh, sigmoid or gelu)"
                ),
            }),
        }
    }

    /// Applies the activation (differentiable).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Tanh => x.tanh(),
            // Composed so that every dtype and autograd work.
            Self::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
            Self::Gelu => x.gelu_erf(),
        }
    }
}
