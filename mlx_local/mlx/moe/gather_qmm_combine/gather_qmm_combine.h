// Copyright © 2026 zmlx contributors.
//
// gather_qmm_combine: the down projection of a quantized Mixture-of-Experts layer fused with the
// score-weighted sum over the k experts each token picked.
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
 * sum_j scores[..., j] * (gather_qmm(h, w, scales, biases, rhs_indices=rhs_indices)[..., j, :, :]
 *                         + bias[rhs_indices[..., j]])
 *
 *  - `h` is [..., M, K] (float32, float16 or bfloat16); its batch dimensions index like
 *    gather_qmm's default lhs indices (arange over them) and broadcast with `rhs_indices`
 *    (integral, into the expert dimensions of w) to the batch shape B = [..., k], which must have at
 *    least one dimension: its last one, k, is summed over. Typically h is [..., k, M, K] and
 *    rhs_indices / scores are [..., k].
 *  - `w`, `scales`, `biases`, `transpose`, `group_size`, `bits`, `mode`: as in gather_qmm (see
 *    gather_qmm_swiglu.h for the layouts and the mode table).
 *  - `scores` (float32, float16 or bfloat16) must broadcast to B without changing it.
 *  - `bias` (optional, [E..., N], floating): per-expert additive bias of the projection.
 *  - Result: B[:-1] + [M, N]. dtype: promote(projection dtype (gather_qmm's rule), bias dtype,
 *    scores dtype): float32 scores give a float32 result.
 *  - An expert index >= E (or negative) makes evaluation fail with an error on CPU streams; on
 *    CUDA streams the output rows of that token are NaN instead. Nothing is read out of bounds.
 *
 * CPU streams run the fused kernel (float32 accumulation over the experts, one rounding at the
 * end); CUDA streams one fused kernel launch (no atomics: bitwise reproducible) for transpose = true
 * weights with K a multiple of 32; other layouts and other GPUs the composed reference.
 *
 * Transformations (CPU streams): vjp and jvp with respect to h, scores and bias are those of the
 * composed reference (gather_qmm_combine_reference); the quantized weights, their scales and biases
 * and rhs_indices are constants (asking for their derivative is an error naming the input); vmap is
 * the reference's. On CUDA streams the fused kernel's node has no derivative.
 */
MLX_API array gather_qmm_combine(
    const array& h,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const array& rhs_indices,
    const array& scores,
    bool transpose = true,
    std::optional<int> group_size = std::nullopt,
    std::optional<int> bits = std::nullopt,
    const std::string& mode = "affine",
    const std::optional<array>& bias = std::nullopt,
    StreamOrDevice s = {});

/**
 * The same result composed from MLX's own ops: gather_qmm, take + add for the bias, multiply by the
 * scores (MLX's dtype promotion) and sum over the k axis, with the same validation; user indices
 * are bounds-checked first.
 */
MLX_API array gather_qmm_combine_reference(
    const array& h,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const array& rhs_indices,
    const array& scores,
    bool transpose = true,
    std::optional<int> group_size = std::nullopt,
    std::optional<int> bits = std::nullopt,
    const std::string& mode = "affine",
    const std::optional<array>& bias = std::nullopt,
    StreamOrDevice s = {});

/**
 * x [..., K] times one quantized matrix plus an optional bias: the float32-accumulating linear
 * layer of the fused model path (attention, router, dense MLPs, lm_head).
 *
 *  - `w`, `scales`, `biases`, `group_size`, `bits`, `mode`: one quantized matrix, logical [N, K], in
 *    the transpose = true layout (w [N, K*bits/32], scales / biases [N, K/group_size]).
 *  - `bias` (optional, [N], floating) is added in float32 before the single rounding.
 *  - Result [..., N] in promote(projection dtype (gather_qmm's rule), bias dtype).
 *
 * CPU streams: the gather_qmm_combine kernel with one expert and score 1 (every dot product in
 * float32, each weight tile dequantized once for all rows). CUDA streams: the fused combine kernel
 * with one expert, the same float32 contract (MLX's CUDA quantized_matmul is not known to keep it
 * for float32 activations against half-precision scales). Other GPUs: quantized_matmul (+ bias).
 */
MLX_API array fused_quantized_linear(
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    std::optional<int> group_size = std::nullopt,
    std::optional<int> bits = std::nullopt,
    const std::string& mode = "affine",
    const std::optional<array>& bias = std::nullopt,
    StreamOrDevice s = {});

namespace moe {

struct CombineParams {
  QuantParams q;
  bool transpose = true;
  bool has_bias = false;
  int64_t k = 1; // experts per output row (last batch dimension)

  bool operator==(const CombineParams&) const = default;
};

// What validating gather_qmm_combine's arguments (the op's errors, without building a graph)
// finds: the primitive's parameters, the output dtype, the batch shape of h and the indices, and the
// projection's sizes.
struct CombineCheck {
  CombineParams params;
  Dtype out_dtype = float32;
  Shape batch;
  int64_t experts = 1;
  int N = 0;
  int K = 0;
};

CombineCheck check_combine_args(
    const array& h,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const array& rhs_indices,
    const array& scores,
    bool transpose,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    const std::optional<array>& bias);

// Inputs: h [..., M, K] (any layout), w, scales, (biases if affine) (row-contiguous), rhs_indices
// (any integer dtype and layout), scores (any layout; both broadcasting to the batch shape, whose
// last dimension is k), (bias [..., N], any layout). Output: batch shape without k + [M, N].
void gather_qmm_combine_cpu(const std::vector<array>& inputs, array& out, const CombineParams& p);

} // namespace moe

class GatherQMMCombine : public UnaryPrimitive {
 public:
  GatherQMMCombine(Stream stream, moe::CombineParams params)
      : UnaryPrimitive(stream), params_(params) {}
  // From the values of state() (MLX's import).
  GatherQMMCombine(
      Stream stream,
      QuantizationMode mode,
      int group_size,
      int bits,
      bool transpose,
      bool has_bias,
      int64_t k);

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
    return "GatherQMMCombine";
  }
  bool is_equivalent(const Primitive& other) const override;

  // The parameters as plain values, for MLX's export.
  auto state() const {
    const moe::CombineParams& p = params_;
    return std::make_tuple(
        p.q.info->mode, p.q.group_size, p.q.bits, p.transpose, p.has_bias, p.k);
  }

 private:
  moe::CombineParams params_;
};

} // namespace mlx::core
