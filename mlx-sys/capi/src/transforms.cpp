// zmlx mlx-sys: evaluation, function transforms and compilation (transforms.h, transforms_impl.h,
// compile.h).
#include "mlx/c/private/capi.h"

#include <mlx/transforms_impl.h>

using namespace mlxc;

MLXC_HANDLE(mlx_compile_cache, mx::detail::CompileCacheWeakPtr)

namespace {

// An optional closure argument: the empty handle means "absent".
template <class H>
std::optional<cpp_t<H>> opt_fn(H h) {
  if (h.ctx == nullptr) {
    return std::nullopt;
  }
  return get(h);
}

} // namespace

// --- transforms.h -----------------------------------------------------------------------------------

extern "C" int mlx_async_eval(const mlx_vector_array outputs) {
  return guard([&] { mx::async_eval(get(outputs)); });
}
extern "C" int mlx_eval(const mlx_vector_array outputs) {
  return guard([&] { mx::eval(get(outputs)); });
}
extern "C" int mlx_checkpoint(mlx_closure* res, const mlx_closure fun) {
  return guard([&] { put(res, mx::checkpoint(get(fun))); });
}
extern "C" int mlx_custom_function(
    mlx_closure* res,
    const mlx_closure fun,
    const mlx_closure_custom fun_vjp,
    const mlx_closure_custom_jvp fun_jvp,
    const mlx_closure_custom_vmap fun_vmap) {
  return guard([&] {
    put(res, mx::custom_function(get(fun), opt_fn(fun_vjp), opt_fn(fun_jvp), opt_fn(fun_vmap)));
  });
}
extern "C" int mlx_custom_vjp(mlx_closure* res, const mlx_closure fun, const mlx_closure_custom fun_vjp) {
  return guard([&] { put(res, mx::custom_vjp(get(fun), get(fun_vjp))); });
}
extern "C" int mlx_jvp(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array primals,
    const mlx_vector_array tangents) {
  return put_pair(res_0, res_1, [&] { return mx::jvp(get(fun), get(primals), get(tangents)); });
}
extern "C" int mlx_vjp(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array primals,
    const mlx_vector_array cotangents) {
  return put_pair(res_0, res_1, [&] { return mx::vjp(get(fun), get(primals), get(cotangents)); });
}
extern "C" int mlx_value_and_grad(
    mlx_closure_value_and_grad* res,
    const mlx_closure fun,
    const int* argnums,
    size_t argnums_num) {
  return guard([&] { put(res, mx::value_and_grad(get(fun), ints(argnums, argnums_num, "argnums"))); });
}

// --- transforms_impl.h ------------------------------------------------------------------------------

extern "C" int mlx_detail_vmap_replace(
    mlx_vector_array* res,
    const mlx_vector_array inputs,
    const mlx_vector_array s_inputs,
    const mlx_vector_array s_outputs,
    const int* in_axes,
    size_t in_axes_num,
    const int* out_axes,
    size_t out_axes_num) {
  return guard([&] {
    put(res,
        mx::detail::vmap_replace(
            get(inputs), get(s_inputs), get(s_outputs), ints(in_axes, in_axes_num, "in_axes"),
            ints(out_axes, out_axes_num, "out_axes")));
  });
}
extern "C" int mlx_detail_vmap_trace(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array inputs,
    const int* in_axes,
    size_t in_axes_num) {
  return put_pair(res_0, res_1, [&] {
    return mx::detail::vmap_trace(get(fun), get(inputs), ints(in_axes, in_axes_num, "in_axes"));
  });
}

// --- compile.h --------------------------------------------------------------------------------------

extern "C" mlx_compile_cache mlx_compile_cache_new() {
  return mlx_compile_cache{nullptr};
}
extern "C" int mlx_compile_cache_free(mlx_compile_cache cache) {
  return drop(cache);
}
extern "C" int mlx_compile(mlx_closure* res, const mlx_closure fun, bool shapeless) {
  return guard([&] { put(res, mx::compile(get(fun), shapeless)); });
}
extern "C" int mlx_detail_compile(
    mlx_closure* res,
    const mlx_closure fun,
    uintptr_t fun_id,
    bool shapeless,
    const uint64_t* constants,
    size_t constants_num) {
  return guard([&] {
    if (constants == nullptr && constants_num != 0) {
      throw std::invalid_argument("null constants with non-zero length");
    }
    std::vector<uint64_t> consts(constants, constants + constants_num);
    put(res, mx::detail::compile(get(fun), fun_id, shapeless, std::move(consts)));
  });
}
extern "C" int mlx_detail_compile_cache(mlx_compile_cache* res) {
  return guard([&] { put(res, mx::detail::compile_cache()); });
}
extern "C" int mlx_detail_compile_clear_cache(const mlx_compile_cache cache) {
  return guard([&] { mx::detail::compile_clear_cache(get(cache)); });
}
extern "C" int mlx_detail_compile_erase(const mlx_compile_cache cache, uintptr_t fun_id) {
  return guard([&] { mx::detail::compile_erase(get(cache), fun_id); });
}
extern "C" int mlx_disable_compile(void) {
  return guard([] { mx::disable_compile(); });
}
extern "C" int mlx_enable_compile(void) {
  return guard([] { mx::enable_compile(); });
}
extern "C" int mlx_set_compile_mode(mlx_compile_mode mode) {
  return guard([&] {
    switch (enum_int(mode)) {
      case MLX_COMPILE_MODE_DISABLED:
        return mx::set_compile_mode(mx::CompileMode::disabled);
      case MLX_COMPILE_MODE_NO_SIMPLIFY:
        return mx::set_compile_mode(mx::CompileMode::no_simplify);
      case MLX_COMPILE_MODE_NO_FUSE:
        return mx::set_compile_mode(mx::CompileMode::no_fuse);
      case MLX_COMPILE_MODE_ENABLED:
        return mx::set_compile_mode(mx::CompileMode::enabled);
    }
    throw std::invalid_argument("invalid mlx_compile_mode value " + std::to_string(enum_int(mode)));
  });
}
