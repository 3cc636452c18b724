// Copyright © 2026 zmlx contributors.
//
// checked_indices(idx, limit): a uint32 copy of integer indices (any integer dtype and layout),
// evaluated on the CPU, whose evaluation fails with std::out_of_range if an index is negative or
// >= limit (the same check and message as the fused kernels'). The copy has every bad index replaced by 0,
// so whatever is evaluated after it in the same stream (MLX keeps running queued tasks after a
// failed one) never reads out of bounds. The composed reference paths gather through it because
// MLX's own gather_qmm does not check its indices.
#pragma once

#include <mlx/array.h>
#include <mlx/primitives.h>

#include <string>
#include <tuple>

namespace mlx::core::moe {

array checked_indices(const array& idx, int64_t limit, const std::string& what, const std::string& tag);

class CheckedIndices : public UnaryPrimitive {
 public:
  CheckedIndices(Stream stream, int64_t limit, std::string what, std::string tag)
      : UnaryPrimitive(stream), limit_(limit), what_(std::move(what)), tag_(std::move(tag)) {}

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
    return "CheckedIndices";
  }
  bool is_equivalent(const Primitive& other) const override;
  std::vector<Shape> output_shapes(const std::vector<array>& inputs) override {
    return {inputs[0].shape()};
  }

  // The constructor's arguments after the stream, for MLX's export / import.
  auto state() const {
    return std::make_tuple(limit_, what_, tag_);
  }

 private:
  int64_t limit_;
  std::string what_;
  std::string tag_;
};

} // namespace mlx::core::moe
