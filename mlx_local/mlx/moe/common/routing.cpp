// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/routing.h"

#include <algorithm>
#include <unordered_map>

namespace mlx::core::moe {

Routing route(
    const uint32_t* lhs,
    const uint32_t* rhs,
    int64_t B,
    int64_t M,
    int64_t Bx,
    int64_t E) {
  Routing r;
  // Counting sort of the batch positions by expert (stable).
  std::vector<int64_t> count(static_cast<size_t>(E) + 1, 0);
  for (int64_t i = 0; i < B; ++i) {
    ++count[rhs[i] + 1];
  }
  for (int64_t e = 0; e < E; ++e) {
    count[e + 1] += count[e];
  }
  std::vector<int64_t> order(static_cast<size_t>(B));
  {
    std::vector<int64_t> next(count.begin(), count.end() - 1);
    for (int64_t i = 0; i < B; ++i) {
      order[next[rhs[i]]++] = i;
    }
  }
  const int64_t rows = B * M;
  r.slot.resize(static_cast<size_t>(rows));
  r.batch.resize(static_cast<size_t>(rows));
  r.m.resize(static_cast<size_t>(rows));
  // At most min(B, E) experts and one source row per routed row: no reallocation while filling.
  const size_t max_experts = static_cast<size_t>(std::min(B, E));
  r.experts.reserve(max_experts);
  r.begin.reserve(max_experts + 1);
  r.src_rows.reserve(static_cast<size_t>(std::min(rows, Bx * M)));

  // Slot of each distinct activation row.
  const int64_t xrows = Bx * M;
  const bool dense = xrows <= 4 * rows + 4096;
  std::vector<int64_t> slot_dense;
  std::unordered_map<int64_t, int64_t> slot_sparse;
  if (dense) {
    slot_dense.assign(static_cast<size_t>(xrows), -1);
  }
  auto slot_of = [&](int64_t xr) {
    if (dense) {
      int64_t& s = slot_dense[xr];
      if (s < 0) {
        s = static_cast<int64_t>(r.src_rows.size());
        r.src_rows.push_back(xr);
      }
      return s;
    }
    auto it = slot_sparse.find(xr);
    if (it != slot_sparse.end()) {
      return it->second;
    }
    int64_t s = static_cast<int64_t>(r.src_rows.size());
    slot_sparse.emplace(xr, s);
    r.src_rows.push_back(xr);
    return s;
  };

  int64_t k = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b0 = count[e];
    const int64_t b1 = count[e + 1];
    if (b0 == b1) {
      continue;
    }
    r.experts.push_back(e);
    r.begin.push_back(k);
    for (int64_t t = b0; t < b1; ++t) {
      const int64_t i = order[t];
      for (int64_t mm = 0; mm < M; ++mm) {
        r.slot[k] = slot_of(static_cast<int64_t>(lhs[i]) * M + mm);
        r.batch[k] = i;
        r.m[k] = static_cast<int32_t>(mm);
        ++k;
      }
    }
    r.max_rows = std::max(r.max_rows, (b1 - b0) * M);
  }
  r.begin.push_back(k);
  return r;
}

int64_t block_rows(int64_t N, int64_t units, int64_t align, int threads) {
  const int64_t unit = std::max<int64_t>(align, 16);
  const int64_t target = 16 * static_cast<int64_t>(std::max(threads, 1));
  const int64_t want = (N * std::max<int64_t>(units, 1) + target - 1) / target;
  const int64_t whole = (N + unit - 1) / unit * unit;
  int64_t nb = (want + unit - 1) / unit * unit;
  return std::min(std::max(nb, unit), std::max(whole, unit));
}

} // namespace mlx::core::moe
