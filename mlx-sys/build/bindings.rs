//! Rust bindings from our C headers (feature `bindgen`; needs libclang). Without the feature the build
//! uses the committed `src/bindings.rs`, which `scripts/check-bindings.sh` keeps equal to a fresh run.

use std::path::Path;

pub fn generate(include: &Path, out: &Path) -> Result<(), String> {
    let umbrella = include.join("mlx/c/mlx.h");
    let bindings = bindgen::Builder::default()
        .rust_target("1.73.0".parse().map_err(|e| format!("bindgen rust target: {e}"))?)
        .header(umbrella.to_string_lossy())
        .clang_arg(format!("-I{}", include.display()))
        // Only our API and the C types it uses; no system headers' functions.
        .allowlist_file(format!("{}/.*", include.display()))
        .allowlist_recursively(true)
        .layout_tests(false)
        .generate()
        .map_err(|e| format!("bindgen failed on {} ({e}): install libclang-dev or build without the `bindgen` feature", umbrella.display()))?;
    let text = bindings.to_string();
    std::fs::write(out.join("bindings.rs"), &text)
        .map_err(|e| format!("cannot write bindings: {e}"))?;
    Ok(())
}
