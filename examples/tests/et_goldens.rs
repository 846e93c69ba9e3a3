//! Replays the Energy Transformer goldens (`crates/hopfield-nn/tests/data/goldens/et`, PyTorch port, float64) in
//! float64 at the cases' tolerance (1e-9, gradients included) and in float32 (outputs only).

use hopfield_examples::conformance::{assert_all_pass, goldens_dir, Precision};

#[test]
fn et_goldens_f64() {
    assert_all_pass(&goldens_dir("et"), Precision::F64, 17);
}

#[test]
fn et_goldens_f32() {
    assert_all_pass(&goldens_dir("et"), Precision::F32, 17);
}
