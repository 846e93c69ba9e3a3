//! The README's Rust blocks, compiled (`build.rs` collects them): a README snippet that no longer
//! compiles fails `cargo test`. They are compiled, not run (one loads a checkpoint file the reader
//! is expected to have).

#[allow(
    dead_code,
    unused_variables,
    unused_imports,
    non_snake_case,
    clippy::all
)]
fn readme() -> Result<(), Box<dyn std::error::Error>> {
    include!(concat!(env!("OUT_DIR"), "/readme.rs"));
    Ok(())
}

#[test]
fn readme_snippets_compile() {
    // Compiling this file is the test; referencing the function keeps it from being dropped.
    let _ = readme as fn() -> Result<(), Box<dyn std::error::Error>>;
}
