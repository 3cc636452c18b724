// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/simd.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mlx::core::moe {

namespace {

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  // libgcc / compiler-rt also check that the OS saves the YMM state (XGETBV) for AVX features.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

std::atomic<int>& override_level() {
  static std::atomic<int> level{-1};
  return level;
}

SimdLevel env_or_detected() {
  static const SimdLevel level = [] {
    SimdLevel d = detected_simd();
    if (const char* env = std::getenv("MLX_MOE_SIMD")) {
      std::string v(env);
      if (v == "portable") {
        return SimdLevel::Portable;
      }
    }
    return d;
  }();
  return level;
}

} // namespace

SimdLevel detected_simd() {
  static const SimdLevel level = cpu_has_avx2() ? SimdLevel::Avx2 : SimdLevel::Portable;
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
  if (level == SimdLevel::Avx2 && detected_simd() != SimdLevel::Avx2) {
    throw std::invalid_argument("[moe] this CPU does not support AVX2, FMA and F16C");
  }
  override_level().store(static_cast<int>(level), std::memory_order_relaxed);
}

const char* simd_name(SimdLevel level) {
  return level == SimdLevel::Avx2 ? "avx2" : "portable";
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
  throw std::invalid_argument(
      "[moe] unknown SIMD level '" + std::string(name) + "'; expected 'auto', 'portable' or 'avx2'");
}

} // namespace mlx::core::moe
