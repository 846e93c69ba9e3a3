//! The example binaries a newcomer runs first, run end to end at tiny sizes: they finish, print
//! what they promise (the summary, the picture's path, `mil_digits`' last line) and write their
//! PNG.

use std::path::PathBuf;
use std::process::Command;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hopfield_examples_run_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(exe: &str, args: &[&str]) -> String {
    let out = Command::new(exe).args(args).output().expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{exe} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn is_png(path: &PathBuf) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn mil_digits_trains_both_models_and_ends_with_the_accuracy_line() {
    let png = out_dir("mil.png");
    let stdout = run(
        env!("CARGO_BIN_EXE_mil_digits"),
        &[
            "--device",
            "cpu",
            "--train-bags",
            "48",
            "--test-bags",
            "16",
            "--epochs",
            "2",
            "--seeds",
            "1",
            "--max-bag",
            "10",
            "--out",
            png.to_str().unwrap(),
        ],
    );
    assert!(stdout.contains("HopfieldPooling") && stdout.contains("gated attention"));
    let last = stdout.lines().last().unwrap_or_default();
    let acc: f64 = last
        .strip_prefix("test accuracy ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("last line {last:?}"));
    assert!((0.0..=1.0).contains(&acc));
    assert!(is_png(&png));
}

#[test]
fn bad_bag_sizes_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mil_digits"))
        .args(["--min-bag", "9", "--max-bag", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--min-bag"));
}

#[test]
fn demo_writes_its_picture() {
    let png = out_dir("demo.png");
    let stdout = run(
        env!("CARGO_BIN_EXE_demo"),
        &[
            "--device",
            "cpu",
            "--stored",
            "200",
            "--out",
            png.to_str().unwrap(),
        ],
    );
    assert!(stdout.contains(&format!("wrote {}", png.display())));
    assert!(is_png(&png));
}

#[test]
fn paper_claims_run_and_draw() {
    let stdout = run(
        env!("CARGO_BIN_EXE_paper"),
        &["--device", "cpu", "--patterns", "120", "one-step"],
    );
    assert!(stdout.contains("after 1 update") && stdout.contains("digits (clustered)"));
    let (plot, pictures) = (out_dir("fixed.png"), out_dir("regimes.png"));
    let stdout = run(
        env!("CARGO_BIN_EXE_paper"),
        &[
            "--device",
            "cpu",
            "--patterns",
            "120",
            "fixed-points",
            "--plot",
            plot.to_str().unwrap(),
            "--pictures",
            pictures.to_str().unwrap(),
        ],
    );
    // Large beta: every query is its own fixed point (one pattern carries the mass).
    let last_row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("4096"))
        .expect("beta 4096 row");
    assert!(last_row.contains("1.0"), "{last_row}");
    assert!(is_png(&plot) && is_png(&pictures));
    let energy_plot = out_dir("energy.png");
    let stdout = run(
        env!("CARGO_BIN_EXE_paper"),
        &[
            "--device",
            "cpu",
            "--patterns",
            "120",
            "energy",
            "--plot",
            energy_plot.to_str().unwrap(),
        ],
    );
    // The energy never rises along the updates, and the update is a unit gradient step.
    for beta in ["8", "32", "128"] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(beta))
            .unwrap_or_else(|| panic!("no row for beta {beta}:\n{stdout}"));
        assert_eq!(row.split_whitespace().last(), Some("0"), "{row}");
    }
    let diff: f64 = stdout
        .lines()
        .find_map(|l| l.split("update(xi)| = ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("gradient-step line");
    assert!(diff < 1e-5, "{diff}");
    assert!(is_png(&energy_plot));
    let capacity_plot = out_dir("capacity.png");
    let stdout = run(
        env!("CARGO_BIN_EXE_paper"),
        &[
            "--device",
            "cpu",
            "--patterns",
            "32",
            "capacity",
            "--dims",
            "64",
            "--betas",
            "32",
            "--plot",
            capacity_plot.to_str().unwrap(),
        ],
    );
    // 32 random patterns in 64 units: beyond the classical network, within the modern one.
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("32"))
        .expect("N = 32 row");
    let errors: Vec<f64> = row
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(errors[0] > 0.5 && errors[3] == 0.0, "{row}");
    assert!(is_png(&capacity_plot));
}

#[test]
fn retrieve_sharded_matches_the_single_memory() {
    let stdout = run(
        env!("CARGO_BIN_EXE_retrieve_sharded"),
        &[
            "--shards",
            "3",
            "--patterns-per-shard",
            "2000",
            "--queries",
            "64",
            "--seed",
            "1",
        ],
    );
    assert!(stdout.contains("3 shards of 2000"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let diff: f64 = last
        .strip_prefix("max abs difference ")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("last line {last:?}"));
    assert!(diff < 1e-5, "{diff}");
}
