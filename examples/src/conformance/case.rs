//! Reading a golden case and comparing tensors against it.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Which precision a case is replayed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Float64 everywhere, every stored tensor checked at the file's tolerance.
    F64,
    /// Float32 inputs and parameters; only `output.y` is checked, within 1e-4 relative.
    F32,
}

impl Precision {
    /// The float dtype used to replay the case.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F64 => DType::F64,
            Precision::F32 => DType::F32,
        }
    }
}

/// One reference case: its tensors (float tensors converted to the replay dtype) and metadata.
#[derive(Debug, Clone)]
pub struct Case {
    /// File stem.
    pub name: String,
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
    precision: Precision,
}

impl Case {
    /// Loads a case file; float tensors are converted to `precision`'s dtype, integer ones are kept.
    pub fn load(path: &Path, precision: Precision) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| candle_core::Error::Msg(format!("cannot read {}: {e}", path.display())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let raw = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (k, t) in raw {
            let t = if t.dtype().is_float() {
                t.to_dtype(precision.dtype())?
            } else {
                t
            };
            tensors.insert(k, t);
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            tensors,
            meta,
            precision,
        })
    }

    /// The replay precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A metadata string.
    pub fn meta(&self, key: &str) -> Option<String> {
        self.meta.get(key).cloned()
    }

    /// A metadata entry parsed as JSON (`kwargs`, `forward`, ...); missing entries are `Null`.
    pub fn meta_json(&self, key: &str) -> Result<serde_json::Value> {
        match self.meta.get(key) {
            None => Ok(serde_json::Value::Null),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| candle_core::Error::Msg(format!("metadata {key}: {e}"))),
        }
    }

    /// The case's tolerance (`tolerance` metadata, default 1e-9).
    pub fn tolerance(&self) -> f64 {
        self.meta
            .get("tolerance")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1e-9)
    }

    /// A stored tensor; an error names the missing key.
    pub fn get(&self, key: &str) -> Result<Tensor> {
        self.tensors
            .get(key)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("case has no tensor {key:?}")))
    }

    /// A stored tensor, if present.
    pub fn opt(&self, key: &str) -> Option<Tensor> {
        self.tensors.get(key).cloned()
    }

    /// All keys starting with `prefix`, with the prefix removed, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// Every `prefix.*` tensor as a fresh autograd variable, keyed without the prefix.
    pub fn vars(&self, prefix: &str) -> Result<HashMap<String, Var>> {
        let mut out = HashMap::new();
        for k in self.keys_with_prefix(prefix) {
            let t = self.get(&format!("{prefix}{k}"))?;
            out.insert(k, Var::from_tensor(&t)?);
        }
        Ok(out)
    }
}

/// Tensors of a variable map, for building a `VarBuilder` whose parameters are tracked by autograd.
pub fn var_tensors(vars: &HashMap<String, Var>) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// The gradients of `sum(y * cotangent)`.
pub fn backward_with(y: &Tensor, cotangent: &Tensor) -> Result<GradStore> {
    (y * cotangent)?.sum_all()?.backward()
}

/// Collects the comparisons of one case.
#[derive(Debug, Clone)]
pub struct Report {
    tolerance: f64,
    precision: Precision,
    failures: Vec<String>,
    checked: usize,
    max_err: f64,
}

impl Report {
    /// A report for a case with this tolerance, replayed at `precision`.
    pub fn new(tolerance: f64, precision: Precision) -> Self {
        Self {
            tolerance,
            precision,
            failures: Vec::new(),
            checked: 0,
            max_err: 0.0,
        }
    }

    /// Whether only the forward output is checked (float32 replay).
    pub fn forward_only(&self) -> bool {
        self.precision == Precision::F32
    }

    /// Records a failure that is not a numeric comparison.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }

    /// Compares `got` with `want`: shapes must match, and `max|got - want| <= tol * max(1, max|want|)`
    /// (integer tensors must be equal). In float32 mode only `output.y` is compared, at 1e-4.
    pub fn check(&mut self, key: &str, got: &Tensor, want: &Tensor) -> Result<()> {
        let tol = match self.precision {
            Precision::F64 => self.tolerance,
            Precision::F32 if key == "output.y" => 1e-4,
            Precision::F32 => return Ok(()),
        };
        self.checked += 1;
        if got.dims() != want.dims() {
            self.fail(format!(
                "{key}: shape {:?}, expected {:?}",
                got.dims(),
                want.dims()
            ));
            return Ok(());
        }
        let g = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let w = want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let mut err = 0.0f64;
        for (a, b) in g.iter().zip(&w) {
            let d = if a == b { 0.0 } else { (a - b).abs() };
            if d.is_nan() || d > err {
                err = if d.is_nan() { f64::INFINITY } else { d };
            }
        }
        let rel = err / scale;
        self.max_err = self.max_err.max(rel);
        if rel > tol {
            self.fail(format!(
                "{key}: max error {err:.3e} (relative {rel:.3e} > {tol:.0e})"
            ));
        }
        Ok(())
    }

    /// Compares an optional gradient: a missing gradient is accepted only if the reference is all zero.
    pub fn check_grad(&mut self, key: &str, got: Option<&Tensor>, want: &Tensor) -> Result<()> {
        match got {
            Some(g) => self.check(key, g, want),
            None => {
                let z = want.zeros_like()?;
                self.check(key, &z, want)
            }
        }
    }

    /// Pass if nothing failed and at least one tensor was compared.
    pub fn outcome(&self) -> super::Outcome {
        if self.failures.is_empty() && self.checked > 0 {
            super::Outcome::Pass
        } else if self.failures.is_empty() {
            super::Outcome::Fail("nothing was compared".into())
        } else {
            super::Outcome::Fail(format!(
                "{} (max relative error {:.3e})",
                self.failures.join("; "),
                self.max_err
            ))
        }
    }
}
