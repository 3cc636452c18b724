// Copyright © 2026 zmlx contributors.
//
// Transformations (vjp, jvp, vmap) of the fused primitives through their composed reference, the way
// MLX's fast::Custom derives them from its fallback (the wheel does not export fast::Custom, so the
// primitives cannot derive from it): the derivative of the fused op is the derivative of the graph of
// MLX ops that defines it. Quantized weights and indices are constants (as in MLX's gather_qmm):
// asking for their derivative is an error that names the input.
#pragma once

#include <mlx/array.h>
#include <mlx/primitives.h>

#include <functional>
#include <memory>
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

// The fused ops on GPU streams are kernel nodes of fast::cuda_kernel, which have no vjp, jvp or vmap.
// When the op's inputs are traced (a transformation is being built), the op returns the kernel's
// outputs through this primitive instead: it runs the same kernel (the kernel node's primitive,
// evaluated on its inputs, on either device) and transforms as the composed reference does, with the
// errors of the CPU primitive. Its inputs are the kernel node's inputs followed by the reference's
// inputs (the same arrays may appear in both); derivatives reach the traced arrays through the
// second part.
class KernelWithTransforms : public Primitive {
 public:
  KernelWithTransforms(
      Stream stream,
      const char* tag,
      std::shared_ptr<Primitive> kernel,
      size_t kernel_inputs,
      ComposedFn reference,
      std::vector<InputRole> roles,
      std::vector<Shape> out_shapes,
      std::vector<Dtype> out_dtypes)
      : Primitive(stream),
        tag_(tag),
        kernel_(std::move(kernel)),
        kernel_inputs_(kernel_inputs),
        reference_(std::move(reference)),
        roles_(std::move(roles)),
        out_shapes_(std::move(out_shapes)),
        out_dtypes_(std::move(out_dtypes)) {}

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
    return tag_;
  }

 private:
  const char* tag_;
  std::shared_ptr<Primitive> kernel_;
  size_t kernel_inputs_;
  ComposedFn reference_;
  std::vector<InputRole> roles_;
  std::vector<Shape> out_shapes_;
  std::vector<Dtype> out_dtypes_;
};

// Whether an op's output `out`, computed from the reference's `inputs`, must go through
// with_composed_transforms: an input is traced and `out` comes from a fast::cuda_kernel node (not,
// say, the zeros of an empty result). With ZMLX_TEST_WRAP_TRACED=1 a CPU stream's primitive node is
// wrapped the same way, so the CPU test suite exercises the wrapping CUDA streams use (for tests;
// off by default).
bool needs_composed_transforms(const array& out, const std::vector<array>& inputs);

// Whether any of the arrays is traced by a transformation being built (vjp, jvp, vmap, compile).
bool any_traced(const std::vector<array>& arrays);

// The outputs of `kernel_outputs` (all outputs of one fast::cuda_kernel node) as the outputs of a
// KernelWithTransforms node over the reference's `inputs` (one role per input).
std::vector<array> with_composed_transforms(
    const char* tag,
    const std::vector<array>& kernel_outputs,
    ComposedFn reference,
    std::vector<InputRole> roles,
    const std::vector<array>& inputs);

} // namespace mlx::core::moe
