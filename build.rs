//! Bakes libtorch's folder into the binary's rpath so `target/*/fpt` runs with no environment set,
//! and keeps libtorch_cuda linked (the linker's --as-needed would drop it: nothing names its symbols,
//! yet CUDA only registers when it is loaded).
use std::path::Path;

fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports its libtorch lib dir");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=migrations");
}
