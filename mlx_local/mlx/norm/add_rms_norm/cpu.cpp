// Copyright © 2026 zmlx contributors.
//
// CPU evaluation of add_rms_norm: one pass per row computes and stores h = x + residual (rounded to
// h's dtype) and the float32 sum of the rounded h squared, then a second sweep over the row (still
// in cache) writes y = h * rsqrt(mean + eps) * weight, rounded once. Rows are spread over the fused
// kernels' thread pool.
#include <mlx/allocator.h>
#include <mlx/backend/cpu/encoder.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "mlx/moe/common/dequant.h"
#include "mlx/moe/common/thread_pool.h"
#include "mlx/norm/add_rms_norm/add_rms_norm.h"

namespace mlx::core {

namespace {

// Elements per piece of parallel work, at least (a row is never split).
constexpr int64_t kPieceElems = 16384;

// Element offsets of an input viewed as rows of D elements, for any layout.
struct RowView {
  const void* data;
  Dtype dtype;
  int64_t col_stride;
  bool row_contiguous;
  const array* a;

  explicit RowView(const array& arr)
      : data(arr.data<uint8_t>()),
        dtype(arr.dtype()),
        col_stride(arr.strides().back()),
        row_contiguous(arr.flags().row_contiguous),
        a(&arr) {}

  // Offset (in elements) of element 0 of row r.
  int64_t row_offset(int64_t r, int64_t D) const {
    if (row_contiguous) {
      return r * D;
    }
    int64_t off = 0;
    for (int d = static_cast<int>(a->ndim()) - 2; d >= 0; --d) {
      const int64_t n = a->shape(d);
      off += (r % n) * static_cast<int64_t>(a->strides()[d]);
      r /= n;
    }
    return off;
  }
  int64_t stride() const {
    return row_contiguous ? 1 : col_stride;
  }
};

void add_rms_norm_cpu(
    const std::vector<array>& in,
    std::vector<array>& out,
    float eps,
    bool has_weight) {
  const array& x = in[0];
  const int64_t D = x.shape(-1);
  if (x.size() == 0 || D == 0) {
    return;
  }
  const int64_t rows = static_cast<int64_t>(x.size()) / D;
  const RowView xv(in[0]), rv(in[1]);
  const void* wp = has_weight ? in[2].data<uint8_t>() : nullptr;
  const Dtype wt = has_weight ? in[2].dtype() : float32;
  const int64_t ws = has_weight ? in[2].strides()[0] : 0;
  void* hp = out[0].data<uint8_t>();
  void* yp = out[1].data<uint8_t>();
  const Dtype ht = out[0].dtype(), yt = out[1].dtype();
  const int64_t per = std::max<int64_t>(1, kPieceElems / D);
  const int64_t pieces = (rows + per - 1) / per;
  moe::ThreadPool::instance().parallel_for(pieces, [&](int64_t piece) {
    thread_local std::vector<float> hv;
    hv.resize(static_cast<size_t>(D));
    const int64_t r_end = std::min(rows, (piece + 1) * per);
    const int64_t xs = xv.stride(), rs = rv.stride();
    for (int64_t r = piece * per; r < r_end; ++r) {
      const int64_t xo = xv.row_offset(r, D), ro = rv.row_offset(r, D);
      // Eight partial sums: the compiler may vectorize, and the sum is not one long chain.
      float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int64_t j = 0; j < D; ++j) {
        const float s =
            moe::load_float(xv.data, xv.dtype, xo + j * xs) + moe::load_float(rv.data, rv.dtype, ro + j * rs);
        moe::store_float(hp, ht, r * D + j, s);
        const float h = moe::load_float(hp, ht, r * D + j);
        hv[j] = h;
        part[j & 7] += h * h;
      }
      const float ss = ((part[0] + part[1]) + (part[2] + part[3])) +
          ((part[4] + part[5]) + (part[6] + part[7]));
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
      for (int64_t j = 0; j < D; ++j) {
        const float w = wp ? moe::load_float(wp, wt, j * ws) : 1.0f;
        moe::store_float(yp, yt, r * D + j, hv[j] * inv * w);
      }
    }
  });
}

} // namespace

void AddRMSNorm::eval_cpu(const std::vector<array>& inputs, std::vector<array>& outputs) {
  for (auto& o : outputs) {
    o.set_data(allocator::malloc(o.nbytes()));
  }
  auto& enc = cpu::get_command_encoder(stream());
  std::vector<array> in;
  in.reserve(inputs.size());
  for (const auto& a : inputs) {
    enc.set_input_array(a);
    in.push_back(array::unsafe_weak_copy(a));
  }
  std::vector<array> out;
  for (auto& o : outputs) {
    enc.set_output_array(o);
    out.push_back(array::unsafe_weak_copy(o));
  }
  enc.dispatch([in = std::move(in), out = std::move(out), eps = eps_, w = has_weight_]() mutable {
    add_rms_norm_cpu(in, out, eps, w);
  });
}

} // namespace mlx::core
