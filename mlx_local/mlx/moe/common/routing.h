// Copyright © 2026 zmlx contributors.
//
// Routing shared by the fused MoE CPU kernels: which activation rows go to which expert, grouped
// by expert so that each distinct expert's weights are read once per call, and which distinct
// activation rows have to be prepared (each once, whatever the number of experts that use it).
#pragma once

#include <cstdint>
#include <vector>

namespace mlx::core::moe {

struct Routing {
  // Distinct activation rows, in first-use order: slot s holds row src_rows[s] of x ([Bx * M, K]).
  std::vector<int64_t> src_rows;
  // Experts that received rows (ascending) and, for each, its range [begin[a], begin[a + 1]) in
  // the routed-row arrays below.
  std::vector<int64_t> experts;
  std::vector<int64_t> begin;
  // Per routed row (grouped by expert, then by batch position, then by m): the prepared slot of
  // its activation row and its batch position i (row i * M + m of a [B * M, N] output).
  std::vector<int64_t> slot;
  std::vector<int64_t> batch;
  std::vector<int32_t> m;
  int64_t max_rows = 0; // most rows routed to one expert
};

// lhs / rhs: B uint32 indices, already checked to be < Bx and < E.
Routing route(
    const uint32_t* lhs,
    const uint32_t* rhs,
    int64_t B,
    int64_t M,
    int64_t Bx,
    int64_t E);

// Output rows per parallel piece when `units` independent ranges of N output rows are split (e.g.
// one range per routed expert): a multiple of max(align, 16) (align is the group size for
// transpose = false), giving about 16 pieces per thread so that a thread that is descheduled holds
// back little work.
int64_t block_rows(int64_t N, int64_t units, int64_t align, int threads);

} // namespace mlx::core::moe
