// The one place that names the MLX release this project is pinned to.
// build.rs reads this file (via #[path]); the crate re-exports it.

/// The MLX release whose official binaries `mlx-sys` builds against.
pub const MLX_VERSION: &str = "0.32.4";
