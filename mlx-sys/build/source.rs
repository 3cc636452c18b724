//! The from-source mode (`MLX_SOURCE_DIR`): MLX built from its 0.32.4 source with the project's patch
//! series (`patches/` of the workspace) applied, for CPU, offline.
//!
//! `MLX_SOURCE_DIR` is either an MLX source tree at 0.32.4 (a folder with `mlx/version.h`, e.g. a checkout
//! of the v0.32.4 tag) or a folder holding `mlx-0.32.4.tar.gz`. gguflib, which MLX's CMake would clone
//! from GitHub, comes from `MLX_SOURCE_GGUFLIB` (a gguf-tools folder or `.tar.gz` at the commit MLX
//! pins), else from a `gguf-tools-*.tar.gz` inside `MLX_SOURCE_DIR`; without one MLX is built with GGUF
//! off. nlohmann json and fmt come from the system; nothing is downloaded.
//!
//! The build goes to `<cache>/source-<version>-<key>/` (`src/` the patched copy, `deps/`, `build/`,
//! `prefix/` the installed headers and libmlx), where the key hashes the source, the patches, gguflib
//! and the CMake options below, so a changed patch or source gets a fresh folder and an unchanged one
//! is reused by every profile and worktree. The folders are laid out like `scripts/upstream-check.sh`'s
//! and `CCACHE_BASEDIR` is set to the key folder, so ccache (which MLX's CMake uses when present) hits
//! across keys and with that script's cache.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::dist::{self, Dist};

/// The source as given.
enum Input {
    /// An MLX source tree.
    Tree(PathBuf),
    /// `mlx-<version>.tar.gz` in the given folder.
    Tarball(PathBuf),
}

/// gguflib, for `FETCHCONTENT_SOURCE_DIR_GGUFLIB`.
enum Gguf {
    Folder(PathBuf),
    Tarball(PathBuf),
    Off,
}

/// The CMake options of the build (the shared source's offline CPU recipe, as `scripts/upstream-check.sh`
/// uses it, without the tests and the Python module). Part of the cache key.
const CMAKE_OPTIONS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DCMAKE_INSTALL_LIBDIR=lib",
    "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
    "-DMLX_BUILD_METAL=OFF",
    "-DMLX_BUILD_CUDA=OFF",
    "-DMLX_BUILD_TESTS=OFF",
    "-DMLX_BUILD_EXAMPLES=OFF",
    "-DMLX_BUILD_BENCHMARKS=OFF",
    "-DMLX_BUILD_PYTHON_BINDINGS=OFF",
    "-DBUILD_SHARED_LIBS=ON",
    "-DUSE_SYSTEM_FMT=ON",
];

/// Where a system nlohmann/json.hpp is looked for (MLX only needs the single header).
const JSON_DIRS: &[&str] = &[
    "/usr/include",
    "/usr/local/include",
    "/opt/homebrew/include",
];

/// FNV-1a, 64 bits: a cache key that stays the same across Rust releases (std's hasher does not promise
/// that).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// A length-prefixed field, so that concatenations cannot collide.
    fn field(&mut self, b: &[u8]) {
        self.bytes(&(b.len() as u64).to_le_bytes());
        self.bytes(b);
    }
    fn file(&mut self, path: &Path) -> Result<(), String> {
        let mut f =
            fs::File::open(path).map_err(|e| format!("cannot read `{}` ({e})", path.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read `{}` ({e})", path.display()))?;
            if n == 0 {
                break;
            }
            self.bytes(&buf[..n]);
            len += n as u64;
        }
        self.bytes(&len.to_le_bytes());
        Ok(())
    }
}

/// Top-level entries of a source tree that are not source: git's data and MLX's default build folder.
fn skipped(rel: &Path) -> bool {
    rel == Path::new(".git") || rel == Path::new("build")
}

/// Files and symlinks under `root` (relative paths, sorted), without the skipped top-level entries.
fn tree_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd =
            fs::read_dir(&dir).map_err(|e| format!("cannot list `{}` ({e})", dir.display()))?;
        for entry in rd {
            let entry = entry.map_err(|e| format!("cannot list `{}` ({e})", dir.display()))?;
            let child = rel.join(entry.file_name());
            if skipped(&child) {
                continue;
            }
            let ty = entry
                .file_type()
                .map_err(|e| format!("cannot stat `{}` ({e})", root.join(&child).display()))?;
            if ty.is_dir() {
                stack.push(child);
            } else {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn hash_tree(h: &mut Fnv, root: &Path) -> Result<(), String> {
    for rel in tree_files(root)? {
        let path = root.join(&rel);
        h.field(rel.to_string_lossy().as_bytes());
        match fs::read_link(&path) {
            Ok(target) => h.field(target.to_string_lossy().as_bytes()),
            Err(_) => h.file(&path)?,
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    for rel in tree_files(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create `{}` ({e})", parent.display()))?;
        }
        match fs::read_link(&src) {
            Ok(target) => symlink(&target, &dst)?,
            Err(_) => {
                fs::copy(&src, &dst).map_err(|e| {
                    format!(
                        "cannot copy `{}` to `{}` ({e})",
                        src.display(),
                        dst.display()
                    )
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), String> {
    std::os::unix::fs::symlink(target, link)
        .map_err(|e| format!("cannot create the symlink `{}` ({e})", link.display()))
}

#[cfg(not(unix))]
fn symlink(_: &Path, link: &Path) -> Result<(), String> {
    Err(format!(
        "cannot create the symlink `{}`: the from-source build (MLX_SOURCE_DIR) supports Linux and macOS",
        link.display()
    ))
}

fn remove(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
    .map_err(|e| format!("cannot remove `{}` ({e})", path.display()))
}

fn untar(tarball: &Path, into: &Path) -> Result<(), String> {
    fs::create_dir_all(into).map_err(|e| format!("cannot create `{}` ({e})", into.display()))?;
    let out = Command::new("tar")
        .arg("xzf")
        .arg(tarball)
        .arg("-C")
        .arg(into)
        .output()
        .map_err(|e| {
            format!(
                "could not run `tar` to unpack `{}` ({e})",
                tarball.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "could not unpack `{}` ({})",
            tarball.display(),
            last_line(&out.stderr)
        ));
    }
    Ok(())
}

fn last_line(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// The one folder an unpacked tarball holds.
fn single_folder(dir: &Path, tarball: &Path) -> Result<PathBuf, String> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list `{}` ({e})", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match entries.as_slice() {
        [one] if one.is_dir() => Ok(one.clone()),
        _ => Err(format!(
            "`{}` does not unpack to one folder",
            tarball.display()
        )),
    }
}

fn version_error(origin: &str, got: Option<String>) -> String {
    let pin = crate::pin::MLX_VERSION;
    match got {
        Some(v) => format!(
            "MLX_SOURCE_DIR {origin} holds MLX {v}, but this crate is pinned to MLX {pin}: point it at an MLX {pin} source tree or a folder with mlx-{pin}.tar.gz"
        ),
        None => format!(
            "MLX_SOURCE_DIR {origin} has no readable mlx/version.h: point it at an MLX {pin} source tree or a folder with mlx-{pin}.tar.gz"
        ),
    }
}

fn input(dir: &Path) -> Result<Input, String> {
    let pin = crate::pin::MLX_VERSION;
    if !dir.is_absolute() {
        return Err(format!(
            "MLX_SOURCE_DIR `{}` is a relative path: give an absolute one (build scripts run in the crate's folder)",
            dir.display()
        ));
    }
    if dir.join("mlx/version.h").is_file() {
        let got = dist::header_version(dir);
        if got.as_deref() != Some(pin) {
            return Err(version_error(&format!("`{}`", dir.display()), got));
        }
        return Ok(Input::Tree(dir.to_path_buf()));
    }
    let tarball = dir.join(format!("mlx-{pin}.tar.gz"));
    if tarball.is_file() {
        return Ok(Input::Tarball(tarball));
    }
    let other = fs::read_dir(dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("mlx-") && n.ends_with(".tar.gz"))
    });
    Err(match other {
        Some(name) => format!(
            "MLX_SOURCE_DIR `{}` holds {name}, but this crate is pinned to MLX {pin}: point it at an MLX {pin} source tree or a folder with mlx-{pin}.tar.gz",
            dir.display()
        ),
        None => format!(
            "MLX_SOURCE_DIR `{}` is neither an MLX source tree (no mlx/version.h) nor a folder with mlx-{pin}.tar.gz",
            dir.display()
        ),
    })
}

fn gguflib(dir: &Path) -> Result<Gguf, String> {
    if let Some(g) = crate::env("MLX_SOURCE_GGUFLIB") {
        let g = PathBuf::from(g);
        if g.is_dir() && g.join("gguflib.c").is_file() {
            return Ok(Gguf::Folder(g));
        }
        if g.is_file() {
            return Ok(Gguf::Tarball(g));
        }
        return Err(format!(
            "MLX_SOURCE_GGUFLIB `{}` is neither a gguf-tools folder (with gguflib.c) nor a .tar.gz of one",
            g.display()
        ));
    }
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .is_some_and(|n| n.starts_with("gguf-tools") && n.ends_with(".tar.gz"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    Ok(found.pop().map(Gguf::Tarball).unwrap_or(Gguf::Off))
}

fn json_include() -> Result<PathBuf, String> {
    JSON_DIRS
        .iter()
        .map(|d| Path::new(d).join("nlohmann"))
        .find(|d| d.join("json.hpp").is_file())
        .ok_or_else(|| {
            format!(
                "nlohmann/json.hpp was not found in {}: install nlohmann json (Debian: nlohmann-json3-dev, Homebrew: nlohmann-json), which the offline MLX build uses instead of downloading it",
                JSON_DIRS.join(", ")
            )
        })
}

/// The patch series, in order.
fn series(patches: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = fs::read_dir(patches)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "patch"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "MLX_SOURCE_DIR is set but `{}` holds no patch series (*.patch): the from-source build applies the zmlx workspace's patches/",
            patches.display()
        ));
    }
    Ok(files)
}

/// git without the caller's repository: `git apply` outside a repository patches the working folder,
/// and the ceiling keeps git from finding a repository above the cache (e.g. a target dir in a checkout).
fn git(cwd: &Path, ceiling: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(cwd)
        .env("GIT_CEILING_DIRECTORIES", ceiling)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    cmd
}

fn apply_series(
    src: &Path,
    ceiling: &Path,
    series: &[PathBuf],
    origin: &Path,
) -> Result<(), String> {
    for patch in series {
        let out = git(src, ceiling)
            .args(["apply", "--whitespace=nowarn"])
            .arg(patch)
            .output()
            .map_err(|e| {
                format!("could not run `git apply` ({e}): the from-source build (MLX_SOURCE_DIR) needs git to apply patches/")
            })?;
        if !out.status.success() {
            let first = String::from_utf8_lossy(&out.stderr)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim()
                .to_string();
            return Err(format!(
                "{} does not apply to the MLX source of MLX_SOURCE_DIR `{}` (git apply: {first}): point MLX_SOURCE_DIR at an unmodified MLX {} source, or regenerate patches/ with upstream/gen_patches.py",
                patch.display(),
                origin.display(),
                crate::pin::MLX_VERSION
            ));
        }
    }
    Ok(())
}

/// Runs a build step with its output in `log`; on failure, the first line that names an error.
fn run(mut cmd: Command, log: &Path, what: &str) -> Result<(), String> {
    let file =
        fs::File::create(log).map_err(|e| format!("cannot write `{}` ({e})", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("cannot write `{}` ({e})", log.display()))?;
    let status = cmd.stdout(file).stderr(err).status().map_err(|e| {
        format!("could not run {what} ({e}): the from-source build (MLX_SOURCE_DIR) needs cmake 3.25 or newer and a C++20 compiler")
    })?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("CMake Error") || l.contains("error:") || l.contains("Error "))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no output")
        .trim()
        .to_string();
    Err(format!(
        "{what} failed ({line}); the whole log is `{}`",
        log.display()
    ))
}

fn lock(root: &Path, name: &str) -> Result<fs::File, String> {
    let path = root.join(format!("{name}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            format!(
                "cannot open the lock `{}` ({e}): set MLX_SYS_CACHE to a writable directory",
                path.display()
            )
        })?;
    file.lock()
        .map_err(|e| format!("cannot lock `{}` ({e})", path.display()))?;
    Ok(file)
}

/// Builds (or finds in the cache) MLX from `dir` with the series in `patches` and returns its prefix.
pub fn build(dir: &Path, patches: &Path) -> Result<Dist, String> {
    let pin = crate::pin::MLX_VERSION;
    let input = input(dir)?;
    let series = series(patches)?;
    let gguf = gguflib(dir)?;
    let json = json_include()?;
    match Command::new("cmake").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(
                "cmake was not found: the from-source build (MLX_SOURCE_DIR) needs cmake 3.25 or newer, a C++20 compiler, BLAS/LAPACK and fmt".into(),
            )
        }
    }
    println!("cargo:rerun-if-changed={}", patches.display());
    match &input {
        Input::Tree(t) => println!("cargo:rerun-if-changed={}", t.display()),
        Input::Tarball(t) => println!("cargo:rerun-if-changed={}", t.display()),
    }

    let mut h = Fnv::new();
    h.field(CMAKE_OPTIONS.join(" ").as_bytes());
    h.field(json.to_string_lossy().as_bytes());
    for p in &series {
        h.field(
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        h.file(p)?;
    }
    match &input {
        Input::Tree(t) => {
            h.field(b"tree");
            hash_tree(&mut h, t)?;
        }
        Input::Tarball(t) => {
            h.field(b"tarball");
            h.file(t)?;
        }
    }
    match &gguf {
        Gguf::Folder(g) => {
            h.field(b"gguf folder");
            hash_tree(&mut h, g)?;
        }
        Gguf::Tarball(g) => {
            h.field(b"gguf tarball");
            h.file(g)?;
        }
        Gguf::Off => h.field(b"gguf off"),
    }
    let name = format!("source-{pin}-{:016x}", h.0);
    let root = dist::cache_root()?;
    fs::create_dir_all(&root).map_err(|e| {
        format!(
            "cannot create the cache directory `{}` ({e}): set MLX_SYS_CACHE to a writable directory",
            root.display()
        )
    })?;
    let work = root.join(&name);
    let prefix = work.join("prefix");
    let done = work.join("complete");
    if matches!(gguf, Gguf::Off) {
        println!("cargo:warning=MLX_SOURCE_DIR: no gguflib (MLX_SOURCE_GGUFLIB or gguf-tools-*.tar.gz in MLX_SOURCE_DIR), so MLX is built without GGUF and its GGUF load/save throw");
    }
    // Concurrent builds (profiles, clippy next to test) wait for the first instead of building twice.
    let _lock = lock(&root, &name)?;
    if done.is_file() {
        return dist::check_prefix(&prefix, "the MLX built from MLX_SOURCE_DIR at");
    }
    let started = Instant::now();

    // The patched copy; kept across a failed build (marked once patched), so a retry resumes the build.
    let src = work.join("src");
    let patched = work.join("patched");
    if !patched.is_file() {
        for d in ["src", "build", "prefix", "unpack"] {
            remove(&work.join(d))?;
        }
        match &input {
            Input::Tree(t) => copy_tree(t, &src)?,
            Input::Tarball(t) => {
                let unpack = work.join("unpack");
                untar(t, &unpack)?;
                let top = single_folder(&unpack, t)?;
                fs::rename(&top, &src)
                    .map_err(|e| format!("cannot move `{}` ({e})", top.display()))?;
                remove(&unpack)?;
                let got = dist::header_version(&src);
                if got.as_deref() != Some(pin) {
                    return Err(version_error(&format!("`{}`", t.display()), got));
                }
            }
        }
        apply_series(&src, &work, &series, dir)?;
        fs::write(&patched, "")
            .map_err(|e| format!("cannot write `{}` ({e})", patched.display()))?;
    }

    // FetchContent stand-ins: json's single header from the system; gguflib from the given source.
    let deps = work.join("deps");
    remove(&deps)?;
    let json_dir = deps.join("json/single_include");
    fs::create_dir_all(&json_dir)
        .map_err(|e| format!("cannot create `{}` ({e})", json_dir.display()))?;
    symlink(&json, &json_dir.join("nlohmann"))?;
    let mut cmake = Command::new("cmake");
    cmake
        .arg("-S")
        .arg(&src)
        .arg("-B")
        .arg(work.join("build"))
        .args(CMAKE_OPTIONS)
        .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display()))
        .arg(format!(
            "-DFETCHCONTENT_SOURCE_DIR_JSON={}",
            deps.join("json").display()
        ));
    let gguf_dir = deps.join("gguf-tools");
    match &gguf {
        Gguf::Folder(g) => {
            symlink(g, &gguf_dir)?;
        }
        Gguf::Tarball(g) => {
            let unpack = deps.join("unpack");
            untar(g, &unpack)?;
            let top = single_folder(&unpack, g)?;
            fs::rename(&top, &gguf_dir)
                .map_err(|e| format!("cannot move `{}` ({e})", top.display()))?;
            remove(&unpack)?;
        }
        Gguf::Off => {}
    }
    match &gguf {
        Gguf::Off => cmake.arg("-DMLX_BUILD_GGUF=OFF"),
        _ => cmake.arg(format!(
            "-DFETCHCONTENT_SOURCE_DIR_GGUFLIB={}",
            gguf_dir.display()
        )),
    };
    if Command::new("ninja").arg("--version").output().is_ok() {
        cmake.args(["-G", "Ninja"]);
    }
    let ccache_base: OsString = work.clone().into_os_string();
    cmake.env("CCACHE_BASEDIR", &ccache_base);
    run(
        cmake,
        &work.join("configure.log"),
        "cmake's configure step of the patched MLX",
    )?;

    // Cargo's job count (-j, CARGO_BUILD_JOBS) for the build script.
    let jobs = std::env::var("NUM_JOBS").unwrap_or_else(|_| "2".into());
    let mut make = Command::new("cmake");
    make.arg("--build")
        .arg(work.join("build"))
        .arg("--parallel")
        .arg(&jobs)
        .env("CCACHE_BASEDIR", &ccache_base);
    run(
        make,
        &work.join("build.log"),
        "the build of the patched MLX",
    )?;
    let mut install = Command::new("cmake");
    install.arg("--install").arg(work.join("build"));
    run(
        install,
        &work.join("install.log"),
        "the install of the patched MLX",
    )?;
    let dist = dist::check_prefix(&prefix, "the MLX built from MLX_SOURCE_DIR at")?;
    fs::write(&done, "").map_err(|e| format!("cannot write `{}` ({e})", done.display()))?;
    println!(
        "cargo:warning=built MLX {pin} with {} patches from MLX_SOURCE_DIR in {} s, cached in {}",
        series.len(),
        started.elapsed().as_secs(),
        work.display()
    );
    Ok(dist)
}
