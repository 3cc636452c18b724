// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/checked_indices.h"

#include <mlx/allocator.h>
#include <mlx/backend/cpu/encoder.h>
#include <mlx/ops.h>

#include <sstream>
#include <stdexcept>

#include "mlx/moe/common/validate.h"

namespace mlx::core::moe {

array checked_indices(const array& idx, int64_t limit, const std::string& what, const std::string& tag) {
  Stream cpu = default_stream(Device::cpu);
  array in = ensure_contiguous(astype(idx, uint32, cpu), cpu);
  return array(in.shape(), uint32, std::make_shared<CheckedIndices>(cpu, limit, what, tag), {in});
}

void CheckedIndices::eval_cpu(const std::vector<array>& inputs, array& out) {
  const array& in = inputs[0];
  out.set_data(allocator::malloc(out.nbytes()));
  auto& enc = cpu::get_command_encoder(stream());
  enc.set_input_array(in);
  enc.set_output_array(out);
  enc.dispatch([in = array::unsafe_weak_copy(in),
                out = array::unsafe_weak_copy(out),
                limit = limit_,
                what = what_,
                tag = tag_]() mutable {
    const uint32_t* src = in.data<uint32_t>();
    uint32_t* dst = out.data<uint32_t>();
    const int64_t n = static_cast<int64_t>(out.size());
    int64_t bad = -1;
    for (int64_t i = 0; i < n; ++i) {
      const bool ok = static_cast<int64_t>(src[i]) < limit;
      if (!ok && bad < 0) {
        bad = i;
      }
      dst[i] = ok ? src[i] : 0u;
    }
    if (bad >= 0) {
      check_index_range(tag, what.c_str(), src, n, limit);
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
