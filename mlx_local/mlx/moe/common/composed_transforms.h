// Copyright © 2026 zmlx contributors.
//
// Transformations (vjp, jvp, vmap) of the fused primitives through their composed reference, the way
// MLX's fast::Custom derives them from its fallback (the wheel does not export fast::Custom, so the
// primitives cannot derive from it): the derivative of the fused op is the derivative of the graph of
// MLX ops that defines it. Quantized weights and indices are constants (as in MLX's gather_qmm):
// asking for their derivative is an error that names the input.
#pragma once

#include <mlx/array.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mlx::core::moe {

// The op's value rebuilt from the primitive's inputs with MLX ops (one output per element).
using ComposedFn = std::function<std::vector<array>(const std::vector<array>&)>;

// One entry per primitive input: its name in error messages and whether it may be differentiated.
struct InputRole {
  std::string name;
  bool differentiable;
};

std::vector<array> composed_vjp(
    const char* tag,
    const ComposedFn& reference,
    const std::vector<InputRole>& roles,
    const std::vector<array>& primals,
    const std::vector<array>& cotangents,
    const std::vector<int>& argnums);

// The jvp is computed as the transpose of the vjp (MLX's gather_qmm has no jvp rule): twice the work
// of a vjp.
std::vector<array> composed_jvp(
    const char* tag,
    const ComposedFn& reference,
    const std::vector<InputRole>& roles,
    const std::vector<array>& primals,
    const std::vector<array>& tangents,
    const std::vector<int>& argnums);

// vmap of the reference over the inputs' mapped axes (-1: not mapped); the outputs are mapped on
// axis 0. Errors of MLX ops without a vmap rule (gather_qmm) propagate with the op's tag prepended.
std::pair<std::vector<array>, std::vector<int>> composed_vmap(
    const char* tag,
    const ComposedFn& reference,
    const std::vector<array>& inputs,
    const std::vector<int>& axes);

} // namespace mlx::core::moe
