// Copyright © 2026 zmlx contributors.
//
// The fused ops' CUDA entry points (gpu.h) in a build without the fused CUDA kernels: no CUDA, so
// the ops never call them, and every launch reports "not fused" (the caller composes).
#include "mlx/backend/cuda/fused/gpu.h"

namespace mlx::core::moe::gpu {

bool cuda_available() {
  return false;
}

std::string unsupported(bool, int) {
  return "this build of MLX has no fused CUDA kernels";
}

std::optional<array> swiglu(
    const array&,
    const array&,
    const array&,
    const std::optional<array>&,
    const array&,
    const array&,
    const std::optional<array>&,
    const std::optional<array>&,
    const std::optional<array>&,
    const std::optional<array>&,
    const std::optional<array>&,
    const SwigluParams&,
    Dtype,
    const Shape&,
    int64_t,
    Stream) {
  return std::nullopt;
}

std::optional<array> combine(
    const array&,
    const array&,
    const array&,
    const std::optional<array>&,
    const array&,
    const array&,
    const std::optional<array>&,
    const CombineParams&,
    Dtype,
    const Shape&,
    Stream) {
  return std::nullopt;
}

bool layer_enabled() {
  return false;
}

std::optional<array> layer(
    const array&,
    const array&,
    const array&,
    const std::optional<array>&,
    const array&,
    const array&,
    const std::optional<array>&,
    const array&,
    const array&,
    const std::optional<array>&,
    const array&,
    const array&,
    const std::optional<array>&,
    const std::optional<array>&,
    const std::optional<array>&,
    const SwigluParams&,
    Dtype,
    const Shape&,
    Dtype,
    const Shape&,
    int64_t,
    Stream) {
  return std::nullopt;
}

std::optional<array> linear(
    const array&,
    const array&,
    const array&,
    const std::optional<array>&,
    const std::optional<array>&,
    const QuantParams&,
    Dtype,
    Stream) {
  return std::nullopt;
}

std::optional<std::pair<array, array>> add_rms_norm(
    const array&,
    const array&,
    const std::optional<array>&,
    float,
    Dtype,
    Dtype,
    Stream) {
  return std::nullopt;
}

const char* coverage() {
  return "no fused CUDA kernels in this build";
}

std::string check_translation_unit() {
  return {};
}

} // namespace mlx::core::moe::gpu
