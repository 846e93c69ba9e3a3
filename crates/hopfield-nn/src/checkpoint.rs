//! Strict checkpoint loading: builds a module from a PyTorch `state_dict` saved with
//! `safetensors.torch.save_file` and reports every missing, unexpected or mis-shaped key.
//!
//! `VarBuilder::from_mmaped_safetensors` works too, but silently ignores keys the module does not
//! ask for; [`load_strict`] treats them as errors, so a checkpoint of another configuration is
//! never half-loaded.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use hopfield_core::HopfieldError;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

struct Tracking {
    tensors: HashMap<String, Tensor>,
    problems: Mutex<Vec<String>>,
    used: Mutex<BTreeSet<String>>,
}

impl Tracking {
    fn lookup(&self, name: &str) -> Option<Tensor> {
        let t = self.tensors.get(name).cloned();
        if t.is_some() {
            self.used.lock().expect("lock").insert(name.to_string());
        }
        t
    }
}

impl SimpleBackend for Tracking {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.lookup(name) {
            Some(t) if t.shape() == &s => {
                let t = t.to_dtype(dtype)?.to_device(dev)?;
                // NaN or inf in a checkpoint (or a value the model's dtype cannot hold) would
                // poison every output: reported with the key, like a missing one.
                if t.dtype().is_float() && !hopfield_cuda::all_finite(&t)? {
                    self.problems
                        .lock()
                        .expect("lock")
                        .push(format!("key {name:?} contains NaN or inf (as {dtype:?})"));
                }
                Ok(t)
            }
            Some(t) => {
                self.problems.lock().expect("lock").push(format!(
                    "key {name:?} has shape {:?}, the module expects {:?}",
                    t.dims(),
                    s.dims()
                ));
                // Keep building so that every problem is reported at once.
                Tensor::zeros(s, dtype, dev)
            }
            None => {
                self.problems
                    .lock()
                    .expect("lock")
                    .push(format!("missing key {name:?} (shape {:?})", s.dims()));
                Tensor::zeros(s, dtype, dev)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.lookup(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(HopfieldError::Weights(format!("missing key {name:?}")).into()),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds a module with `build` from `tensors` (a state_dict by name), failing with one error
/// that lists every missing, unexpected and mis-shaped key.
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Tensor};
/// use hopfield_nn::{checkpoint::load_strict_tensors, Hopfield, HopfieldConfig};
/// let dev = Device::Cpu;
/// let mut sd = HashMap::new();
/// sd.insert("association_core.in_proj_weight".to_string(), Tensor::zeros((24, 8), DType::F32, &dev)?);
/// let err = load_strict_tensors(sd, DType::F32, &dev, |vb| Hopfield::new(HopfieldConfig::new(8), vb))
///     .unwrap_err();
/// assert!(err.to_string().contains("missing key \"association_core.in_proj_bias\""));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn load_strict_tensors<M>(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<M> {
    let backend = std::sync::Arc::new(Tracking {
        tensors,
        problems: Mutex::new(Vec::new()),
        used: Mutex::new(BTreeSet::new()),
    });
    struct Shared(std::sync::Arc<Tracking>);
    impl SimpleBackend for Shared {
        fn get(&self, s: Shape, n: &str, h: Init, d: DType, dev: &Device) -> Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(backend.clone())), dtype, device.clone());
    let module = build(vb)?;
    let mut problems = backend.problems.lock().expect("lock").clone();
    let used = backend.used.lock().expect("lock");
    let mut unexpected: Vec<&String> = backend
        .tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .collect();
    unexpected.sort();
    problems.extend(unexpected.iter().map(|k| format!("unexpected key {k:?}")));
    if problems.is_empty() {
        Ok(module)
    } else {
        Err(HopfieldError::Weights(problems.join("; ")).into())
    }
}

/// [`load_strict_tensors`] from a safetensors file.
pub fn load_strict<M>(
    path: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<M> {
    let tensors = candle_core::safetensors::load(path.as_ref(), &Device::Cpu)?;
    load_strict_tensors(tensors, dtype, device, build)
}
