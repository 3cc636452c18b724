//! Expert parallelism: the ranks of a distributed group share out the routed experts of every MoE layer,
//! the rest of the model is replicated.
//!
//! Rank r of N holds experts `[r·E/N, (r+1)·E/N)` (integer division: when N divides E every rank holds
//! E/N, otherwise the counts differ by at most one; N may not exceed E). Every rank routes every token
//! exactly as one process would (same router weights, same inputs: the residual stream is identical on
//! every rank because each MoE layer ends with an `all_sum`, whose result the ring — like NCCL — gives
//! every rank bit for bit). Each rank then runs the expert ops on its own experts only
//! ([`ExpertRange::localize`]): the slots routed to other ranks' experts get score 0 and a local id, so
//! the ops only ever see ids in `[0, count)` — the experts whose weights the rank holds, the only ones it
//! has; the ops check every index against that count. The ranks add their float32 partial combines
//! with [`crate::distributed::all_sum`] and round the total once, as one process rounds its combine.
//! Shared experts and dense layers belong to the replicated part: every rank computes them (see
//! [`super::SparseMoe::forward`]).
//!
//! Cost: a rank evaluates all k slots of every token (the foreign ones times 0); in decode the foreign
//! slots reuse an expert the token already reads here, so a rank streams about k/N experts' weights per
//! token instead of k, but a prefill's arithmetic is not divided.

use std::sync::Arc;

use mlx_rs::{ops, Array, Dtype};

use crate::distributed::{all_sum, Group};
use crate::error::{Error, Result};

/// The experts one rank holds out of a layer's `total`: ids `[first, first + count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertRange {
    /// First expert id held.
    pub first: i32,
    /// Number of experts held.
    pub count: i32,
    /// Experts in the layer.
    pub total: i32,
}

impl ExpertRange {
    /// Rank `rank` of `size`'s share of `total` experts: `[rank·total/size, (rank+1)·total/size)`.
    pub fn of_rank(total: i32, rank: usize, size: usize) -> Result<ExpertRange> {
        if size == 0 || rank >= size {
            return Err(Error::invalid(format!(
                "rank {rank} is outside a group of {size}"
            )));
        }
        if total < 1 || (total as usize) < size {
            return Err(Error::config(format!(
                "expert parallelism over {size} ranks needs at least {size} experts per MoE layer \
                 (every rank holds at least one); this model has {total}"
            )));
        }
        let at = |r: usize| (r as i64 * total as i64 / size as i64) as i32;
        let (first, end) = (at(rank), at(rank + 1));
        Ok(ExpertRange {
            first,
            count: end - first,
            total,
        })
    }

    /// Whether the range is every expert.
    pub fn is_all(&self) -> bool {
        self.first == 0 && self.count == self.total
    }

    /// Global expert indices `[..., k]` (uint32) and their scores → this range's local ids and the scores
    /// with those of other ranks' experts zeroed. A slot of another rank's expert is pointed at one of the
    /// token's own local experts (the highest), or at local expert 0 when the token chose none here: its
    /// product is multiplied by 0, and it adds no expert whose weights would otherwise not be read.
    pub fn localize(&self, indices: &Array, scores: &Array) -> Result<(Array, Array)> {
        if indices.dtype() != Dtype::Uint32 {
            return Err(Error::invalid(format!(
                "expert indices must be uint32, got {:?}",
                indices.dtype()
            )));
        }
        let lo = Array::from_slice(&[self.first as u32], &[1]);
        let hi = Array::from_slice(&[(self.first + self.count) as u32], &[1]);
        let mine = ops::logical_and(ops::ge(indices, &lo)?, ops::lt(indices, &hi)?)?;
        // Other ranks' ids become `first` before the subtraction, so no id wraps around.
        let local = ops::subtract(&ops::select(&mine, indices, &lo)?, &lo)?;
        let fallback = local.max_axis(-1, true)?;
        let local = ops::select(&mine, &local, &fallback)?;
        let zero = ops::zeros_like(scores)?;
        let kept = ops::select(&mine, scores, &zero)?;
        Ok((local, kept))
    }
}

/// This process's part in expert parallelism: its rank and the group whose ranks hold the other experts.
#[derive(Clone, Debug)]
pub struct ExpertParallel {
    rank: usize,
    size: usize,
    group: Option<Arc<Group>>,
}

impl ExpertParallel {
    /// Shares the experts over `group`'s ranks.
    pub fn new(group: Arc<Group>) -> ExpertParallel {
        ExpertParallel {
            rank: group.rank(),
            size: group.size(),
            group: Some(group),
        }
    }

    /// Rank `rank` of `size` without a group: a model loaded this way holds that rank's experts and can
    /// compute its partial sums ([`super::SparseMoe::forward_partial`]), but a whole forward pass needs the
    /// other ranks and is refused (for tools and tests that add the partials themselves).
    pub fn detached(rank: usize, size: usize) -> Result<ExpertParallel> {
        if size == 0 || rank >= size {
            return Err(Error::invalid(format!(
                "rank {rank} is outside a group of {size}"
            )));
        }
        Ok(ExpertParallel {
            rank,
            size,
            group: None,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks sharing the experts.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The group, unless detached.
    pub fn group(&self) -> Option<&Group> {
        self.group.as_deref()
    }

    /// This rank's share of a layer of `total` experts.
    pub fn range(&self, total: i32) -> Result<ExpertRange> {
        ExpertRange::of_rank(total, self.rank, self.size)
    }

    /// Adds the ranks' partial sums (every rank gets the total). The sum runs in float32 whatever the
    /// partials' dtype, and is cast back.
    pub fn sum_partials(&self, partial: &Array) -> Result<Array> {
        let group = self.group.as_deref().ok_or_else(|| {
            Error::invalid(format!(
                "this model holds rank {} of {}'s experts only and has no group to add the other \
                 ranks' partial sums",
                self.rank, self.size
            ))
        })?;
        if group.size() != self.size || group.rank() != self.rank {
            return Err(Error::Internal(format!(
                "expert shard of rank {} of {} used with {group:?}",
                self.rank, self.size
            )));
        }
        let dt = partial.dtype();
        if dt == Dtype::Float32 {
            return all_sum(partial, group);
        }
        Ok(all_sum(&partial.as_dtype(Dtype::Float32)?, group)?.as_dtype(dt)?)
    }
}
