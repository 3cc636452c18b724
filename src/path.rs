//! [`MoePath`]: which implementation computes a model — MLX's composed ops or zmlx's fused primitives.
//!
//! The choice is made once per forward pass and reaches every quantized layer (the experts, and the
//! attention projections, router, dense MLPs, embedding and lm_head), so it sits below the layers
//! ([`crate::nn`], [`crate::moe`]) that all take it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Which implementation computes the model (the experts, and through [`crate::nn::Linear::forward_path`]
/// every other quantized layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoePath {
    /// MLX's composed ops, exactly as mlx-lm: `gather_qmm` for up and gate, activation, `gather_qmm` for
    /// down, then the score-weighted sum; MLX's `quantized_matmul` for the attention projections, router,
    /// dense MLPs and lm_head; activations in the model's dtype.
    Reference,
    /// zmlx's fused primitives: `gather_qmm_swiglu` (gate+up+activation) and `gather_qmm_combine`
    /// (down + score-weighted sum) for the experts, [`crate::fused::quantized_linear`] for every other
    /// quantized layer, all accumulating in float32. At the model level ([`crate::models::Model::forward`])
    /// the activations (residual stream, attention, KV cache, router scores, logits) are float32 too; the
    /// weights stay as stored. Blocks called directly keep their input's dtype.
    Fused,
}

impl fmt::Display for MoePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoePath::Reference => "reference",
            MoePath::Fused => "fused",
        })
    }
}

impl FromStr for MoePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reference" | "ref" | "mlx" => Ok(MoePath::Reference),
            "fused" => Ok(MoePath::Fused),
            _ => Err(Error::invalid(format!(
                "unknown MoE path '{s}' (expected reference or fused)"
            ))),
        }
    }
}
