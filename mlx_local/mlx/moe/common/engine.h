// Copyright © 2026 zmlx contributors.
//
// The quantized dot-product engine shared by the fused MoE kernels. An op prepares the activation
// rows it needs once per call (converted to float32, laid out for the weight format and the SIMD
// level), then asks for blocks of dot products between some of those rows and a block of weight
// rows of one expert. Every engine accumulates in float32.
//
// Engines: portable (any CPU), AVX2 (float32 arithmetic, below) and AVX-512 (x86_64 with VNNI: integer
// dot products of int16 activations with the small-integer weight formats, for bfloat16
// activations; see engine_avx512.cpp — everything else it hands to the AVX2 engine).
//
// Two strategies inside the AVX2 engine's `dots`:
//  - few rows (decode): each weight group is decoded in registers and multiplied straight into the
//    rows' accumulators (affine: sum_k x*q per group, times the scale, plus bias * sum_k x);
//  - many rows (prefill, sorted experts): a tile of weight rows is dequantized once into float32
//    and reused by a register-blocked micro kernel for all rows that picked the expert.
#pragma once

#include <mlx/dtype.h>

#include <cstdint>
#include <vector>

#include "mlx/moe/common/dequant.h"
#include "mlx/moe/common/simd.h"

namespace mlx::core::moe {

// Activation rows prepared for one weight tensor and one engine.
struct XPrep {
  int64_t K = 0; // elements per row
  int64_t stride = 0; // floats between rows
  int64_t gstride = 0; // floats between rows of gsum
  // float32 activations with affine weights: every weight is dequantized to float32 first (the
  // same rounding as MLX's float32 path; in registers for few rows, into a tile for many), never the
  // per-group decomposition of the half-precision few-rows path, whose cancellation between
  // scale * sum(x*q) and bias * sum(x) costs a few float32 ulps. The AVX2 engine also sets it for
  // half-precision activations when a row's largest magnitude is below 2^-64 (see engine_avx2.cpp).
  bool exact = false;
  std::vector<float> lane; // [rows][stride]: engine layout, values as given
  std::vector<float> direct; // [rows][stride]: affine decode layout (prescaled); may be empty
  std::vector<float> gsum; // [rows][gstride]: sums over each quantization group (affine)
  // AVX-512 engine, integer path (bfloat16 activations, see engine_avx512.cpp): every
  // quantization group of a row as int16 values times one float32 scale, in the chunk layout of
  // the weight format (for affine 4-bit weights split into byte planes, the same two bytes per
  // element); gsum then holds the sums of these rounded values.
  bool q16 = false;
  int64_t qstride = 0; // int16s between rows of xq (a whole number of chunks, zero-padded)
  std::vector<int16_t> xq; // [rows][qstride]
  std::vector<float> xscale; // [rows][gstride]

  const int16_t* xq_row(int64_t r) const {
    return xq.data() + r * qstride;
  }
  const float* xscale_row(int64_t r) const {
    return xscale.data() + r * gstride;
  }

  const float* lane_row(int64_t r) const {
    return lane.data() + r * stride;
  }
  const float* direct_row(int64_t r) const {
    return (direct.empty() ? lane.data() : direct.data()) + r * stride;
  }
  const float* gsum_row(int64_t r) const {
    return gsum.data() + r * gstride;
  }
};

struct Engine {
  SimdLevel level;

  // Prepares rows src_rows[0..n) of x (row-contiguous [*, K], dtype float32/float16/bfloat16) for
  // the weights m, into slots 0..n-1 of p. May use the thread pool.
  void (*prepare)(const QMat& m, const void* x, Dtype xt, const int64_t* src_rows, int64_t n, XPrep& p);

  // y[r * ldy + j] = sum_k row(slots[r])[k] * W[e][n0 + j][k] for r < R, j < nb (transpose = true;
  // with transpose = false W[e][k][n0 + j], and n0, nb multiples of the group size).
  void (*dots)(
      const QMat& m,
      int64_t e,
      int64_t n0,
      int64_t nb,
      const XPrep& p,
      const int64_t* slots,
      int64_t R,
      float* y,
      int64_t ldy);
};

// The engine of the active SIMD level.
const Engine& engine();

// Per level (engine() picks one).
const Engine& portable_engine();
#if defined(__x86_64__) || defined(_M_X64)
const Engine& avx2_engine();
const Engine& avx512_engine();
#endif

// Shared pieces used by the engines.
namespace detail {

// Activation rows per piece when an engine prepares n rows of K elements in parallel: about 2^15
// elements, and no more than an even share per thread, so that a few rows are spread too.
int64_t prepare_chunk(int64_t n, int64_t K);

// x row (any supported float dtype) to float32.
void load_row(const void* x, Dtype xt, int64_t row, int64_t K, float* out);

// transpose = false for every engine: y[r][j] = sum_k x_r[k] W[e][k][n0 + j] (natural layout rows).
void dots_nt(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy);

// Natural-layout preparation (portable engine, and transpose = false everywhere).
void prepare_natural(const QMat& m, const void* x, Dtype xt, const int64_t* src_rows, int64_t n, XPrep& p);

// A thread's scratch buffer of at least n floats (reused across calls, 64-byte aligned).
float* scratch(int which, int64_t n);

} // namespace detail

} // namespace mlx::core::moe
