//! With the `cuda` feature, compiles `kernels/*.cu` to PTX (embedded with `include_str!`, loaded at
//! run time); without it, does nothing, so CPU builds need no CUDA toolkit.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    #[cfg(feature = "cuda")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        // One constants file per module that includes it, so neither holds an unused constant.
        let build = |files: &[&str], rs: &str| {
            cudaforge::KernelBuilder::new()
                .source_files(files.iter().map(|f| format!("kernels/{f}")))
                .arg("-std=c++17")
                .arg("-O3")
                .build_ptx()
                .expect("compiling kernels/*.cu (needs nvcc on PATH and CUDA_COMPUTE_CAP or a GPU)")
                .write(out.join(rs))
                .expect("writing the PTX constants");
        };
        build(&["retrieval.cu"], "ptx.rs");
        build(&["sparse.cu"], "ptx_sparse.rs");
        build(&["entmax.cu"], "ptx_entmax.rs");
    }
}
