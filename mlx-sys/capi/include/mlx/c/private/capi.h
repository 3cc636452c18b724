// zmlx mlx-sys: C++ helpers shared by the C API implementation and by extensions that add C functions
// in the same style (mlx_local/). C++ only; not part of the C API.
//
// Every handle is `struct { void* ctx; }` whose ctx owns one heap C++ object (or is NULL: the empty
// handle). `Cpp<H>` names that object's type; `get`, `put`, `make` and `drop` convert and manage it.
// Every exported function runs its body inside `guard`, which turns exceptions into the error handler
// call + status code that callers of the C API see.
#pragma once

#include <mlx/mlx.h>

#include <exception>
#include <optional>
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

template <class H>
struct Cpp;
#define MLXC_HANDLE(H, T) \
  template <>             \
  struct Cpp<H> {         \
    using type = T;       \
    static constexpr const char* name = #H; \
  };
MLXC_HANDLE(mlx_array, mx::array)
MLXC_HANDLE(mlx_string, std::string)
MLXC_HANDLE(mlx_stream, mx::Stream)
MLXC_HANDLE(mlx_device, mx::Device)
MLXC_HANDLE(mlx_vector_array, std::vector<mx::array>)
MLXC_HANDLE(mlx_vector_vector_array, std::vector<std::vector<mx::array>>)
MLXC_HANDLE(mlx_vector_int, std::vector<int>)
MLXC_HANDLE(mlx_vector_string, std::vector<std::string>)
MLXC_HANDLE(mlx_vector_stream, std::vector<mx::Stream>)
MLXC_HANDLE(mlx_map_string_to_array, ArrayMap)
MLXC_HANDLE(mlx_map_string_to_string, StringMap)
#undef MLXC_HANDLE

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

// A new handle owning a copy of (or the moved) `v`.
template <class H, class V>
H make(V&& v) {
  H h{};
  h.ctx = new cpp_t<H>(std::forward<V>(v));
  return h;
}

template <class H>
int drop(H h) {
  delete static_cast<cpp_t<H>*>(h.ctx);
  return 0;
}

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

inline std::optional<float> opt(mlx_optional_float v) {
  return v.has_value ? std::optional<float>(v.value) : std::nullopt;
}

mx::Dtype to_cpp(mlx_dtype t);
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

inline std::vector<int> ints(const int* data, size_t n, const char* what = "axes") {
  if (data == nullptr && n != 0) {
    throw std::invalid_argument(std::string("null ") + what + " with non-zero length");
  }
  return std::vector<int>(data, data + n);
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
  } catch (...) {
    report_error("unknown C++ exception");
  }
  return fallback;
}

} // namespace mlxc
