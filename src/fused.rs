//! Safe surface of zmlx's fused MoE primitives (wired to the C API once it lands).

use mlx_rs::Array;

use crate::error::{Error, Result};
use crate::moe::SwitchGlu;

/// Experts + combine through the fused primitives.
pub(crate) fn switch_glu_combined(
    _glu: &SwitchGlu,
    _x: &Array,
    _indices: &Array,
    _scores: &Array,
) -> Result<Array> {
    Err(Error::invalid(
        "fused MoE primitives are not built into this zmlx yet",
    ))
}
