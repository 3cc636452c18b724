// Copyright © 2026 zmlx contributors.
//
// The quantization mode table of the fused MoE primitives: the ONE place that says, for every
// mode, its name, default group size and bits, the allowed group sizes and bits, how elements and
// scales are encoded and whether an additive bias tensor comes with the scales.
#pragma once

#include <mlx/primitives.h>

#include <optional>
#include <string>
#include <string_view>

namespace mlx::core::moe {

// How one quantized element is encoded.
enum class ElemFormat {
  Int,  // unsigned integer q of `bits` bits; value = scale * q + bias (affine)
  E2M1, // 4-bit float: sign, 2 exponent bits, 1 mantissa bit: ±{0, .5, 1, 1.5, 2, 3, 4, 6}
  E4M3, // 8-bit float (fp8 e4m3fn): bias 7, no infinities, 0x7f/0xff are NaN
};

// How the per-group scale is stored.
enum class ScaleFormat {
  Float, // the floating type of the activations (float32, float16 or bfloat16)
  E8M0,  // uint8 exponent: 2^(s - 127); s == 0 means 2^-127 (as MLX decodes it)
  E4M3,  // uint8 fp8 e4m3fn
};

struct ModeInfo {
  const char* name;
  QuantizationMode mode;
  int default_group;
  int default_bits;
  int groups[3]; // allowed group sizes, n_groups of them
  int n_groups;
  int bits[6]; // allowed bit widths, n_bits of them
  int n_bits;
  ElemFormat elem;
  ScaleFormat scale;
  bool has_biases; // affine: scales and biases; the float modes: scales only
};

// The table (affine, mxfp4, nvfp4, mxfp8):
//   affine  group 32, 64 (default), 128; bits 2, 3, 4 (default), 5, 6, 8; float scales and biases
//   mxfp4   group 32; bits 4 (e2m1); e8m0 scales
//   nvfp4   group 16; bits 4 (e2m1); e4m3 scales
//   mxfp8   group 32; bits 8 (e4m3); e8m0 scales
const ModeInfo& mode_info(QuantizationMode mode);

// Looks a mode up by name; throws std::invalid_argument naming the allowed modes.
const ModeInfo& mode_info(std::string_view name, std::string_view tag);

// A resolved quantization: mode, group size and bits after defaults, validated against the table.
struct QuantParams {
  const ModeInfo* info;
  int group_size;
  int bits;

  bool operator==(const QuantParams&) const = default;
};

// Applies the mode's defaults and checks the group size and bits against the table.
QuantParams resolve_quant(
    std::string_view tag,
    std::string_view mode,
    std::optional<int> group_size,
    std::optional<int> bits);

} // namespace mlx::core::moe
