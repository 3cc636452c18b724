// zmlx mlx-sys: array operations (slice needed by the foundation; ops.h lists them).
#include "mlx/c/private/capi.h"

using namespace mlxc;

#define MLXC_BINARY(NAME)                                                                         \
  extern "C" int mlx_##NAME(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s) { \
    return guard([&] { put(res, mx::NAME(get(a), get(b), stream(s))); });                        \
  }
MLXC_BINARY(add)
MLXC_BINARY(subtract)
MLXC_BINARY(multiply)
MLXC_BINARY(divide)
MLXC_BINARY(matmul)
#undef MLXC_BINARY

extern "C" int mlx_arange(mlx_array* res, double start, double stop, double step, mlx_dtype dtype, const mlx_stream s) {
  return guard([&] { put(res, mx::arange(start, stop, step, to_cpp(dtype), stream(s))); });
}
extern "C" int mlx_astype(mlx_array* res, const mlx_array a, mlx_dtype dtype, const mlx_stream s) {
  return guard([&] { put(res, mx::astype(get(a), to_cpp(dtype), stream(s))); });
}
extern "C" int mlx_reshape(mlx_array* res, const mlx_array a, const int* shp, size_t shape_num, const mlx_stream s) {
  return guard([&] { put(res, mx::reshape(get(a), shape(shp, shape_num), stream(s))); });
}
extern "C" int mlx_transpose(mlx_array* res, const mlx_array a, const mlx_stream s) {
  return guard([&] { put(res, mx::transpose(get(a), stream(s))); });
}
extern "C" int mlx_transpose_axes(mlx_array* res, const mlx_array a, const int* axes, size_t axes_num, const mlx_stream s) {
  return guard([&] { put(res, mx::transpose(get(a), ints(axes, axes_num), stream(s))); });
}

extern "C" int mlx_quantize(
    mlx_vector_array* res,
    const mlx_array w,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const mlx_array global_scale,
    const mlx_stream s) {
  return guard([&] {
    put(res, mx::quantize(get(w), opt(group_size), opt(bits), str(mode, "mode"), opt(global_scale), stream(s)));
  });
}

extern "C" int mlx_dequantize(
    mlx_array* res,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const mlx_array global_scale,
    mlx_optional_dtype dtype,
    const mlx_stream s) {
  return guard([&] {
    put(res,
        mx::dequantize(
            get(w), get(scales), opt(biases), opt(group_size), opt(bits), str(mode, "mode"), opt(global_scale),
            opt(dtype), stream(s)));
  });
}

extern "C" int mlx_gather_qmm(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    const mlx_array lhs_indices,
    const mlx_array rhs_indices,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    bool sorted_indices,
    const mlx_stream s) {
  return guard([&] {
    put(res,
        mx::gather_qmm(
            get(x), get(w), get(scales), opt(biases), opt(lhs_indices), opt(rhs_indices), transpose,
            opt(group_size), opt(bits), str(mode, "mode"), std::nullopt, sorted_indices, stream(s)));
  });
}
