// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/composed_transforms.h"

#include <mlx/ops.h>
#include <mlx/transforms.h>

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

} // namespace mlx::core::moe
