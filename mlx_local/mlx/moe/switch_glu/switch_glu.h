// Copyright © 2026 zmlx contributors.
//
// switch_glu_combine: mlx-lm's SwitchGLU layer with the score-weighted sum over the experts, as one
// op built from the two fused primitives.
#pragma once

#include <mlx/api.h>
#include <mlx/array.h>
#include <mlx/utils.h>

#include <optional>
#include <string>

namespace mlx::core {

/**
 * gather_qmm_combine(gather_qmm_swiglu(x[..., None, None, :], gate, up, rhs_indices=indices),
 *                    down, indices, scores)[..., 0, :]
 *
 * The MoE block of a decoder layer after routing: x [..., D] (float32, float16 or bfloat16), the
 * experts each token picked `indices` [..., k] and their `scores` [..., k]; gate and up project D
 * to the intermediate size I, down projects I back to D (weights in the transpose = true layout of
 * gather_qmm: [E..., N, K*bits/32] with scales / biases [E..., N, K/group_size]). All three
 * projections share mode, group_size and bits. activation, alpha, limit, gate_bias and up_bias as
 * gather_qmm_swiglu; down_bias as gather_qmm_combine's bias. Result: [..., D] (the batch of x and
 * indices broadcast, without k) in gather_qmm_combine's dtype.
 *
 * Every argument is validated as the two ops validate it. On CUDA streams the whole layer is one
 * kernel launch; elsewhere it is the two fused ops (on CPU streams their kernels).
 */
MLX_API array switch_glu_combine(
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
    std::optional<int> group_size = std::nullopt,
    std::optional<int> bits = std::nullopt,
    const std::string& mode = "affine",
    const std::string& activation = "swiglu",
    std::optional<float> alpha = std::nullopt,
    std::optional<float> limit = std::nullopt,
    const std::optional<array>& gate_bias = std::nullopt,
    const std::optional<array>& up_bias = std::nullopt,
    const std::optional<array>& down_bias = std::nullopt,
    StreamOrDevice s = {});

} // namespace mlx::core
