// zmlx: the hand-written part of the fused MoE ops' C API (see mlx/c/moe.h): the GPU and CPU kernel
// settings and information. The ops themselves are generated from moe.spec (gen_moe.cpp).
#include "mlx/c/moe.h"

#include "mlx/c/private/capi.h"
#include "mlx/backend/cuda/moe/gpu.h"
#include "mlx/moe/common/simd.h"
#include "mlx/moe/common/thread_pool.h"

using namespace mlxc;

extern "C" int mlx_moe_gpu_coverage(const char** res) {
  return guard([&] {
    if (res == nullptr) {
      throw std::invalid_argument("null result pointer");
    }
    *res = mx::moe::gpu::cuda_available()
        ? mx::moe::gpu::coverage()
        : "no fused GPU kernels on this build (no CUDA): GPU streams take MLX's composed ops";
  });
}

extern "C" int mlx_moe_gpu_device_name(mlx_string* res, int index) {
  return guard([&] {
    if (res == nullptr) {
      throw std::invalid_argument("null result pointer");
    }
    std::string name;
    if (index < 0) {
      throw std::invalid_argument("[gpu_device_name] index must be non-negative.");
    }
    if (mx::is_available(mx::Device(mx::Device::gpu, 0)) &&
        index < mx::device_count(mx::Device::gpu)) {
      const auto& info = mx::device_info(mx::Device(mx::Device::gpu, index));
      if (auto it = info.find("device_name"); it != info.end()) {
        if (auto p = std::get_if<std::string>(&it->second)) {
          name = *p;
        }
      }
    }
    put(res, name);
  });
}

extern "C" int mlx_moe_cuda_check_source(mlx_string* res) {
  return guard([&] {
    if (res == nullptr) {
      throw std::invalid_argument("null result pointer");
    }
    put(res, mx::moe::gpu::check_translation_unit());
  });
}

extern "C" int mlx_moe_set_num_threads(int n) {
  return guard([&] { mx::moe::ThreadPool::instance().set_num_threads(n); });
}

extern "C" int mlx_moe_num_threads(int* res) {
  return guard([&] {
    if (res == nullptr) {
      throw std::invalid_argument("null result pointer");
    }
    *res = mx::moe::ThreadPool::instance().num_threads();
  });
}

extern "C" int mlx_moe_set_simd_level(const char* level) {
  return guard([&] { mx::moe::set_simd(mx::moe::simd_from_name(str(level, "level"))); });
}

extern "C" int mlx_moe_simd_level(const char** res) {
  return guard([&] {
    if (res == nullptr) {
      throw std::invalid_argument("null result pointer");
    }
    *res = mx::moe::simd_name(mx::moe::active_simd());
  });
}
