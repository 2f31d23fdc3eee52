//! With `--features torch`, bakes libtorch's directory into every binary and test as an
//! rpath, so they run without LD_LIBRARY_PATH. torch-sys reports the directory it linked
//! against as `cargo:libtorch_lib=...`, which reaches us as DEP_TCH_LIBTORCH_LIB.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
