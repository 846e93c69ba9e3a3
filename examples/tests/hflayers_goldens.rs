//! Every hflayers reference case (PyTorch, float64) must pass: outputs, associations, projected
//! patterns and all gradients at the file tolerance, and the float32 forward within 1e-4.

use hopfield_examples::conformance::{goldens_dir, run_dirs, Precision};

fn assert_all_pass(precision: Precision) {
    let summary = run_dirs(&[goldens_dir("hflayers")], precision).expect("read goldens");
    let lines = summary.lines();
    for l in &lines {
        println!("{l}");
    }
    assert_eq!(summary.passed, 38, "expected 38 cases");
    assert_eq!(summary.failed, 0, "{}", lines.join("\n"));
}

#[test]
fn hflayers_goldens_f64() {
    assert_all_pass(Precision::F64);
}

#[test]
fn hflayers_goldens_f32() {
    assert_all_pass(Precision::F32);
}
