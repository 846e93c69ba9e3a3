//! The hflayers reference cases with the fused retrieval switched off for this whole process
//! (its own test binary, so no other test sees the switch): the explicit association path must
//! pass them too, so both paths are judged by the same goldens.

use hopfield_examples::conformance::{goldens_dir, run_dirs, Precision};

#[test]
fn hflayers_goldens_f64_explicit_path() {
    hopfield_nn::set_fused_retrieval(false);
    assert!(!hopfield_nn::fused_retrieval_enabled());
    let summary = run_dirs(&[goldens_dir("hflayers")], Precision::F64).expect("read goldens");
    let lines = summary.lines();
    assert_eq!(summary.passed, 38, "expected 38 cases");
    assert_eq!(summary.failed, 0, "{}", lines.join("\n"));
}
