// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/batch_inputs.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include <mlx/scheduler.h>
#include <mlx/stream.h>

#include "mlx/moe/common/dequant.h"

namespace mlx::core::moe {

namespace {

// Calls f(i, offset) for every position i of `batch` (row-major), offset being the element offset
// of that position in an array of shape `shape` and element strides `strides`, right-aligned with
// `batch` and broadcast to it.
template <class F>
void for_each_offset(const Shape& batch, const Shape& shape, const Strides& strides, F&& f) {
  // Same shape and row-major strides (the common case: one offset per position).
  if (shape == batch) {
    bool row_major = true;
    int64_t s = 1;
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0 && row_major; --d) {
      row_major = shape[d] == 1 || strides[d] == s;
      s *= shape[d];
    }
    if (row_major) {
      for (int64_t i = 0; i < s; ++i) {
        f(i, i);
      }
      return;
    }
  }
  const int nd = static_cast<int>(batch.size());
  const int off = nd - static_cast<int>(shape.size());
  if (off < 0) {
    throw std::invalid_argument("[moe] an input has more dimensions than the batch it indexes.");
  }
  std::vector<int64_t> st(static_cast<size_t>(nd), 0);
  for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
    if (shape[d] != 1 && shape[d] != batch[off + d]) {
      throw std::invalid_argument("[moe] an input does not broadcast to the batch it indexes.");
    }
    st[off + d] = shape[d] == 1 ? 0 : strides[d];
  }
  const int64_t n = batch_size(batch);
  std::vector<int64_t> ctr(static_cast<size_t>(nd), 0);
  int64_t o = 0;
  for (int64_t i = 0; i < n; ++i) {
    f(i, o);
    for (int d = nd - 1; d >= 0; --d) {
      if (++ctr[d] < batch[d]) {
        o += st[d];
        break;
      }
      o -= st[d] * (batch[d] - 1);
      ctr[d] = 0;
    }
  }
}

// Reads idx at every position of batch into dst; a value outside [0, limit) is stored as 0 and the
// first one is described in `bad`.
template <class T>
void read_typed(
    std::string_view tag,
    const char* what,
    const array& idx,
    const Shape& batch,
    int64_t limit,
    uint32_t* dst,
    std::string& bad) {
  const T* src = idx.data<T>();
  for_each_offset(batch, idx.shape(), idx.strides(), [&](int64_t i, int64_t o) {
    const T v = src[o];
    bool ok;
    if constexpr (std::is_signed_v<T>) {
      ok = v >= 0 && static_cast<int64_t>(v) < limit;
    } else {
      ok = static_cast<uint64_t>(v) < static_cast<uint64_t>(limit);
    }
    dst[i] = ok ? static_cast<uint32_t>(v) : 0u;
    if (!ok && bad.empty()) {
      std::ostringstream msg;
      msg << "[" << tag << "] " << what << " " << +v << " at position " << i
          << " is out of range: there are " << limit << ".";
      bad = msg.str();
    }
  });
}

} // namespace

int64_t batch_size(const Shape& batch) {
  return std::accumulate(batch.begin(), batch.end(), int64_t{1}, std::multiplies<int64_t>());
}

Shape batch_dims(const array& a) {
  if (a.ndim() < 2) {
    throw std::invalid_argument("[moe] a matrix stack needs at least two dimensions.");
  }
  return Shape(a.shape().begin(), a.shape().end() - 2);
}

std::string read_indices(
    std::string_view tag,
    const char* what,
    const array* idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    uint32_t* out) {
  std::string bad;
  if (idx == nullptr) {
    // arange over src_batch: the value is the row-major offset in src_batch (< limit, the size of
    // src_batch, by construction).
    Strides st(src_batch.size(), 0);
    int64_t s = 1;
    for (int d = static_cast<int>(src_batch.size()) - 1; d >= 0; --d) {
      st[d] = s;
      s *= src_batch[d];
    }
    for_each_offset(batch, src_batch, st, [&](int64_t i, int64_t o) {
      out[i] = static_cast<uint32_t>(o);
    });
    return bad;
  }
  // One instantiation per integer dtype (the argument only carries the type).
  auto read = [&](auto type) {
    read_typed<decltype(type)>(tag, what, *idx, batch, limit, out, bad);
  };
  switch (idx->dtype()) {
    case uint8: read(uint8_t{}); break;
    case uint16: read(uint16_t{}); break;
    case uint32: read(uint32_t{}); break;
    case uint64: read(uint64_t{}); break;
    case int8: read(int8_t{}); break;
    case int16: read(int16_t{}); break;
    case int32: read(int32_t{}); break;
    case int64: read(int64_t{}); break;
    default:
      throw std::invalid_argument(std::string("[") + std::string(tag) + "] " + what +
                                  " must be integral.");
  }
  return bad;
}

void batch_indices(
    std::string_view tag,
    const char* what,
    const array* idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    std::vector<uint32_t>& out) {
  out.resize(static_cast<size_t>(batch_size(batch)));
  const std::string bad = read_indices(tag, what, idx, src_batch, batch, limit, out.data());
  if (!bad.empty()) {
    throw std::out_of_range(bad);
  }
}

void check_indices_on_host(
    std::string_view tag,
    const char* what,
    const array& idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    Stream s) {
  struct Checked {
    array a;
    int64_t limit;
  };
  // Per thread, never freed (arrays must not outlive MLX at exit).
  thread_local auto* recent = new std::deque<Checked>();
  for (const auto& c : *recent) {
    if (c.a.id() == idx.id() && c.limit == limit) {
      return;
    }
  }
  if (idx.status() != array::Status::available) {
    synchronize(s);
  }
  thread_local auto* scratch = new std::vector<uint32_t>();
  scratch->resize(static_cast<size_t>(batch_size(batch)));
  const std::string bad = read_indices(tag, what, &idx, src_batch, batch, limit, scratch->data());
  if (!bad.empty()) {
    throw std::out_of_range(bad);
  }
  recent->push_back({idx, limit});
  if (recent->size() > 4) {
    recent->pop_front();
  }
}

void batch_floats(const array& a, const Shape& batch, std::vector<float>& out) {
  out.resize(static_cast<size_t>(batch_size(batch)));
  const void* p = a.data<uint8_t>();
  const Dtype t = a.dtype();
  for_each_offset(batch, a.shape(), a.strides(), [&](int64_t i, int64_t o) {
    out[i] = load_float(p, t, o);
  });
}

const uint8_t* row_contiguous(const array& a, std::vector<uint8_t>& buf) {
  if (a.flags().row_contiguous) {
    return a.data<uint8_t>();
  }
  const size_t item = a.itemsize();
  buf.resize(a.nbytes());
  const uint8_t* src = a.data<uint8_t>();
  uint8_t* dst = buf.data();
  if (a.ndim() == 0) {
    std::memcpy(dst, src, item);
    return dst;
  }
  // Rows of the last dimension: one copy per row when it is contiguous.
  const int last = static_cast<int>(a.ndim()) - 1;
  const int64_t len = a.shape(last);
  const Shape outer(a.shape().begin(), a.shape().end() - 1);
  const Strides outer_st(a.strides().begin(), a.strides().end() - 1);
  const int64_t ls = a.strides()[last];
  for_each_offset(outer, outer, outer_st, [&](int64_t i, int64_t o) {
    uint8_t* d = dst + static_cast<size_t>(i * len) * item;
    if (ls == 1) {
      std::memcpy(d, src + static_cast<size_t>(o) * item, static_cast<size_t>(len) * item);
    } else {
      for (int64_t j = 0; j < len; ++j) {
        std::memcpy(d + static_cast<size_t>(j) * item, src + static_cast<size_t>(o + j * ls) * item,
                    item);
      }
    }
  });
  return dst;
}

} // namespace mlx::core::moe
