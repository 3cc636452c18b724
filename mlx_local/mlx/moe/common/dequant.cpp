// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/dequant.h"

#include <bit>
#include <cstring>

#include "mlx/moe/common/kernel_macros.h"

namespace mlx::core::moe {

namespace {

MOE_CLONES void store_bf16(uint16_t* out, const float* v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = std::bit_cast<uint32_t>(v[j]);
    const uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet = (u >> 16) | 0x40u;
    out[j] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : nearest);
  }
}

} // namespace

void store_floats(void* p, Dtype t, int64_t i, const float* v, int64_t n) {
  if (t == float32) {
    std::memcpy(static_cast<float*>(p) + i, v, static_cast<size_t>(n) * sizeof(float));
  } else if (t == bfloat16) {
    store_bf16(static_cast<uint16_t*>(p) + i, v, n);
  } else {
    uint16_t* o = static_cast<uint16_t*>(p) + i;
    for (int64_t j = 0; j < n; ++j) {
      o[j] = f32_to_f16(v[j]);
    }
  }
}

uint16_t f32_to_f16(float f) {
  uint32_t u = bits_from_f32(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) {
    return static_cast<uint16_t>(sign | 0x7e00u);
  }
  if (a >= 0x477ff000u) { // rounds to >= 65520: infinity
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (a < 0x38800000u) { // below 2^-14: subnormal half (or zero), round to nearest even
    float v = f32_from_bits(a) * 16777216.0f; // in units of 2^-24
    // v < 1024; nearest-even integer.
    uint32_t q = static_cast<uint32_t>(v);
    float rem = v - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) {
      ++q;
    }
    return static_cast<uint16_t>(sign | q);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits (nearest even).
  uint32_t r = a - (112u << 23);
  r += 0xfffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

void decode_scale_row(const QMat& m, int64_t e, int64_t r, float* s, float* b) {
  int64_t off = m.scale_offset(e, r);
  for (int64_t g = 0; g < m.groups; ++g) {
    s[g] = decode_scale(m, off + g);
  }
  if (m.elem == ElemFormat::Int) {
    for (int64_t g = 0; g < m.groups; ++g) {
      b[g] = load_float(m.biases, m.bias_dtype, off + g);
    }
  } else {
    for (int64_t g = 0; g < m.groups; ++g) {
      b[g] = 0.0f;
    }
  }
}

void decode_row(
    const QMat& m,
    const uint8_t* row,
    const float* s,
    const float* b,
    int64_t c0,
    int64_t c1,
    float* out) {
  const int bits = m.bits;
  switch (m.elem) {
    case ElemFormat::Int:
      if (bits == 4) {
        for (int64_t i = c0; i < c1; ++i) {
          uint32_t q = (row[i >> 1] >> ((i & 1) * 4)) & 0xfu;
          int64_t g = i / m.group;
          out[i - c0] = s[g] * static_cast<float>(q) + b[g];
        }
      } else if (bits == 8) {
        for (int64_t i = c0; i < c1; ++i) {
          int64_t g = i / m.group;
          out[i - c0] = s[g] * static_cast<float>(row[i]) + b[g];
        }
      } else {
        for (int64_t i = c0; i < c1; ++i) {
          uint32_t q = extract_bits(row, m.row_bytes, i, bits);
          int64_t g = i / m.group;
          out[i - c0] = s[g] * static_cast<float>(q) + b[g];
        }
      }
      break;
    case ElemFormat::E2M1:
      for (int64_t i = c0; i < c1; ++i) {
        uint8_t q = static_cast<uint8_t>((row[i >> 1] >> ((i & 1) * 4)) & 0xfu);
        out[i - c0] = s[i / m.group] * e2m1_to_f32(q);
      }
      break;
    case ElemFormat::E4M3:
      for (int64_t i = c0; i < c1; ++i) {
        out[i - c0] = s[i / m.group] * e4m3_to_f32(row[i]);
      }
      break;
  }
}

} // namespace mlx::core::moe
