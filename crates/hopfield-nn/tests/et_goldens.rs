//! Replays the Energy Transformer goldens (`tests/data/goldens/et`, PyTorch port, float64) in
//! float64 at the cases' tolerance (1e-9, gradients included) and in float32 (outputs only).

use hopfield_nn::conformance::{run_dirs, Precision};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/goldens/et");

fn replay(precision: Precision) {
    let summary = run_dirs(&[DIR], precision).expect("golden folder readable");
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
