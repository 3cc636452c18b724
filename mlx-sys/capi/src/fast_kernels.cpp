// zmlx mlx-sys: custom Metal and CUDA kernels (the object part of fast.h).
#include "mlx/c/private/capi.h"

using namespace mlxc;

namespace {

struct KernelConfig {
  std::vector<mx::Shape> output_shapes;
  std::vector<mx::Dtype> output_dtypes;
  std::tuple<int, int, int> grid{1, 1, 1};
  std::tuple<int, int, int> thread_group{1, 1, 1};
  std::vector<std::pair<std::string, mx::fast::TemplateArg>> template_args;
  std::optional<float> init_value;
  bool verbose = false;
};

// A kernel built by MLX at creation (which validates the definition); applying a Metal kernel off
// macOS fails with MLX's "[metal_kernel] No Metal back-end." error, and creating a CUDA kernel on a
// build without CUDA fails with "[cuda_kernel] No CUDA back-end.".
using Kernel = mx::fast::CustomKernelFunction;

} // namespace

MLXC_HANDLE(mlx_fast_metal_kernel_config, KernelConfig)
MLXC_HANDLE(mlx_fast_cuda_kernel_config, KernelConfig)
MLXC_HANDLE(mlx_fast_metal_kernel, Kernel)
MLXC_HANDLE(mlx_fast_cuda_kernel, Kernel)

namespace {

template <class H, class T>
int add_template_arg(H cls, const char* name, T value) {
  return guard([&] { get(cls).template_args.emplace_back(str(name, "name"), value); });
}

} // namespace

// KIND: metal or cuda; EXTRA: the kernel's last creation parameter.
#define MLXC_KERNEL(KIND, EXTRA_DECL, EXTRA)                                                            \
  extern "C" mlx_fast_##KIND##_kernel_config mlx_fast_##KIND##_kernel_config_new(void) {                 \
    return guard_value(mlx_fast_##KIND##_kernel_config{}, [] {                                          \
      return make<mlx_fast_##KIND##_kernel_config>(KernelConfig{});                                     \
    });                                                                                                 \
  }                                                                                                     \
  extern "C" void mlx_fast_##KIND##_kernel_config_free(mlx_fast_##KIND##_kernel_config cls) {           \
    drop(cls);                                                                                          \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_add_output_arg(                                       \
      mlx_fast_##KIND##_kernel_config cls, const int* shp, size_t size, mlx_dtype dtype) {              \
    return guard([&] {                                                                                  \
      auto& c = get(cls);                                                                               \
      auto s = shape(shp, size);                                                                        \
      auto t = to_cpp(dtype);                                                                           \
      c.output_shapes.push_back(std::move(s));                                                          \
      c.output_dtypes.push_back(t);                                                                     \
    });                                                                                                 \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_set_grid(                                             \
      mlx_fast_##KIND##_kernel_config cls, int grid1, int grid2, int grid3) {                           \
    return guard([&] { get(cls).grid = {grid1, grid2, grid3}; });                                       \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_set_thread_group(                                     \
      mlx_fast_##KIND##_kernel_config cls, int thread1, int thread2, int thread3) {                     \
    return guard([&] { get(cls).thread_group = {thread1, thread2, thread3}; });                         \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_set_init_value(mlx_fast_##KIND##_kernel_config cls, float value) { \
    return guard([&] { get(cls).init_value = value; });                                                 \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_set_verbose(mlx_fast_##KIND##_kernel_config cls, bool verbose) { \
    return guard([&] { get(cls).verbose = verbose; });                                                  \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_add_template_arg_dtype(                               \
      mlx_fast_##KIND##_kernel_config cls, const char* name, mlx_dtype dtype) {                         \
    return guard([&] { get(cls).template_args.emplace_back(str(name, "name"), to_cpp(dtype)); });       \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_add_template_arg_int(                                 \
      mlx_fast_##KIND##_kernel_config cls, const char* name, int value) {                               \
    return add_template_arg(cls, name, value);                                                          \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_config_add_template_arg_bool(                                \
      mlx_fast_##KIND##_kernel_config cls, const char* name, bool value) {                              \
    return add_template_arg(cls, name, value);                                                          \
  }                                                                                                     \
  extern "C" mlx_fast_##KIND##_kernel mlx_fast_##KIND##_kernel_new(                                    \
      const char* name,                                                                                 \
      const mlx_vector_string input_names,                                                              \
      const mlx_vector_string output_names,                                                             \
      const char* source,                                                                               \
      const char* header,                                                                               \
      bool ensure_row_contiguous,                                                                       \
      EXTRA_DECL) {                                                                                     \
    return guard_value(mlx_fast_##KIND##_kernel{}, [&] {                                                \
      return make<mlx_fast_##KIND##_kernel>(mx::fast::KIND##_kernel(                                   \
          str(name, "name"), get(input_names), get(output_names), str(source, "source"),                \
          header ? std::string(header) : std::string(), ensure_row_contiguous, EXTRA));                 \
    });                                                                                                 \
  }                                                                                                     \
  extern "C" void mlx_fast_##KIND##_kernel_free(mlx_fast_##KIND##_kernel cls) {                         \
    drop(cls);                                                                                          \
  }                                                                                                     \
  extern "C" int mlx_fast_##KIND##_kernel_apply(                                                       \
      mlx_vector_array* outputs,                                                                        \
      mlx_fast_##KIND##_kernel cls,                                                                     \
      const mlx_vector_array inputs,                                                                    \
      const mlx_fast_##KIND##_kernel_config config,                                                     \
      const mlx_stream s) {                                                                             \
    return guard([&] {                                                                                  \
      auto& c = get(config);                                                                            \
      auto& k = get(cls);                                                                               \
      auto& ins = get(inputs);                                                                          \
      put(outputs,                                                                                      \
          k(                                                                                            \
              ins, c.output_shapes, c.output_dtypes, c.grid, c.thread_group, c.template_args,           \
              c.init_value, c.verbose, stream(s)));                                                     \
    });                                                                                                 \
  }

MLXC_KERNEL(metal, bool atomic_outputs, atomic_outputs)
MLXC_KERNEL(cuda, int shared_memory, shared_memory)
#undef MLXC_KERNEL
