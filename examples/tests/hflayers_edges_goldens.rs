//! Edge values of hflayers' constructor arguments (issue 9, "Every configuration the originals
//! accept"): every case of `audit/hflayers_edges/` (exported by
//! `benches/export_hflayers_edges.py` from difflayers 0.1.1's hflayers, float64) must pass, outputs,
//! associations, projected patterns, update steps and all gradients at the file tolerance, and the
//! float32 forward within 1e-4. The values hflayers crashes on or computes garbage for are typed
//! errors here, tested in `hflayers_edges.rs` and listed in `docs/design/hflayers-quirks.md`
//! ("Edge values").

use hopfield_examples::conformance::{assert_all_pass, audit_dir, Precision};

#[test]
fn hflayers_edges_f64() {
    assert_all_pass(&audit_dir("hflayers_edges"), Precision::F64, 52);
}

#[test]
fn hflayers_edges_f32() {
    assert_all_pass(&audit_dir("hflayers_edges"), Precision::F32, 52);
}
