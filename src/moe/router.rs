//! Expert routers.

use mlx_rs::{ops, Array, Dtype};

use crate::array::slice_axis;
use crate::error::{Error, Result};
use crate::nn::Linear;
use crate::path::MoePath;

/// How router logits become expert indices and combine weights.
#[derive(Clone, Debug, PartialEq)]
pub enum RouterKind {
    /// `softmax(logits)` (precise) → top-k → optional renormalisation (Qwen3-MoE, Mixtral with `norm`).
    SoftmaxTopK {
        /// Divide the k scores by their sum.
        renormalize: bool,
    },
    /// top-k over the logits, then softmax over those k (gpt-oss).
    TopKSoftmax,
    /// [`RouterKind::TopKSoftmax`] with the k taken as mlx-lm's Mixtral takes them,
    /// `argpartition(-logits, k - 1)[..., :k]`: the same experts, listed in another order, which is the
    /// order in which the k weighted outputs are summed.
    TopKSoftmaxNeg,
    /// `sigmoid(logits)` in float32; top-k (taken as `argpartition(-s, k - 1)[..., :k]`) chosen on
    /// `scores + correction_bias` (with optional group-limited selection); weights are the sigmoid
    /// scores, optionally renormalised, times `scaling` (GLM-4 MoE, as mlx-lm's `group_expert_select`).
    /// Scores stay float32, as in mlx-lm.
    SigmoidTopK {
        /// Divide the k scores by their sum.
        renormalize: bool,
        /// `routed_scaling_factor`.
        scaling: f32,
        /// Number of expert groups (1 = no grouping).
        n_group: i32,
        /// Groups kept per token.
        topk_group: i32,
    },
}

/// Router: a linear layer to expert logits, then [`RouterKind`].
#[derive(Clone, Debug)]
pub struct Router {
    /// `[E, D]` (+ bias for gpt-oss).
    pub gate: Linear,
    /// Experts per token.
    pub top_k: i32,
    /// Scoring rule.
    pub kind: RouterKind,
    /// `e_score_correction_bias` `[E]` for [`RouterKind::SigmoidTopK`].
    pub correction_bias: Option<Array>,
}

/// Indices of the `k` largest entries along the last axis (unordered), as mlx-lm:
/// `stop_gradient(argpartition(a, -k)[..., -k:])` (indices have no derivative; MLX's gather_qmm and the
/// fused ops refuse to differentiate with respect to them).
fn topk_indices(a: &Array, k: i32) -> Result<Array> {
    let n = *a.shape().last().unwrap_or(&0);
    let part = ops::argpartition_axis(a, n - k, -1)?;
    Ok(mlx_rs::stop_gradient(slice_axis(&part, -1, n - k, n)?)?)
}

/// Indices of the `k` largest entries along the last axis (unordered), as mlx-lm's Mixtral and GLM-4 MoE
/// take them: `stop_gradient(argpartition(-a, k - 1)[..., :k])`. The set is [`topk_indices`]'s; the order
/// is not.
fn neg_topk_indices(a: &Array, k: i32) -> Result<Array> {
    let part = ops::argpartition_axis(&ops::negative(a)?, k - 1, -1)?;
    Ok(mlx_rs::stop_gradient(slice_axis(&part, -1, 0, k)?)?)
}

impl Router {
    /// Routes `x` (`[..., D]`) as mlx-lm does: returns `(indices [..., k] uint32, scores [..., k])`.
    pub fn route(&self, x: &Array) -> Result<(Array, Array)> {
        self.route_path(x, MoePath::Reference)
    }

    /// [`Router::route`] with the gate projection on `path` (see [`Linear::forward_path`]).
    pub fn route_path(&self, x: &Array, path: MoePath) -> Result<(Array, Array)> {
        let e = self.gate.weight.out_dims();
        if self.top_k < 1 || self.top_k > e {
            return Err(Error::invalid(format!(
                "top_k {} out of range for {e} experts",
                self.top_k
            )));
        }
        let k = self.top_k;
        let logits = self.gate.forward_path(x, path)?;
        let (inds, scores) = match &self.kind {
            RouterKind::SoftmaxTopK { renormalize } => {
                let gates = ops::softmax_axis(&logits, -1, true)?;
                let inds = topk_indices(&gates, k)?;
                let mut scores = gates.take_along_axis(&inds, -1)?;
                if *renormalize {
                    let sum = scores.sum_axis(-1, true)?;
                    scores = ops::divide(&scores, &sum)?;
                }
                (inds, scores)
            }
            RouterKind::TopKSoftmax | RouterKind::TopKSoftmaxNeg => {
                let inds = if self.kind == RouterKind::TopKSoftmax {
                    topk_indices(&logits, k)?
                } else {
                    neg_topk_indices(&logits, k)?
                };
                let top = logits.take_along_axis(&inds, -1)?;
                (inds, ops::softmax_axis(&top, -1, true)?)
            }
            RouterKind::SigmoidTopK {
                renormalize,
                scaling,
                n_group,
                topk_group,
            } => {
                let orig = ops::sigmoid(logits.as_dtype(Dtype::Float32)?)?;
                let mut sel = match &self.correction_bias {
                    Some(b) => ops::add(&orig, b.as_dtype(Dtype::Float32)?)?,
                    None => orig.clone(),
                };
                if *n_group > 1 {
                    sel = self.group_limit(&sel, *n_group, *topk_group)?;
                }
                let inds = neg_topk_indices(&sel, k)?;
                let mut scores = orig.take_along_axis(&inds, -1)?;
                if *renormalize && k > 1 {
                    let sum = scores.sum_axis(-1, true)?;
                    scores = ops::divide(&scores, &sum)?;
                }
                scores = ops::multiply(&scores, Array::from_f32(*scaling))?;
                (inds, scores)
            }
        };
        Ok((inds.as_dtype(Dtype::Uint32)?, scores))
    }

    /// Zeroes the scores of the `n_group - topk_group` worst expert groups (group score = sum of its top 2).
    fn group_limit(&self, sel: &Array, n_group: i32, topk_group: i32) -> Result<Array> {
        let sh = sel.shape().to_vec();
        let e = *sh.last().unwrap_or(&0);
        if e % n_group != 0 || e / n_group < 2 || topk_group < 1 || topk_group > n_group {
            return Err(Error::config(format!(
                "n_group {n_group} / topk_group {topk_group} do not fit {e} experts"
            )));
        }
        let drop = n_group - topk_group;
        if drop == 0 {
            return Ok(sel.clone());
        }
        let mut gshape = sh[..sh.len() - 1].to_vec();
        gshape.extend([n_group, e / n_group]);
        let g = sel.reshape(&gshape)?;
        let i = topk_indices(&g, 2)?;
        let group_scores = g.take_along_axis(&i, -1)?.sum_axis(-1, true)?;
        let worst = slice_axis(
            &ops::argpartition_axis(&group_scores, drop - 1, -2)?,
            -2,
            0,
            drop,
        )?;
        let g = g.put_along_axis(&worst, Array::from_f32(0.0), -2)?;
        Ok(g.reshape(&sh)?)
    }

    /// Float32 copy.
    pub fn to_f32(&self) -> Result<Router> {
        Ok(Router {
            gate: self.gate.to_f32()?,
            correction_bias: self
                .correction_bias
                .as_ref()
                .map(|b| b.as_dtype(Dtype::Float32))
                .transpose()?,
            ..self.clone()
        })
    }
}
