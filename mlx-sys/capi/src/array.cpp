// zmlx mlx-sys: mlx_array.
#include <cstring>
#include <sstream>

#include "mlx/c/private/capi.h"

using namespace mlxc;

namespace mlxc {

static const mx::Dtype kDtypes[] = {
    mx::bool_,
    mx::uint8,
    mx::uint16,
    mx::uint32,
    mx::uint64,
    mx::int8,
    mx::int16,
    mx::int32,
    mx::int64,
    mx::float16,
    mx::float32,
    mx::float64,
    mx::bfloat16,
    mx::complex64};

mx::Dtype to_cpp(const mlx_dtype& t) {
  auto i = static_cast<unsigned>(enum_int(t));
  if (i >= sizeof(kDtypes) / sizeof(kDtypes[0])) {
    throw std::invalid_argument("invalid mlx_dtype value " + std::to_string(i));
  }
  return kDtypes[i];
}

mlx_dtype to_c(mx::Dtype t) {
  return static_cast<mlx_dtype>(static_cast<int>(t.val()));
}

} // namespace mlxc

namespace {

// A shape for new array data: no negative dimension, and an element count and byte size that fit
// MLX's int64 sizes (an overflowing product would make an array smaller than its shape says).
mx::Shape data_shape(const int* shape_p, int dim, mx::Dtype dt, size_t& bytes) {
  if (dim < 0) {
    throw std::invalid_argument("negative number of dimensions");
  }
  auto shp = shape(shape_p, static_cast<size_t>(dim));
  int64_t n = 1;
  for (auto d : shp) {
    if (d < 0) {
      throw std::invalid_argument("negative dimension in shape");
    }
    if (__builtin_mul_overflow(n, static_cast<int64_t>(d), &n)) {
      throw std::invalid_argument("the shape's element count overflows 64 bits");
    }
  }
  int64_t b = 0;
  if (__builtin_mul_overflow(n, static_cast<int64_t>(dt.size()), &b)) {
    throw std::invalid_argument("the shape's byte size overflows 64 bits");
  }
  bytes = static_cast<size_t>(b);
  return shp;
}

// A bool element is one byte holding 0 or 1; MLX (and C++) reading any other byte as a bool is undefined
// behaviour (UBSan: "load of value 27, which is not a valid value for type 'bool'").
void check_bool_bytes(const void* data, size_t bytes, mx::Dtype dt) {
  if (dt != mx::bool_) {
    return;
  }
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    if (p[i] > 1) {
      throw std::invalid_argument(
          "bool data must hold bytes 0 or 1, but element " + std::to_string(i) + " is " +
          std::to_string(static_cast<int>(p[i])));
    }
  }
}

mx::array from_bytes(const void* data, const int* shape_p, int dim, const mlx_dtype& dtype) {
  auto dt = to_cpp(dtype);
  size_t bytes = 0;
  auto shp = data_shape(shape_p, dim, dt, bytes);
  if (data == nullptr && bytes != 0) {
    throw std::invalid_argument("null data for a non-empty array");
  }
  check_bool_bytes(data, bytes, dt);
  auto buf = mx::allocator::malloc(bytes);
  if (bytes) {
    std::memcpy(buf.buffer().raw_ptr(), data, bytes);
  }
  return mx::array(std::move(buf), std::move(shp), dt);
}

// On failure the data stays the caller's (the deleter is not called).
mx::array managed(void* data, const int* shape_p, int dim, const mlx_dtype& dtype, std::function<void(void*)> deleter) {
  auto dt = to_cpp(dtype);
  size_t bytes = 0;
  auto shp = data_shape(shape_p, dim, dt, bytes);
  if (data == nullptr) {
    throw std::invalid_argument("null data");
  }
  check_bool_bytes(data, bytes, dt);
  return mx::array(data, std::move(shp), dt, deleter);
}

// The evaluated array behind `arr`, checked to hold `want`.
mx::array& evaluated(mlx_array arr, mx::Dtype want) {
  auto& a = get(arr);
  if (a.dtype() != want) {
    std::ostringstream msg;
    msg << "array has dtype " << a.dtype() << ", not " << want;
    throw std::invalid_argument(msg.str());
  }
  a.eval();
  return a;
}

template <class C, class T = C>
int item_of(C* res, mlx_array arr, mx::Dtype want) {
  return guard([&] {
    if (res == nullptr) {
      throw std::invalid_argument("null result pointer");
    }
    auto& a = evaluated(arr, want);
    if (a.size() != 1) {
      throw std::invalid_argument("item() needs an array of one element, got " + std::to_string(a.size()));
    }
    T v = a.item<T>();
    static_assert(sizeof(T) == sizeof(C));
    std::memcpy(res, &v, sizeof(C));
  });
}

template <class C, class T = C>
const C* data_of(mlx_array arr, mx::Dtype want) {
  return guard_value<const C*>(nullptr, [&]() -> const C* {
    auto& a = evaluated(arr, want);
    return reinterpret_cast<const C*>(a.data<T>());
  });
}

} // namespace

extern "C" size_t mlx_dtype_size(mlx_dtype dtype) {
  return guard_value<size_t>(0, [&] { return static_cast<size_t>(to_cpp(dtype).size()); });
}

extern "C" int mlx_array_tostring(mlx_string* str, const mlx_array arr) {
  return guard([&] {
    std::ostringstream os;
    os << get(arr);
    put(str, os.str());
  });
}

extern "C" mlx_array mlx_array_new(void) {
  return mlx_array{nullptr};
}

extern "C" int mlx_array_free(mlx_array arr) {
  return drop(arr);
}

extern "C" mlx_array mlx_array_new_bool(bool val) {
  return guard_value(mlx_array{}, [&] { return make<mlx_array>(mx::array(val)); });
}
extern "C" mlx_array mlx_array_new_int(int val) {
  return guard_value(mlx_array{}, [&] { return make<mlx_array>(mx::array(val)); });
}
extern "C" mlx_array mlx_array_new_float32(float val) {
  return guard_value(mlx_array{}, [&] { return make<mlx_array>(mx::array(val)); });
}
extern "C" mlx_array mlx_array_new_float(float val) {
  return mlx_array_new_float32(val);
}
extern "C" mlx_array mlx_array_new_float64(double val) {
  return guard_value(mlx_array{}, [&] { return make<mlx_array>(mx::array(val, mx::float64)); });
}
extern "C" mlx_array mlx_array_new_double(double val) {
  return mlx_array_new_float64(val);
}
extern "C" mlx_array mlx_array_new_complex(float real_val, float imag_val) {
  return guard_value(mlx_array{}, [&] {
    return make<mlx_array>(mx::array(std::complex<float>(real_val, imag_val)));
  });
}

extern "C" mlx_array mlx_array_new_data(const void* data, const int* shape, int dim, mlx_dtype dtype) {
  return guard_value(mlx_array{}, [&] { return make<mlx_array>(from_bytes(data, shape, dim, dtype)); });
}

extern "C" mlx_array mlx_array_new_data_managed(
    void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype,
    void (*dtor)(void*)) {
  return guard_value(mlx_array{}, [&] {
    return make<mlx_array>(managed(data, shape, dim, dtype, [dtor](void* p) {
      if (dtor) {
        dtor(p);
      }
    }));
  });
}

extern "C" mlx_array mlx_array_new_data_managed_payload(
    void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype,
    void* payload,
    void (*dtor)(void*)) {
  return guard_value(mlx_array{}, [&] {
    return make<mlx_array>(managed(data, shape, dim, dtype, [dtor, payload](void*) {
      if (dtor) {
        dtor(payload);
      }
    }));
  });
}

extern "C" int mlx_array_set(mlx_array* arr, const mlx_array src) {
  return guard([&] { put(arr, get(src)); });
}
extern "C" int mlx_array_set_bool(mlx_array* arr, bool val) {
  return guard([&] { put(arr, mx::array(val)); });
}
extern "C" int mlx_array_set_int(mlx_array* arr, int val) {
  return guard([&] { put(arr, mx::array(val)); });
}
extern "C" int mlx_array_set_float32(mlx_array* arr, float val) {
  return guard([&] { put(arr, mx::array(val)); });
}
extern "C" int mlx_array_set_float(mlx_array* arr, float val) {
  return mlx_array_set_float32(arr, val);
}
extern "C" int mlx_array_set_float64(mlx_array* arr, double val) {
  return guard([&] { put(arr, mx::array(val, mx::float64)); });
}
extern "C" int mlx_array_set_double(mlx_array* arr, double val) {
  return mlx_array_set_float64(arr, val);
}
extern "C" int mlx_array_set_complex(mlx_array* arr, float real_val, float imag_val) {
  return guard([&] { put(arr, mx::array(std::complex<float>(real_val, imag_val))); });
}
extern "C" int mlx_array_set_data(
    mlx_array* arr,
    const void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype) {
  return guard([&] { put(arr, from_bytes(data, shape, dim, dtype)); });
}

extern "C" size_t mlx_array_itemsize(const mlx_array arr) {
  return guard_value<size_t>(0, [&] { return get(arr).itemsize(); });
}
extern "C" size_t mlx_array_size(const mlx_array arr) {
  return guard_value<size_t>(0, [&] { return get(arr).size(); });
}
extern "C" size_t mlx_array_nbytes(const mlx_array arr) {
  return guard_value<size_t>(0, [&] { return get(arr).nbytes(); });
}
extern "C" size_t mlx_array_ndim(const mlx_array arr) {
  return guard_value<size_t>(0, [&] { return get(arr).ndim(); });
}
extern "C" const int* mlx_array_shape(const mlx_array arr) {
  return guard_value<const int*>(nullptr, [&] { return get(arr).shape().data(); });
}
extern "C" const size_t* mlx_array_strides(const mlx_array arr) {
  static_assert(sizeof(int64_t) == sizeof(size_t));
  return guard_value<const size_t*>(nullptr, [&] {
    return reinterpret_cast<const size_t*>(get(arr).strides().data());
  });
}
extern "C" int mlx_array_dim(const mlx_array arr, int dim) {
  return guard_value<int>(0, [&] {
    auto& a = get(arr);
    int n = static_cast<int>(a.ndim());
    if (dim < -n || dim >= n) {
      throw std::out_of_range(
          "dimension " + std::to_string(dim) + " out of range for an array of " + std::to_string(n) +
          " dimensions");
    }
    return a.shape(dim);
  });
}
extern "C" mlx_dtype mlx_array_dtype(const mlx_array arr) {
  return guard_value<mlx_dtype>(MLX_BOOL, [&] { return to_c(get(arr).dtype()); });
}

extern "C" int mlx_array_eval(mlx_array arr) {
  return guard([&] { get(arr).eval(); });
}

#define MLXC_ACCESSORS(NAME, CTYPE, CPPTYPE, DTYPE)                           \
  extern "C" int mlx_array_item_##NAME(CTYPE* res, const mlx_array arr) {    \
    return item_of<CTYPE, CPPTYPE>(res, arr, DTYPE);                         \
  }                                                                          \
  extern "C" const CTYPE* mlx_array_data_##NAME(const mlx_array arr) {       \
    return data_of<CTYPE, CPPTYPE>(arr, DTYPE);                              \
  }
MLXC_ACCESSORS(bool, bool, bool, mx::bool_)
MLXC_ACCESSORS(uint8, uint8_t, uint8_t, mx::uint8)
MLXC_ACCESSORS(uint16, uint16_t, uint16_t, mx::uint16)
MLXC_ACCESSORS(uint32, uint32_t, uint32_t, mx::uint32)
MLXC_ACCESSORS(uint64, uint64_t, uint64_t, mx::uint64)
MLXC_ACCESSORS(int8, int8_t, int8_t, mx::int8)
MLXC_ACCESSORS(int16, int16_t, int16_t, mx::int16)
MLXC_ACCESSORS(int32, int32_t, int32_t, mx::int32)
MLXC_ACCESSORS(int64, int64_t, int64_t, mx::int64)
MLXC_ACCESSORS(float32, float, float, mx::float32)
MLXC_ACCESSORS(float64, double, double, mx::float64)
MLXC_ACCESSORS(complex64, mlx_complex64_t, mx::complex64_t, mx::complex64)
MLXC_ACCESSORS(float16, float16_t, mx::float16_t, mx::float16)
MLXC_ACCESSORS(bfloat16, bfloat16_t, mx::bfloat16_t, mx::bfloat16)
#undef MLXC_ACCESSORS

extern "C" int _mlx_array_is_available(bool* res, const mlx_array arr) {
  return guard([&] { out(res) = get(arr).is_available(); });
}
extern "C" int _mlx_array_wait(const mlx_array arr) {
  return guard([&] { get(arr).wait(); });
}
extern "C" int _mlx_array_is_contiguous(bool* res, const mlx_array arr) {
  return guard([&] { out(res) = get(arr).flags().contiguous; });
}
extern "C" int _mlx_array_is_row_contiguous(bool* res, const mlx_array arr) {
  return guard([&] { out(res) = get(arr).flags().row_contiguous; });
}
extern "C" int _mlx_array_is_col_contiguous(bool* res, const mlx_array arr) {
  return guard([&] { out(res) = get(arr).flags().col_contiguous; });
}
