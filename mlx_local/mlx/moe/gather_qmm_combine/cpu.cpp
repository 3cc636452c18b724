// Copyright © 2026 zmlx contributors.
//
// CPU evaluation of gather_qmm_combine: check indices, route rows to experts, prepare each distinct
// h row once, then accumulate score * (dot + bias) over every routed expert in float32 and round
// once to the output dtype. Two schedules, with the same summation order (routed rows ascending,
// i.e. by expert, then by position), hence the same result:
//  - expert-major (when the per-routed-row results fit kStageFloats): pieces are (expert, block of
//    output features), so each piece streams one contiguous block of one expert's weights; the
//    float32 results are staged and summed per output row afterwards;
//  - feature-major: pieces are blocks of output features, each accumulating over every expert.
#include <mlx/allocator.h>
#include <mlx/backend/cpu/encoder.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "mlx/moe/common/batch_inputs.h"
#include "mlx/moe/common/engine.h"
#include "mlx/moe/common/routing.h"
#include "mlx/moe/common/thread_pool.h"
#include "mlx/moe/common/validate.h"
#include "mlx/moe/gather_qmm_combine/gather_qmm_combine.h"

namespace mlx::core {

namespace moe {

namespace {
constexpr const char* kTag = "gather_qmm_combine";
constexpr int64_t kRowChunk = 256;
// Staged float32 results of the expert-major schedule (routed rows x N), at most.
constexpr int64_t kStageFloats = int64_t{1} << 22;
// Staged floats up to which the buffer is kept per thread between calls (4 MiB).
constexpr size_t kKeepStage = size_t{1} << 20;
} // namespace

void combine_expert_major(
    const QMat& W,
    const CombineParams& p,
    const Routing& route_,
    const XPrep& xp,
    const float* scores,
    const void* bp,
    Dtype bt,
    array& out,
    int64_t M,
    int64_t N,
    int64_t out_rows) {
  const Engine& eng = engine();
  ThreadPool& pool = ThreadPool::instance();
  const int64_t routed = static_cast<int64_t>(route_.slot.size());
  const int64_t n_active = static_cast<int64_t>(route_.experts.size());
  const int64_t kk = std::max<int64_t>(p.k, 1);
  // Staged results. The pieces below write every element, so the buffer is not zero-filled, and
  // up to kKeepStage floats it is kept per thread (no fresh pages per call).
  const auto staged = static_cast<size_t>(routed * N);
  thread_local std::unique_ptr<float[]> kept;
  thread_local size_t kept_size = 0;
  std::unique_ptr<float[]> own;
  float* stage = nullptr;
  if (staged <= kKeepStage) {
    if (kept_size < staged) {
      kept.reset(new float[staged]);
      kept_size = staged;
    }
    stage = kept.get();
  } else {
    own.reset(new float[staged]);
    stage = own.get();
  }
  // Output row of each routed row, and the routed rows of each output row (ascending).
  std::vector<int64_t> expert_of(static_cast<size_t>(routed));
  std::vector<int64_t> first(static_cast<size_t>(out_rows + 1), 0);
  std::vector<int64_t> orow(static_cast<size_t>(routed));
  for (int64_t a = 0; a < n_active; ++a) {
    for (int64_t r = route_.begin[a]; r < route_.begin[a + 1]; ++r) {
      expert_of[r] = route_.experts[a];
      orow[r] = (route_.batch[r] / kk) * M + route_.m[r];
      ++first[orow[r] + 1];
    }
  }
  for (int64_t o = 0; o < out_rows; ++o) {
    first[o + 1] += first[o];
  }
  std::vector<int64_t> members(static_cast<size_t>(routed));
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t r = 0; r < routed; ++r) {
      members[fill[orow[r]]++] = r;
    }
  }

  const int64_t nb_rows =
      block_rows(N, n_active, p.transpose ? 1 : p.q.group_size, pool.num_threads());
  const int64_t nblk = (N + nb_rows - 1) / nb_rows;
  pool.parallel_for(n_active * nblk, [&](int64_t piece) {
    const int64_t a = piece / nblk;
    const int64_t n0 = (piece % nblk) * nb_rows;
    const int64_t nb = std::min(nb_rows, N - n0);
    const int64_t e = route_.experts[a];
    for (int64_t r0 = route_.begin[a]; r0 < route_.begin[a + 1]; r0 += kRowChunk) {
      const int64_t R = std::min(kRowChunk, route_.begin[a + 1] - r0);
      eng.dots(W, e, n0, nb, xp, route_.slot.data() + r0, R, stage + r0 * N + n0, N);
    }
  });

  // The sums per output row, in pieces of about 2^14 elements; with fewer rows than threads, rows
  // are split into column blocks so that every thread sums a part (the staged results of the
  // other threads' experts are read from their caches).
  void* o = out.data<uint8_t>();
  const Dtype ot = out.dtype();
  const int64_t threads = pool.num_threads();
  const int64_t cb = out_rows >= threads ? N : std::max<int64_t>(256, (N + threads - 1) / threads);
  const int64_t ncb = (N + cb - 1) / cb;
  const int64_t rows_per_piece = std::max<int64_t>(1, (int64_t{1} << 14) / cb);
  const int64_t row_pieces = (out_rows + rows_per_piece - 1) / rows_per_piece;
  const int64_t bsz = bp != nullptr ? static_cast<int64_t>(size_of(bt)) : 0;
  pool.parallel_for(row_pieces * ncb, [&](int64_t piece) {
    const int64_t c0 = (piece % ncb) * cb;
    const int64_t cw = std::min(cb, N - c0);
    const int64_t row0 = (piece / ncb) * rows_per_piece;
    thread_local std::vector<float> acc, brow;
    acc.resize(static_cast<size_t>(cw));
    brow.assign(static_cast<size_t>(cw), 0.0f);
    float* ac = acc.data();
    float* bw = brow.data();
    for (int64_t row = row0; row < std::min(out_rows, row0 + rows_per_piece); ++row) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = first[row]; t < first[row + 1]; ++t) {
        const int64_t r = members[t];
        const float s = scores[route_.batch[r]];
        const float* yr = stage + r * N + c0;
        if (bp != nullptr) {
          detail::load_row(
              static_cast<const uint8_t*>(bp) + (expert_of[r] * N + c0) * bsz, bt, 0, cw, bw);
        }
        // The zero bias row keeps the same sum (x + 0 turns -0 into +0) as with a bias.
        for (int64_t j = 0; j < cw; ++j) {
          ac[j] += s * (yr[j] + bw[j]);
        }
      }
      store_floats(o, ot, row * N + c0, ac, cw);
    }
  });
}

void gather_qmm_combine_cpu(const std::vector<array>& in, array& out, const CombineParams& p) {
  const bool affine = p.q.info->has_biases;
  size_t k = 0;
  const array& h = in[k++];
  const array& w = in[k++];
  const array& sc = in[k++];
  const array* bi = affine ? &in[k++] : nullptr;
  const array& rhs = in[k++];
  const array& scores = in[k++];
  const array* bias = p.has_bias ? &in[k++] : nullptr;

  const int64_t M = h.shape(-2);
  const int64_t N = out.shape(-1);
  const Shape h_batch = batch_dims(h);
  Shape batch(out.shape().begin(), out.shape().end() - 2);
  batch.push_back(static_cast<int>(p.k));
  const int64_t Bh = batch_size(h_batch);
  const int64_t B = batch_size(batch);
  const int64_t out_rows = static_cast<int64_t>(out.size()) / std::max<int64_t>(N, 1);
  const QMat W = qmat_view(w, sc, bi, p.q, p.transpose);
  const int64_t E = W.experts;
  const Shape w_batch = batch_dims(w);

  // Every index is checked before any is used.
  std::vector<uint32_t> li, ri;
  std::vector<float> sv;
  batch_indices(kTag, "lhs index", nullptr, h_batch, batch, Bh, li);
  batch_indices(kTag, "expert index", &rhs, w_batch, batch, E, ri);
  if (out_rows == 0 || N == 0) {
    return;
  }
  batch_floats(scores, batch, sv);
  // Copies of inputs that are not row-contiguous (empty otherwise).
  std::vector<uint8_t> hbuf, bbuf;
  const uint8_t* hd = row_contiguous(h, hbuf);
  const void* bp = bias ? row_contiguous(*bias, bbuf) : nullptr;
  const Dtype bt = bias ? bias->dtype() : float32;

  const Routing route_ = route(li.data(), ri.data(), B, M, Bh, E);
  const Engine& eng = engine();
  XPrep xp;
  eng.prepare(W, hd, h.dtype(), route_.src_rows.data(),
              static_cast<int64_t>(route_.src_rows.size()), xp);

  ThreadPool& pool = ThreadPool::instance();
  const int64_t routed = static_cast<int64_t>(route_.slot.size());
  if (routed * N <= kStageFloats) {
    combine_expert_major(W, p, route_, xp, sv.data(), bp, bt, out, M, N, out_rows);
    return;
  }
  // Pieces: blocks of output features, each accumulating over every routed expert (no two pieces
  // write the same output element).
  const int64_t nb_rows = block_rows(N, 1, p.transpose ? 1 : p.q.group_size, pool.num_threads());
  const int64_t pieces = (N + nb_rows - 1) / nb_rows;
  void* o = out.data<uint8_t>();
  const Dtype ot = out.dtype();
  const int64_t kk = std::max<int64_t>(p.k, 1);

  pool.parallel_for(pieces, [&](int64_t piece) {
    const int64_t n0 = piece * nb_rows;
    const int64_t nb = std::min(nb_rows, N - n0);
    thread_local std::vector<float> acc, y, bb;
    const int64_t rc = std::min<int64_t>(kRowChunk, std::max<int64_t>(route_.max_rows, 1));
    acc.assign(static_cast<size_t>(out_rows * nb), 0.0f);
    y.resize(static_cast<size_t>(rc * nb));
    bb.resize(static_cast<size_t>(nb));
    for (size_t a = 0; a < route_.experts.size(); ++a) {
      const int64_t e = route_.experts[a];
      for (int64_t j = 0; j < nb; ++j) {
        bb[j] = bp ? load_float(bp, bt, e * N + n0 + j) : 0.0f;
      }
      for (int64_t r0 = route_.begin[a]; r0 < route_.begin[a + 1]; r0 += rc) {
        const int64_t R = std::min(rc, route_.begin[a + 1] - r0);
        eng.dots(W, e, n0, nb, xp, route_.slot.data() + r0, R, y.data(), nb);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t i = route_.batch[r0 + r];
          const float s = sv[i];
          float* ar = acc.data() + ((i / kk) * M + route_.m[r0 + r]) * nb;
          const float* yr = y.data() + r * nb;
          for (int64_t j = 0; j < nb; ++j) {
            ar[j] += s * (yr[j] + bb[j]);
          }
        }
      }
    }
    for (int64_t row = 0; row < out_rows; ++row) {
      const float* ar = acc.data() + row * nb;
      for (int64_t j = 0; j < nb; ++j) {
        store_float(o, ot, row * N + n0 + j, ar[j]);
      }
    }
  });
}

} // namespace moe

void GatherQMMCombine::eval_cpu(const std::vector<array>& inputs, array& out) {
  {
    // The expert indices are checked here, not in the task (see moe::check_indices_on_host).
    Shape batch(out.shape().begin(), out.shape().end() - 2);
    batch.push_back(static_cast<int>(params_.k));
    const Shape w_batch = moe::batch_dims(inputs[1]);
    const array& rhs = inputs[params_.q.info->has_biases ? 4 : 3];
    moe::check_indices_on_host(
        moe::kTag, "expert index", rhs, w_batch, batch, moe::batch_size(w_batch), stream());
  }
  out.set_data(allocator::malloc(out.nbytes()));
  auto& enc = cpu::get_command_encoder(stream());
  std::vector<array> in;
  in.reserve(inputs.size());
  for (const auto& a : inputs) {
    enc.set_input_array(a);
    in.push_back(array::unsafe_weak_copy(a));
  }
  enc.set_output_array(out);
  enc.dispatch([in = std::move(in), out = array::unsafe_weak_copy(out), p = params_]() mutable {
    moe::gather_qmm_combine_cpu(in, out, p);
  });
}

} // namespace mlx::core
