//! The difflayers (`dahn/`) goldens: every case (graphs, Laplacians, operators, attention,
//! dynamics, energy tracker and the `DiffusedHopfield` module) passes at the file tolerance (1e-9)
//! in float64, gradients included, and within 1e-4 on `output.y` in float32.

use hopfield_examples::conformance::{goldens_dir, run_dirs, Precision};

fn assert_all_pass(precision: Precision) -> candle_core::Result<()> {
    let summary = run_dirs(&[goldens_dir("dahn")], precision)?;
    let lines = summary.lines();
    eprintln!("{}", lines.join("\n"));
    assert_eq!(summary.passed, 72, "{}", lines.join("\n"));
    assert_eq!(summary.failed, 0);
    Ok(())
}

#[test]
fn dahn_goldens_f64() -> candle_core::Result<()> {
    assert_all_pass(Precision::F64)
}

#[test]
fn dahn_goldens_f32() -> candle_core::Result<()> {
    assert_all_pass(Precision::F32)
}
