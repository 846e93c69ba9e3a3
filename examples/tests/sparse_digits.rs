//! `sparse_digits` end to end at a tiny size: it finishes, prints one row per corruption and
//! association with sparse rows below the memory size, and writes its PNG.

use std::process::Command;

#[test]
fn sparse_digits_prints_the_table_and_writes_the_png() {
    let dir = std::env::temp_dir().join(format!("hopfield_sparse_digits_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("sparse.png");
    let out = Command::new(env!("CARGO_BIN_EXE_sparse_digits"))
        .args(["--stored", "120", "--out", png.to_str().unwrap()])
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("softmax") || l.contains("entmax-1.5") || l.contains("sparsemax"))
        .filter(|l| l.contains(" / "))
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    // Softmax keeps every stored pattern; sparsemax keeps fewer at every beta.
    for row in rows {
        let supports: Vec<f64> = row
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(3)
            .filter(|w| w[1] == "/")
            .map(|w| w[2].parse().unwrap())
            .collect();
        assert_eq!(supports.len(), 6, "{row}");
        if row.contains("softmax") {
            assert!(supports.iter().all(|s| *s == 120.0), "{row}");
        } else {
            assert!(supports.iter().all(|s| *s < 120.0), "{row}");
        }
    }
    assert!(std::fs::read(&png).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n")));
}
