//! The fused CUDA kernels compile: the translation unit that holds them exactly as MLX's NVRTC compiles
//! them at first use (every mode, the activation dtypes and the kernel flags; `mlx_moe_cuda_check_source`)
//! is built ahead of time with nvcc for sm_90a, the target NVRTC picks on Hopper. No GPU is needed.
//!
//! nvcc: `ZMLX_NVCC`, else `nvcc` on the PATH, else the one pip installs (`nvidia-cuda-nvcc`, with
//! `nvidia-cuda-runtime`, `nvidia-cuda-cccl`, `nvidia-cuda-crt` and `nvidia-nvvm` for its headers and
//! compiler back end). Without one the test is skipped, unless `ZMLX_REQUIRE_NVCC=1` (CI), which makes a
//! missing compiler a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use zmlx::ffi;

fn pip_nvcc() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'nvcc'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ZMLX_NVCC") {
        return Some(PathBuf::from(p));
    }
    if Command::new("nvcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(PathBuf::from("nvcc"));
    }
    pip_nvcc()
}

fn check_source() -> String {
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        assert_eq!(
            ffi::mlx_moe_cuda_check_source(&mut s),
            0,
            "mlx_moe_cuda_check_source failed"
        );
        let p = mlx_sys::mlx_string_data(s);
        assert!(!p.is_null());
        let text = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        mlx_sys::mlx_string_free(s);
        text
    }
}

/// `-I` for the CUDA C++ library headers (`cuda/std/...`), which CUDA 13 keeps in include/cccl.
fn cccl_include(nvcc: &Path) -> Vec<String> {
    let dir = if nvcc.components().count() > 1 {
        nvcc.parent().and_then(Path::parent).map(Path::to_path_buf)
    } else {
        None
    };
    match dir.map(|d| d.join("include").join("cccl")) {
        Some(c) if c.is_dir() => vec![format!("-I{}", c.display())],
        _ => vec![],
    }
}

#[test]
fn cuda_kernels_compile_for_sm90() {
    if mlx_sys::MLX_FROM_SOURCE {
        // The series carries no CUDA kernels yet (UPSTREAM_PLAN.md, Left): the patched MLX has the
        // no-kernel stub, whose check source is empty, and the overlay's kernels are not compiled.
        eprintln!("cuda_kernels_compile_for_sm90: MLX built from source with patches/, which has no fused CUDA kernels yet; skipped");
        return;
    }
    let src = check_source();
    let kernels = src.matches("__global__ void custom_kernel_").count();
    assert!(
        kernels >= 40,
        "only {kernels} kernel variants in the check source"
    );
    let Some(nvcc) = find_nvcc() else {
        assert!(
            std::env::var("ZMLX_REQUIRE_NVCC").is_err(),
            "ZMLX_REQUIRE_NVCC is set but no nvcc was found (ZMLX_NVCC, PATH, pip nvidia-cuda-nvcc)"
        );
        eprintln!("cuda_kernels_compile_for_sm90: no nvcc found, skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("zmlx-cuda-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cu = dir.join("moe_kernels_check.cu");
    std::fs::write(&cu, &src).expect("write the check source");
    let out = Command::new(&nvcc)
        .args([
            "-std=c++17",
            "-gencode=arch=compute_90a,code=sm_90a",
            "-cubin",
            "-Xptxas",
            "-v",
        ])
        .args(cccl_include(&nvcc))
        .arg("-o")
        .arg(dir.join("moe_kernels_check.cubin"))
        .arg(&cu)
        .output()
        .expect("running nvcc");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "nvcc failed on the fused CUDA kernels ({} variants):\n{}",
        kernels,
        log.lines()
            .filter(|l| !l.starts_with("ptxas info"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The resource report, for the record: registers and spills per kernel.
    let regs: Vec<u32> = log
        .lines()
        .filter_map(|l| l.split("Used ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    let spills = log
        .lines()
        .filter(|l| l.contains("bytes spill") && !l.contains(" 0 bytes spill stores"))
        .count();
    eprintln!(
        "nvcc compiled {kernels} kernel variants for sm_90a: registers {}..{}, {spills} with spills",
        regs.iter().min().unwrap_or(&0),
        regs.iter().max().unwrap_or(&0)
    );
}
