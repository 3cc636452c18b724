//! zmlx: MLX for Rust with fused quantized Mixture-of-Experts primitives.
pub use mlx_sys as sys;
pub mod membw;
