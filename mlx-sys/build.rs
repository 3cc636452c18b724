//! Build script of `mlx-sys`: find the pinned official MLX binaries (or, with `MLX_SOURCE_DIR`, build
//! MLX from source with the workspace's `patches/`), compile our C API against them, link `libmlx`
//! dynamically (with an rpath), and provide the Rust bindings.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "src/pin.rs"]
mod pin;

#[path = "build/dist.rs"]
mod dist;

#[path = "build/source.rs"]
mod source;

#[cfg(feature = "bindgen")]
#[path = "build/bindings.rs"]
mod bindings;

/// An environment variable the build depends on: read it and tell cargo to rerun when it changes.
fn env(name: &str) -> Option<OsString> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var_os(name)
}

fn fail(msg: &str) -> ! {
    // One readable line, not a backtrace: cargo shows stderr of a failing build script.
    eprintln!("error: mlx-sys: {msg}");
    std::process::exit(1);
}

fn sources(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Makes `OUT_DIR/mlx-dist` point at the folder two levels above `lib/` and returns the lib folder seen
/// through it. Cargo puts link-search paths inside OUT_DIR on the loader path of `cargo run`/`cargo test`,
/// which is how binaries of dependents (mlx-rs's tests, examples) find libmlx without LD_LIBRARY_PATH.
/// Going through the grandparent keeps the wheel's own `$ORIGIN/../../mlx_*.libs` rpath valid.
fn loader_view(out: &Path, lib: &Path) -> PathBuf {
    let lib = lib.canonicalize().unwrap_or_else(|_| lib.to_path_buf());
    let (Some(parent), Some(lib_name)) = (lib.parent(), lib.file_name()) else {
        return lib;
    };
    let (Some(grand), Some(parent_name)) = (parent.parent(), parent.file_name()) else {
        return lib;
    };
    let link = out.join("mlx-dist");
    let _ = fs::remove_file(&link);
    #[cfg(unix)]
    {
        if std::os::unix::fs::symlink(grand, &link).is_ok() {
            return link.join(parent_name).join(lib_name);
        }
    }
    lib
}

fn main() {
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=src/pin.rs");
    println!("cargo:rerun-if-changed=capi");
    println!("cargo::rustc-check-cfg=cfg(mlx_from_source)");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    let manifest = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| fail("CARGO_MANIFEST_DIR is not set")),
    );
    let source_dir = env("MLX_SOURCE_DIR").filter(|v| !v.is_empty());
    let (dist, backend) = match &source_dir {
        None => dist::resolve().unwrap_or_else(|msg| fail(&msg)),
        Some(dir) => {
            if env("MLX_DIR").is_some() {
                fail("MLX_DIR and MLX_SOURCE_DIR are both set: unset one (MLX_DIR links a prebuilt MLX, MLX_SOURCE_DIR builds the patched MLX from source)");
            }
            if env::var_os("CARGO_FEATURE_CUDA").is_some() {
                fail("MLX_SOURCE_DIR builds MLX for CPU only: drop the `cuda` feature or unset MLX_SOURCE_DIR");
            }
            // The series is the workspace's (the zmlx repository's `patches/`), next to this crate.
            let patches = manifest.join("../patches");
            let patches = patches.canonicalize().unwrap_or(patches);
            let dist = source::build(Path::new(dir), &patches).unwrap_or_else(|msg| fail(&msg));
            (dist, dist::Backend::Cpu)
        }
    };
    let capi_include = manifest.join("capi/include");
    let capi_src = manifest.join("capi/src");

    // Our C API, compiled against the wheel's headers.
    let files = sources(&capi_src, "cpp");
    if files.is_empty() {
        fail(&format!("no C API sources under {}", capi_src.display()));
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(&capi_include)
        // MLX's headers are not ours to fix: -isystem keeps their warnings out.
        .flag(format!("-isystem{}", dist.include.display()))
        .files(&files)
        .warnings(true)
        .extra_warnings(true);
    // CI makes our own warnings errors.
    println!("cargo:rerun-if-env-changed=ZMLX_WERROR");
    if env::var_os("ZMLX_WERROR").is_some_and(|v| v == "1") {
        build.flag("-Werror");
    }
    build.compile("mlxc");

    let lib_dir = loader_view(&out, &dist.lib);
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");

    // Metadata for dependents (`DEP_MLX_*`): extension builds compile against the same headers.
    let include = env::join_paths([capi_include.as_path(), dist.include.as_path()])
        .unwrap_or_else(|_| fail("MLX include paths must not contain the path-list separator"));
    println!("cargo:include={}", include.to_string_lossy());
    let defines = match backend {
        dist::Backend::Cuda => "MLX_SYS_BACKEND_CUDA",
        dist::Backend::Metal => "MLX_SYS_BACKEND_METAL",
        dist::Backend::Cpu => "MLX_SYS_BACKEND_CPU",
    };
    println!("cargo:defines={defines}");
    println!("cargo:version={}", pin::MLX_VERSION);
    println!("cargo:libdir={}", dist.lib.display());
    println!("cargo:backend={}", backend.name());
    println!("cargo:rustc-env=MLX_SYS_BACKEND={}", backend.name());
    println!("cargo:rustc-env=MLX_SYS_ORIGIN={}", dist.origin);
    if source_dir.is_some() {
        // The patched MLX carries the fused primitives: dependents compile against them (their headers
        // are under `include`) instead of compiling their own copies.
        println!("cargo:fused_in_tree=1");
        println!("cargo:rustc-cfg=mlx_from_source");
    }

    #[cfg(feature = "bindgen")]
    bindings::generate(&capi_include, &out).unwrap_or_else(|msg| fail(&msg));
}
