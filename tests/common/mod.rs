//! Helpers shared by the integration tests (each test file includes them with `mod common;`).
#![allow(dead_code)]

use zmlx::mlx_rs::Array;

/// Owning wrappers and helpers over the raw C API; one copy, kept with mlx-sys's tests.
#[path = "../../mlx-sys/tests/common/mod.rs"]
pub mod ffi;

#[allow(unused_imports)] // each test file uses some of them
pub use ffi::{assert_close, TempDir};

/// Whether the tests run on the GPU: `ZMLX_TEST_DEVICE=gpu` (a CUDA build runs the fused CUDA kernels
/// there); the CPU otherwise.
pub fn on_test_gpu() -> bool {
    std::env::var("ZMLX_TEST_DEVICE").is_ok_and(|d| d == "gpu")
}

/// Makes the test device (see [`on_test_gpu`]) MLX's default.
pub fn use_test_device() {
    let kind = if on_test_gpu() {
        zmlx::runtime::DeviceKind::Gpu
    } else {
        zmlx::runtime::DeviceKind::Cpu
    };
    zmlx::runtime::use_device(kind).expect("the test device is available");
}

/// The test device's default stream, for raw C API calls.
pub fn test_stream() -> ffi::Stream {
    if on_test_gpu() {
        ffi::Stream::gpu()
    } else {
        ffi::Stream::cpu()
    }
}

/// Normal random numbers (mean 0, standard deviation `std`) from MLX's generator with key `seed`.
pub fn randn(shape: &[i32], seed: u64, std: f32) -> Array {
    let k = zmlx::mlx_rs::random::key(seed).expect("random key");
    zmlx::mlx_rs::random::normal::<f32>(shape, 0.0, std, &k).expect("random normal")
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

/// The values of an array as float64.
pub fn f64s(a: &Array) -> Vec<f64> {
    zmlx::array::to_f32_vec(a)
        .expect("read the array")
        .into_iter()
        .map(f64::from)
        .collect()
}
