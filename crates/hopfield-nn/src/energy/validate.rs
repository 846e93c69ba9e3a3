//! Boundary validation of the Energy Transformer, the one mechanism every public entry point of
//! this module goes through: a bad argument becomes an [`EtError`] naming the argument and its
//! shape before any data is touched, and a result that overflowed becomes an error instead of a
//! silent `inf` or `NaN`.
//!
//! What each check costs: shape, dtype, device, size and step-count checks read no data; an
//! input's finiteness is one pass over the input and a result's one pass over the result (tokens x
//! D, never the L x L attention scores); parameters are read once at construction and again only
//! to explain a failed call.
//!
//! The definitions for empty inputs (zero tokens, an empty batch): every energy is a sum over
//! tokens, so it is 0, its gradients are empty (or zero for parameters), and a run of steps returns
//! the empty tokens unchanged. Half-precision models (f16, bf16) compute in f32 and cast the
//! gradients back; their energies are returned in f32, where they do not overflow.

use super::EtError;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// The most descent steps one run may take (`n_iters`, from a config, port kwargs or the
/// `n_iters` argument). A constant, so a config value cannot remove it: a step count from an
/// untrusted file fails fast instead of hanging.
///
/// ```
/// use hopfield_nn::energy::{EnergyTransformerConfig, MAX_N_ITERS};
/// assert!(EnergyTransformerConfig::new(8, 16, 2).with_n_iters(MAX_N_ITERS).validate().is_ok());
/// let e = EnergyTransformerConfig::new(8, 16, 2).with_n_iters(MAX_N_ITERS + 1).validate();
/// assert!(e.unwrap_err().to_string().contains("n_iters"));
/// ```
pub const MAX_N_ITERS: usize = 10_000;

/// Allocations of at least this many bytes are probed (reserved and released) before the real
/// one, so an impossible size is an error instead of an abort; smaller ones are not worth a probe.
const PROBE_BYTES: u128 = 1 << 30;

/// The dtype the energies and gradients are computed in: f32 for f16/bf16 (whose range and
/// precision do not survive sums over tokens and memories), the dtype itself otherwise.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `t` in its [`compute_dtype`]; a cheap clone (no copy) for f32/f64.
pub(crate) fn upcast(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(compute_dtype(t.dtype()))
}

/// The dtypes the modules compute in.
fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// A `VarBuilder`'s dtype must be one the modules compute in (candle has no randn, exp or matmul
/// for the others).
pub(crate) fn model_dtype(dtype: DType) -> std::result::Result<(), EtError> {
    if !supported(dtype) {
        return Err(EtError::Config {
            field: "dtype",
            value: format!("{dtype:?}"),
            reason: "must be f16, bf16, f32 or f64",
        });
    }
    Ok(())
}

/// The full state-dict name of parameter `name` under `vb`'s prefix.
pub(crate) fn param_name(vb: &VarBuilder, name: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A constructor size argument (`dim`, `hidden_dim`, ...) must be > 0.
pub(crate) fn positive(field: &'static str, value: usize) -> std::result::Result<(), EtError> {
    if value == 0 {
        return Err(EtError::Config {
            field,
            value: "0".into(),
            reason: "must be > 0",
        });
    }
    Ok(())
}

/// A constructor float argument must be finite and > 0 (or >= 0 with `zero_ok`).
pub(crate) fn scalar(
    field: &'static str,
    value: f64,
    zero_ok: bool,
) -> std::result::Result<(), EtError> {
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
    if !ok {
        return Err(EtError::Config {
            field,
            value: value.to_string(),
            reason: if zero_ok {
                "must be finite and >= 0"
            } else {
                "must be finite and > 0"
            },
        });
    }
    Ok(())
}

/// A value that initialises parameters of `dtype` must fit in it (candle's randn rejects an
/// infinite scale with an error from deep inside, and a constant would be `inf`).
pub(crate) fn representable(
    field: &'static str,
    value: f64,
    dtype: DType,
) -> std::result::Result<(), EtError> {
    let max = match dtype {
        // The largest finite f16 and bf16 (`half` is not a dependency of this crate).
        DType::F16 => 65504.0,
        DType::BF16 => 3.389_531_389_251_535_5e38,
        DType::F32 => f64::from(f32::MAX),
        _ => f64::MAX,
    };
    if value.abs() > max {
        return Err(EtError::Config {
            field,
            value: format!("{value:e} ({dtype:?})"),
            reason: "must be representable in the parameters' dtype",
        });
    }
    Ok(())
}

/// The element count of `dims`, overflow-checked.
pub(crate) fn elem_count(what: &str, dims: &[usize]) -> std::result::Result<usize, EtError> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| EtError::TooLarge {
            what: what.to_string(),
            shape: dims.to_vec(),
            reason: "its element count overflows usize".into(),
        })
}

/// Checks that a tensor of `dims` and `dtype` can be allocated on `device`, without allocating it:
/// overflow-checked element and byte counts within Rust's `isize::MAX` allocation limit, and on
/// the CPU, for sizes of 1 GiB and more, no more than the machine's memory (RAM + swap, or the
/// cgroup's limit, on Linux) and a reservation probe, which fails where the real allocation would
/// abort the process. Other devices get the counts only.
pub(crate) fn alloc(
    what: &str,
    dims: &[usize],
    dtype: DType,
    device: &Device,
) -> std::result::Result<(), EtError> {
    let n = elem_count(what, dims)?;
    let bytes = n as u128 * dtype.size_in_bytes() as u128;
    let too_large = |reason: String| EtError::TooLarge {
        what: what.to_string(),
        shape: dims.to_vec(),
        reason,
    };
    if bytes > isize::MAX as u128 {
        return Err(too_large(format!(
            "{bytes} bytes of {dtype:?} exceed the largest possible allocation"
        )));
    }
    if device.is_cpu() && bytes >= PROBE_BYTES {
        if let Some(total) = host_memory() {
            if bytes > total as u128 {
                return Err(too_large(format!(
                    "{:.1} GiB of {dtype:?} exceed this machine's {:.1} GiB of memory",
                    bytes as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                )));
            }
        }
        // The real allocation aborts on failure; a fallible reservation of the same size (never
        // touched, so never paged in) fails instead.
        let mut probe: Vec<u8> = Vec::new();
        if probe.try_reserve_exact(bytes as usize).is_err() {
            return Err(too_large(format!(
                "{:.1} GiB of {dtype:?} cannot be allocated on this machine",
                bytes as f64 / (1u64 << 30) as f64
            )));
        }
    }
    Ok(())
}

/// RAM + swap, capped by a cgroup v2 memory limit, in bytes (Linux; `None` elsewhere). Whatever
/// the kernel's overcommit mode, an allocation beyond it cannot be backed.
fn host_memory() -> Option<u64> {
    static MEM: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MEM.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let total = (kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)).checked_mul(1024)?;
        let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        Some(cgroup.map_or(total, |c| c.min(total)))
    })
}

/// A run's step count: 0 ..= [`MAX_N_ITERS`] (0 steps return `x + pos_embedding`, as the port's
/// `range(0)` loop does).
pub(crate) fn steps(n: usize) -> std::result::Result<usize, EtError> {
    match n {
        n if n > MAX_N_ITERS => Err(EtError::TooManySteps {
            got: n,
            max: MAX_N_ITERS,
        }),
        n => Ok(n),
    }
}

/// Checks that `x` holds tokens `(..., dim)` of rank >= `min_rank` that the parameter `like` can
/// meet: a float dtype equal to the parameters' (candle panics on integer dtypes deep inside), the
/// parameters' device, the model dimension last, and finite values (one pass over `x`).
pub(crate) fn tokens(
    arg: &'static str,
    x: &Tensor,
    like: &Tensor,
    dim: usize,
    min_rank: usize,
) -> Result<()> {
    let shape = || x.dims().to_vec();
    if x.rank() < min_rank {
        return Err(EtError::Rank {
            arg,
            min: min_rank,
            shape: shape(),
        }
        .into());
    }
    if !supported(x.dtype()) || x.dtype() != like.dtype() {
        return Err(EtError::DType {
            arg,
            got: x.dtype(),
            expected: like.dtype(),
            shape: shape(),
        }
        .into());
    }
    if !x.device().same_device(like.device()) {
        return Err(EtError::Device {
            arg,
            got: format!("{:?}", x.device().location()),
            expected: format!("{:?}", like.device().location()),
            shape: shape(),
        }
        .into());
    }
    if x.dims().last() != Some(&dim) {
        return Err(EtError::TokenDim {
            arg,
            expected: dim,
            shape: shape(),
        }
        .into());
    }
    finite(arg, x)
}

/// Errors if `x` holds NaN or infinities (see [`hopfield_cuda::all_finite`]).
pub(crate) fn finite(arg: &'static str, x: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(EtError::NonFinite {
            arg,
            shape: x.dims().to_vec(),
        }
        .into())
    }
}

/// Errors if parameter `name` holds NaN or infinities (a checkpoint's, a diverged training's, or
/// an init whose scale overflows the dtype).
pub(crate) fn param(name: &str, t: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(t)? {
        Ok(())
    } else {
        Err(EtError::Parameter {
            name: name.to_string(),
            shape: t.dims().to_vec(),
            reason: "contains NaN or infinite values",
        }
        .into())
    }
}

/// Errors if the beta parameter `name` has a zero entry (the energy divides by it).
pub(crate) fn nonzero_beta(name: &str, t: &Tensor) -> Result<()> {
    let zero = t
        .detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .contains(&0.0);
    if zero {
        return Err(EtError::Parameter {
            name: name.to_string(),
            shape: t.dims().to_vec(),
            reason: "has a zero entry, and the energy divides by beta",
        }
        .into());
    }
    Ok(())
}

/// What a call computed from a validated argument `x`: `out` itself when it is finite; otherwise
/// (or when the computation failed) the parameter `blame` names, or an error saying which result
/// overflowed for which argument.
pub(crate) fn result(
    what: &'static str,
    arg: &'static str,
    x: &Tensor,
    out: Result<Tensor>,
    blame: impl FnOnce() -> Result<()>,
) -> Result<Tensor> {
    let mut v = results(what, arg, x, out.map(|t| vec![t]), blame)?;
    Ok(v.remove(0))
}

/// [`result`] for several tensors computed together.
pub(crate) fn results(
    what: &'static str,
    arg: &'static str,
    x: &Tensor,
    out: Result<Vec<Tensor>>,
    blame: impl FnOnce() -> Result<()>,
) -> Result<Vec<Tensor>> {
    let failure = match out {
        Ok(ts) => {
            let mut ok = true;
            for t in &ts {
                ok &= hopfield_cuda::all_finite(t)?;
            }
            if ok {
                return Ok(ts);
            }
            None
        }
        Err(e) => Some(e),
    };
    blame()?;
    Err(match failure {
        // Inputs and parameters are sound here (a kernel meeting a NaN met an overflow): say
        // which call on which argument failed.
        Some(e) => e.context(format!("{what} of {arg} with shape {:?}", x.dims())),
        None => EtError::NonFiniteResult {
            what,
            arg,
            shape: x.dims().to_vec(),
            dtype: x.dtype(),
        }
        .into(),
    })
}
