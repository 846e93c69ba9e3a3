//! Turns the README's Rust blocks into one function that `tests/readme.rs` compiles, so the
//! README's code cannot rot. The blocks are one tutorial (later ones use earlier variables), so
//! each is nested inside the previous one: its variables stay visible and its `use` lines may
//! repeat earlier ones.

use std::{env, fs, path::Path};

fn main() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = fs::read_to_string(&readme).unwrap_or_default();
    let (mut body, mut depth, mut inside) = (String::new(), 0, false);
    for line in text.lines() {
        if inside && line.trim_start().starts_with("```") {
            inside = false;
        } else if inside {
            body.push_str(line);
            body.push('\n');
        } else if line.trim() == "```rust" {
            inside = true;
            depth += 1;
            body.push_str("{\n");
        }
    }
    body.push_str(&"}\n".repeat(depth));
    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("readme.rs");
    fs::write(out, body).expect("OUT_DIR is writable");
}
