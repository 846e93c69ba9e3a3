//! Edge values of difflayers' `DiffusedHopfield` arguments (issue 9, "Every configuration the
//! originals accept"): every case of `audit/dahn_edges/` (exported by
//! `benches/export_dahn_edges.py` from difflayers 0.1.1, float64) must pass: outputs,
//! associations, projected patterns, what the dynamics hand to the core, graphs, energies, round
//! counts, the effective eta and all gradients at the file tolerance, with per-sample and
//! batch-mean graphs, and the float32 forward within 1e-4. The values difflayers crashes on or
//! computes garbage for are typed errors here, tested in `dahn_edges.rs` and listed in
//! `docs/design/difflayers-semantics.md` ("Edge values").

use hopfield_examples::conformance::{assert_all_pass, audit_dir, Precision};

#[test]
fn dahn_edges_f64() {
    assert_all_pass(&audit_dir("dahn_edges"), Precision::F64, 53);
}

#[test]
fn dahn_edges_f32() {
    assert_all_pass(&audit_dir("dahn_edges"), Precision::F32, 53);
}
