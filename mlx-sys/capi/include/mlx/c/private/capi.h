// zmlx mlx-sys: C++ helpers shared by the C API implementation and by extensions that add C functions
// in the same style (mlx_local/). C++ only; not part of the C API.
//
// Every handle is `struct { void* ctx; }` whose ctx owns one heap C++ object (or is NULL: the empty
// handle). `Cpp<H>` names that object's type; `get`, `put`, `make` and `drop` convert and manage it.
// Every exported function runs its body inside `guard`, which turns exceptions into the error handler
// call + status code that callers of the C API see.
#pragma once

#include <mlx/compile_impl.h>
#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mlx/c/mlx.h"

namespace mlxc {

namespace mx = mlx::core;

// Reports `msg` to the installed handler (and records it for mlx_last_error).
void report_error(const char* msg);

// --- handle <-> C++ object -------------------------------------------------------------------------

using ArrayMap = std::unordered_map<std::string, mx::array>;
using StringMap = std::unordered_map<std::string, std::string>;

// The C++ signatures behind the closure handles.
using Arrays = std::vector<mx::array>;
using ClosureFn = std::function<Arrays(const Arrays&)>;
using ClosureKwargsFn = std::function<Arrays(const Arrays&, const ArrayMap&)>;
using ValueAndGradFn = std::function<std::pair<Arrays, Arrays>(const Arrays&)>;
using CustomFn = std::function<Arrays(const Arrays&, const Arrays&, const Arrays&)>;
using CustomJvpFn = std::function<Arrays(const Arrays&, const Arrays&, const std::vector<int>&)>;
using CustomVmapFn = std::function<std::pair<Arrays, std::vector<int>>(const Arrays&, const std::vector<int>&)>;

template <class H>
struct Cpp;
// Declares the C++ type behind handle H (MLXC_HANDLE: the same, at global scope, for .cpp files that
// implement handles of their own).
#define MLXC_HANDLE_IN_NS(H, T) \
  template <>             \
  struct Cpp<H> {         \
    using type = T;       \
    static constexpr const char* name = #H; \
  };
MLXC_HANDLE_IN_NS(mlx_array, mx::array)
MLXC_HANDLE_IN_NS(mlx_string, std::string)
MLXC_HANDLE_IN_NS(mlx_stream, mx::Stream)
MLXC_HANDLE_IN_NS(mlx_device, mx::Device)
MLXC_HANDLE_IN_NS(mlx_vector_array, std::vector<mx::array>)
MLXC_HANDLE_IN_NS(mlx_vector_vector_array, std::vector<std::vector<mx::array>>)
MLXC_HANDLE_IN_NS(mlx_vector_int, std::vector<int>)
MLXC_HANDLE_IN_NS(mlx_vector_string, std::vector<std::string>)
MLXC_HANDLE_IN_NS(mlx_vector_stream, std::vector<mx::Stream>)
MLXC_HANDLE_IN_NS(mlx_map_string_to_array, ArrayMap)
MLXC_HANDLE_IN_NS(mlx_map_string_to_string, StringMap)
MLXC_HANDLE_IN_NS(mlx_closure, ClosureFn)
MLXC_HANDLE_IN_NS(mlx_closure_kwargs, ClosureKwargsFn)
MLXC_HANDLE_IN_NS(mlx_closure_value_and_grad, ValueAndGradFn)
MLXC_HANDLE_IN_NS(mlx_closure_custom, CustomFn)
MLXC_HANDLE_IN_NS(mlx_closure_custom_jvp, CustomJvpFn)
MLXC_HANDLE_IN_NS(mlx_closure_custom_vmap, CustomVmapFn)
MLXC_HANDLE_IN_NS(mlx_distributed_group, mx::distributed::Group)

#define MLXC_HANDLE(H, T) \
  namespace mlxc {        \
  MLXC_HANDLE_IN_NS(H, T) \
  }

template <class H>
using cpp_t = typename Cpp<H>::type;

// The object behind a non-empty handle (throws for the empty one).
template <class H>
cpp_t<H>& get(H h) {
  if (h.ctx == nullptr) {
    throw std::invalid_argument(std::string("empty ") + Cpp<H>::name + " handle");
  }
  return *static_cast<cpp_t<H>*>(h.ctx);
}

// Stores `v` into *h: assigns into its object, or creates one for an empty handle.
template <class H, class V>
void put(H* h, V&& v) {
  if (h == nullptr) {
    throw std::invalid_argument(std::string("null ") + Cpp<H>::name + " result pointer");
  }
  if (h->ctx) {
    *static_cast<cpp_t<H>*>(h->ctx) = std::forward<V>(v);
  } else {
    h->ctx = new cpp_t<H>(std::forward<V>(v));
  }
}

// The target of a plain (non-handle) result pointer; a null pointer is an error.
template <class T>
T& out(T* p) {
  if (p == nullptr) {
    throw std::invalid_argument("null result pointer");
  }
  return *p;
}

// A new handle owning a copy of (or the moved) `v`.
template <class H, class V>
H make(V&& v) {
  H h{};
  h.ctx = new cpp_t<H>(std::forward<V>(v));
  return h;
}

// Objects handed to C callbacks as out-params (see Slot) that the callback has not freed yet.
inline thread_local std::vector<void*> pending_slots;

template <class H>
int drop(H h) {
  if (!pending_slots.empty()) {
    auto it = std::find(pending_slots.begin(), pending_slots.end(), h.ctx);
    if (it != pending_slots.end()) {
      pending_slots.erase(it);
    }
  }
  delete static_cast<cpp_t<H>*>(h.ctx);
  return 0;
}

// Owns a handle for the duration of a scope (inputs handed to C callbacks).
template <class H>
struct Temp {
  H h;
  template <class V>
  explicit Temp(V&& v) : h(make<H>(std::forward<V>(v))) {}
  Temp(const Temp&) = delete;
  Temp& operator=(const Temp&) = delete;
  ~Temp() {
    drop(h);
  }
};

// An out-param for a C callback: a handle to a fresh empty object (the empty handle for mlx_array) that
// the callback may fill in place (set/append), or replace with a handle of its own (freeing ours or not).
// take() returns the result; every object involved is freed exactly once.
template <class H>
class Slot {
 public:
  Slot() {
    if constexpr (std::is_default_constructible_v<cpp_t<H>>) {
      placeholder_ = new cpp_t<H>();
      h_.ctx = placeholder_;
      pending_slots.push_back(placeholder_);
    } // else (mlx_array): the empty handle, which `_set` fills
  }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() {
    release_placeholder();
    if (h_.ctx != nullptr && h_.ctx != placeholder_) {
      delete static_cast<cpp_t<H>*>(h_.ctx);
    }
  }
  H* ptr() {
    return &h_;
  }
  cpp_t<H> take(const char* what) {
    if (h_.ctx == nullptr) {
      throw std::runtime_error(std::string(what) + ": the callback returned an empty result handle");
    }
    return std::move(*static_cast<cpp_t<H>*>(h_.ctx));
  }

 private:
  void release_placeholder() {
    if (placeholder_ == nullptr) {
      return;
    }
    auto it = std::find(pending_slots.begin(), pending_slots.end(), placeholder_);
    if (it != pending_slots.end()) { // not freed by the callback: ours to free
      pending_slots.erase(it);
      if (h_.ctx == placeholder_) {
        h_.ctx = nullptr;
      }
      delete static_cast<cpp_t<H>*>(placeholder_);
    }
  }
  H h_{};
  void* placeholder_ = nullptr;
};

// --- argument conversion ---------------------------------------------------------------------------

// An optional array argument: the empty handle means "absent".
inline std::optional<mx::array> opt(mlx_array a) {
  if (a.ctx == nullptr) {
    return std::nullopt;
  }
  return *static_cast<mx::array*>(a.ctx);
}

inline std::optional<int> opt(mlx_optional_int v) {
  return v.has_value ? std::optional<int>(v.value) : std::nullopt;
}

// An optional quantization size (group_size, bits): positive when given. MLX 0.32.4 divides by these
// before it validates them (quantize by group_size, quantized_matmul / gather_qmm / qqmm by bits), so
// a zero would be SIGFPE instead of an error.
inline std::optional<int> opt_size(mlx_optional_int v, const char* what) {
  if (v.has_value && v.value <= 0) {
    throw std::invalid_argument(std::string(what) + " must be positive, got " + std::to_string(v.value));
  }
  return opt(v);
}

inline std::optional<float> opt(mlx_optional_float v) {
  return v.has_value ? std::optional<float>(v.value) : std::nullopt;
}

// An optional list of ints: a null pointer means "absent".
inline std::optional<std::vector<int>> opt_ints(const int* data, size_t n) {
  if (data == nullptr) {
    return std::nullopt;
  }
  return std::vector<int>(data, data + n);
}

mx::Dtype to_cpp(const mlx_dtype& t);
mlx_dtype to_c(mx::Dtype t);

inline std::optional<mx::Dtype> opt(mlx_optional_dtype v) {
  return v.has_value ? std::optional<mx::Dtype>(to_cpp(v.value)) : std::nullopt;
}

// A stream argument: the empty handle means the default stream of the default device.
inline mx::StreamOrDevice stream(mlx_stream s) {
  if (s.ctx == nullptr) {
    return {};
  }
  return *static_cast<mx::Stream*>(s.ctx);
}

inline std::string str(const char* s, const char* what) {
  if (s == nullptr) {
    throw std::invalid_argument(std::string("null string for ") + what);
  }
  return std::string(s);
}

// A (pointer, count) pair of ints as an MLX shape; a null pointer is allowed only with count 0.
inline mx::Shape shape(const int* data, size_t n, const char* what = "shape") {
  if (data == nullptr && n != 0) {
    throw std::invalid_argument(std::string("null ") + what + " with non-zero length");
  }
  return mx::Shape(data, data + n);
}

// The strides of a slice of `a` (or of a slice update of it): non-zero, and a stride whose magnitude
// reaches its axis's size replaced by that size, which selects the same element or none. MLX 0.32.4
// divides by the stride unchecked (a zero is SIGFPE) and computes the slice's length in int (a stride
// near INT_MAX or INT_MIN overflows there and the slice comes out empty).
inline mx::Shape slice_strides(const mx::array& a, mx::Shape strides, const char* tag) {
  for (size_t i = 0; i < strides.size(); ++i) {
    if (strides[i] == 0) {
      throw std::invalid_argument(std::string("[") + tag + "] slice strides must be non-zero (axis " +
                                  std::to_string(i) + ")");
    }
    if (i < a.ndim()) {
      int n = std::max(a.shape(static_cast<int>(i)), 1);
      strides[i] = std::clamp(strides[i], -n, n);
    }
  }
  return strides;
}

// The index array of take_along_axis / put_along_axis / scatter_add_axis: of an integer dtype. MLX 0.32.4
// accepts any dtype there and fails only while evaluating, inside the CPU back end, where an error can
// leave the stream's count of tasks in flight wrong and a later evaluation waiting forever.
inline const mx::array& integer_indices(const mx::array& idx, const char* tag) {
  if (!mx::issubdtype(idx.dtype(), mx::integer)) {
    std::ostringstream msg;
    msg << "[" << tag << "] indices must have an integer dtype, got " << idx.dtype();
    throw std::invalid_argument(msg.str());
  }
  return idx;
}

inline std::vector<int> ints(const int* data, size_t n, const char* what = "axes") {
  if (data == nullptr && n != 0) {
    throw std::invalid_argument(std::string("null ") + what + " with non-zero length");
  }
  return std::vector<int>(data, data + n);
}

inline mx::Strides strides(const int64_t* data, size_t n, const char* what = "strides") {
  if (data == nullptr && n != 0) {
    throw std::invalid_argument(std::string("null ") + what + " with non-zero length");
  }
  return mx::Strides(data, data + n);
}

// The integer a C enum argument carries. C callers may pass any int, but a C++ enum object holding a
// value outside its enumerators' range is undefined to read (UBSan reports it): read its bytes.
template <class E>
int enum_int(const E& e) {
  static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
  int v;
  std::memcpy(&v, &e, sizeof v);
  return v;
}

// Enum arguments are taken by reference: copying one out of range is already the undefined read.
inline mx::fft::FFTNorm fft_norm(const mlx_fft_norm& n) {
  switch (enum_int(n)) {
    case MLX_FFT_NORM_BACKWARD:
      return mx::fft::FFTNorm::Backward;
    case MLX_FFT_NORM_ORTHO:
      return mx::fft::FFTNorm::Ortho;
    case MLX_FFT_NORM_FORWARD:
      return mx::fft::FFTNorm::Forward;
  }
  throw std::invalid_argument("invalid mlx_fft_norm value " + std::to_string(enum_int(n)));
}

// A group argument: the empty handle means the global group (MLX's default).
inline std::optional<mx::distributed::Group> group(mlx_distributed_group g) {
  if (g.ctx == nullptr) {
    return std::nullopt;
  }
  return get(g);
}

// Throws unless a C callback returned 0. `errors_before` is error_count() from before the call: a
// message reported during the callback (e.g. by a failing operation it called) is passed on.
unsigned long error_count();
const char* last_error_message();
inline void check_callback(int status, const char* what, unsigned long errors_before) {
  if (status == 0) {
    return;
  }
  std::string msg = std::string(what) + ": the callback failed (status " + std::to_string(status) + ")";
  if (error_count() != errors_before) {
    msg += ": ";
    msg += last_error_message();
  }
  throw std::runtime_error(msg);
}

// The input of a reduction. MLX 0.32.4's CPU reduction of an empty array that is not row-contiguous
// (a transposed one, reduced over its zero-length axis) plans its loops from uninitialised values and
// can run for hours; a row-contiguous copy, which costs nothing for an array without elements, takes
// the path that works.
inline mx::array reduce_input(const mx::array& a) {
  return a.size() == 0 ? mx::contiguous(a) : a;
}

// The input of a reduction over `axes`. Without elements and with an empty reduced axis, the result is the
// reduction's identity whatever the other reduced axes' lengths, but MLX 0.32.4's CPU reduction still loops
// over them: all over an empty [3, 5, 65536, 2, 65536, 0] array along axes 0, 2, 4, 5 ran ~1.3e10 iterations
// per output element (a hang). Those axes are sliced to length 1 (the same result, shape and count of
// reduced elements: zero); invalid axes are left to MLX's error.
inline mx::array reduce_input(const mx::array& a, std::vector<int> axes) {
  if (a.size() != 0) {
    return a;
  }
  const int nd = static_cast<int>(a.ndim());
  bool empty_axis = false;
  for (auto& ax : axes) {
    if (ax < -nd || ax >= nd) {
      return mx::contiguous(a);
    }
    ax = ax < 0 ? ax + nd : ax;
    empty_axis = empty_axis || a.shape(ax) == 0;
  }
  if (!empty_axis) {
    return mx::contiguous(a);
  }
  mx::Shape start(nd, 0);
  mx::Shape stop = a.shape();
  for (int ax : axes) {
    stop[ax] = std::min(stop[ax], 1);
  }
  return mx::contiguous(mx::slice(a, start, stop));
}

// The input of a reduction over all its axes.
inline mx::array reduce_input_all(const mx::array& a) {
  std::vector<int> axes(a.ndim());
  for (size_t i = 0; i < axes.size(); ++i) {
    axes[i] = static_cast<int>(i);
  }
  return reduce_input(a, std::move(axes));
}

// An operand of the quantized matmuls, which MLX 0.32.4 evaluates with a division by its sizes: one
// without elements (an empty batch included) is SIGFPE there, so it is an error here.
inline const mx::array& nonempty(const mx::array& a, const char* what) {
  if (a.size() == 0) {
    std::ostringstream msg;
    msg << what << " has no elements (shape " << a.shape()
        << "): MLX's quantized matrix products need non-empty operands";
    throw std::invalid_argument(msg.str());
  }
  return a;
}

// A quantized weight (uint32) and its scales, before MLX 0.32.4 compares their batch dimensions: it reads
// w.shape()[0, ndim - 2), which for a weight of fewer than 2 dimensions starts before the shape (a memcmp of
// size -8, found by AddressSanitizer), and as many dimensions of the scales.
inline const mx::array& quantized_weight(const mx::array& w, const std::optional<mx::array>& scales) {
  if (w.dtype() != mx::uint32) {
    return w; // not quantized: MLX's own checks
  }
  if (w.ndim() < 2) {
    std::ostringstream msg;
    msg << "[quantized] the quantized weight must have at least 2 dimensions, but got shape " << w.shape();
    throw std::invalid_argument(msg.str());
  }
  if (scales && (scales->ndim() < 1 || scales->ndim() + 2 < w.ndim())) {
    std::ostringstream msg;
    msg << "[quantized] the scales must have the weight's batch dimensions and a last one (weight shape "
        << w.shape() << "), but got shape " << scales->shape();
    throw std::invalid_argument(msg.str());
  }
  return w;
}
inline const mx::array& quantized_weight(const mx::array& w, const mx::array& scales) {
  return quantized_weight(w, std::optional<mx::array>(scales));
}

// hadamard_transform: the last dimension must be m * 2^k with m in (1, 12, 20, 28) and 2^k <= 2^26. MLX
// 0.32.4 divides out the first m that divides n but does not check that the rest is a power of two, and its
// CPU kernel then writes past the output (n = 60 = 12 * 5 corrupted the heap).
inline mx::array hadamard_transform(
    const mx::array& a,
    std::optional<float> scale,
    mx::StreamOrDevice s) {
  const int n = a.ndim() > 0 ? a.shape(-1) : 1;
  auto pow2 = [](int v) { return v > 0 && (v & (v - 1)) == 0 && v <= (1 << 26); };
  bool ok = n <= 1;
  for (int m : {1, 12, 20, 28}) {
    ok = ok || (n % m == 0 && pow2(n / m));
  }
  if (!ok) {
    throw std::invalid_argument(
        "[hadamard_transform] the last dimension must be m * 2^k with m in (1, 12, 20, 28) and k <= 26, "
        "but got " +
        std::to_string(n));
  }
  return mx::hadamard_transform(a, scale, s);
}

// The n x m mask j <= i + k, in 64-bit arithmetic. MLX 0.32.4's tri builds arange(-k, m - k) in int, which
// overflows for offsets far below the diagonal: tri(2^31 - 1, 3, -2^31) came out with shape [2^31 - 1, 0]
// (silently wrong) after an 8 GB arange; and tril / triu use that tri (triu with k - 1).
inline mx::array triangle_mask(int n, int m, int64_t k, mx::StreamOrDevice s) {
  auto rows = mx::expand_dims(mx::astype(mx::arange(n, s), mx::int64, s), 1, s);
  auto cols = mx::expand_dims(mx::astype(mx::arange(m, s), mx::int64, s), 0, s);
  return mx::less_equal(cols, mx::add(rows, mx::array(k, mx::int64), s), s);
}

// tri(n, m, k). A side of 0 gives zeros without building aranges of the other side (MLX 0.32.4 made two
// billion elements for the empty tri(0, 2^31 - 1)).
inline mx::array tri(int n, int m, int k, mx::Dtype t, mx::StreamOrDevice s) {
  if (n < 0 || m < 0) {
    throw std::invalid_argument(
        "[tri] n and m must be non-negative, got " + std::to_string(n) + " and " + std::to_string(m));
  }
  if (n == 0 || m == 0) {
    return mx::zeros({n, m}, t, s);
  }
  return mx::astype(triangle_mask(n, m, k, s), t, s);
}

// tril / triu. Of an array without elements: that array (MLX 0.32.4 builds the mask of the last two
// dimensions whatever the others are: a [0, 2^20, 2^16] array first made a mask of 2^36 elements, and
// crashed).
inline mx::array triangle(const mx::array& x, int k, bool lower, mx::StreamOrDevice s) {
  if (x.ndim() < 2) {
    return lower ? mx::tril(x, k, s) : mx::triu(x, k, s); // MLX's error
  }
  if (x.size() == 0) {
    return x;
  }
  const int n = x.shape(-2), m = x.shape(-1);
  auto zero = mx::zeros({}, x.dtype(), s);
  return lower ? mx::where(triangle_mask(n, m, k, s), x, zero, s)
               : mx::where(triangle_mask(n, m, int64_t{k} - 1, s), zero, x, s);
}

// Integer floor_divide / remainder / divmod. MLX 0.32.4 divides integers with the CPU's instruction,
// which traps (SIGFPE) on a zero divisor and on INT_MIN / -1. As numpy: x // 0 and x % 0 are 0, and
// for signed types x // -1 is -x (wrapping) and x % -1 is 0. Floating types go to MLX unchanged.
inline std::pair<mx::array, mx::array> int_divmod(
    const mx::array& a,
    const mx::array& b,
    bool want_quotient,
    bool want_remainder,
    mx::StreamOrDevice s) {
  auto t = mx::promote_types(a.dtype(), b.dtype());
  if (!mx::issubdtype(t, mx::integer)) {
    return {
        want_quotient ? mx::floor_divide(a, b, s) : mx::array(0),
        want_remainder ? mx::remainder(a, b, s) : mx::array(0)};
  }
  auto x = mx::astype(a, t, s);
  auto y = mx::astype(b, t, s);
  auto zero = mx::array(0, t);
  auto one = mx::array(1, t);
  auto by_zero = mx::equal(y, zero, s);
  auto by_minus_one = mx::issubdtype(t, mx::signedinteger) ? mx::equal(y, mx::array(-1, t), s)
                                                          : mx::zeros_like(by_zero, s);
  auto safe = mx::where(mx::logical_or(by_zero, by_minus_one, s), one, y, s);
  mx::array q(0), r(0);
  if (want_quotient) {
    q = mx::where(by_zero, zero, mx::where(by_minus_one, mx::negative(x, s), mx::floor_divide(x, safe, s), s), s);
  }
  if (want_remainder) {
    r = mx::where(mx::logical_or(by_zero, by_minus_one, s), zero, mx::remainder(x, safe, s), s);
  }
  return {q, r};
}

inline mx::array floor_divide(const mx::array& a, const mx::array& b, mx::StreamOrDevice s) {
  return int_divmod(a, b, true, false, s).first;
}

inline mx::array remainder(const mx::array& a, const mx::array& b, mx::StreamOrDevice s) {
  return int_divmod(a, b, false, true, s).second;
}

inline std::vector<mx::array> divmod(const mx::array& a, const mx::array& b, mx::StreamOrDevice s) {
  if (!mx::issubdtype(mx::promote_types(a.dtype(), b.dtype()), mx::integer)) {
    return mx::divmod(a, b, s);
  }
  auto [q, r] = int_divmod(a, b, true, true, s);
  return {q, r};
}

// --- results ---------------------------------------------------------------------------------------

// An op's result as MLX 0.32.4 made it, checked before a caller sees it: no negative dimension (its
// reshape takes any negative size, not only -1, when the sizes' product matches) and an element and
// byte count that fit in int64 (its shape products are unchecked size_t: a shape of 2^64 elements
// wraps to an array of size 0 whose slices then read memory it does not have).
inline void check_shape(const mx::array& a, const char* fn) {
  int64_t n = 1;
  for (auto d : a.shape()) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<int64_t>(d), &n)) {
      std::ostringstream msg;
      msg << "[" << fn << "] the result's shape " << a.shape()
          << (d < 0 ? " has a negative dimension" : " has more elements than int64 counts");
      throw std::invalid_argument(msg.str());
    }
  }
  int64_t bytes = 0;
  if (__builtin_mul_overflow(n, static_cast<int64_t>(a.itemsize()), &bytes)) {
    std::ostringstream msg;
    msg << "[" << fn << "] the result's shape " << a.shape() << " has more bytes than int64 counts";
    throw std::invalid_argument(msg.str());
  }
}

// Matrix products whose result has no elements. MLX 0.32.4's CPU matmul of an empty batch of large matrices
// (shape [0, 65536, 65536], in Python too) divides by zero (SIGFPE) when evaluated; there is nothing to
// compute, so these ops return zeros of the result's shape and dtype instead.
inline bool is_matrix_product(const char* fn) {
  static const char* const names[] = {"matmul", "addmm", "tensordot", "tensordot_axis", "inner",
                                      "einsum", "block_masked_mm", "gather_mm", "segmented_mm"};
  for (const char* n : names) {
    if (std::strcmp(n, fn) == 0) {
      return true;
    }
  }
  return false;
}

inline mx::array checked(mx::array a, const char* fn) {
  check_shape(a, fn);
  if (a.size() == 0 && is_matrix_product(fn)) {
    return a.has_primitive() ? mx::zeros(a.shape(), a.dtype(), a.primitive().stream())
                             : mx::zeros(a.shape(), a.dtype());
  }
  return a;
}

inline std::vector<mx::array> checked(std::vector<mx::array> v, const char* fn) {
  for (auto& a : v) {
    check_shape(a, fn);
  }
  return v;
}

template <class A, class B>
std::pair<A, B> checked(std::pair<A, B> p, const char* fn) {
  check_shape(p.first, fn);
  check_shape(p.second, fn);
  return p;
}

// --- error guard ------------------------------------------------------------------------------------

// Runs `f`; returns 0, or reports the exception and returns 1. Never lets an exception escape to C.
template <class F>
int guard(F&& f) noexcept {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    report_error(e.what());
  } catch (const char* msg) { // MLX 0.32.4's scatter throws a bare string literal
    report_error(msg ? msg : "unknown C++ exception");
  } catch (...) {
    report_error("unknown C++ exception");
  }
  return 1;
}

// Like guard, for functions returning a value: `fallback` on error.
template <class R, class F>
R guard_value(R fallback, F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    report_error(e.what());
  } catch (const char* msg) {
    report_error(msg ? msg : "unknown C++ exception");
  } catch (...) {
    report_error("unknown C++ exception");
  }
  return fallback;
}

// Runs f(), which returns a pair (or 2-tuple), inside guard and stores the halves into two results.
template <class R0, class R1, class F>
int put_pair(R0* res_0, R1* res_1, F&& f) noexcept {
  return guard([&] {
    auto [first, second] = f();
    put(res_0, std::move(first));
    put(res_1, std::move(second));
  });
}

} // namespace mlxc
