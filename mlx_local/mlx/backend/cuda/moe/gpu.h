// Copyright © 2026 zmlx contributors.
//
// The fused ops (quantized MoE, add_rms_norm) on CUDA GPU streams: graph nodes built with MLX's public
// fast::cuda_kernel (the CUDA wheel exports no command encoder), one kernel launch per op. The
// device code is kernels.cuh. Callers validate their arguments first (the ops' check_* functions);
// these functions only choose the kernel variant and the launch grid.
#pragma once

#include <mlx/api.h>
#include <mlx/array.h>
#include <mlx/utils.h>

#include <optional>
#include <string>
#include <utility>

#include "mlx/moe/common/quant_modes.h"

namespace mlx::core::moe {

struct SwigluParams;
struct CombineParams;

namespace gpu {

// cuda_available, coverage and check_translation_unit are exported (MLX_API) for a C API over a
// shared libmlx.

// True when this MLX build's GPU is CUDA (the mlx-cuda wheel).
MLX_API bool cuda_available();

// Empty when the fused CUDA kernels run a projection of this layout (transpose = true, K a
// multiple of 32; every mode of the table has a kernel); otherwise why not: the op then takes
// MLX's composed path.
std::string unsupported(bool transpose, int K);

// gather_qmm_swiglu on a CUDA stream. out_shape = B + [M, N]; experts = E. Returns nullopt when the
// launch grid would exceed CUDA's limits or the rows the kernel's 32-bit indexing (then the caller
// composes).
std::optional<array> swiglu(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    const std::optional<array>& lhs_indices,
    const std::optional<array>& rhs_indices,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    const SwigluParams& p,
    Dtype out_dtype,
    const Shape& out_shape,
    int64_t experts,
    Stream s);

// gather_qmm_combine on a CUDA stream; out_shape = B[:-1] + [M, N]. Returns nullopt when the
// pairs exceed the kernel's 32-bit indexing or the grid CUDA's limits (then the caller composes).
std::optional<array> combine(
    const array& h,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const array& rhs_indices,
    const array& scores,
    const std::optional<array>& bias,
    const CombineParams& p,
    Dtype out_dtype,
    const Shape& out_shape,
    Stream s);

// Whether switch_glu_combine takes the one-launch kernel on CUDA streams (ZMLX_CUDA_LAYER=1) rather
// than the two fused ops (the default: on an H100 the one-launch kernel measured slower, its
// registers limiting the blocks in flight; BENCHMARKS.md).
bool layer_enabled();

// switch_glu_combine on a CUDA stream, one launch: x [..., D], gate / up [E..., I, .], down
// [E..., D, .] (the same quantization), indices / scores [..., k]; h_shape = B + [1, I] (h, the
// swiglu result, is the kernel's second output), out_shape = B[:-1] + [D]. Returns nullopt as
// swiglu and combine do (then the caller composes).
std::optional<array> layer(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    const array& down_w,
    const array& down_scales,
    const std::optional<array>& down_biases,
    const array& indices,
    const array& scores,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    const std::optional<array>& down_bias,
    const SwigluParams& p,
    Dtype h_dtype,
    const Shape& h_shape,
    Dtype out_dtype,
    const Shape& out_shape,
    int64_t experts,
    Stream s);

// x [..., K] times one quantized [N, K] matrix (+ bias [N]), float32 accumulation, on a CUDA stream;
// nullopt as for combine.
std::optional<array> linear(
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const std::optional<array>& bias,
    const QuantParams& q,
    Dtype out_dtype,
    Stream s);

// add_rms_norm (mlx/norm/add_rms_norm) on a CUDA stream: (h, y) of dtypes h_dtype and y_dtype,
// one launch (inputs in any layout; non-contiguous ones are copied first). Returns nullopt when the
// rows exceed the launch grid (then the caller composes).
std::optional<std::pair<array, array>> add_rms_norm(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    Dtype h_dtype,
    Dtype y_dtype,
    Stream s);

// One line for `zmlx info`: which configurations have a fused CUDA kernel.
MLX_API const char* coverage();

// One CUDA translation unit holding, for a representative set of kernel variants (every mode,
// activation dtype and flag), exactly the kernels MLX's NVRTC compiles at first use, behind a
// stand-in for MLX's default device header: what the ahead-of-time compile check (nvcc, sm_90)
// builds.
MLX_API std::string check_translation_unit();

} // namespace gpu
} // namespace mlx::core::moe
