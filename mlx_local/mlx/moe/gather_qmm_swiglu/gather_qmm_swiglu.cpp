// Copyright © 2026 zmlx contributors.
//
// gather_qmm_swiglu: the op (validation, input preparation, primitive construction), the composed
// reference, and the primitive's non-kernel methods. The CPU kernel is in cpu.cpp.
#include "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h"

#include <mlx/ops.h>

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "mlx/backend/cuda/moe/gpu.h"
#include "mlx/moe/common/batch_inputs.h"
#include "mlx/moe/common/checked_indices.h"
#include "mlx/moe/common/composed_transforms.h"
#include "mlx/moe/common/validate.h"

namespace mlx::core {

namespace {

constexpr const char* kTag = "gather_qmm_swiglu";

struct Checked {
  moe::ProjInfo gate;
  moe::ProjInfo up;
  moe::SwigluParams params;
  Dtype out_dtype = float32;
};

Checked check_swiglu(
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
    const std::optional<array>& up_bias) {
  Checked c;
  moe::check_activations(kTag, "x", x);
  c.params.q = moe::resolve_quant(kTag, mode, group_size, bits);
  c.gate = moe::check_projection(kTag, "gate", x, gate_w, gate_scales, gate_biases, transpose, c.params.q);
  c.up = moe::check_projection(kTag, "up", x, up_w, up_scales, up_biases, transpose, c.params.q);
  if (up_w.shape() != gate_w.shape() || up_scales.shape() != gate_scales.shape()) {
    std::ostringstream msg;
    msg << "[" << kTag << "] gate and up must have the same shapes but have weights "
        << gate_w.shape() << " and " << up_w.shape() << ", scales " << gate_scales.shape()
        << " and " << up_scales.shape() << ".";
    throw std::invalid_argument(msg.str());
  }
  c.params.transpose = transpose;
  c.params.sorted = sorted_indices;
  if (activation == "swiglu") {
    c.params.activation = moe::Activation::SwiGLU;
    if (alpha || limit) {
      throw std::invalid_argument(
          std::string("[") + kTag +
          "] alpha and limit apply to the 'gpt_oss' activation only; leave them unset for 'swiglu'.");
    }
  } else if (activation == "gpt_oss") {
    c.params.activation = moe::Activation::GptOss;
    c.params.alpha = alpha.value_or(1.702f);
    c.params.limit = limit.value_or(7.0f);
    if (!std::isfinite(c.params.alpha)) {
      throw std::invalid_argument(std::string("[") + kTag + "] alpha must be finite.");
    }
    if (!std::isfinite(c.params.limit) || !(c.params.limit > 0.0f)) {
      throw std::invalid_argument(std::string("[") + kTag + "] limit must be finite and positive.");
    }
  } else {
    throw std::invalid_argument(
        std::string("[") + kTag + "] unknown activation '" + activation +
        "'; expected 'swiglu' or 'gpt_oss'.");
  }
  c.out_dtype = promote_types(c.gate.out_dtype, c.up.out_dtype);
  if (gate_bias) {
    moe::check_expert_bias(kTag, "gate_bias", *gate_bias, c.gate);
    c.params.has_gate_bias = true;
    c.out_dtype = promote_types(c.out_dtype, gate_bias->dtype());
  }
  if (up_bias) {
    moe::check_expert_bias(kTag, "up_bias", *up_bias, c.up);
    c.params.has_up_bias = true;
    c.out_dtype = promote_types(c.out_dtype, up_bias->dtype());
  }
  return c;
}

// The primitive's inputs (see moe::gather_qmm_swiglu_cpu for their order) with their roles in
// transformations: x and the expert biases are differentiable, the rest are constants.
std::vector<moe::InputRole> input_roles(const moe::SwigluParams& p) {
  std::vector<moe::InputRole> r{{"x", true}, {"gate_w", false}, {"gate_scales", false}};
  if (p.q.info->has_biases) {
    r.push_back({"gate_biases", false});
  }
  r.insert(r.end(), {{"up_w", false}, {"up_scales", false}});
  if (p.q.info->has_biases) {
    r.push_back({"up_biases", false});
  }
  if (p.has_lhs) {
    r.push_back({"lhs_indices", false});
  }
  if (p.has_rhs) {
    r.push_back({"rhs_indices", false});
  }
  if (p.has_gate_bias) {
    r.push_back({"gate_bias", true});
  }
  if (p.has_up_bias) {
    r.push_back({"up_bias", true});
  }
  return r;
}

// The composed reference of the primitive's inputs.
moe::ComposedFn composed(const moe::SwigluParams& p, Stream s) {
  return [p, s](const std::vector<array>& in) {
    size_t i = 0;
    auto next = [&]() { return in.at(i++); };
    auto maybe = [&](bool has) { return has ? std::optional<array>(next()) : std::nullopt; };
    const bool qb = p.q.info->has_biases;
    array x = next(), gw = next(), gs = next();
    auto gb = maybe(qb);
    array uw = next(), us = next();
    auto ub = maybe(qb);
    auto lhs = maybe(p.has_lhs);
    auto rhs = maybe(p.has_rhs);
    auto gate_bias = maybe(p.has_gate_bias);
    auto up_bias = maybe(p.has_up_bias);
    const bool gpt = p.activation == moe::Activation::GptOss;
    return std::vector<array>{gather_qmm_swiglu_reference(
        x, gw, gs, gb, uw, us, ub, lhs, rhs, p.transpose, p.q.group_size, p.q.bits, p.q.info->name,
        p.sorted, gpt ? "gpt_oss" : "swiglu", gpt ? std::optional(p.alpha) : std::nullopt,
        gpt ? std::optional(p.limit) : std::nullopt, gate_bias, up_bias, s)};
  };
}

} // namespace

moe::SwigluCheck moe::check_swiglu_args(
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
    const std::optional<array>& up_bias) {
  Checked c = check_swiglu(
      x, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, transpose, group_size, bits,
      mode, sorted_indices, activation, alpha, limit, gate_bias, up_bias);
  return {c.params, c.out_dtype, c.gate.experts, c.gate.N, c.gate.K};
}

array gather_qmm_swiglu_reference(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    std::optional<array> lhs_indices,
    std::optional<array> rhs_indices,
    bool transpose,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    bool sorted_indices,
    const std::string& activation,
    std::optional<float> alpha,
    std::optional<float> limit,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    StreamOrDevice s) {
  Checked c = check_swiglu(
      x, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, transpose, group_size, bits,
      mode, sorted_indices, activation, alpha, limit, gate_bias, up_bias);
  // Validates index dtypes and broadcasting with the op's messages.
  moe::gather_batch_shape(kTag, lhs_indices, rhs_indices, x, gate_w);
  std::optional<array> lhs, rhs;
  if (lhs_indices) {
    lhs = moe::checked_indices(*lhs_indices, moe::batch_size(moe::batch_dims(x)), "lhs index", kTag);
  }
  if (rhs_indices) {
    rhs = moe::checked_indices(*rhs_indices, c.gate.experts, "expert index", kTag);
  }
  const std::string mode_name = c.params.q.info->name;
  array g = gather_qmm(
      x, gate_w, gate_scales, gate_biases, lhs, rhs, transpose, c.params.q.group_size,
      c.params.q.bits, mode_name, std::nullopt, sorted_indices, s);
  array u = gather_qmm(
      x, up_w, up_scales, up_biases, lhs, rhs, transpose, c.params.q.group_size, c.params.q.bits,
      mode_name, std::nullopt, sorted_indices, s);
  if (gate_bias || up_bias) {
    auto [lb, rb] = moe::gather_indices(kTag, lhs, rhs, x, gate_w, s);
    (void)lb;
    auto add_bias = [&](const array& y, const array& bias) {
      array b2 = reshape(bias, {static_cast<int>(c.gate.experts), c.gate.N}, s);
      return add(y, expand_dims(take(b2, rb, 0, s), -2, s), s);
    };
    if (gate_bias) {
      g = add_bias(g, *gate_bias);
    }
    if (up_bias) {
      u = add_bias(u, *up_bias);
    }
  }
  if (c.params.activation == moe::Activation::SwiGLU) {
    return multiply(multiply(g, sigmoid(g, s), s), u, s);
  }
  // gpt-oss (mlx-lm): scalars take the array's dtype, like Python scalars in MLX.
  array lim_g(c.params.limit, g.dtype());
  array lim_u(c.params.limit, u.dtype());
  g = minimum(g, lim_g, s);
  u = clip(u, array(-c.params.limit, u.dtype()), lim_u, s);
  array sig = sigmoid(multiply(array(c.params.alpha, g.dtype()), g, s), s);
  return multiply(multiply(g, sig, s), add(u, array(1.0f, u.dtype()), s), s);
}

array gather_qmm_swiglu(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    std::optional<array> lhs_indices,
    std::optional<array> rhs_indices,
    bool transpose,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    bool sorted_indices,
    const std::string& activation,
    std::optional<float> alpha,
    std::optional<float> limit,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    StreamOrDevice s) {
  Stream stream = to_stream(s);
  Checked c = check_swiglu(
      x, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, transpose, group_size, bits,
      mode, sorted_indices, activation, alpha, limit, gate_bias, up_bias);
  // The index arrays and x go to the kernels as given (see moe/common/batch_inputs.h): they
  // resolve default indices, broadcasting, index dtypes and strides.
  Shape out_shape = moe::gather_batch_shape(kTag, lhs_indices, rhs_indices, x, gate_w);
  const int M = x.shape(-2);
  const int N = c.gate.N;
  out_shape.push_back(M);
  out_shape.push_back(N);
  // The primitive's inputs (the reference's, for transformations on GPU streams).
  const array gw = moe::ensure_contiguous(gate_w, stream);
  const array gs = moe::ensure_contiguous(gate_scales, stream);
  const array uw = moe::ensure_contiguous(up_w, stream);
  const array us = moe::ensure_contiguous(up_scales, stream);
  std::optional<array> gb, ub;
  if (c.params.q.info->has_biases) {
    gb = moe::ensure_contiguous(*gate_biases, stream);
    ub = moe::ensure_contiguous(*up_biases, stream);
  }
  std::vector<array> inputs{x, gw, gs};
  if (gb) {
    inputs.push_back(*gb);
  }
  inputs.push_back(uw);
  inputs.push_back(us);
  if (ub) {
    inputs.push_back(*ub);
  }
  if (lhs_indices) {
    c.params.has_lhs = true;
    inputs.push_back(*lhs_indices);
  }
  if (rhs_indices) {
    c.params.has_rhs = true;
    inputs.push_back(*rhs_indices);
  }
  if (gate_bias) {
    inputs.push_back(*gate_bias);
  }
  if (up_bias) {
    inputs.push_back(*up_bias);
  }
  std::optional<array> y;
  if (stream.device == Device::gpu) {
    if (moe::gpu::cuda_available() &&
        moe::gpu::unsupported(transpose, c.gate.K).empty()) {
      y = moe::gpu::swiglu(
          x, gw, gs, gb, uw, us, ub, lhs_indices, rhs_indices, gate_bias, up_bias, c.params,
          c.out_dtype, out_shape, c.gate.experts, stream);
    }
    if (!y) {
      // No fused kernel for this configuration on this GPU: MLX's composed ops.
      return gather_qmm_swiglu_reference(
          x, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, std::move(lhs_indices),
          std::move(rhs_indices), transpose, group_size, bits, mode, sorted_indices, activation,
          alpha, limit, gate_bias, up_bias, stream);
    }
  } else {
    y = array(
        std::move(out_shape),
        c.out_dtype,
        std::make_shared<GatherQMMSwiGLU>(stream, c.params),
        inputs);
  }
  if (moe::needs_composed_transforms(*y, inputs)) {
    return moe::with_composed_transforms(
        kTag, {*y}, composed(c.params, stream), input_roles(c.params), inputs)[0];
  }
  return *y;
}

GatherQMMSwiGLU::GatherQMMSwiGLU(
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
    bool sorted)
    : UnaryPrimitive(stream),
      params_{
          .q = {&moe::mode_info(mode), group_size, bits},
          .transpose = transpose,
          .activation = activation,
          .alpha = alpha,
          .limit = limit,
          .has_gate_bias = has_gate_bias,
          .has_up_bias = has_up_bias,
          .has_lhs = has_lhs,
          .has_rhs = has_rhs,
          .sorted = sorted} {}

void GatherQMMSwiGLU::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error(
      "[gather_qmm_swiglu] the primitive runs on CPU streams only: on GPU streams the op builds a "
      "CUDA kernel node or the composed path.");
}

std::vector<array> GatherQMMSwiGLU::jvp(
    const std::vector<array>& primals,
    const std::vector<array>& tangents,
    const std::vector<int>& argnums) {
  return moe::composed_jvp(
      kTag, composed(params_, stream()), input_roles(params_), primals, tangents, argnums);
}

std::vector<array> GatherQMMSwiGLU::vjp(
    const std::vector<array>& primals,
    const std::vector<array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<array>&) {
  return moe::composed_vjp(
      kTag, composed(params_, stream()), input_roles(params_), primals, cotangents, argnums);
}

std::pair<std::vector<array>, std::vector<int>> GatherQMMSwiGLU::vmap(
    const std::vector<array>& inputs,
    const std::vector<int>& axes) {
  return moe::composed_vmap(kTag, composed(params_, stream()), inputs, axes);
}

bool GatherQMMSwiGLU::is_equivalent(const Primitive& other) const {
  return params_ == static_cast<const GatherQMMSwiGLU&>(other).params_;
}

} // namespace mlx::core
