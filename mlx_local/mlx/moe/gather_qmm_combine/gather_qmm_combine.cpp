// Copyright © 2026 zmlx contributors.
//
// gather_qmm_combine: the op, the composed reference and the primitive's non-kernel methods. The
// CPU kernel is in cpu.cpp.
#include "mlx/moe/gather_qmm_combine/gather_qmm_combine.h"

#include <mlx/ops.h>

#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "mlx/backend/cuda/moe/gpu.h"
#include "mlx/moe/common/checked_indices.h"
#include "mlx/moe/common/composed_transforms.h"
#include "mlx/moe/common/validate.h"

namespace mlx::core {

namespace {

constexpr const char* kTag = "gather_qmm_combine";

struct Checked {
  moe::ProjInfo proj;
  moe::CombineParams params;
  Dtype out_dtype = float32;
  Shape batch; // B = broadcast of h's batch and rhs_indices
};

Checked check_combine(
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
    const std::optional<array>& bias) {
  Checked c;
  moe::check_activations(kTag, "h", h);
  c.params.q = moe::resolve_quant(kTag, mode, group_size, bits);
  c.proj = moe::check_projection(kTag, "w", h, w, scales, biases, transpose, c.params.q);
  c.params.transpose = transpose;
  if (!(scores.dtype() == float32 || scores.dtype() == float16 || scores.dtype() == bfloat16)) {
    std::ostringstream msg;
    msg << "[" << kTag << "] scores must be float32, float16 or bfloat16 but have dtype "
        << scores.dtype() << ".";
    throw std::invalid_argument(msg.str());
  }
  c.out_dtype = c.proj.out_dtype;
  if (bias) {
    moe::check_expert_bias(kTag, "bias", *bias, c.proj);
    c.params.has_bias = true;
    c.out_dtype = promote_types(c.out_dtype, bias->dtype());
  }
  c.out_dtype = promote_types(c.out_dtype, scores.dtype());
  c.batch = moe::gather_batch_shape(kTag, std::nullopt, rhs_indices, h, w);
  if (c.batch.empty()) {
    throw std::invalid_argument(
        std::string("[") + kTag +
        "] the batch shape of h and rhs_indices must have at least one dimension (the k experts "
        "to combine).");
  }
  bool ok = scores.ndim() <= c.batch.size();
  for (size_t i = 0; ok && i < scores.ndim(); ++i) {
    int sd = scores.shape(static_cast<int>(scores.ndim() - 1 - i));
    int bd = c.batch[c.batch.size() - 1 - i];
    ok = sd == bd || sd == 1;
  }
  if (!ok) {
    std::ostringstream msg;
    msg << "[" << kTag << "] scores with shape " << scores.shape()
        << " do not broadcast to the batch shape " << c.batch << " of h and rhs_indices.";
    throw std::invalid_argument(msg.str());
  }
  c.params.k = c.batch.back();
  return c;
}

// The primitive's inputs (see moe::gather_qmm_combine_cpu) and their roles in transformations: h,
// scores and bias are differentiable, the rest are constants.
std::vector<moe::InputRole> input_roles(const moe::CombineParams& p) {
  std::vector<moe::InputRole> r{{"h", true}, {"w", false}, {"scales", false}};
  if (p.q.info->has_biases) {
    r.push_back({"biases", false});
  }
  r.insert(r.end(), {{"rhs_indices", false}, {"scores", true}});
  if (p.has_bias) {
    r.push_back({"bias", true});
  }
  return r;
}

moe::ComposedFn composed(const moe::CombineParams& p, Stream s) {
  return [p, s](const std::vector<array>& in) {
    size_t i = 0;
    auto next = [&]() { return in.at(i++); };
    array h = next(), w = next(), sc = next();
    auto bi = p.q.info->has_biases ? std::optional<array>(next()) : std::nullopt;
    array rhs = next(), scores = next();
    auto bias = p.has_bias ? std::optional<array>(next()) : std::nullopt;
    return std::vector<array>{gather_qmm_combine_reference(
        h, w, sc, bi, rhs, scores, p.transpose, p.q.group_size, p.q.bits, p.q.info->name, bias, s)};
  };
}

} // namespace

moe::CombineCheck moe::check_combine_args(
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
    const std::optional<array>& bias) {
  Checked c = check_combine(
      h, w, scales, biases, rhs_indices, scores, transpose, group_size, bits, mode, bias);
  return {c.params, c.out_dtype, c.batch, c.proj.experts, c.proj.N, c.proj.K};
}

array gather_qmm_combine_reference(
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
    const std::optional<array>& bias,
    StreamOrDevice s) {
  Checked c = check_combine(
      h, w, scales, biases, rhs_indices, scores, transpose, group_size, bits, mode, bias);
  array rhs = moe::checked_indices(rhs_indices, c.proj.experts, "expert index", kTag);
  array y = gather_qmm(
      h, w, scales, biases, std::nullopt, rhs, transpose, c.params.q.group_size, c.params.q.bits,
      c.params.q.info->name, std::nullopt, false, s);
  if (bias) {
    auto [lb, rb] = moe::gather_indices(kTag, std::nullopt, rhs, h, w, s);
    (void)lb;
    array b2 = reshape(*bias, {static_cast<int>(c.proj.experts), c.proj.N}, s);
    y = add(y, expand_dims(take(b2, rb, 0, s), -2, s), s);
  }
  y = multiply(y, expand_dims(scores, {-1, -2}, s), s);
  return sum(y, -3, false, s);
}

array gather_qmm_combine(
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
    const std::optional<array>& bias,
    StreamOrDevice s) {
  Stream stream = to_stream(s);
  Checked c = check_combine(
      h, w, scales, biases, rhs_indices, scores, transpose, group_size, bits, mode, bias);
  // h, the indices, the scores and the bias go to the kernels as given (see
  // moe/common/batch_inputs.h).
  Shape out_shape(c.batch.begin(), c.batch.end() - 1);
  out_shape.push_back(h.shape(-2));
  out_shape.push_back(c.proj.N);
  // The primitive's inputs (the reference's, for transformations on GPU streams).
  const array wc = moe::ensure_contiguous(w, stream);
  const array sc = moe::ensure_contiguous(scales, stream);
  std::optional<array> bc;
  std::vector<array> inputs{h, wc, sc};
  if (c.params.q.info->has_biases) {
    bc = moe::ensure_contiguous(*biases, stream);
    inputs.push_back(*bc);
  }
  inputs.push_back(rhs_indices);
  inputs.push_back(scores);
  if (bias) {
    inputs.push_back(*bias);
  }
  std::optional<array> y;
  if (stream.device == Device::gpu) {
    if (moe::gpu::cuda_available() &&
        moe::gpu::unsupported(transpose, c.proj.K).empty()) {
      y = moe::gpu::combine(
          h, wc, sc, bc, rhs_indices, scores, bias, c.params, c.out_dtype, out_shape, stream);
    }
    if (!y) {
      return gather_qmm_combine_reference(
          h, w, scales, biases, rhs_indices, scores, transpose, group_size, bits, mode, bias,
          stream);
    }
  } else {
    y = array(
        std::move(out_shape),
        c.out_dtype,
        std::make_shared<GatherQMMCombine>(stream, c.params),
        inputs);
  }
  if (moe::needs_composed_transforms(*y, inputs)) {
    return moe::with_composed_transforms(
        kTag, {*y}, composed(c.params, stream), input_roles(c.params), inputs)[0];
  }
  return *y;
}

array fused_quantized_linear(
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    const std::optional<array>& bias,
    StreamOrDevice s) {
  constexpr const char* tag = "quantized_linear";
  Stream stream = to_stream(s);
  if (x.ndim() < 1) {
    throw std::invalid_argument("[quantized_linear] x must have at least one dimension.");
  }
  if (w.ndim() != 2) {
    std::ostringstream msg;
    msg << "[quantized_linear] w must be one quantized [N, K] matrix (2 dimensions) but has shape "
        << w.shape() << ".";
    throw std::invalid_argument(msg.str());
  }
  // The checks see x as rows [rows, K] (check_activations wants two dimensions).
  const int K = x.shape(-1);
  const int64_t rows = x.size() / std::max(K, 1);
  if (rows > std::numeric_limits<int>::max()) {
    throw std::invalid_argument("[quantized_linear] x has too many rows.");
  }
  const array x2 = x.ndim() >= 2 ? x : reshape(x, {1, K}, stream);
  moe::check_activations(tag, "x", x2);
  moe::QuantParams q = moe::resolve_quant(tag, mode, group_size, bits);
  moe::ProjInfo proj = moe::check_projection(tag, "w", x2, w, scales, biases, true, q);
  Dtype out_dtype = proj.out_dtype;
  if (bias) {
    moe::check_expert_bias(tag, "bias", *bias, proj);
    out_dtype = promote_types(out_dtype, bias->dtype());
  }
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(proj.N);
  if (stream.device == Device::gpu) {
    // While traced, MLX's quantized_matmul, whose derivatives MLX defines.
    const bool traced = moe::any_traced(
        {x, w, scales, biases.value_or(x), bias.value_or(x)});
    if (!traced && moe::gpu::cuda_available() && moe::gpu::unsupported(true, K).empty()) {
      auto y = moe::gpu::linear(
          x, moe::ensure_contiguous(w, stream), moe::ensure_contiguous(scales, stream),
          biases ? std::optional(moe::ensure_contiguous(*biases, stream)) : std::nullopt, bias, q,
          out_dtype, stream);
      if (y) {
        return *y;
      }
    }
    array y = quantized_matmul(
        x, w, scales, biases, true, q.group_size, q.bits, q.info->name, stream);
    if (bias) {
      y = add(y, *bias, stream);
    }
    return astype(y, out_dtype, stream);
  }
  // CPU: gather_qmm_combine with one expert (index 0) and score 1 in x's dtype (exact; promotes to
  // nothing wider than the projection).
  const array h = reshape(x, {1, static_cast<int>(rows), K}, stream);
  const array idx(std::initializer_list<uint32_t>{0u}, {1});
  const array one(std::initializer_list<float>{1.0f}, {1});
  array y = gather_qmm_combine(
      h, w, scales, biases, idx, astype(one, x.dtype(), stream), true, q.group_size, q.bits,
      q.info->name, bias, stream);
  return reshape(y, out_shape, stream);
}

GatherQMMCombine::GatherQMMCombine(
    Stream stream,
    QuantizationMode mode,
    int group_size,
    int bits,
    bool transpose,
    bool has_bias,
    int64_t k)
    : UnaryPrimitive(stream),
      params_{
          .q = {&moe::mode_info(mode), group_size, bits},
          .transpose = transpose,
          .has_bias = has_bias,
          .k = k} {}

void GatherQMMCombine::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error(
      "[gather_qmm_combine] the primitive runs on CPU streams only: on GPU streams the op builds a "
      "CUDA kernel node or the composed path.");
}

std::vector<array> GatherQMMCombine::jvp(
    const std::vector<array>& primals,
    const std::vector<array>& tangents,
    const std::vector<int>& argnums) {
  return moe::composed_jvp(
      kTag, composed(params_, stream()), input_roles(params_), primals, tangents, argnums);
}

std::vector<array> GatherQMMCombine::vjp(
    const std::vector<array>& primals,
    const std::vector<array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<array>&) {
  return moe::composed_vjp(
      kTag, composed(params_, stream()), input_roles(params_), primals, cotangents, argnums);
}

std::pair<std::vector<array>, std::vector<int>> GatherQMMCombine::vmap(
    const std::vector<array>& inputs,
    const std::vector<int>& axes) {
  return moe::composed_vmap(kTag, composed(params_, stream()), inputs, axes);
}

bool GatherQMMCombine::is_equivalent(const Primitive& other) const {
  return params_ == static_cast<const GatherQMMCombine&>(other).params_;
}

} // namespace mlx::core
