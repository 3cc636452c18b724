//! Mixture-of-Experts building blocks mirroring mlx-lm: [`SwitchGlu`] (the experts; reference path through
//! MLX's composed `gather_qmm` ops exactly as mlx-lm does, or the fused path through zmlx's fused
//! primitives, switchable at run time), [`Router`] (softmax top-k with optional renormalisation, softmax
//! over the top-k logits as in gpt-oss, or sigmoid scores with a correction bias as in GLM-4 MoE /
//! DeepSeek-V3) and the [`SparseMoe`] block combining both.

mod router;
mod switch_glu;

/// Re-exported from [`crate::path`], where it lives because it selects the path of every layer.
pub use crate::path::MoePath;
pub use router::{Router, RouterKind};
pub use switch_glu::{Activation, ExpertWeight, SwitchGlu, SORT_THRESHOLD};

use mlx_rs::{Array, Dtype};

use crate::error::Result;
use crate::nn::Mlp;

/// A sparse MoE block: router + experts (+ optional shared experts added to the routed output).
#[derive(Clone, Debug)]
pub struct SparseMoe {
    /// Chooses experts and their weights per token.
    pub router: Router,
    /// The routed experts.
    pub experts: SwitchGlu,
    /// Always-on shared expert (GLM-4 MoE / Qwen2-MoE style), a dense SwiGLU MLP.
    pub shared: Option<Mlp>,
}

impl SparseMoe {
    /// `x`: `[..., D]` → `[..., D]`; router, experts and shared experts on `path`.
    pub fn forward(&self, x: &Array, path: MoePath) -> Result<Array> {
        let (inds, scores) = self.router.route_path(x, path)?;
        let y = self.experts.forward_combined(x, &inds, &scores, path)?;
        match &self.shared {
            Some(mlp) => Ok(mlx_rs::ops::add(&y, mlp.forward(x, path)?)?),
            None => Ok(y),
        }
    }

    /// Float32 copy with dequantized weights (for the oracle).
    pub fn to_f32(&self) -> Result<SparseMoe> {
        Ok(SparseMoe {
            router: self.router.to_f32()?,
            experts: self.experts.to_f32()?,
            shared: self.shared.as_ref().map(|m| m.to_f32()).transpose()?,
        })
    }

    /// The activation dtype this block computes in when fed `x`.
    pub fn out_dtype(x: &Array) -> Dtype {
        x.dtype()
    }
}
