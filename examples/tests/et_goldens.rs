//! Replays the Energy Transformer goldens (`crates/hopfield-nn/tests/data/goldens/et`, PyTorch port, float64) in
//! float64 at the cases' tolerance (1e-9, gradients included) and in float32 (outputs only).

use hopfield_examples::conformance::{goldens_dir, run_dirs, Precision};

fn replay(precision: Precision) {
    let summary = run_dirs(&[goldens_dir("et")], precision).expect("golden folder readable");
    for line in summary.lines() {
        if line.starts_with("FAIL") || std::env::var("ET_VERBOSE").is_ok() {
            println!("{line}");
        }
    }
    assert_eq!(
        (summary.passed, summary.failed),
        (17, 0),
        "{:#?}",
        summary.lines()
    );
}

#[test]
fn et_goldens_f64() {
    replay(Precision::F64);
}

#[test]
fn et_goldens_f32() {
    replay(Precision::F32);
}
