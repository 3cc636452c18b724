// Copyright © 2026 zmlx contributors.
//
// Validation and input preparation shared by gather_qmm_swiglu and gather_qmm_combine. The rules
// are MLX's gather_qmm rules (mlx/ops.cpp), checked more completely (full scale/bias shapes) and
// with the mode table of quant_modes.h.
#pragma once

#include <mlx/array.h>
#include <mlx/utils.h>

#include <optional>
#include <string_view>
#include <utility>

#include "mlx/moe/common/dequant.h"
#include "mlx/moe/common/quant_modes.h"

namespace mlx::core::moe {

// One quantized projection after validation.
struct ProjInfo {
  QuantParams q;
  Shape expert_shape; // w.shape()[:-2]
  int64_t experts = 1; // product of expert_shape
  int K = 0; // input features (x.shape(-1))
  int N = 0; // output features
  Dtype out_dtype = float32; // gather_qmm's output dtype for this x
};

// x must be float32, float16 or bfloat16 with at least two dimensions.
void check_activations(std::string_view tag, const char* name, const array& x);

// Validates one projection (w, scales, biases) against x like gather_qmm, with `which` naming it in
// messages ("gate", "up", ...).
ProjInfo check_projection(
    std::string_view tag,
    const char* which,
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    bool transpose,
    const QuantParams& q);

// A per-expert additive bias: shape expert_shape + [N], floating dtype.
void check_expert_bias(
    std::string_view tag,
    const char* name,
    const array& bias,
    const ProjInfo& p);

// gather_qmm's index rules: a missing index array is arange over the batch dimensions of x (lhs)
// or w (rhs); given ones must be integral; the two broadcast together to the batch shape returned.
Shape gather_batch_shape(
    std::string_view tag,
    const std::optional<array>& lhs,
    const std::optional<array>& rhs,
    const array& x,
    const array& w);

// The same rules as graph ops (for the composed references): both index arrays, cast to uint32
// and broadcast to the batch shape.
std::pair<array, array> gather_indices(
    std::string_view tag,
    const std::optional<array>& lhs,
    const std::optional<array>& rhs,
    const array& x,
    const array& w,
    StreamOrDevice s);

// a, row-contiguous (no new node when a is already evaluated and row-contiguous).
array ensure_contiguous(const array& a, StreamOrDevice s);

// The kernel view of an evaluated, row-contiguous projection.
QMat qmat_view(
    const array& w,
    const array& scales,
    const array* biases,
    const QuantParams& q,
    bool transpose);

} // namespace mlx::core::moe
