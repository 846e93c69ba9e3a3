//! Edge values of the Energy Transformer port's constructor arguments (issue 9, "Every
//! configuration the originals accept"): every case of `audit/et_edges/` (exported by
//! `benches/export_et_edges.py` from the port at 34396b0, float64) must pass: outputs, features,
//! energies, energy gradients and the second-order gradients at the file tolerance, and the
//! float32 outputs within 1e-4. The values the port crashes on or computes garbage for are typed
//! errors here, tested in `et_edges.rs` and listed in `docs/design/energy-transformer-port.md`
//! ("Edge values").

use hopfield_examples::conformance::{assert_all_pass, audit_dir, Precision};

#[test]
fn et_edges_f64() {
    assert_all_pass(&audit_dir("et_edges"), Precision::F64, 28);
}

#[test]
fn et_edges_f32() {
    assert_all_pass(&audit_dir("et_edges"), Precision::F32, 28);
}
