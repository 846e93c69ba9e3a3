//! Edge values of hflayers' constructor arguments (issue 9, "Every configuration the originals
//! accept"): every case of `audit/hflayers_edges/` (exported by
//! `benches/export_hflayers_edges.py` from difflayers 0.1.1's hflayers, float64) must pass, outputs,
//! associations, projected patterns, update steps and all gradients at the file tolerance, and the
//! float32 forward within 1e-4. The values hflayers crashes on or computes garbage for are typed
//! errors here, tested in `hflayers_edges.rs` and listed in `docs/design/hflayers-quirks.md`
//! ("Edge values").

use hopfield_examples::conformance::{audit_dir, run_dirs, Precision};

const CASES: usize = 52;

fn assert_all_pass(precision: Precision) {
    let summary = run_dirs(&[audit_dir("hflayers_edges")], precision).expect("read goldens");
    let lines = summary.lines();
    for l in &lines {
        println!("{l}");
    }
    assert_eq!(summary.failed, 0, "{}", lines.join("\n"));
    assert_eq!(summary.passed, CASES, "expected {CASES} cases");
}

#[test]
fn hflayers_edges_f64() {
    assert_all_pass(Precision::F64);
}

#[test]
fn hflayers_edges_f32() {
    assert_all_pass(Precision::F32);
}
