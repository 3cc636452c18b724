// Copyright © 2026 zmlx contributors.
//
// Scalar dequantization helpers shared by every kernel of the fused MoE primitives (the portable
// path uses them for everything, the SIMD paths for row tails and scale rows), and `QMat`, the
// raw view of one quantized weight tensor that kernels work on.
//
// Packing (MLX's): a row of `cols` elements of `bits` bits is a little-endian bit stream, element i
// at bit offset i * bits, stored in uint32 words (LSB first). For 2, 4 and 8 bits that is plain
// LSB-first packing inside each word; for 3, 5 and 6 bits elements straddle bytes and words.
#pragma once

#include <mlx/dtype.h>

#include <cstdint>
#include <cstring>

#include "mlx/moe/common/quant_modes.h"

namespace mlx::core::moe {

inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint32_t bits_from_f32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bf16_to_f32(uint16_t h) {
  return f32_from_bits(static_cast<uint32_t>(h) << 16);
}

// Exact IEEE binary16 -> binary32 (subnormals, infinities and NaN included).
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    float v = static_cast<float>(man) * 5.9604644775390625e-08f; // 2^-24
    return f32_from_bits(bits_from_f32(v) | sign);
  }
  if (exp == 31) {
    return f32_from_bits(sign | 0x7f800000u | (man << 13));
  }
  return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round-to-nearest-even binary32 -> bfloat16 / binary16 (NaN stays NaN).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = bits_from_f32(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x40u);
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

uint16_t f32_to_f16(float f);

// e8m0 scale byte: 2^(s - 127). MLX decodes s == 0 as 2^-127 and s == 255 as +inf; so do we.
inline float e8m0_to_f32(uint8_t s) {
  return f32_from_bits(s == 0 ? 0x00400000u : static_cast<uint32_t>(s) << 23);
}

// fp8 e4m3fn: bias 7, subnormals m/8 * 2^-6, 0x7f and 0xff are NaN.
inline float e4m3_to_f32(uint8_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  uint32_t exp = (v >> 3) & 0xfu;
  uint32_t man = v & 0x7u;
  if (exp == 15 && man == 7) {
    return f32_from_bits(sign | 0x7fc00000u);
  }
  if (exp == 0) {
    float m = static_cast<float>(man) * 0.001953125f; // m/8 * 2^-6
    return f32_from_bits(bits_from_f32(m) | sign);
  }
  return f32_from_bits(sign | ((exp + 120u) << 23) | (man << 20));
}

// e2m1 nibble: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
inline float e2m1_to_f32(uint8_t q) {
  static constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  float m = kMag[q & 7u];
  return (q & 8u) ? -m : m;
}

// Element i of a packed row of `row_bytes` bytes, `bits` wide (LSB-first bit stream). Never reads
// past the row.
inline uint32_t extract_bits(const uint8_t* row, int64_t row_bytes, int64_t i, int bits) {
  int64_t bit = i * bits;
  int64_t byte = bit >> 3;
  uint32_t v = row[byte];
  if (byte + 1 < row_bytes) {
    v |= static_cast<uint32_t>(row[byte + 1]) << 8;
  }
  return (v >> (bit & 7)) & ((1u << bits) - 1u);
}

// Element i of a float32/float16/bfloat16 buffer as float32 (other dtypes are rejected earlier).
inline float load_float(const void* p, Dtype t, int64_t i) {
  if (t == float32) {
    return static_cast<const float*>(p)[i];
  }
  if (t == bfloat16) {
    return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
  return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// Stores v into element i of a float32/float16/bfloat16 buffer.
inline void store_float(void* p, Dtype t, int64_t i, float v) {
  if (t == float32) {
    static_cast<float*>(p)[i] = v;
  } else if (t == bfloat16) {
    static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  } else {
    static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  }
}

// Stores v[0..n) into elements i..i+n-1 of a float32/float16/bfloat16 buffer (same roundings as
// store_float; vectorized where the CPU allows).
void store_floats(void* p, Dtype t, int64_t i, const float* v, int64_t n);

// Raw view of one row-contiguous quantized weight tensor with E experts (the flattened batch
// dimensions). transpose = true: logical [E, N, K] stored as E*N rows of K elements (groups run
// along K). transpose = false: logical [E, K, N] stored as E*K rows of N elements.
struct QMat {
  const uint8_t* w = nullptr; // [E][rows][row_bytes]
  const void* scales = nullptr; // [E][rows][groups], scale_dtype
  const void* biases = nullptr; // affine only, same shape, bias_dtype
  Dtype scale_dtype = float32;
  Dtype bias_dtype = float32;
  int64_t experts = 0;
  int64_t rows = 0; // stored rows per expert
  int64_t cols = 0; // elements per stored row
  int64_t row_bytes = 0; // cols * bits / 8
  int64_t groups = 0; // cols / group
  int group = 0;
  int bits = 0;
  ElemFormat elem = ElemFormat::Int;
  ScaleFormat scale = ScaleFormat::Float;
  bool transpose = true;

  const uint8_t* row(int64_t e, int64_t r) const {
    return w + (e * rows + r) * row_bytes;
  }
  int64_t scale_offset(int64_t e, int64_t r) const {
    return (e * rows + r) * groups;
  }
};

// Scale i (and bias i for affine) of a QMat as float32.
inline float decode_scale(const QMat& m, int64_t i) {
  switch (m.scale) {
    case ScaleFormat::Float:
      return load_float(m.scales, m.scale_dtype, i);
    case ScaleFormat::E8M0:
      return e8m0_to_f32(static_cast<const uint8_t*>(m.scales)[i]);
    case ScaleFormat::E4M3:
      return e4m3_to_f32(static_cast<const uint8_t*>(m.scales)[i]);
  }
  return 0.0f;
}

// The scales (and biases, affine; zeros otherwise) of stored row r of expert e: m.groups each.
void decode_scale_row(const QMat& m, int64_t e, int64_t r, float* s, float* b);

// Dequantizes elements [c0, c1) of a stored row (natural order) given its decoded scale row.
void decode_row(
    const QMat& m,
    const uint8_t* row,
    const float* s,
    const float* b,
    int64_t c0,
    int64_t c1,
    float* out);

} // namespace mlx::core::moe
