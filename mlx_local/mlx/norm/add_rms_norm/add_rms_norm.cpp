// Copyright © 2026 zmlx contributors.
//
// add_rms_norm: the op (validation, primitive construction), the composed reference, and the
// primitive's non-kernel methods. The CPU kernel is in cpu.cpp.
#include "mlx/norm/add_rms_norm/add_rms_norm.h"

#include <mlx/fast.h>
#include <mlx/ops.h>

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "mlx/backend/cuda/moe/gpu.h"
#include "mlx/moe/common/composed_transforms.h"

namespace mlx::core {

namespace {

constexpr const char* kTag = "add_rms_norm";

bool is_float_type(Dtype t) {
  return t == float32 || t == float16 || t == bfloat16;
}

struct Checked {
  Dtype h_dtype;
  Dtype y_dtype;
};

Checked check(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps) {
  if (x.ndim() == 0) {
    throw std::invalid_argument(
        "[add_rms_norm] x must have at least one dimension but got a scalar.");
  }
  if (x.shape() != residual.shape()) {
    std::ostringstream msg;
    msg << "[add_rms_norm] x and residual must have the same shape but got " << x.shape()
        << " and " << residual.shape() << ".";
    throw std::invalid_argument(msg.str());
  }
  for (auto [name, a] : {std::pair<const char*, const array*>{"x", &x}, {"residual", &residual}}) {
    if (!is_float_type(a->dtype())) {
      std::ostringstream msg;
      msg << "[add_rms_norm] " << name << " must be float32, float16 or bfloat16 but got "
          << a->dtype() << ".";
      throw std::invalid_argument(msg.str());
    }
  }
  Checked c{promote_types(x.dtype(), residual.dtype()), float32};
  c.y_dtype = c.h_dtype;
  if (weight) {
    if (weight->ndim() != 1 || weight->shape(0) != x.shape(-1)) {
      std::ostringstream msg;
      msg << "[add_rms_norm] weight must have shape [" << x.shape(-1)
          << "] (the last dimension of x) but got " << weight->shape() << ".";
      throw std::invalid_argument(msg.str());
    }
    if (!is_float_type(weight->dtype())) {
      std::ostringstream msg;
      msg << "[add_rms_norm] weight must be float32, float16 or bfloat16 but got "
          << weight->dtype() << ".";
      throw std::invalid_argument(msg.str());
    }
    c.y_dtype = promote_types(c.h_dtype, weight->dtype());
  }
  if (!std::isfinite(eps) || eps < 0.0f) {
    std::ostringstream msg;
    msg << "[add_rms_norm] eps must be finite and non-negative but got " << eps << ".";
    throw std::invalid_argument(msg.str());
  }
  return c;
}

std::pair<array, array> composed_graph(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    Stream s) {
  array h = add(x, residual, s);
  return {h, fast::rms_norm(h, weight, eps, s)};
}

moe::ComposedFn composed(float eps, bool has_weight, Stream s) {
  return [eps, has_weight, s](const std::vector<array>& in) {
    auto w = has_weight ? std::optional<array>(in.at(2)) : std::nullopt;
    auto [h, y] = composed_graph(in.at(0), in.at(1), w, eps, s);
    return std::vector<array>{h, y};
  };
}

std::vector<moe::InputRole> input_roles(bool has_weight) {
  std::vector<moe::InputRole> r{{"x", true}, {"residual", true}};
  if (has_weight) {
    r.push_back({"weight", true});
  }
  return r;
}

} // namespace

std::pair<array, array> add_rms_norm_reference(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    StreamOrDevice s) {
  check(x, residual, weight, eps);
  return composed_graph(x, residual, weight, eps, to_stream(s));
}

std::pair<array, array> add_rms_norm(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    StreamOrDevice s) {
  Checked c = check(x, residual, weight, eps);
  Stream stream = to_stream(s);
  std::vector<array> inputs{x, residual};
  if (weight) {
    inputs.push_back(*weight);
  }
  std::vector<array> outs;
  if (stream.device == Device::gpu) {
    std::optional<std::pair<array, array>> r;
    if (moe::gpu::cuda_available()) {
      r = moe::gpu::add_rms_norm(x, residual, weight, eps, c.h_dtype, c.y_dtype, stream);
    }
    if (!r) {
      // No fused GPU kernel (Metal, or too many rows): MLX's add and its rms_norm kernel.
      return composed_graph(x, residual, weight, eps, stream);
    }
    outs = {r->first, r->second};
  } else {
    outs = array::make_arrays(
        {x.shape(), x.shape()},
        {c.h_dtype, c.y_dtype},
        std::make_shared<AddRMSNorm>(stream, eps, weight.has_value()),
        inputs);
  }
  if (moe::needs_composed_transforms(outs[0], inputs)) {
    outs = moe::with_composed_transforms(
        kTag, outs, composed(eps, weight.has_value(), stream), input_roles(weight.has_value()),
        inputs);
  }
  return {outs[0], outs[1]};
}

void AddRMSNorm::eval_gpu(const std::vector<array>&, std::vector<array>&) {
  throw std::runtime_error(
      "[add_rms_norm] the primitive runs on CPU streams only: on GPU streams the op builds a CUDA "
      "kernel node or the composed graph.");
}

std::vector<array> AddRMSNorm::jvp(
    const std::vector<array>& primals,
    const std::vector<array>& tangents,
    const std::vector<int>& argnums) {
  return moe::composed_jvp(
      kTag, composed(eps_, has_weight_, stream()), input_roles(has_weight_), primals, tangents,
      argnums);
}

std::vector<array> AddRMSNorm::vjp(
    const std::vector<array>& primals,
    const std::vector<array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<array>&) {
  return moe::composed_vjp(
      kTag, composed(eps_, has_weight_, stream()), input_roles(has_weight_), primals, cotangents,
      argnums);
}

std::pair<std::vector<array>, std::vector<int>> AddRMSNorm::vmap(
    const std::vector<array>& inputs,
    const std::vector<int>& axes) {
  return moe::composed_vmap(kTag, composed(eps_, has_weight_, stream()), inputs, axes);
}

bool AddRMSNorm::is_equivalent(const Primitive& other) const {
  const auto& o = static_cast<const AddRMSNorm&>(other);
  return eps_ == o.eps_ && has_weight_ == o.has_weight_;
}

std::vector<Shape> AddRMSNorm::output_shapes(const std::vector<array>& inputs) {
  return {inputs[0].shape(), inputs[0].shape()};
}

} // namespace mlx::core
