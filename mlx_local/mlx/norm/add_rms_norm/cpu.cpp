// Copyright © 2026 zmlx contributors.
//
// CPU evaluation of add_rms_norm, row by row in float32 buffers (a row stays in L1/L2 between the
// steps): h = x + residual, stored rounded to h's dtype and read back as the norm sees it, the float32
// sum of its squares, then y = h * rsqrt(mean + eps) * weight, rounded once. Rows are spread over the
// fused kernels' thread pool.
#include <mlx/allocator.h>
#include <mlx/backend/cpu/encoder.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "mlx/moe/common/dequant.h"
#include "mlx/moe/common/thread_pool.h"
#include "mlx/norm/add_rms_norm/add_rms_norm.h"

namespace mlx::core {

namespace {

// Elements per piece of parallel work, at least (a row is never split): a piece is tens of
// microseconds of work, so handing pieces to the pool's threads (which may have to be woken, or be
// descheduled on a busy machine) pays off only for large inputs; smaller ones run on the calling thread.
constexpr int64_t kPieceElems = int64_t{1} << 17;

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

// n elements of a float32 / float16 / bfloat16 buffer from element `off`, `stride` apart, as float32
// (the dtype switch outside the loops, so the contiguous ones vectorize).
void load_row(const void* p, Dtype t, int64_t off, int64_t stride, int64_t n, float* dst) {
  if (stride != 1) {
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = moe::load_float(p, t, off + j * stride);
    }
  } else if (t == float32) {
    std::memcpy(dst, static_cast<const float*>(p) + off, static_cast<size_t>(n) * sizeof(float));
  } else if (t == bfloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(p) + off;
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = moe::bf16_to_f32(s[j]);
    }
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(p) + off;
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = moe::f16_to_f32(s[j]);
    }
  }
}

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
  void* hp = out[0].data<uint8_t>();
  void* yp = out[1].data<uint8_t>();
  const Dtype ht = out[0].dtype(), yt = out[1].dtype();
  const int64_t per = std::max<int64_t>(1, kPieceElems / D);
  const int64_t pieces = (rows + per - 1) / per;
  moe::ThreadPool::instance().parallel_for(pieces, [&](int64_t piece) {
    thread_local std::vector<float> a, b, w;
    a.resize(static_cast<size_t>(D));
    b.resize(static_cast<size_t>(D));
    w.assign(static_cast<size_t>(D), 1.0f);
    if (has_weight) {
      load_row(in[2].data<uint8_t>(), in[2].dtype(), 0, in[2].strides()[0], D, w.data());
    }
    const int64_t r_end = std::min(rows, (piece + 1) * per);
    for (int64_t r = piece * per; r < r_end; ++r) {
      load_row(xv.data, xv.dtype, xv.row_offset(r, D), xv.stride(), D, a.data());
      load_row(rv.data, rv.dtype, rv.row_offset(r, D), rv.stride(), D, b.data());
      for (int64_t j = 0; j < D; ++j) {
        a[j] += b[j];
      }
      // h rounded to its dtype, and read back as the value the norm sees.
      moe::store_floats(hp, ht, r * D, a.data(), D);
      if (ht != float32) {
        load_row(hp, ht, r * D, 1, D, a.data());
      }
      // Eight partial sums over blocks of eight (one vector register wide), then the rest.
      float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      int64_t j = 0;
      for (; j + 8 <= D; j += 8) {
        for (int l = 0; l < 8; ++l) {
          part[l] += a[j + l] * a[j + l];
        }
      }
      for (; j < D; ++j) {
        part[j & 7] += a[j] * a[j];
      }
      const float ss = ((part[0] + part[1]) + (part[2] + part[3])) +
          ((part[4] + part[5]) + (part[6] + part[7]));
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
      for (int64_t k = 0; k < D; ++k) {
        a[k] = a[k] * inv * w[k];
      }
      moe::store_floats(yp, yt, r * D, a.data(), D);
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
