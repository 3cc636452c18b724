// Copyright © 2026 zmlx contributors.
//
// add_rms_norm: the residual add of a decoder layer and the RMS normalization that follows it, as
// one primitive with two outputs.
#pragma once

#include <mlx/api.h>
#include <mlx/array.h>
#include <mlx/primitives.h>
#include <mlx/utils.h>

#include <optional>
#include <utility>

namespace mlx::core {

/**
 * (h, y) with h = x + residual and y = fast::rms_norm(h, weight, eps).
 *
 *  - `x` and `residual` have the same shape (at least one dimension; D = the last one), float32,
 *    float16 or bfloat16. h has that shape and dtype promote(x, residual), rounded once, exactly
 *    MLX's add.
 *  - `weight` (optional) is [D], floating; `eps` finite and >= 0.
 *  - y has h's shape and dtype promote(h, weight) (fast::rms_norm's rule); its statistics are
 *    float32 over the rounded h: y = h * rsqrt(mean(h^2) + eps) * weight, computed in float32 and
 *    rounded once (MLX's composed CPU path rounds after the normalization and again after the
 *    weight; its CUDA kernel rounds once, as here).
 *
 * Evaluation: CPU streams run one pass per row (the rows spread over the fused kernels' thread
 * pool; any input layout). CUDA streams run one kernel launch (a block per row; non-contiguous
 * inputs are copied first); other GPUs compute the composed graph: add, then fast::rms_norm.
 * Transformations: vjp / jvp with respect to x, residual and weight, and vmap, are those of the
 * composed graph (on CUDA streams the traced op still runs the kernel).
 */
MLX_API std::pair<array, array> add_rms_norm(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    StreamOrDevice s = {});

/** The same result from MLX's own ops: add, then fast::rms_norm, with the same validation. */
MLX_API std::pair<array, array> add_rms_norm_reference(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    StreamOrDevice s = {});

class AddRMSNorm : public Primitive {
 public:
  AddRMSNorm(Stream stream, float eps, bool has_weight)
      : Primitive(stream), eps_(eps), has_weight_(has_weight) {}

  // Inputs: x, residual (same shape, any layout), (weight [D], any layout). Outputs: h, y.
  void eval_cpu(const std::vector<array>& inputs, std::vector<array>& outputs) override;
  void eval_gpu(const std::vector<array>& inputs, std::vector<array>& outputs) override;

  std::vector<array> jvp(
      const std::vector<array>& primals,
      const std::vector<array>& tangents,
      const std::vector<int>& argnums) override;
  std::vector<array> vjp(
      const std::vector<array>& primals,
      const std::vector<array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<array>& outputs) override;
  std::pair<std::vector<array>, std::vector<int>> vmap(
      const std::vector<array>& inputs,
      const std::vector<int>& axes) override;

  const char* name() const override {
    return "AddRMSNorm";
  }
  bool is_equivalent(const Primitive& other) const override;
  std::vector<Shape> output_shapes(const std::vector<array>& inputs) override;

  // The constructor's arguments after the stream, for MLX's export / import.
  auto state() const {
    return std::make_pair(eps_, has_weight_);
  }

 private:
  float eps_;
  bool has_weight_;
};

} // namespace mlx::core
