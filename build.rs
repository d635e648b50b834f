//! Bakes libtorch's folder into the binary's rpath so `target/*/fpt` runs with no environment set,
//! and keeps libtorch_cuda linked (the linker's --as-needed would drop it: nothing names its symbols,
//! yet CUDA only registers when it is loaded). Compiles the oneDNN shim (src/model/onednn.cpp)
//! against the same libtorch's headers.
use std::path::Path;

fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports its libtorch lib dir");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    compile_onednn_shim(Path::new(&lib));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=migrations");
}

fn compile_onednn_shim(lib: &Path) {
    let include = lib.parent().expect("libtorch's lib dir has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("src/model/onednn.cpp")
        .compile("fpt_onednn");
    println!("cargo:rerun-if-changed=src/model/onednn.cpp");
}
