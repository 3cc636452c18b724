//! `zmlx info`: MLX version, backend, devices and what zmlx was built with.

use anyhow::Result;

use zmlx::runtime::{self, DeviceKind};

pub fn run() -> Result<()> {
    println!("zmlx {}", env!("CARGO_PKG_VERSION"));
    println!(
        "MLX version: {} (pinned {})",
        runtime::mlx_version()?,
        zmlx::sys::MLX_VERSION
    );
    println!("backend: {}", runtime::backend());
    for k in [DeviceKind::Cpu, DeviceKind::Gpu] {
        println!(
            "device {}: {} ({} device(s))",
            k.name(),
            if runtime::is_available(k) {
                "available"
            } else {
                "not available"
            },
            runtime::device_count(k)
        );
    }
    println!("default device: {}", runtime::default_device()?.name());
    let modes: Vec<&str> = zmlx::QuantMode::ALL.iter().map(|m| m.name()).collect();
    println!("quantization modes: {}", modes.join(", "));
    println!(
        "fused MoE ops: gather_qmm_swiglu, gather_qmm_combine (CPU kernels: {} threads, SIMD {})",
        zmlx::fused::num_threads()?,
        zmlx::fused::simd_level()?
    );
    if let Some(name) = runtime::gpu_name()? {
        println!("GPU: {name}");
    }
    println!(
        "fused MoE ops on GPU streams: {}",
        zmlx::fused::gpu_coverage()?
    );
    let families: Vec<&str> = zmlx::models::Arch::ALL
        .iter()
        .map(|a| a.model_type())
        .collect();
    println!(
        "models: {}; cargo features: {}",
        families.join(", "),
        if cfg!(feature = "cuda") {
            "cuda"
        } else {
            "(none)"
        }
    );
    Ok(())
}
