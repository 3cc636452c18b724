//! Helpers shared by the integration tests (included with `mod common_util;`).
#![allow(dead_code)]

use std::path::PathBuf;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("zmlx-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Max |a - b| and max |b|.
pub fn max_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut d = 0f64;
    let mut s = 0f64;
    for (x, y) in a.iter().zip(b) {
        d = d.max((*x as f64 - *y as f64).abs());
        s = s.max((*y as f64).abs());
    }
    (d, s)
}

/// Makes the test's device MLX's default: the GPU when `ZMLX_TEST_DEVICE=gpu` (a CUDA build runs the
/// fused CUDA kernels there), else the CPU.
pub fn use_test_device() {
    let kind = if std::env::var("ZMLX_TEST_DEVICE").is_ok_and(|d| d == "gpu") {
        zmlx::runtime::DeviceKind::Gpu
    } else {
        zmlx::runtime::DeviceKind::Cpu
    };
    zmlx::runtime::use_device(kind).expect("the test device is available");
}
