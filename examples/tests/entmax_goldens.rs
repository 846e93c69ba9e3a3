//! Sparse association functions (issue 11) against the `entmax` package: every case of
//! `audit/entmax/` (exported by `benches/export_entmax.py`, float64) must pass: the functional
//! sparsemax / entmax-1.5 / alpha-entmax cases (values, logit and alpha gradients) and the
//! `Hopfield`, `HopfieldPooling` and `HopfieldLayer` cases whose association is sparse (outputs,
//! associations with their exact zeros, projected patterns, every gradient); the float32 forward
//! within 1e-4.

use hopfield_examples::conformance::{assert_all_pass, audit_dir, Precision};

#[test]
fn entmax_f64() {
    assert_all_pass(&audit_dir("entmax"), Precision::F64, 20);
}

#[test]
fn entmax_f32() {
    assert_all_pass(&audit_dir("entmax"), Precision::F32, 20);
}

/// The sparsity is real: wherever the `entmax` package gives an exact 0, so do we, and nowhere
/// else (a tolerance would let a "sparse" mode that is silently dense pass).
#[test]
fn exact_zeros_where_the_reference_has_them() {
    use candle_core::{DType, Tensor};
    use hopfield_examples::conformance::{case_files, Case};
    let mut zeros = 0;
    for file in case_files(&audit_dir("entmax")).expect("cases") {
        let case = Case::load(&file, Precision::F64).expect("load");
        let x = case.get("input.x").unwrap();
        let y = match case.meta("function").as_deref() {
            Some("entmax.sparsemax") => hopfield_cuda::sparsemax(&x),
            Some("entmax.entmax15") => hopfield_cuda::entmax15(&x),
            Some("entmax.entmax_bisect") => match case.opt("input.alpha") {
                Some(a) => hopfield_cuda::entmax_learnable(&x, &a),
                None => {
                    let a = case.meta_json("forward").unwrap()["alpha"]
                        .as_f64()
                        .unwrap();
                    hopfield_cuda::entmax(&x, a)
                }
            },
            _ => continue, // module cases
        }
        .unwrap();
        let flat = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let got = flat(&y).to_vec1::<f64>().unwrap();
        let want = flat(&case.get("output.y").unwrap())
            .to_vec1::<f64>()
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(*g == 0.0, *w == 0.0, "{}: entry {i}: {g} vs {w}", case.name);
        }
        zeros += want.iter().filter(|w| **w == 0.0).count();
    }
    assert!(zeros > 200, "only {zeros} zeros in the reference cases");
}
