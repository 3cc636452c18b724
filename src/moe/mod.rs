//! Mixture-of-Experts building blocks mirroring mlx-lm: [`SwitchGlu`] (the experts; reference path through
//! MLX's composed `gather_qmm` ops exactly as mlx-lm does, or the fused path through zmlx's fused
//! primitives, switchable at run time), [`Router`] (softmax top-k with optional renormalisation, softmax
//! over the top-k logits as in gpt-oss, or sigmoid scores with a correction bias as in GLM-4 MoE /
//! DeepSeek-V3) and the [`SparseMoe`] block combining both, whose experts may be shared out over the
//! ranks of a distributed group ([`parallel`]).

pub mod parallel;
mod router;
mod switch_glu;

/// Re-exported from [`crate::path`], where it lives because it selects the path of every layer.
pub use crate::path::MoePath;
pub use parallel::{ExpertParallel, ExpertRange};
pub use router::{Router, RouterKind};
pub use switch_glu::{Activation, ExpertWeight, SwitchGlu, SORT_THRESHOLD};

use mlx_rs::{Array, Dtype};

use crate::error::{Error, Result};
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
    /// Under expert parallelism, this rank's share of the experts (`experts` holds exactly those) and the
    /// group holding the others; `None`: `experts` holds them all.
    pub parallel: Option<(ExpertRange, ExpertParallel)>,
}

impl SparseMoe {
    /// `x`: `[..., D]` → `[..., D]`; router, experts and shared experts on `path`. Under expert parallelism
    /// a collective: every rank of the group must run the same forward passes in the same order.
    ///
    /// Under expert parallelism the ranks add their float32 partial sums ([`SparseMoe::forward_partial`])
    /// and round the total once, to the dtype one process rounds its combine to. The shared experts
    /// belong to the replicated part of the model: every rank computes them and adds them after that
    /// sum, so the result is, in structure and order, the single process's `routed + shared`, and no rank
    /// waits on another for them.
    pub fn forward(&self, x: &Array, path: MoePath) -> Result<Array> {
        let y = match &self.parallel {
            None => {
                let (inds, scores) = self.router.route_path(x, path)?;
                self.experts.forward_combined(x, &inds, &scores, path)?
            }
            Some((_, ep)) => {
                let (partial, dt) = self.forward_partial(x, path)?;
                ep.sum_partials(&partial)?.as_dtype(dt)?
            }
        };
        match &self.shared {
            Some(mlp) => Ok(mlx_rs::ops::add(&y, mlp.forward(x, path)?)?),
            None => Ok(y),
        }
    }

    /// The routed experts' score-weighted sum over the experts this block holds (all of them without
    /// expert parallelism), in float32 before the combine's rounding (see
    /// [`SwitchGlu::forward_combined_f32`]), and the dtype the combine rounds to: `[..., D]`, shared
    /// experts excluded. Summed over the ranks of a group it is the single process's routed output.
    pub fn forward_partial(&self, x: &Array, path: MoePath) -> Result<(Array, Dtype)> {
        let (inds, scores) = self.router.route_path(x, path)?;
        let Some((range, _)) = &self.parallel else {
            return self.experts.forward_combined_f32(x, &inds, &scores, path);
        };
        let (e, _, _) = self.experts.dims()?;
        let routed = self.router.gate.weight.out_dims();
        if e != range.count || routed != range.total {
            return Err(Error::invalid(format!(
                "expert shard [{}, {}) of {} does not match the block: {e} experts held, a router over {routed}",
                range.first,
                range.first + range.count,
                range.total
            )));
        }
        let (local, kept) = range.localize(&inds, &scores)?;
        self.experts.forward_combined_f32(x, &local, &kept, path)
    }

    /// Float32 copy with dequantized weights (for the oracle).
    pub fn to_f32(&self) -> Result<SparseMoe> {
        Ok(SparseMoe {
            router: self.router.to_f32()?,
            experts: self.experts.to_f32()?,
            shared: self.shared.as_ref().map(|m| m.to_f32()).transpose()?,
            parallel: self.parallel.clone(),
        })
    }

    /// The activation dtype this block computes in when fed `x`.
    pub fn out_dtype(x: &Array) -> Dtype {
        x.dtype()
    }
}
