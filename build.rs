fn main() {
    gst_plugin_version_helper::info();
    #[cfg(feature = "cuda")]
    cuda_kernels();
}

/// Compiles `cuda/*.cu` to PTX in OUT_DIR and writes `ptx.rs`, one `&str`
/// constant per file (`layers::device_kernels` includes it), for the compute
/// capability in CUDA_COMPUTE_CAP (as candle-kernels does).
#[cfg(feature = "cuda")]
fn cuda_kernels() {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo::rerun-if-changed=cuda");
    let ptx = cudaforge::KernelBuilder::new()
        .source_dir("cuda")
        .arg("-std=c++17")
        .arg("-O3")
        // the kernels compile warning-free, as the Rust code does
        .arg("--Werror")
        .arg("all-warnings")
        .build_ptx()
        .unwrap_or_else(|e| panic!("compiling the CUDA kernels in cuda/: {e}"));
    ptx.write(out_dir.join("ptx.rs"))
        .unwrap_or_else(|e| panic!("writing ptx.rs in {}: {e}", out_dir.display()));
}
