// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/checked_indices.h"

#include <mlx/allocator.h>
#include <mlx/backend/cpu/encoder.h>
#include <mlx/ops.h>

#include <stdexcept>

#include "mlx/moe/common/batch_inputs.h"

namespace mlx::core::moe {

array checked_indices(const array& idx, int64_t limit, const std::string& what, const std::string& tag) {
  Stream cpu = default_stream(Device::cpu);
  if (!issubdtype(idx.dtype(), integer)) {
    throw std::invalid_argument("[" + tag + "] " + what + " must be integral.");
  }
  return array(idx.shape(), uint32, std::make_shared<CheckedIndices>(cpu, limit, what, tag), {idx});
}

void CheckedIndices::eval_cpu(const std::vector<array>& inputs, array& out) {
  const array& in = inputs[0];
  // Checked here, not in the task (see check_indices_on_host); the task copies the clamped values.
  check_indices_on_host(tag_, what_.c_str(), in, {}, in.shape(), limit_, stream());
  out.set_data(allocator::malloc(out.nbytes()));
  auto& enc = cpu::get_command_encoder(stream());
  enc.set_input_array(in);
  enc.set_output_array(out);
  enc.dispatch([in = array::unsafe_weak_copy(in),
                out = array::unsafe_weak_copy(out),
                limit = limit_,
                what = what_,
                tag = tag_]() mutable {
    const std::string bad =
        read_indices(tag, what.c_str(), &in, {}, in.shape(), limit, out.data<uint32_t>());
    if (!bad.empty()) {
      throw std::out_of_range(bad);
    }
  });
}

void CheckedIndices::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error("[CheckedIndices] runs on the CPU stream only.");
}

std::vector<array> CheckedIndices::jvp(
    const std::vector<array>&,
    const std::vector<array>&,
    const std::vector<int>&) {
  throw std::invalid_argument("[CheckedIndices] indices have no derivative.");
}

std::vector<array> CheckedIndices::vjp(
    const std::vector<array>&,
    const std::vector<array>&,
    const std::vector<int>&,
    const std::vector<array>&) {
  throw std::invalid_argument("[CheckedIndices] indices have no derivative.");
}

std::pair<std::vector<array>, std::vector<int>> CheckedIndices::vmap(
    const std::vector<array>& inputs,
    const std::vector<int>& axes) {
  return {{checked_indices(inputs[0], limit_, what_, tag_)}, axes};
}

bool CheckedIndices::is_equivalent(const Primitive& other) const {
  const auto& o = static_cast<const CheckedIndices&>(other);
  return limit_ == o.limit_ && what_ == o.what_ && tag_ == o.tag_;
}

} // namespace mlx::core::moe
