//! The difflayers (`dahn/`) goldens: every case (graphs, Laplacians, operators, attention,
//! dynamics, energy tracker and the `DiffusedHopfield` module) passes at the file tolerance (1e-9)
//! in float64, gradients included, and within 1e-4 on `output.y` in float32.

use hopfield_examples::conformance::{assert_all_pass, goldens_dir, Precision};

#[test]
fn dahn_goldens_f64() {
    assert_all_pass(&goldens_dir("dahn"), Precision::F64, 72);
}

#[test]
fn dahn_goldens_f32() {
    assert_all_pass(&goldens_dir("dahn"), Precision::F32, 72);
}
