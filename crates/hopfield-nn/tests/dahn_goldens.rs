//! The difflayers (`dahn/`) goldens: every function case passes at the file tolerance (1e-9) in
//! float64, and within 1e-4 on `output.y` in float32. `DiffusedHopfield` module cases are not
//! covered yet (they come with the module).

use hopfield_nn::conformance::{run_dirs, Outcome, Precision, Summary};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/goldens/dahn");

fn check(summary: &Summary) {
    let mut failures = Vec::new();
    let mut function_cases = 0;
    for (name, outcome) in &summary.results {
        if name.starts_with("dh_") {
            continue; // DiffusedHopfield module cases
        }
        function_cases += 1;
        if let Outcome::Fail(why) = outcome {
            failures.push(format!("FAIL {name}: {why}"));
        }
    }
    eprintln!("{}", summary.lines().join("\n"));
    assert!(
        function_cases >= 40,
        "expected the dahn function cases, found {function_cases}"
    );
    assert!(
        failures.is_empty(),
        "{} of {function_cases} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn dahn_function_goldens_f64() -> candle_core::Result<()> {
    check(&run_dirs(&[DIR], Precision::F64)?);
    Ok(())
}

#[test]
fn dahn_function_goldens_f32() -> candle_core::Result<()> {
    check(&run_dirs(&[DIR], Precision::F32)?);
    Ok(())
}
