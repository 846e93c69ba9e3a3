//! Helpers shared by the unit tests of the kernels.

use candle_core::{DType, Tensor};

/// `max |a - b|` over all entries, as f64.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A variable of standard normal entries in `dtype`.
pub(crate) fn random_var(dims: &[usize], dtype: DType) -> candle_core::Result<candle_core::Var> {
    let t = Tensor::randn(0f64, 1., dims, &candle_core::Device::Cpu)?.to_dtype(dtype)?;
    candle_core::Var::from_tensor(&t)
}

/// Asserts that the gradient of the scalar `loss` with respect to each of the (f64) `inputs`
/// matches central finite differences (step 1e-6) in every element, to `tol` absolute.
pub(crate) fn assert_grads_match_finite_differences<const K: usize>(
    inputs: [&candle_core::Var; K],
    loss: impl Fn([&Tensor; K]) -> candle_core::Result<Tensor>,
    tol: f64,
) -> candle_core::Result<()> {
    let grads = loss(inputs.map(|v| v.as_tensor()))?.backward()?;
    let h = 1e-6;
    for (which, input) in inputs.iter().enumerate() {
        let t = input.as_tensor();
        let analytic = grads.get(t).unwrap().flatten_all()?.to_vec1::<f64>()?;
        let base = t.flatten_all()?.to_vec1::<f64>()?;
        for (i, &a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> candle_core::Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                let bumped = Tensor::from_vec(v, t.shape(), &candle_core::Device::Cpu)?;
                let mut args = inputs.map(|v| v.as_tensor().clone());
                args[which] = bumped;
                loss(args.each_ref())?.to_scalar::<f64>()
            };
            let numeric = (at(h)? - at(-h)?) / (2. * h);
            assert!(
                (a - numeric).abs() < tol,
                "input {which} element {i}: {a} vs {numeric}"
            );
        }
    }
    Ok(())
}
