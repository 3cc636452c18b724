//! Build script of `zmlx`: compile the fork's fused MoE primitives (`mlx_local/`, C++20) against the
//! pinned MLX that `mlx-sys` resolved, and give our binaries an rpath to that libmlx. When mlx-sys built
//! MLX from source with `patches/` (`MLX_SOURCE_DIR`; `DEP_MLX_FUSED_IN_TREE`), libmlx already holds the
//! primitives: only their C API (`mlx_local/mlx/c/`) is compiled, against the patched headers. With the
//! `bindgen` feature it also regenerates the Rust FFI of `mlx_local/mlx/c/moe.h` (committed as
//! `src/ffi.rs`; `scripts/check-bindings.sh` keeps the two equal).
use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

fn fail(msg: &str) -> ! {
    eprintln!("error: zmlx: {msg}");
    std::process::exit(1);
}

fn cpp_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            cpp_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "cpp") {
            out.push(p);
        }
    }
}

/// An environment variable the build depends on: read it and tell cargo to rerun when it changes.
fn env(name: &str) -> Option<OsString> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var_os(name)
}

/// The in-tree path of each overlay header, from `patches/overlay-map.txt` (written by
/// `upstream/gen_patches.py` from its FILES table).
fn overlay_map(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        fail(&format!(
            "cannot read {} ({e}): run python3 upstream/gen_patches.py",
            path.display()
        ))
    });
    let mut map = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        match line.split_once(' ') {
            Some((overlay, in_tree)) if !in_tree.contains(' ') => {
                map.push((overlay.to_string(), in_tree.to_string()))
            }
            _ => fail(&format!(
                "{}: the line `{line}` is not `<overlay path> <in-tree path>`: run python3 upstream/gen_patches.py",
                path.display()
            )),
        }
    }
    map
}

/// Headers under `shim/` at the overlay's include paths, each including the patched MLX's in-tree header,
/// plus `mlx/c/moe.h` (the C API's own header): the C API compiles unchanged against the patched MLX, and
/// no overlay header is reachable from it. Every overlay header outside `mlx/c/` must be in the map.
fn include_shim(local: &Path, map: &[(String, String)], shim: &Path) {
    let _ = fs::remove_dir_all(shim);
    let mut headers = Vec::new();
    header_files(&local.join("mlx"), &mut headers);
    for h in headers {
        let rel = h
            .strip_prefix(local)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        let target = if rel.starts_with("mlx/c/") {
            h.display().to_string()
        } else {
            match map.iter().find(|(o, _)| *o == rel) {
                Some((_, in_tree)) => in_tree.clone(),
                None => fail(&format!(
                    "mlx_local/{rel} is not in patches/overlay-map.txt: add it to upstream/gen_patches.py's FILES and rerun it"
                )),
            }
        };
        let file = shim.join(&rel);
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)
                .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
        }
        fs::write(&file, format!("#pragma once\n#include \"{target}\"\n"))
            .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", file.display())));
    }
}

fn header_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
        if p.is_dir() {
            header_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "h") {
            out.push(p);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=mlx_local");
    if let Some(libdir) = env("DEP_MLX_LIBDIR") {
        println!(
            "cargo:rustc-link-arg=-Wl,-rpath,{}",
            libdir.to_string_lossy()
        );
    }

    let manifest = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| fail("CARGO_MANIFEST_DIR is not set")),
    );
    let local = manifest.join("mlx_local");
    let include = env("DEP_MLX_INCLUDE")
        .unwrap_or_else(|| fail("DEP_MLX_INCLUDE is not set (mlx-sys publishes it)"));
    let includes: Vec<PathBuf> = env::split_paths(&include).collect();
    let in_tree = env("DEP_MLX_FUSED_IN_TREE").is_some_and(|v| v == "1");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    let mut files = Vec::new();
    let mut build = cc::Build::new();
    if in_tree {
        // Only the C API; the primitives are libmlx's.
        let map_path = manifest.join("patches/overlay-map.txt");
        println!("cargo:rerun-if-changed={}", map_path.display());
        let shim = out.join("fused_shim");
        include_shim(&local, &overlay_map(&map_path), &shim);
        cpp_sources(&local.join("mlx/c"), &mut files);
        build.include(&shim);
    } else {
        embed_cuda_source(&local, &out);
        cpp_sources(&local.join("mlx"), &mut files);
        build.include(&local).include(&out);
    }
    if files.is_empty() {
        fail(&format!("no C++ sources under {}", local.display()));
    }
    build
        .cpp(true)
        .std("c++20")
        // MLX itself is prebuilt and optimized; keep the kernels optimized in debug builds too.
        .opt_level(2)
        .files(&files)
        .warnings(true)
        .extra_warnings(true);
    // MLX's headers are not ours to fix: -isystem keeps their warnings out.
    for inc in &includes {
        build.flag(format!("-isystem{}", inc.display()));
    }
    // CI makes the project's own warnings errors.
    if env("ZMLX_WERROR").is_some_and(|v| v == "1") {
        build.flag("-Werror");
    }
    if let Some(defines) = env("DEP_MLX_DEFINES") {
        for d in defines
            .to_string_lossy()
            .split([' ', ',', ';'])
            .filter(|d| !d.is_empty())
        {
            match d.split_once('=') {
                Some((k, v)) => build.define(k, v),
                None => build.define(d, None),
            };
        }
    }
    build.compile("zmlx_moe");

    #[cfg(feature = "bindgen")]
    ffi_bindings(&local, &includes);
}

/// The CUDA device code (`mlx/backend/cuda/moe/kernels.cuh`) as a C++ string literal for
/// `fast::cuda_kernel`, without comments and indentation (MLX hashes a kernel's source at every launch,
/// and NVRTC reads less).
fn embed_cuda_source(local: &Path, out: &Path) {
    let src_path = local.join("mlx/backend/cuda/moe/kernels.cuh");
    let src = fs::read_to_string(&src_path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", src_path.display())));
    let mut text = String::with_capacity(src.len());
    for line in src.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let code = code.trim();
        if code.is_empty() || code == "#pragma once" {
            continue;
        }
        text.push_str(code);
        text.push('\n');
    }
    const DELIM: &str = "zmlxcu";
    if text.contains(&format!("){DELIM}\"")) {
        fail("kernels.cuh contains the raw-string delimiter");
    }
    let dir = out.join("zmlx_gen");
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
    let lit = format!("R\"{DELIM}(\n{text}){DELIM}\"\n");
    fs::write(dir.join("moe_kernels_cuh.inc"), lit)
        .unwrap_or_else(|e| fail(&format!("cannot write moe_kernels_cuh.inc: {e}")));
}

#[cfg(feature = "bindgen")]
fn ffi_bindings(local: &Path, includes: &[PathBuf]) {
    let header = local.join("mlx/c/moe.h");
    let mut builder = bindgen::Builder::default()
        .rust_target(
            "1.73.0"
                .parse()
                .unwrap_or_else(|e| fail(&format!("bindgen rust target: {e}"))),
        )
        .header(header.to_string_lossy())
        .clang_arg(format!("-I{}", local.display()))
        // Only the functions of moe.h; the mlx-c types they use come from mlx_sys.
        .allowlist_file(format!("{}", header.display()))
        .allowlist_recursively(false)
        .raw_line("#![allow(non_camel_case_types, clippy::missing_safety_doc)]")
        .raw_line("use mlx_sys::*;")
        .layout_tests(false);
    for inc in includes {
        builder = builder.clang_arg(format!("-I{}", inc.display()));
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        fail(&format!(
            "bindgen failed on {} ({e}): install libclang-dev or build without the `bindgen` feature",
            header.display()
        ))
    });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    fs::write(out.join("ffi.rs"), bindings.to_string())
        .unwrap_or_else(|e| fail(&format!("cannot write ffi.rs: {e}")));
}
