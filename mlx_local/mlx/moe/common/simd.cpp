// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/simd.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mlx::core::moe {

namespace {

SimdLevel cpu_level() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  // libgcc / compiler-rt also check that the OS saves the YMM / ZMM state (XGETBV).
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))) {
    return SimdLevel::Portable;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni")) {
    return SimdLevel::Avx512;
  }
  return SimdLevel::Avx2;
#else
  return SimdLevel::Portable;
#endif
}

bool supported(SimdLevel level) {
  return static_cast<int>(level) <= static_cast<int>(detected_simd());
}

std::atomic<int>& override_level() {
  static std::atomic<int> level{-1};
  return level;
}

SimdLevel env_or_detected() {
  static const SimdLevel level = [] {
    SimdLevel d = detected_simd();
    if (const char* env = std::getenv("MLX_MOE_SIMD")) {
      try {
        SimdLevel want = simd_from_name(env);
        if (supported(want)) {
          return want;
        }
      } catch (const std::invalid_argument&) {
        // An unknown name in the environment keeps the detected level.
      }
    }
    return d;
  }();
  return level;
}

} // namespace

SimdLevel detected_simd() {
  static const SimdLevel level = cpu_level();
  return level;
}

SimdLevel active_simd() {
  int o = override_level().load(std::memory_order_relaxed);
  if (o >= 0) {
    return static_cast<SimdLevel>(o);
  }
  return env_or_detected();
}

void set_simd(SimdLevel level) {
  if (!supported(level)) {
    throw std::invalid_argument(
        std::string("[moe] this CPU does not support the '") + simd_name(level) +
        "' level (avx2: AVX2, FMA and F16C; avx512: also AVX-512 F/BW/VL/DQ and VNNI)");
  }
  override_level().store(static_cast<int>(level), std::memory_order_relaxed);
}

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512:
      return "avx512";
    case SimdLevel::Avx2:
      return "avx2";
    case SimdLevel::Portable:
      break;
  }
  return "portable";
}

SimdLevel simd_from_name(std::string_view name) {
  if (name == "auto") {
    return detected_simd();
  }
  if (name == "portable") {
    return SimdLevel::Portable;
  }
  if (name == "avx2") {
    return SimdLevel::Avx2;
  }
  if (name == "avx512") {
    return SimdLevel::Avx512;
  }
  throw std::invalid_argument(
      "[moe] unknown SIMD level '" + std::string(name) +
      "'; expected 'auto', 'portable', 'avx2' or 'avx512'");
}

} // namespace mlx::core::moe
