//! The `--device cpu|cuda` choice of the examples and benchmarks, parsed once and resolved with
//! clear errors: asking for CUDA in a build without the `cuda` feature says so instead of
//! silently running on the CPU.

use candle_core::{Device, Result};
use std::fmt;
use std::str::FromStr;

/// Where to run: `auto` (the first CUDA device when built with `cuda` and one is present, else
/// the CPU), `cpu`, or `cuda` / `cuda:N`.
///
/// ```
/// use hopfield_cuda::DeviceChoice;
/// let cpu: DeviceChoice = "cpu".parse()?;
/// assert!(cpu.device()?.is_cpu());
/// assert_eq!("cuda:1".parse::<DeviceChoice>()?, DeviceChoice::Cuda(1));
/// assert!("tpu".parse::<DeviceChoice>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `N` (an error if the build has no `cuda` feature or the device is missing).
    Cuda(usize),
}

/// An unknown device name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDevice(pub String);

impl fmt::Display for UnknownDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown device {:?}: use auto, cpu, cuda or cuda:N",
            self.0
        )
    }
}

impl std::error::Error for UnknownDevice {}

impl FromStr for DeviceChoice {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| UnknownDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The device to run on.
    pub fn device(&self) -> Result<Device> {
        match self {
            Self::Auto => Device::cuda_if_available(0),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if cfg!(feature = "cuda") {
                    Device::new_cuda(*n)
                } else {
                    candle_core::bail!(
                        "device cuda:{n} asked for, but this build has no CUDA: rebuild with --features cuda"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!("AUTO".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!(DeviceChoice::Auto.device().is_ok());
        if !cfg!(feature = "cuda") {
            let err = DeviceChoice::Cuda(0).device().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
