//! Build script of `zmlx`: give our binaries an rpath to the libmlx that `mlx-sys` linked.
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(libdir) = env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
    }
}
