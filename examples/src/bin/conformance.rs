//! Replays golden-conformance cases (safetensors files exported from the PyTorch originals)
//! through hopfield-rs and prints one `PASS name` / `FAIL name: ...` line per case, then
//! `N passed, N failed`. Exits with status 1 if any case failed.
//!
//! ```text
//! cargo run --release -p hopfield-examples --bin conformance -- crates/hopfield-nn/tests/data/goldens/hflayers
//! ```

use clap::Parser;
use hopfield_examples::conformance::{run_dirs, Precision};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(about = "Check hopfield-rs against golden cases exported from PyTorch")]
struct Args {
    /// Folders (searched recursively) or single `.safetensors` case files.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Replay in float32 (only the outputs are checked, within 1e-4 relative).
    #[arg(long)]
    f32: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let precision = if args.f32 {
        Precision::F32
    } else {
        Precision::F64
    };
    match run_dirs(&args.dirs, precision) {
        Ok(summary) => {
            for line in summary.lines() {
                println!("{line}");
            }
            if summary.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
