// Copyright © 2026 zmlx contributors.
//
// switch_glu_combine: validation, the one-launch CUDA path, and the two fused ops elsewhere.
#include "mlx/moe/switch_glu/switch_glu.h"

#include <mlx/ops.h>

#include <stdexcept>
#include <string>

#include "mlx/backend/cuda/moe/gpu.h"
#include "mlx/moe/common/composed_transforms.h"
#include "mlx/moe/common/validate.h"
#include "mlx/moe/gather_qmm_combine/gather_qmm_combine.h"
#include "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h"

namespace mlx::core {

namespace {
constexpr const char* kTag = "switch_glu_combine";
} // namespace

array switch_glu_combine(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    const array& down_w,
    const array& down_scales,
    const std::optional<array>& down_biases,
    const array& indices,
    const array& scores,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    const std::string& activation,
    std::optional<float> alpha,
    std::optional<float> limit,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    const std::optional<array>& down_bias,
    StreamOrDevice s) {
  Stream stream = to_stream(s);
  if (x.ndim() < 1) {
    throw std::invalid_argument(
        std::string("[") + kTag + "] x must have at least one dimension but is a scalar.");
  }
  const array xe = expand_dims(x, {-2, -3}, stream);
  // While traced, the two fused ops (they carry the transformations; the one-launch kernel does not).
  if (stream.device == Device::gpu && moe::gpu::cuda_available() && moe::gpu::layer_enabled() &&
      !moe::any_traced(
          {x, scores, gate_bias.value_or(x), up_bias.value_or(x), down_bias.value_or(x)})) {
    // The checks of the two ops, without building their graph nodes; h stands in as an array with
    // a shape and a dtype but no data (never evaluated).
    const moe::SwigluCheck sw = moe::check_swiglu_args(
        xe, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, true, group_size, bits,
        mode, false, activation, alpha, limit, gate_bias, up_bias);
    Shape h_shape = moe::gather_batch_shape(kTag, std::nullopt, indices, xe, gate_w);
    h_shape.push_back(1);
    h_shape.push_back(sw.N);
    const array h(h_shape, sw.out_dtype, nullptr, {});
    const moe::CombineCheck co = moe::check_combine_args(
        h, down_w, down_scales, down_biases, indices, scores, true, group_size, bits, mode,
        down_bias);
    if (moe::gpu::unsupported(true, sw.K).empty() && moe::gpu::unsupported(true, co.K).empty() &&
        co.K == sw.N && co.N == sw.K) {
      Shape out_shape(co.batch.begin(), co.batch.end() - 1);
      out_shape.push_back(co.N);
      auto y = moe::gpu::layer(
          x, moe::ensure_contiguous(gate_w, stream), moe::ensure_contiguous(gate_scales, stream),
          gate_biases ? std::optional(moe::ensure_contiguous(*gate_biases, stream)) : std::nullopt,
          moe::ensure_contiguous(up_w, stream), moe::ensure_contiguous(up_scales, stream),
          up_biases ? std::optional(moe::ensure_contiguous(*up_biases, stream)) : std::nullopt,
          moe::ensure_contiguous(down_w, stream), moe::ensure_contiguous(down_scales, stream),
          down_biases ? std::optional(moe::ensure_contiguous(*down_biases, stream)) : std::nullopt,
          indices, scores, gate_bias, up_bias, down_bias, sw.params, sw.out_dtype, h_shape,
          co.out_dtype, out_shape, sw.experts, stream);
      if (y) {
        return *y;
      }
    }
  }
  array h = gather_qmm_swiglu(
      xe, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, std::nullopt, indices, true,
      group_size, bits, mode, false, activation, alpha, limit, gate_bias, up_bias, stream);
  array y = gather_qmm_combine(
      h, down_w, down_scales, down_biases, indices, scores, true, group_size, bits, mode, down_bias,
      stream);
  return squeeze(y, -2, stream);
}

} // namespace mlx::core
