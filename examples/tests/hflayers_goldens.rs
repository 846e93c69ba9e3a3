//! Every hflayers reference case (PyTorch, float64) must pass: outputs, associations, projected
//! patterns and all gradients at the file tolerance, and the float32 forward within 1e-4.

use hopfield_examples::conformance::{assert_all_pass, goldens_dir, Precision};

#[test]
fn hflayers_goldens_f64() {
    assert_all_pass(&goldens_dir("hflayers"), Precision::F64, 38);
}

#[test]
fn hflayers_goldens_f32() {
    assert_all_pass(&goldens_dir("hflayers"), Precision::F32, 38);
}
