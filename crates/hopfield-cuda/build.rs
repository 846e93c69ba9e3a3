//! With the `cuda` feature, compiles `kernels/*.cu` to PTX (embedded with `include_str!`, loaded at
//! run time); without it, does nothing, so CPU builds need no CUDA toolkit.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    #[cfg(feature = "cuda")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        let ptx = cudaforge::KernelBuilder::new()
            .source_dir("kernels")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .expect("compiling kernels/*.cu (needs nvcc on PATH and CUDA_COMPUTE_CAP or a GPU)");
        ptx.write(out.join("ptx.rs")).expect("writing ptx.rs");
    }
}
