//! Finding a distribution of the pinned MLX release: a prefix with `include/mlx/**.h` and `lib/libmlx.*`.
//!
//! Order: `MLX_DIR` → the `mlx` package importable by `python3` (if its version matches) → the pinned wheel,
//! downloaded with `python3 -m pip download --no-deps` into a cache and unpacked there.
//! Every failure is one sentence that says what to do; the build script prints it and stops.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which official MLX build to link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
    Metal,
}

impl Backend {
    /// The PyPI package that ships libmlx for this backend.
    pub fn wheel(self) -> &'static str {
        match self {
            Backend::Cpu => "mlx-cpu",
            Backend::Cuda => "mlx-cuda-13",
            Backend::Metal => "mlx-metal",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }

    /// Backend chosen by the target OS and the crate's features.
    pub fn from_target() -> Result<Backend, String> {
        let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
        match (os.as_str(), cuda) {
            ("macos", false) => Ok(Backend::Metal),
            ("macos", true) => Err("the `cuda` feature needs a Linux target; drop it on macOS".into()),
            ("linux", true) => Ok(Backend::Cuda),
            ("linux", false) => Ok(Backend::Cpu),
            (other, _) => Err(format!(
                "no official MLX binaries exist for target OS `{other}`; set MLX_DIR to an MLX {} prefix",
                crate::pin::MLX_VERSION
            )),
        }
    }
}

/// A usable MLX prefix.
#[derive(Debug)]
pub struct Dist {
    /// `<prefix>/include` holds `mlx/mlx.h`.
    pub include: PathBuf,
    /// Directory holding `libmlx.so` / `libmlx.dylib`.
    pub lib: PathBuf,
    /// Where it came from, for messages.
    pub origin: String,
}

fn lib_name() -> &'static str {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    }
}

/// Reads `MLX_VERSION_{MAJOR,MINOR,PATCH}` from `include/mlx/version.h`.
pub fn header_version(include: &Path) -> Option<String> {
    let text = fs::read_to_string(include.join("mlx/version.h")).ok()?;
    let part = |name: &str| -> Option<String> {
        text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("#define")?.trim();
            let value = rest.strip_prefix(name)?;
            value.trim().parse::<u32>().ok().map(|v| v.to_string())
        })
    };
    Some(format!(
        "{}.{}.{}",
        part("MLX_VERSION_MAJOR")?,
        part("MLX_VERSION_MINOR")?,
        part("MLX_VERSION_PATCH")?
    ))
}

/// Checks that `prefix` holds the headers and library of the pinned version.
pub fn check_prefix(prefix: &Path, origin: &str) -> Result<Dist, String> {
    let pin = crate::pin::MLX_VERSION;
    let include = prefix.join("include");
    let lib = prefix.join("lib");
    if !include.join("mlx/mlx.h").is_file() {
        return Err(format!(
            "{origin} `{}` has no include/mlx/mlx.h: point it at an MLX {pin} prefix (e.g. the `mlx` folder of an unpacked mlx-cpu wheel)",
            prefix.display()
        ));
    }
    if !lib.join(lib_name()).is_file() {
        return Err(format!(
            "{origin} `{}` has no lib/{}: point it at an MLX {pin} prefix (e.g. the `mlx` folder of an unpacked mlx-cpu wheel)",
            prefix.display(),
            lib_name()
        ));
    }
    match header_version(&include) {
        Some(v) if v == pin => Ok(Dist {
            include,
            lib,
            origin: format!("{origin} {}", prefix.display()),
        }),
        Some(v) => Err(format!(
            "{origin} `{}` holds MLX {v}, but this crate is pinned to MLX {pin}: point it at an MLX {pin} prefix",
            prefix.display()
        )),
        None => Err(format!(
            "{origin} `{}` has no readable include/mlx/version.h: point it at an MLX {pin} prefix",
            prefix.display()
        )),
    }
}

fn python() -> String {
    crate::env("MLX_SYS_PYTHON")
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "python3".to_string())
}

/// The `mlx` package importable by python3, if its headers are of the pinned version.
fn from_python() -> Option<Dist> {
    let out = Command::new(python())
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('mlx'); print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        return None;
    }
    match check_prefix(Path::new(&path), "the python3 `mlx` package at") {
        Ok(d) => Some(d),
        Err(msg) => {
            println!("cargo:warning=ignoring {msg}");
            None
        }
    }
}

pub fn cache_root() -> Result<PathBuf, String> {
    if let Some(dir) = crate::env("MLX_SYS_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = crate::env("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("mlx-sys"));
    }
    if let Some(home) = crate::env("HOME") {
        let home = PathBuf::from(home);
        if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
            return Ok(home.join("Library/Caches/mlx-sys"));
        }
        return Ok(home.join(".cache/mlx-sys"));
    }
    Err("no cache directory: set MLX_SYS_CACHE (or HOME) so the MLX wheel can be downloaded".into())
}

/// Downloads and unpacks the pinned wheel (once per version and backend).
fn from_wheel(backend: Backend) -> Result<Dist, String> {
    let pin = crate::pin::MLX_VERSION;
    let root = cache_root()?;
    let dir = root.join(format!("{pin}-{}", backend.name()));
    let prefix = dir.join("mlx");
    if prefix.join("include/mlx/mlx.h").is_file() {
        return check_prefix(&prefix, "the cached wheel at");
    }
    let py = python();
    let has_pip = Command::new(&py)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success());
    match has_pip {
        Err(_) => {
            return Err(format!(
                "`{py}` was not found: install python3 with pip (to download the {} {pin} wheel) or set MLX_DIR to an MLX {pin} prefix",
                backend.wheel()
            ))
        }
        Ok(false) => {
            return Err(format!(
                "`{py} -m pip` does not work: install pip (to download the {} {pin} wheel) or set MLX_DIR to an MLX {pin} prefix",
                backend.wheel()
            ))
        }
        Ok(true) => {}
    }
    fs::create_dir_all(&root)
        .map_err(|e| format!("cannot create the cache directory `{}` ({e}): set MLX_SYS_CACHE to a writable directory", root.display()))?;
    // Download and unpack into a private folder, then rename: concurrent builds never see half a wheel.
    let tmp = root.join(format!(
        ".tmp-{pin}-{}-{}",
        backend.name(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| {
        format!(
            "cannot write to `{}` ({e}): set MLX_SYS_CACHE to a writable directory",
            tmp.display()
        )
    })?;
    let spec = format!("{}=={pin}", backend.wheel());
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
    ])
    .arg(&tmp)
    .arg(&spec);
    if backend == Backend::Cuda {
        // The CUDA wheel is tagged for a newer glibc than some build machines have; it is only linked here.
        cmd.args(["--platform", "manylinux_2_35_x86_64"]);
    }
    let out = cmd.output().map_err(|e| {
        format!("could not run `{py} -m pip download` ({e}): set MLX_DIR to an MLX {pin} prefix")
    })?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(format!(
            "could not download {spec} with pip ({last}): check the network, or set MLX_DIR to an unpacked MLX {pin} wheel"
        ));
    }
    let unpack = "import sys, zipfile, glob\nw = glob.glob(sys.argv[1] + '/*.whl')\nassert len(w) == 1, 'expected one wheel, found %d' % len(w)\nzipfile.ZipFile(w[0]).extractall(sys.argv[1] + '/unpacked')\n";
    let out = Command::new(&py)
        .args(["-c", unpack])
        .arg(&tmp)
        .output()
        .map_err(|e| format!("could not unpack the wheel with `{py}` ({e})"))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(format!(
            "could not unpack the downloaded {spec} wheel ({}): delete `{}` and rebuild, or set MLX_DIR",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").trim(),
            root.display()
        ));
    }
    // Shared libraries lose their exec bit in zip files on some systems; it does not matter to the loader.
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::rename(tmp.join("unpacked"), &dir) {
        // Another build may have won the race; use its copy if it is complete.
        if !prefix.join("include/mlx/mlx.h").is_file() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(format!("cannot move the unpacked wheel into `{}` ({e}): set MLX_SYS_CACHE to a writable directory", dir.display()));
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    check_prefix(&prefix, "the downloaded wheel at")
}

/// Resolves the MLX distribution in the documented order.
pub fn resolve() -> Result<(Dist, Backend), String> {
    let backend = Backend::from_target()?;
    if let Some(dir) = crate::env("MLX_DIR") {
        let dir = PathBuf::from(dir);
        return check_prefix(&dir, "MLX_DIR").map(|d| (d, backend));
    }
    if backend != Backend::Cuda && crate::env("MLX_SYS_NO_PYTHON_MLX").is_none() {
        if let Some(d) = from_python() {
            return Ok((d, backend));
        }
    }
    from_wheel(backend).map(|d| (d, backend))
}
