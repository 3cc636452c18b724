// Copyright © 2026 zmlx contributors.
//
// CPU evaluation of gather_qmm_swiglu. Inside the task MLX runs on the stream's worker thread:
//  1. check every index (an error here is thrown before anything is read through an index, and
//     MLX's scheduler turns it into an exception from eval on the caller's thread);
//  2. route rows to experts (grouped, each expert's weights read once per call);
//  3. prepare each distinct activation row once (float32, engine layout) for both projections;
//  4. in parallel over blocks of output features: for every routed expert, the gate and up dot
//     products of its rows (float32), expert biases, the activation, one rounding to the output.
#include <mlx/allocator.h>
#include <mlx/backend/cpu/encoder.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "mlx/moe/common/batch_inputs.h"
#include "mlx/moe/common/engine.h"
#include "mlx/moe/common/kernel_macros.h"
#include "mlx/moe/common/routing.h"
#include "mlx/moe/common/thread_pool.h"
#include "mlx/moe/common/validate.h"
#include "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h"

namespace mlx::core {

namespace moe {

namespace {

constexpr const char* kTag = "gather_qmm_swiglu";
// Routed rows handled per engine call (bounds the per-thread result buffers).
constexpr int64_t kRowChunk = 256;

// The activation loops are compiled for several instruction sets (MOE_CLONES), so that a block's
// activation is a few vector instructions per 8 or 16 outputs instead of a call to expf per output.

// exp(x) in float32 within ~2 ulp, branch-free so that loops over it vectorize: x = n ln2 + r with
// |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact), a degree-7 polynomial for e^r, times 2^n.
// Above 88.72 the result is +inf, below -86.6 it is e^-86.6 (the callers only use it in
// 1 / (1 + exp(-z)), where that is 1 to float32 precision); NaN stays NaN.
inline float exp_f32(float x) {
  const float xc = std::min(std::max(x, -86.6f), 88.72f);
  // Round to nearest: adding and subtracting 1.5 * 2^23 leaves the nearest integer.
  const float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float er = (q * r) * r + r + 1.0f;
  // 2^n as 2 * 2^(n - 1): n - 1 in [-126, 127] is a normal float32 exponent.
  const int32_t ni = static_cast<int32_t>(n);
  const float half_two_n = std::bit_cast<float>(static_cast<uint32_t>(ni + 126) << 23);
  const float e = (er * half_two_n) * 2.0f;
  return x > 88.72f ? std::numeric_limits<float>::infinity() : e;
}

inline float sigmoid(float z) {
  return 1.0f / (1.0f + exp_f32(-z));
}

// g[j] = silu(g[j] + bg[j]) * (u[j] + bu[j])
MOE_CLONES void swiglu_block(float* g, const float* u, const float* bg, const float* bu, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float gv = g[j] + bg[j];
    const float uv = u[j] + bu[j];
    g[j] = gv * sigmoid(gv) * uv;
  }
}

// g[j] = gpt-oss activation of (g[j] + bg[j], u[j] + bu[j])
MOE_CLONES void gpt_oss_block(
    float* g,
    const float* u,
    const float* bg,
    const float* bu,
    int64_t n,
    float alpha,
    float lim) {
  for (int64_t j = 0; j < n; ++j) {
    float gv = g[j] + bg[j];
    float uv = u[j] + bu[j];
    gv = gv != gv ? gv : std::min(gv, lim);
    uv = uv != uv ? uv : std::min(std::max(uv, -lim), lim);
    g[j] = gv * sigmoid(alpha * gv) * (uv + 1.0f);
  }
}

} // namespace

void gather_qmm_swiglu_cpu(const std::vector<array>& in, array& out, const SwigluParams& p) {
  const bool affine = p.q.info->has_biases;
  size_t k = 0;
  const array& x = in[k++];
  const array& gw = in[k++];
  const array& gs = in[k++];
  const array* gb = affine ? &in[k++] : nullptr;
  const array& uw = in[k++];
  const array& us = in[k++];
  const array* ub = affine ? &in[k++] : nullptr;
  const array* lhs = p.has_lhs ? &in[k++] : nullptr;
  const array* rhs = p.has_rhs ? &in[k++] : nullptr;
  const array* gbias = p.has_gate_bias ? &in[k++] : nullptr;
  const array* ubias = p.has_up_bias ? &in[k++] : nullptr;

  const int64_t M = x.shape(-2);
  const Shape x_batch = batch_dims(x);
  const Shape batch(out.shape().begin(), out.shape().end() - 2);
  const int64_t Bx = batch_size(x_batch);
  const int64_t B = batch_size(batch);
  const int64_t N = out.shape(-1);
  const QMat G = qmat_view(gw, gs, gb, p.q, p.transpose);
  const QMat U = qmat_view(uw, us, ub, p.q, p.transpose);
  const int64_t E = G.experts;
  const Shape w_batch = batch_dims(gw);

  // Every index is checked before any is used.
  std::vector<uint32_t> li, ri;
  batch_indices(kTag, "lhs index", lhs, x_batch, batch, Bx, li);
  batch_indices(kTag, "expert index", rhs, w_batch, batch, E, ri);
  if (B * M == 0 || N == 0) {
    return;
  }
  // Copies of inputs that are not row-contiguous (empty otherwise).
  std::vector<uint8_t> xbuf, gbuf, ubuf;
  const uint8_t* xd = row_contiguous(x, xbuf);
  const void* gbp = gbias ? row_contiguous(*gbias, gbuf) : nullptr;
  const void* ubp = ubias ? row_contiguous(*ubias, ubuf) : nullptr;

  const Routing route_ = route(li.data(), ri.data(), B, M, Bx, E);
  const Engine& eng = engine();
  XPrep xp;
  eng.prepare(G, xd, x.dtype(), route_.src_rows.data(),
              static_cast<int64_t>(route_.src_rows.size()), xp);

  ThreadPool& pool = ThreadPool::instance();
  const int64_t n_active = static_cast<int64_t>(route_.experts.size());
  const int64_t nb_rows =
      block_rows(N, n_active, p.transpose ? 1 : p.q.group_size, pool.num_threads());
  const int64_t nblk = (N + nb_rows - 1) / nb_rows;
  const int64_t rc = std::min<int64_t>(kRowChunk, std::max<int64_t>(route_.max_rows, 1));
  void* o = out.data<uint8_t>();
  const Dtype ot = out.dtype();
  const Dtype gbt = gbias ? gbias->dtype() : float32;
  const Dtype ubt = ubias ? ubias->dtype() : float32;

  // Pieces: (routed expert, block of output features); each writes its own part of the output.
  pool.parallel_for(n_active * nblk, [&](int64_t piece) {
    const int64_t a = piece / nblk;
    const int64_t n0 = (piece % nblk) * nb_rows;
    const int64_t nb = std::min(nb_rows, N - n0);
    const int64_t e = route_.experts[a];
    thread_local std::vector<float> yg, yu, bg, bu;
    yg.resize(static_cast<size_t>(rc * nb));
    yu.resize(static_cast<size_t>(rc * nb));
    bg.resize(static_cast<size_t>(nb));
    bu.resize(static_cast<size_t>(nb));
    {
      for (int64_t j = 0; j < nb; ++j) {
        bg[j] = gbp ? load_float(gbp, gbt, e * N + n0 + j) : 0.0f;
        bu[j] = ubp ? load_float(ubp, ubt, e * N + n0 + j) : 0.0f;
      }
      for (int64_t r0 = route_.begin[a]; r0 < route_.begin[a + 1]; r0 += rc) {
        const int64_t R = std::min(rc, route_.begin[a + 1] - r0);
        const int64_t* slots = route_.slot.data() + r0;
        eng.dots(G, e, n0, nb, xp, slots, R, yg.data(), nb);
        eng.dots(U, e, n0, nb, xp, slots, R, yu.data(), nb);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t orow = route_.batch[r0 + r] * M + route_.m[r0 + r];
          float* gr = yg.data() + r * nb;
          const float* ur = yu.data() + r * nb;
          if (p.activation == Activation::SwiGLU) {
            swiglu_block(gr, ur, bg.data(), bu.data(), nb);
          } else {
            gpt_oss_block(gr, ur, bg.data(), bu.data(), nb, p.alpha, p.limit);
          }
          store_floats(o, ot, orow * N + n0, gr, nb);
        }
      }
    }
  });
}

} // namespace moe

void GatherQMMSwiGLU::eval_cpu(const std::vector<array>& inputs, array& out) {
  {
    // User indices are checked here, not in the task (see moe::check_indices_on_host).
    const size_t first_index = params_.q.info->has_biases ? 7 : 5;
    const Shape batch(out.shape().begin(), out.shape().end() - 2);
    const Shape x_batch = moe::batch_dims(inputs[0]);
    const Shape w_batch = moe::batch_dims(inputs[1]);
    size_t k = first_index;
    if (params_.has_lhs) {
      moe::check_indices_on_host(
          moe::kTag, "lhs index", inputs[k++], x_batch, batch, moe::batch_size(x_batch), stream());
    }
    if (params_.has_rhs) {
      moe::check_indices_on_host(
          moe::kTag, "expert index", inputs[k++], w_batch, batch, moe::batch_size(w_batch), stream());
    }
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
    moe::gather_qmm_swiglu_cpu(in, out, p);
  });
}

} // namespace mlx::core
