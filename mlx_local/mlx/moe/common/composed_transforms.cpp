// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/composed_transforms.h"

#include <mlx/ops.h>
#include <mlx/transforms.h>

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace mlx::core::moe {

namespace {

// The primitive's inputs with the differentiated ones replaced by `sub` (in argnums order).
std::vector<array> substitute(
    const std::vector<array>& primals,
    const std::vector<int>& argnums,
    const std::vector<array>& sub) {
  std::vector<array> in = primals;
  for (size_t i = 0; i < argnums.size(); ++i) {
    in[argnums[i]] = sub[i];
  }
  return in;
}

void check_argnums(
    const char* tag,
    const char* what,
    const std::vector<InputRole>& roles,
    size_t n_inputs,
    const std::vector<int>& argnums) {
  if (roles.size() != n_inputs) {
    std::ostringstream msg;
    msg << "[" << tag << "] internal error: " << roles.size() << " input roles for " << n_inputs
        << " inputs.";
    throw std::logic_error(msg.str());
  }
  for (int a : argnums) {
    if (a < 0 || static_cast<size_t>(a) >= n_inputs) {
      std::ostringstream msg;
      msg << "[" << tag << "] " << what << " argument number " << a << " out of range for "
          << n_inputs << " inputs.";
      throw std::invalid_argument(msg.str());
    }
    if (!roles[a].differentiable) {
      std::ostringstream msg;
      msg << "[" << tag << "] " << what << " with respect to " << roles[a].name
          << " is not supported: quantized weights, their scales and biases, and indices are "
             "constants (as in MLX's gather_qmm).";
      throw std::invalid_argument(msg.str());
    }
  }
}

} // namespace

std::vector<array> composed_vjp(
    const char* tag,
    const ComposedFn& reference,
    const std::vector<InputRole>& roles,
    const std::vector<array>& primals,
    const std::vector<array>& cotangents,
    const std::vector<int>& argnums) {
  check_argnums(tag, "vjp", roles, primals.size(), argnums);
  std::vector<array> sub;
  for (int a : argnums) {
    sub.push_back(primals[a]);
  }
  auto fn = [&](const std::vector<array>& s) { return reference(substitute(primals, argnums, s)); };
  return vjp(fn, sub, cotangents).second;
}

std::vector<array> composed_jvp(
    const char* tag,
    const ComposedFn& reference,
    const std::vector<InputRole>& roles,
    const std::vector<array>& primals,
    const std::vector<array>& tangents,
    const std::vector<int>& argnums) {
  check_argnums(tag, "jvp", roles, primals.size(), argnums);
  std::vector<array> sub;
  for (int a : argnums) {
    sub.push_back(primals[a]);
  }
  auto fn = [&](const std::vector<array>& s) { return reference(substitute(primals, argnums, s)); };
  // MLX's gather_qmm has a vjp but no jvp, so the jvp is the transpose of the vjp: u -> J^T u is
  // linear in u, and its vjp with cotangent v (at any u, here zeros) is J v.
  std::vector<array> u0;
  for (const auto& o : fn(sub)) {
    u0.push_back(zeros(o.shape(), o.dtype()));
  }
  auto vjp_of_u = [&](const std::vector<array>& u) { return vjp(fn, sub, u).second; };
  return vjp(vjp_of_u, u0, tangents).second;
}

std::pair<std::vector<array>, std::vector<int>> composed_vmap(
    const char* tag,
    const ComposedFn& reference,
    const std::vector<array>& inputs,
    const std::vector<int>& axes) {
  try {
    auto fn = [&](const std::vector<array>& in) { return reference(in); };
    std::vector<array> out = vmap(fn, axes)(inputs);
    return {out, std::vector<int>(out.size(), 0)};
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("[") + tag + "] vmap through the composed path: " + e.what());
  }
}

bool any_traced(const std::vector<array>& arrays) {
  for (const auto& a : arrays) {
    if (a.is_tracer()) {
      return true;
    }
  }
  return false;
}

bool needs_composed_transforms(const array& out, const std::vector<array>& inputs) {
  static const bool wrap_cpu = [] {
    const char* v = std::getenv("ZMLX_TEST_WRAP_TRACED");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  if (!out.has_primitive()) {
    return false;
  }
  const bool kernel = std::strcmp(out.primitive().name(), "CustomKernel") == 0;
  const bool cpu = wrap_cpu && out.primitive().stream().device == Device::cpu;
  return (kernel || cpu) && any_traced(inputs);
}

std::vector<array> with_composed_transforms(
    const char* tag,
    const std::vector<array>& kernel_outputs,
    ComposedFn reference,
    std::vector<InputRole> roles,
    const std::vector<array>& inputs) {
  const array& k = kernel_outputs.at(0);
  std::vector<array> in = k.inputs();
  const size_t n_kernel = in.size();
  in.insert(in.end(), inputs.begin(), inputs.end());
  std::vector<Shape> shapes;
  std::vector<Dtype> dtypes;
  for (const auto& o : kernel_outputs) {
    shapes.push_back(o.shape());
    dtypes.push_back(o.dtype());
  }
  auto p = std::make_shared<KernelWithTransforms>(
      k.primitive().stream(), tag, k.primitive_ptr(), n_kernel, std::move(reference),
      std::move(roles), shapes, dtypes);
  return array::make_arrays(std::move(shapes), dtypes, std::move(p), std::move(in));
}

void KernelWithTransforms::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  const std::vector<array> in(inputs.begin(), inputs.begin() + kernel_inputs_);
  kernel_->eval_cpu(in, outputs);
}

void KernelWithTransforms::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  const std::vector<array> in(inputs.begin(), inputs.begin() + kernel_inputs_);
  kernel_->eval_gpu(in, outputs);
}

std::vector<array> KernelWithTransforms::vjp(
    const std::vector<array>& primals,
    const std::vector<array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<array>&) {
  // The kernel's own inputs get zeros: the traced arrays among them are also reference inputs.
  const std::vector<array> ref(primals.begin() + kernel_inputs_, primals.end());
  std::vector<int> ref_args;
  for (int a : argnums) {
    if (static_cast<size_t>(a) >= kernel_inputs_) {
      ref_args.push_back(a - static_cast<int>(kernel_inputs_));
    }
  }
  std::vector<array> ref_vjps;
  if (!ref_args.empty()) {
    ref_vjps = composed_vjp(tag_, reference_, roles_, ref, cotangents, ref_args);
  }
  std::vector<array> out;
  size_t j = 0;
  for (int a : argnums) {
    if (static_cast<size_t>(a) >= kernel_inputs_) {
      out.push_back(ref_vjps.at(j++));
    } else {
      out.push_back(zeros_like(primals[a], stream()));
    }
  }
  return out;
}

std::vector<array> KernelWithTransforms::jvp(
    const std::vector<array>& primals,
    const std::vector<array>& tangents,
    const std::vector<int>& argnums) {
  const std::vector<array> ref(primals.begin() + kernel_inputs_, primals.end());
  std::vector<int> ref_args;
  std::vector<array> ref_tangents;
  for (size_t i = 0; i < argnums.size(); ++i) {
    if (static_cast<size_t>(argnums[i]) >= kernel_inputs_) {
      ref_args.push_back(argnums[i] - static_cast<int>(kernel_inputs_));
      ref_tangents.push_back(tangents[i]);
    }
  }
  if (ref_args.empty()) {
    std::vector<array> out;
    for (size_t i = 0; i < out_shapes_.size(); ++i) {
      out.push_back(zeros(out_shapes_[i], out_dtypes_[i], stream()));
    }
    return out;
  }
  return composed_jvp(tag_, reference_, roles_, ref, ref_tangents, ref_args);
}

std::pair<std::vector<array>, std::vector<int>> KernelWithTransforms::vmap(
    const std::vector<array>& inputs,
    const std::vector<int>& axes) {
  return composed_vmap(
      tag_, reference_, std::vector<array>(inputs.begin() + kernel_inputs_, inputs.end()),
      std::vector<int>(axes.begin() + kernel_inputs_, axes.end()));
}

} // namespace mlx::core::moe
