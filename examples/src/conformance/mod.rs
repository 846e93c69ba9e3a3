//! Golden-conformance runner: checks this crate against reference cases produced by the PyTorch
//! originals (hflayers, difflayers, the Energy Transformer port).
//!
//! A case is one `.safetensors` file holding a module's configuration (in the metadata), its
//! parameters under the original `state_dict` names (`params.*`), inputs (`input.*`), outputs
//! (`output.*`) and gradients (`grad.*`) of `sum(output.y * grad_seed.cotangent)`. The format is
//! described in `crates/hopfield-nn/tests/data/goldens/README.md`. Users run their own exported
//! checkpoints through the same code with
//! `cargo run --release -p hopfield-examples --bin conformance -- DIR`.
//!
//! It lives in the examples package because it is tooling around the modules, not a module: the
//! golden tests (`examples/tests/*goldens*.rs`) run it on the cases bundled with `hopfield-nn`
//! ([`goldens_dir`]).
//!
//! ```no_run
//! use hopfield_examples::conformance::{goldens_dir, run_dirs, Precision};
//! let summary = run_dirs(&[goldens_dir("hflayers")], Precision::F64)?;
//! println!("{} passed, {} failed", summary.passed, summary.failed);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod case;
pub mod dahn;
pub mod diffused;
pub mod entmax;
pub mod et;
pub mod hflayers;
pub mod module_case;

pub use case::{Case, Precision, Report};

use std::path::{Path, PathBuf};

/// Which original a case comes from, read from its `reference` metadata (hflayers, difflayers or
/// the Energy Transformer port / paper) or, failing that, its `module`/`function` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// hflayers (`Hopfield`, `HopfieldPooling`, ...).
    Hflayers,
    /// difflayers (DAHN).
    Dahn,
    /// The Energy Transformer.
    Et,
    /// The `entmax` package's functions (sparsemax, entmax-1.5, alpha-entmax).
    Entmax,
}

impl Suite {
    /// The suite of a case.
    pub fn of(case: &Case) -> Option<Self> {
        let reference = case.meta("reference").unwrap_or_default();
        let name = case
            .meta("module")
            .or_else(|| case.meta("function"))
            .unwrap_or_default();
        if reference.starts_with("hflayers") {
            Some(Suite::Hflayers)
        } else if reference.starts_with("entmax") || name.starts_with("entmax.") {
            Some(Suite::Entmax)
        } else if reference.starts_with("difflayers") || name.starts_with("difflayers.") {
            Some(Suite::Dahn)
        } else if reference.starts_with("energy_transformer")
            || reference.starts_with("ET paper")
            || name.starts_with("energy_transformer.")
        {
            Some(Suite::Et)
        } else {
            None
        }
    }
}

/// Outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every checked tensor agreed within the case's tolerance.
    Pass,
    /// What differed (or why the case could not be run).
    Fail(String),
}

/// One line per case, plus the totals.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// `(case name, outcome)` in the order the cases ran.
    pub results: Vec<(String, Outcome)>,
    /// Number of passing cases.
    pub passed: usize,
    /// Number of failing cases.
    pub failed: usize,
}

impl Summary {
    /// The runner's output: `PASS name` / `FAIL name: ...` per case, then `N passed, N failed`.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .results
            .iter()
            .map(|(name, o)| match o {
                Outcome::Pass => format!("PASS {name}"),
                Outcome::Fail(why) => format!("FAIL {name}: {why}"),
            })
            .collect();
        out.push(format!("{} passed, {} failed", self.passed, self.failed));
        out
    }
}

/// Runs one case file. Unsupported modules or options are failures, never skips.
pub fn run_case(path: &Path, precision: Precision) -> Outcome {
    let case = match Case::load(path, precision) {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(format!("cannot load case: {e}")),
    };
    let mut report = Report::new(case.tolerance(), precision);
    let res = match Suite::of(&case) {
        Some(Suite::Hflayers) => hflayers::run(&case, &mut report),
        Some(Suite::Dahn) => dahn::run(&case, &mut report),
        Some(Suite::Et) => et::run(&case, &mut report),
        Some(Suite::Entmax) => entmax::run(&case, &mut report),
        None => Err(candle_core::Error::Msg(format!(
            "unsupported case: reference {:?}, module {:?}",
            case.meta("reference"),
            case.meta("module").or_else(|| case.meta("function"))
        ))),
    };
    match res {
        Err(e) => Outcome::Fail(format!("error: {e}")),
        Ok(()) => report.outcome(),
    }
}

/// The vendored reference cases of one suite (`"hflayers"`, `"dahn"` or `"et"`), exported from the
/// originals and kept byte-identical to them by CI: `crates/hopfield-nn/tests/data/goldens/<suite>`.
/// They stay beside the modules they judge.
///
/// ```
/// let dir = hopfield_examples::conformance::goldens_dir("hflayers");
/// assert!(dir.join("hopfield_heads2.safetensors").is_file());
/// ```
pub fn goldens_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/hopfield-nn/tests/data/goldens")
        .join(suite)
}

/// This workspace's own reference cases of one audit suite, exported from the originals by the
/// scripts in `benches/` in the same format as the goldens: `crates/hopfield-nn/tests/data/audit/<suite>`.
/// The suites: `"hflayers_edges"`, `"dahn_edges"` and `"et_edges"` (the edge values of the
/// constructor arguments of hflayers, difflayers and the Energy Transformer port) and `"entmax"`
/// (the sparse associations against the `entmax` package). They are kept apart from
/// [`goldens_dir`] because those are vendored byte for byte.
///
/// ```
/// let dir = hopfield_examples::conformance::audit_dir("hflayers_edges");
/// assert!(dir.join("hopfield_l1.safetensors").is_file());
/// ```
pub fn audit_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/hopfield-nn/tests/data/audit")
        .join(suite)
}

/// All `.safetensors` files under `dir`, searched recursively (sorted), or `dir` itself if it is a file.
pub fn case_files(dir: &Path) -> candle_core::Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut files = Vec::new();
    let rd = std::fs::read_dir(dir)
        .map_err(|e| candle_core::Error::Msg(format!("cannot read {}: {e}", dir.display())))?;
    for entry in rd {
        let p = entry?.path();
        if p.is_dir() {
            files.extend(case_files(&p)?);
        } else if p.extension().is_some_and(|e| e == "safetensors") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs every case under `dir` and panics, printing every failure, unless all of them pass and
/// there are exactly `expected`: the check each reference-case test of this workspace makes (a
/// missing or extra case file fails too, so a suite cannot shrink unnoticed).
///
/// ```
/// use hopfield_examples::conformance::{assert_all_pass, goldens_dir, Precision};
/// assert_all_pass(&goldens_dir("hflayers").join("hopfield_heads2.safetensors"), Precision::F64, 1);
/// ```
pub fn assert_all_pass(dir: &Path, precision: Precision, expected: usize) {
    let summary = run_dirs(&[dir], precision)
        .unwrap_or_else(|e| panic!("cannot run the cases of {}: {e}", dir.display()));
    let lines = summary.lines();
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(summary.failed, 0, "{}", lines.join("\n"));
    assert_eq!(
        summary.passed,
        expected,
        "expected {expected} cases in {}",
        dir.display()
    );
}

/// Runs every case under the given folders.
pub fn run_dirs<P: AsRef<Path>>(dirs: &[P], precision: Precision) -> candle_core::Result<Summary> {
    let mut summary = Summary::default();
    for dir in dirs {
        for file in case_files(dir.as_ref())? {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let outcome = run_case(&file, precision);
            match outcome {
                Outcome::Pass => summary.passed += 1,
                Outcome::Fail(_) => summary.failed += 1,
            }
            summary.results.push((name, outcome));
        }
    }
    Ok(summary)
}
