// Copyright © 2026 zmlx contributors.
//
// SIMD dispatch of the fused MoE kernels. On x86_64 the AVX-512 engine (integer dot products for
// bfloat16 activations, needs AVX-512 F/BW/VL/DQ and VNNI) and the AVX2 kernels (AVX2, FMA,
// F16C) are compiled with function target attributes, so the library itself runs on any x86_64, and
// are used when the CPU and the OS support them; everywhere else, and when forced, the portable
// kernels are used.
#pragma once

#include <mlx/api.h>

#include <string_view>

namespace mlx::core::moe {

enum class SimdLevel { Portable, Avx2, Avx512 };

// Exported (MLX_API) so that a C API over a shared libmlx can read and force the level.

// The best level this machine supports.
MLX_API SimdLevel detected_simd();

// The level kernels use now: the one set with set_simd, else MLX_MOE_SIMD
// ("portable", "avx2" or "avx512") if set and supported, else detected_simd().
MLX_API SimdLevel active_simd();

// Forces a level; throws std::invalid_argument if the machine does not support it.
MLX_API void set_simd(SimdLevel level);

MLX_API const char* simd_name(SimdLevel level);

// "auto" (the detected level), "portable", "avx2" or "avx512"; throws std::invalid_argument otherwise.
MLX_API SimdLevel simd_from_name(std::string_view name);

} // namespace mlx::core::moe
