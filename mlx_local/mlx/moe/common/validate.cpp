// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/validate.h"

#include <mlx/ops.h>

#include <limits>
#include <sstream>
#include <stdexcept>

#include "mlx/moe/common/batch_inputs.h"

namespace mlx::core::moe {

namespace {

bool is_float_type(Dtype t) {
  return t == float32 || t == float16 || t == bfloat16;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) {
    os << (i ? ", " : "") << s[i];
  }
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

} // namespace

void check_activations(std::string_view tag, const char* name, const array& x) {
  if (x.ndim() < 2) {
    std::ostringstream msg;
    msg << "[" << tag << "] " << name << " must have at least two dimensions but has shape "
        << shape_str(x.shape()) << ".";
    throw std::invalid_argument(msg.str());
  }
  if (!is_float_type(x.dtype())) {
    std::ostringstream msg;
    msg << "[" << tag << "] " << name << " must be float32, float16 or bfloat16 but has dtype "
        << x.dtype() << ".";
    throw std::invalid_argument(msg.str());
  }
}

ProjInfo check_projection(
    std::string_view tag,
    const char* which,
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    bool transpose,
    const QuantParams& q) {
  const ModeInfo& mi = *q.info;
  auto fail = [&](const std::string& what) {
    std::ostringstream msg;
    msg << "[" << tag << "] " << which << ": " << what;
    throw std::invalid_argument(msg.str());
  };
  if (w.dtype() != uint32) {
    std::ostringstream os;
    os << "the weight matrix must be uint32 but has dtype " << w.dtype() << ".";
    fail(os.str());
  }
  if (w.ndim() < 2) {
    fail("the weight matrix must have at least two dimensions but has shape " +
         shape_str(w.shape()) + ".");
  }
  if (mi.has_biases) {
    if (!is_float_type(scales.dtype())) {
      std::ostringstream os;
      os << "scales must be float32, float16 or bfloat16 for mode '" << mi.name
         << "' but have dtype " << scales.dtype() << ".";
      fail(os.str());
    }
    if (!biases) {
      fail(std::string("biases must be provided for mode '") + mi.name + "'.");
    }
    if (!is_float_type(biases->dtype())) {
      std::ostringstream os;
      os << "biases must be float32, float16 or bfloat16 but have dtype " << biases->dtype() << ".";
      fail(os.str());
    }
    if (biases->shape() != scales.shape()) {
      fail("scales and biases must have the same shape but have " + shape_str(scales.shape()) +
           " and " + shape_str(biases->shape()) + ".");
    }
  } else {
    if (scales.dtype() != uint8) {
      std::ostringstream os;
      os << "scales must be uint8 for mode '" << mi.name << "' but have dtype " << scales.dtype()
         << ".";
      fail(os.str());
    }
    if (biases) {
      fail(std::string("biases must be absent for mode '") + mi.name + "'.");
    }
  }
  for (int i = 0; i < static_cast<int>(w.ndim()); ++i) {
    if (w.shape(i) == 0) {
      fail("the weight matrix must not have a zero dimension but has shape " +
           shape_str(w.shape()) + ".");
    }
  }
  const int64_t packed = w.shape(-1);
  if ((packed * 32) % q.bits != 0) {
    fail("the last dimension of the weight matrix (" + std::to_string(packed) +
         " words) does not hold a whole number of " + std::to_string(q.bits) + "-bit elements.");
  }
  const int64_t unpacked = packed * 32 / q.bits;
  Shape expect(w.shape().begin(), w.shape().end() - 1);
  expect.push_back(static_cast<int>(unpacked / q.group_size));
  if (unpacked % q.group_size != 0 || scales.shape() != expect) {
    std::ostringstream os;
    os << "scales must have shape " << shape_str(expect) << " for a weight matrix of shape "
       << shape_str(w.shape()) << " with bits=" << q.bits << " and group_size=" << q.group_size
       << " but have shape " << shape_str(scales.shape()) << ".";
    if (unpacked % q.group_size != 0) {
      os << " (" << unpacked << " elements per row is not a multiple of the group size.)";
    }
    fail(os.str());
  }
  ProjInfo p;
  p.q = q;
  p.expert_shape = batch_dims(w);
  p.experts = batch_size(p.expert_shape);
  const int64_t K = transpose ? unpacked : w.shape(-2);
  const int64_t N = transpose ? w.shape(-2) : unpacked;
  if (K > std::numeric_limits<int>::max() || N > std::numeric_limits<int>::max()) {
    fail("the weight matrix is too large.");
  }
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  if (x.shape(-1) != p.K) {
    std::ostringstream os;
    os << "the last dimension of the input (" << x.shape(-1)
       << ") does not match the expanded quantized matrix (" << K << ", " << N
       << ") of weight shape " << shape_str(w.shape()) << " with group_size=" << q.group_size
       << ", bits=" << q.bits << " and transpose=" << (transpose ? "true" : "false") << ".";
    fail(os.str());
  }
  if (mi.has_biases) {
    p.out_dtype = promote_types(x.dtype(), promote_types(scales.dtype(), biases->dtype()));
  } else {
    p.out_dtype = x.dtype();
  }
  return p;
}

void check_expert_bias(
    std::string_view tag,
    const char* name,
    const array& bias,
    const ProjInfo& p) {
  Shape expect = p.expert_shape;
  expect.push_back(p.N);
  if (bias.shape() != expect) {
    std::ostringstream msg;
    msg << "[" << tag << "] " << name << " must have shape " << shape_str(expect)
        << " (experts, output features) but has shape " << shape_str(bias.shape()) << ".";
    throw std::invalid_argument(msg.str());
  }
  if (!is_float_type(bias.dtype())) {
    std::ostringstream msg;
    msg << "[" << tag << "] " << name << " must be float32, float16 or bfloat16 but has dtype "
        << bias.dtype() << ".";
    throw std::invalid_argument(msg.str());
  }
}

Shape gather_batch_shape(
    std::string_view tag,
    const std::optional<array>& lhs,
    const std::optional<array>& rhs,
    const array& x,
    const array& w) {
  // Index arrays and arange are int-sized in MLX.
  auto check_size = [&](const Shape& batch) {
    if (batch_size(batch) > std::numeric_limits<int>::max()) {
      throw std::invalid_argument(std::string("[") + std::string(tag) + "] too many batch entries.");
    }
  };
  auto one = [&](const std::optional<array>& idx, const array& of, const char* name) {
    if (idx) {
      if (!issubdtype(idx->dtype(), integer)) {
        std::ostringstream msg;
        msg << "[" << tag << "] " << name << " must be integral but has dtype " << idx->dtype()
            << ".";
        throw std::invalid_argument(msg.str());
      }
      return idx->shape();
    }
    Shape batch = batch_dims(of);
    check_size(batch);
    return batch;
  };
  const Shape l = one(lhs, x, "lhs_indices");
  const Shape r = one(rhs, w, "rhs_indices");
  Shape b;
  try {
    b = broadcast_shapes(l, r);
  } catch (const std::invalid_argument&) {
    std::ostringstream msg;
    msg << "[" << tag << "] lhs_indices with shape " << shape_str(l)
        << " and rhs_indices with shape " << shape_str(r) << " cannot be broadcast together.";
    throw std::invalid_argument(msg.str());
  }
  check_size(b);
  return b;
}

std::pair<array, array> gather_indices(
    std::string_view tag,
    const std::optional<array>& lhs,
    const std::optional<array>& rhs,
    const array& x,
    const array& w,
    StreamOrDevice s) {
  const Shape batch = gather_batch_shape(tag, lhs, rhs, x, w);
  auto one = [&](const std::optional<array>& idx, const array& of) {
    if (idx) {
      return broadcast_to(astype(*idx, uint32, s), batch, s);
    }
    const Shape src = batch_dims(of);
    const int n = static_cast<int>(batch_size(src));
    return broadcast_to(reshape(arange(n, uint32, s), src, s), batch, s);
  };
  return {one(lhs, x), one(rhs, w)};
}

array ensure_contiguous(const array& a, StreamOrDevice s) {
  // Flags are known once the array has been scheduled (evaluated or available).
  if (a.status() != array::Status::unscheduled && a.flags().row_contiguous) {
    return a;
  }
  return contiguous(a, false, s);
}

QMat qmat_view(
    const array& w,
    const array& scales,
    const array* biases,
    const QuantParams& q,
    bool transpose) {
  QMat m;
  m.w = reinterpret_cast<const uint8_t*>(w.data<uint32_t>());
  m.scales = scales.data<uint8_t>();
  m.scale_dtype = scales.dtype();
  if (biases != nullptr) {
    m.biases = biases->data<uint8_t>();
    m.bias_dtype = biases->dtype();
  }
  m.group = q.group_size;
  m.bits = q.bits;
  m.elem = q.info->elem;
  m.scale = q.info->scale;
  m.transpose = transpose;
  m.cols = static_cast<int64_t>(w.shape(-1)) * 32 / q.bits;
  m.rows = w.shape(-2);
  m.experts = 1;
  for (int i = 0; i + 2 < static_cast<int>(w.ndim()); ++i) {
    m.experts *= w.shape(i);
  }
  m.row_bytes = static_cast<int64_t>(w.shape(-1)) * 4;
  m.groups = m.cols / q.group_size;
  return m;
}

} // namespace mlx::core::moe
