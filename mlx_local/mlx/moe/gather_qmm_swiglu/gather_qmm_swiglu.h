// Copyright © 2026 zmlx contributors.
//
// gather_qmm_swiglu: the gate and up projections of a quantized Mixture-of-Experts layer and the
// gated activation, fused into one primitive.
#pragma once

#include <mlx/api.h>
#include <mlx/array.h>
#include <mlx/primitives.h>
#include <mlx/utils.h>

#include <optional>
#include <string>
#include <tuple>

#include "mlx/moe/common/quant_modes.h"

namespace mlx::core {

/**
 * act(gather_qmm(x, gate_w, ...), gather_qmm(x, up_w, ...)), fused.
 *
 * Exactly MLX's gather_qmm for each projection:
 *  - `x` has shape [..., M, K] (at least 2-D), float32, float16 or bfloat16.
 *  - Each weight is quantized with `mode` / `group_size` / `bits` (defaults from the mode table:
 *    affine 64/4 with groups 32, 64, 128 and bits 2, 3, 4, 5, 6, 8; mxfp4 32/4; nvfp4 16/4;
 *    mxfp8 32/8). With transpose = true (MLX's default) `w` is [E..., N, K*bits/32] uint32 and
 *    `scales` (and, affine only, `biases`) [E..., N, K/group_size]; with transpose = false `w` is
 *    [E..., K, N*bits/32] and scales [E..., K, N/group_size]. gate and up must have the same
 *    shapes.
 *  - `lhs_indices` (into the batch dimensions of x) and `rhs_indices` (into the expert dimensions
 *    of w) are integral; a missing one is arange over those batch dimensions; both are cast to
 *    uint32 and broadcast together to the batch shape B.
 *  - The result has shape B + [M, N]. Its dtype is gather_qmm's: affine:
 *    promote(x, scales, biases); mxfp4 / nvfp4 / mxfp8: x's dtype; promoted with the dtype of the
 *    additive expert biases when given, and between gate and up.
 *  - An index >= the number of x batch entries or of experts (or negative) makes evaluation fail
 *    with an error on CPU streams (std::out_of_range from eval); on CUDA streams the output rows
 *    of that pair are NaN instead (an error would need a host synchronisation per call). Nothing
 *    is read out of bounds.
 *
 * Activation (`activation`):
 *  - "swiglu" (default): silu(g) * u = g * sigmoid(g) * u. `alpha` and `limit` must be absent.
 *  - "gpt_oss": g = min(g, limit), u = clip(u, -limit, limit), g * sigmoid(alpha * g) * (u + 1),
 *    alpha default 1.702, limit default 7.0 (finite, limit > 0).
 *  - `gate_bias` / `up_bias` (optional, [E..., N], floating): per-expert additive biases added to g
 *    and u before the activation (gpt-oss's linear biases), with either activation.
 *
 * `sorted_indices` is gather_qmm's hint that the indices are sorted by expert; the CPU kernel
 * groups rows by expert in any case (each distinct expert's weights are read once per call).
 *
 * Evaluation: CPU streams run the fused kernel (float32 accumulation, multi-threaded, AVX2 when
 * available). CUDA streams run one fused kernel launch (mlx/backend/cuda/moe/), for transpose =
 * true weights with K a multiple of 32; other layouts and other GPUs compute the composed reference
 * below.
 *
 * Transformations (CPU streams): vjp and jvp with respect to x, gate_bias and up_bias are those of
 * the composed reference (gather_qmm_swiglu_reference: MLX's gather_qmm derivatives); the quantized
 * weights, their scales and biases and the indices are constants, and asking for their derivative is
 * an error naming the input. vmap is the reference's (MLX's gather_qmm has no vmap rule, so it errors
 * with that op's message). On CUDA streams the fused kernel's node has no derivative: differentiate
 * through gather_qmm_swiglu_reference there.
 */
MLX_API array gather_qmm_swiglu(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    std::optional<array> lhs_indices = std::nullopt,
    std::optional<array> rhs_indices = std::nullopt,
    bool transpose = true,
    std::optional<int> group_size = std::nullopt,
    std::optional<int> bits = std::nullopt,
    const std::string& mode = "affine",
    bool sorted_indices = false,
    const std::string& activation = "swiglu",
    std::optional<float> alpha = std::nullopt,
    std::optional<float> limit = std::nullopt,
    const std::optional<array>& gate_bias = std::nullopt,
    const std::optional<array>& up_bias = std::nullopt,
    StreamOrDevice s = {});

/**
 * The same result composed from MLX's own ops (two gather_qmm calls, take + add for the expert
 * biases, then the activation in the projection dtype), with the same validation. User-given
 * indices go through a bounds check first (MLX's gather_qmm does not check them). Used by tests
 * and benchmarks as "MLX's composed path".
 */
MLX_API array gather_qmm_swiglu_reference(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    std::optional<array> lhs_indices = std::nullopt,
    std::optional<array> rhs_indices = std::nullopt,
    bool transpose = true,
    std::optional<int> group_size = std::nullopt,
    std::optional<int> bits = std::nullopt,
    const std::string& mode = "affine",
    bool sorted_indices = false,
    const std::string& activation = "swiglu",
    std::optional<float> alpha = std::nullopt,
    std::optional<float> limit = std::nullopt,
    const std::optional<array>& gate_bias = std::nullopt,
    const std::optional<array>& up_bias = std::nullopt,
    StreamOrDevice s = {});

namespace moe {

enum class Activation { SwiGLU, GptOss };

struct SwigluParams {
  QuantParams q;
  bool transpose = true;
  Activation activation = Activation::SwiGLU;
  float alpha = 1.702f;
  float limit = 7.0f;
  bool has_gate_bias = false;
  bool has_up_bias = false;
  bool has_lhs = false; // lhs_indices given (else arange over x's batch dimensions)
  bool has_rhs = false; // rhs_indices given (else arange over the weights' expert dimensions)
  bool sorted = false;

  bool operator==(const SwigluParams&) const = default;
};

// What validating gather_qmm_swiglu's arguments (the op's errors, without building a graph) finds:
// the primitive's parameters, the output dtype and the projection's sizes. The indices are checked
// separately (gather_batch_shape).
struct SwigluCheck {
  SwigluParams params;
  Dtype out_dtype = float32;
  int64_t experts = 1;
  int N = 0;
  int K = 0;
};

SwigluCheck check_swiglu_args(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    bool transpose,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    bool sorted_indices,
    const std::string& activation,
    std::optional<float> alpha,
    std::optional<float> limit,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias);

// Inputs of the primitive, in order: x [..., M, K] (any layout), gate_w, gate_scales, (gate_biases
// if affine), up_w, up_scales, (up_biases if affine) (row-contiguous), (lhs_indices), (rhs_indices)
// (any integer dtype and layout, broadcasting to the batch shape), (gate_bias [..., N]),
// (up_bias [..., N]) (any layout). Output: batch shape + [M, N].
void gather_qmm_swiglu_cpu(const std::vector<array>& inputs, array& out, const SwigluParams& p);

} // namespace moe

class GatherQMMSwiGLU : public UnaryPrimitive {
 public:
  GatherQMMSwiGLU(Stream stream, moe::SwigluParams params)
      : UnaryPrimitive(stream), params_(params) {}
  // From the values of state() (MLX's import).
  GatherQMMSwiGLU(
      Stream stream,
      QuantizationMode mode,
      int group_size,
      int bits,
      bool transpose,
      moe::Activation activation,
      float alpha,
      float limit,
      bool has_gate_bias,
      bool has_up_bias,
      bool has_lhs,
      bool has_rhs,
      bool sorted);

  void eval_cpu(const std::vector<array>& inputs, array& out) override;
  void eval_gpu(const std::vector<array>& inputs, array& out) override;

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
    return "GatherQMMSwiGLU";
  }
  bool is_equivalent(const Primitive& other) const override;

  const moe::SwigluParams& params() const {
    return params_;
  }

  // The parameters as plain values, for MLX's export.
  auto state() const {
    const moe::SwigluParams& p = params_;
    return std::make_tuple(
        p.q.info->mode,
        p.q.group_size,
        p.q.bits,
        p.transpose,
        p.activation,
        p.alpha,
        p.limit,
        p.has_gate_bias,
        p.has_up_bias,
        p.has_lhs,
        p.has_rhs,
        p.sorted);
  }

 private:
  moe::SwigluParams params_;
};

} // namespace mlx::core
