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
        match self.candle() {
            Some(a) => a.forward(x),
            // candle-nn has no tanh activation.
            None => x.tanh(),
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
            Self::Tanh => None,
        }
    }
}
