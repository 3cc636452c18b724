// Copyright © 2026 zmlx contributors.
//
// Engine selection, the pieces every engine shares, and the portable engine (natural layout:
// dequantize a weight row to float32 once, then plain float32 dot products with every row).
#include "mlx/moe/common/engine.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "mlx/moe/common/thread_pool.h"

namespace mlx::core::moe {

namespace detail {

float* scratch(int which, int64_t n) {
  struct Buf {
    std::unique_ptr<float[], void (*)(void*)> p{nullptr, std::free};
    int64_t cap = 0;
  };
  thread_local Buf bufs[4];
  Buf& b = bufs[which];
  if (b.cap < n) {
    int64_t cap = std::max<int64_t>(n, 1024);
    size_t bytes = ((static_cast<size_t>(cap) * sizeof(float) + 63) / 64) * 64;
    void* mem = std::aligned_alloc(64, bytes);
    if (mem == nullptr) {
      throw std::bad_alloc();
    }
    b.p.reset(static_cast<float*>(mem));
    b.cap = cap;
  }
  return b.p.get();
}

int64_t prepare_chunk(int64_t n, int64_t K) {
  const int64_t threads = ThreadPool::instance().num_threads();
  const int64_t by_size = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(K, 1));
  return std::max<int64_t>(1, std::min(by_size, (n + threads - 1) / threads));
}

void load_row(const void* x, Dtype xt, int64_t row, int64_t K, float* out) {
  int64_t off = row * K;
  if (xt == float32) {
    std::copy_n(static_cast<const float*>(x) + off, K, out);
  } else if (xt == bfloat16) {
    const uint16_t* p = static_cast<const uint16_t*>(x) + off;
    for (int64_t k = 0; k < K; ++k) {
      out[k] = bf16_to_f32(p[k]);
    }
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(x) + off;
    for (int64_t k = 0; k < K; ++k) {
      out[k] = f16_to_f32(p[k]);
    }
  }
}

void prepare_natural(
    const QMat& m,
    const void* x,
    Dtype xt,
    const int64_t* src_rows,
    int64_t n,
    XPrep& p) {
  const int64_t K = m.transpose ? m.cols : m.rows;
  p.K = K;
  p.stride = K;
  p.gstride = 0;
  p.exact = true;
  p.lane.resize(static_cast<size_t>(n * K));
  p.direct.clear();
  p.gsum.clear();
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(K, 1));
  const int64_t pieces = (n + chunk - 1) / chunk;
  ThreadPool::instance().parallel_for(pieces, [&](int64_t c) {
    for (int64_t r = c * chunk; r < std::min(n, (c + 1) * chunk); ++r) {
      load_row(x, xt, src_rows[r], K, p.lane.data() + r * K);
    }
  });
}

void dots_nt(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  const int64_t K = m.rows;
  float* s = scratch(0, m.groups + 16);
  float* b = scratch(1, m.groups + 16);
  float* seg = scratch(2, nb + 16);
  for (int64_t r = 0; r < R; ++r) {
    std::fill_n(y + r * ldy, nb, 0.0f);
  }
  const int64_t g0 = n0 / m.group;
  const int64_t g1 = (n0 + nb) / m.group;
  for (int64_t k = 0; k < K; ++k) {
    int64_t off = m.scale_offset(e, k);
    for (int64_t g = g0; g < g1; ++g) {
      s[g] = decode_scale(m, off + g);
      b[g] = m.elem == ElemFormat::Int ? load_float(m.biases, m.bias_dtype, off + g) : 0.0f;
    }
    decode_row(m, m.row(e, k), s, b, n0, n0 + nb, seg);
    for (int64_t r = 0; r < R; ++r) {
      const float xk = p.lane_row(slots[r])[k];
      float* yr = y + r * ldy;
      for (int64_t j = 0; j < nb; ++j) {
        yr[j] += xk * seg[j];
      }
    }
  }
}

} // namespace detail

namespace {

float dot_natural(const float* a, const float* b, int64_t n) {
  // Eight independent partial sums (vectorizable without reassociation flags).
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) {
      acc[l] += a[i + l] * b[i + l];
    }
  }
  for (; i < n; ++i) {
    acc[0] += a[i] * b[i];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void portable_dots(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  if (!m.transpose) {
    detail::dots_nt(m, e, n0, nb, p, slots, R, y, ldy);
    return;
  }
  const int64_t K = m.cols;
  float* s = detail::scratch(0, m.groups + 16);
  float* b = detail::scratch(1, m.groups + 16);
  float* row = detail::scratch(2, K + 16);
  for (int64_t j = 0; j < nb; ++j) {
    decode_scale_row(m, e, n0 + j, s, b);
    decode_row(m, m.row(e, n0 + j), s, b, 0, K, row);
    for (int64_t r = 0; r < R; ++r) {
      y[r * ldy + j] = dot_natural(p.lane_row(slots[r]), row, K);
    }
  }
}

const Engine kPortable{SimdLevel::Portable, detail::prepare_natural, portable_dots};

} // namespace

const Engine& portable_engine() {
  return kPortable;
}

const Engine& engine() {
#if defined(__x86_64__) || defined(_M_X64)
  switch (active_simd()) {
    case SimdLevel::Avx512:
      return avx512_engine();
    case SimdLevel::Avx2:
      return avx2_engine();
    case SimdLevel::Portable:
      break;
  }
#endif
  return kPortable;
}

} // namespace mlx::core::moe
