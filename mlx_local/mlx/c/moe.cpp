// zmlx: C API of the fused quantized MoE primitives (see mlx/c/moe.h).
#include "mlx/c/moe.h"

#include "mlx/c/private/capi.h"
#include "mlx/backend/cuda/moe/gpu.h"
#include "mlx/moe/common/simd.h"
#include "mlx/moe/common/thread_pool.h"
#include "mlx/moe/gather_qmm_combine/gather_qmm_combine.h"
#include "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h"
#include "mlx/moe/switch_glu/switch_glu.h"

using namespace mlxc;

namespace {

using SwigluFn = mx::array (*)(
    const mx::array&,
    const mx::array&,
    const mx::array&,
    const std::optional<mx::array>&,
    const mx::array&,
    const mx::array&,
    const std::optional<mx::array>&,
    std::optional<mx::array>,
    std::optional<mx::array>,
    bool,
    std::optional<int>,
    std::optional<int>,
    const std::string&,
    bool,
    const std::string&,
    std::optional<float>,
    std::optional<float>,
    const std::optional<mx::array>&,
    const std::optional<mx::array>&,
    mx::StreamOrDevice);

int swiglu_call(
    SwigluFn fn,
    mlx_array* res,
    mlx_array x,
    mlx_array gate_w,
    mlx_array gate_scales,
    mlx_array gate_biases,
    mlx_array up_w,
    mlx_array up_scales,
    mlx_array up_biases,
    mlx_array lhs_indices,
    mlx_array rhs_indices,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    bool sorted_indices,
    const char* activation,
    mlx_optional_float alpha,
    mlx_optional_float limit,
    mlx_array gate_bias,
    mlx_array up_bias,
    mlx_stream s) {
  return guard([&] {
    put(res,
        fn(get(x),
           get(gate_w),
           get(gate_scales),
           opt(gate_biases),
           get(up_w),
           get(up_scales),
           opt(up_biases),
           opt(lhs_indices),
           opt(rhs_indices),
           transpose,
           opt(group_size),
           opt(bits),
           str(mode, "mode"),
           sorted_indices,
           activation ? std::string(activation) : std::string("swiglu"),
           opt(alpha),
           opt(limit),
           opt(gate_bias),
           opt(up_bias),
           stream(s)));
  });
}

using CombineFn = mx::array (*)(
    const mx::array&,
    const mx::array&,
    const mx::array&,
    const std::optional<mx::array>&,
    const mx::array&,
    const mx::array&,
    bool,
    std::optional<int>,
    std::optional<int>,
    const std::string&,
    const std::optional<mx::array>&,
    mx::StreamOrDevice);

int combine_call(
    CombineFn fn,
    mlx_array* res,
    mlx_array h,
    mlx_array w,
    mlx_array scales,
    mlx_array biases,
    mlx_array rhs_indices,
    mlx_array scores,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    mlx_array bias,
    mlx_stream s) {
  return guard([&] {
    put(res,
        fn(get(h),
           get(w),
           get(scales),
           opt(biases),
           get(rhs_indices),
           get(scores),
           transpose,
           opt(group_size),
           opt(bits),
           str(mode, "mode"),
           opt(bias),
           stream(s)));
  });
}

} // namespace

extern "C" int mlx_gather_qmm_swiglu(
    mlx_array* res,
    const mlx_array x,
    const mlx_array gate_w,
    const mlx_array gate_scales,
    const mlx_array gate_biases,
    const mlx_array up_w,
    const mlx_array up_scales,
    const mlx_array up_biases,
    const mlx_array lhs_indices,
    const mlx_array rhs_indices,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    bool sorted_indices,
    const char* activation,
    mlx_optional_float alpha,
    mlx_optional_float limit,
    const mlx_array gate_bias,
    const mlx_array up_bias,
    const mlx_stream s) {
  return swiglu_call(
      mx::gather_qmm_swiglu, res, x, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases,
      lhs_indices, rhs_indices, transpose, group_size, bits, mode, sorted_indices, activation, alpha,
      limit, gate_bias, up_bias, s);
}

extern "C" int mlx_gather_qmm_swiglu_reference(
    mlx_array* res,
    const mlx_array x,
    const mlx_array gate_w,
    const mlx_array gate_scales,
    const mlx_array gate_biases,
    const mlx_array up_w,
    const mlx_array up_scales,
    const mlx_array up_biases,
    const mlx_array lhs_indices,
    const mlx_array rhs_indices,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    bool sorted_indices,
    const char* activation,
    mlx_optional_float alpha,
    mlx_optional_float limit,
    const mlx_array gate_bias,
    const mlx_array up_bias,
    const mlx_stream s) {
  return swiglu_call(
      mx::gather_qmm_swiglu_reference, res, x, gate_w, gate_scales, gate_biases, up_w, up_scales,
      up_biases, lhs_indices, rhs_indices, transpose, group_size, bits, mode, sorted_indices,
      activation, alpha, limit, gate_bias, up_bias, s);
}

extern "C" int mlx_gather_qmm_combine(
    mlx_array* res,
    const mlx_array h,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    const mlx_array rhs_indices,
    const mlx_array scores,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const mlx_array bias,
    const mlx_stream s) {
  return combine_call(
      mx::gather_qmm_combine, res, h, w, scales, biases, rhs_indices, scores, transpose, group_size,
      bits, mode, bias, s);
}

extern "C" int mlx_gather_qmm_combine_reference(
    mlx_array* res,
    const mlx_array h,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    const mlx_array rhs_indices,
    const mlx_array scores,
    bool transpose,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const mlx_array bias,
    const mlx_stream s) {
  return combine_call(
      mx::gather_qmm_combine_reference, res, h, w, scales, biases, rhs_indices, scores, transpose,
      group_size, bits, mode, bias, s);
}

extern "C" int mlx_switch_glu_combine(
    mlx_array* res,
    const mlx_array x,
    const mlx_array gate_w,
    const mlx_array gate_scales,
    const mlx_array gate_biases,
    const mlx_array up_w,
    const mlx_array up_scales,
    const mlx_array up_biases,
    const mlx_array down_w,
    const mlx_array down_scales,
    const mlx_array down_biases,
    const mlx_array indices,
    const mlx_array scores,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const char* activation,
    mlx_optional_float alpha,
    mlx_optional_float limit,
    const mlx_array gate_bias,
    const mlx_array up_bias,
    const mlx_array down_bias,
    const mlx_stream s) {
  return guard([&] {
    put(res,
        mx::switch_glu_combine(
            get(x),
            get(gate_w),
            get(gate_scales),
            opt(gate_biases),
            get(up_w),
            get(up_scales),
            opt(up_biases),
            get(down_w),
            get(down_scales),
            opt(down_biases),
            get(indices),
            get(scores),
            opt(group_size),
            opt(bits),
            str(mode, "mode"),
            activation ? std::string(activation) : std::string("swiglu"),
            opt(alpha),
            opt(limit),
            opt(gate_bias),
            opt(up_bias),
            opt(down_bias),
            stream(s)));
  });
}

extern "C" int mlx_fused_quantized_linear(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const mlx_array bias,
    const mlx_stream s) {
  return guard([&] {
    put(res,
        mx::fused_quantized_linear(
            get(x),
            get(w),
            get(scales),
            opt(biases),
            opt(group_size),
            opt(bits),
            str(mode, "mode"),
            opt(bias),
            stream(s)));
  });
}

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
