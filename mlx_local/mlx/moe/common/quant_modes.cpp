// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/quant_modes.h"

#include <sstream>
#include <stdexcept>

namespace mlx::core::moe {

namespace {

constexpr ModeInfo kModes[] = {
    {"affine",
     QuantizationMode::Affine,
     64,
     4,
     {32, 64, 128},
     3,
     {2, 3, 4, 5, 6, 8},
     6,
     ElemFormat::Int,
     ScaleFormat::Float,
     true},
    {"mxfp4",
     QuantizationMode::Mxfp4,
     32,
     4,
     {32},
     1,
     {4},
     1,
     ElemFormat::E2M1,
     ScaleFormat::E8M0,
     false},
    {"nvfp4",
     QuantizationMode::Nvfp4,
     16,
     4,
     {16},
     1,
     {4},
     1,
     ElemFormat::E2M1,
     ScaleFormat::E4M3,
     false},
    {"mxfp8",
     QuantizationMode::Mxfp8,
     32,
     8,
     {32},
     1,
     {8},
     1,
     ElemFormat::E4M3,
     ScaleFormat::E8M0,
     false},
};

template <size_t N>
std::string list(const int (&v)[N], int n) {
  std::ostringstream os;
  for (int i = 0; i < n; ++i) {
    os << (i ? ", " : "") << v[i];
  }
  return os.str();
}

} // namespace

const ModeInfo& mode_info(QuantizationMode mode) {
  for (const auto& m : kModes) {
    if (m.mode == mode) {
      return m;
    }
  }
  throw std::invalid_argument("[moe] unknown quantization mode");
}

const ModeInfo& mode_info(std::string_view name, std::string_view tag) {
  for (const auto& m : kModes) {
    if (name == m.name) {
      return m;
    }
  }
  std::ostringstream msg;
  msg << "[" << tag << "] Unknown quantization mode '" << name << "'; expected one of";
  for (size_t i = 0; i < std::size(kModes); ++i) {
    msg << (i ? ", '" : " '") << kModes[i].name << "'";
  }
  msg << ".";
  throw std::invalid_argument(msg.str());
}

QuantParams resolve_quant(
    std::string_view tag,
    std::string_view mode,
    std::optional<int> group_size,
    std::optional<int> bits) {
  const ModeInfo& info = mode_info(mode, tag);
  int g = group_size.value_or(info.default_group);
  int b = bits.value_or(info.default_bits);
  bool g_ok = false;
  for (int i = 0; i < info.n_groups; ++i) {
    g_ok |= info.groups[i] == g;
  }
  if (!g_ok) {
    std::ostringstream msg;
    msg << "[" << tag << "] group_size " << g << " is not supported for mode '" << info.name
        << "'; allowed: " << list(info.groups, info.n_groups) << ".";
    throw std::invalid_argument(msg.str());
  }
  bool b_ok = false;
  for (int i = 0; i < info.n_bits; ++i) {
    b_ok |= info.bits[i] == b;
  }
  if (!b_ok) {
    std::ostringstream msg;
    msg << "[" << tag << "] bits " << b << " is not supported for mode '" << info.name
        << "'; allowed: " << list(info.bits, info.n_bits) << ".";
    throw std::invalid_argument(msg.str());
  }
  return {&info, g, b};
}

} // namespace mlx::core::moe
