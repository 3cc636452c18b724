/* zmlx: C API of the fused quantized Mixture-of-Experts primitives (mlx-c style).
 *
 * Conventions (as mlx-c): the result out-param comes first, optional arrays may be the empty handle
 * (ctx == NULL), group_size / bits are mlx_optional_int (absent: the mode's default), the stream
 * comes last (the empty handle: the default stream). Every function returns 0 on success; on error
 * it calls the installed error handler (see mlx/c/error.h) with the message and returns non-zero.
 * The ops are lazy like every MLX op: errors that can only be seen in the data (an expert index out
 * of range) are reported by the evaluation (mlx_array_eval, mlx_eval, ...) on CPU streams; on CUDA
 * streams the output rows the bad index feeds are NaN instead. Nothing reads out of bounds. Semantics in detail: mlx_local/mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h and
 * mlx_local/mlx/moe/gather_qmm_combine/gather_qmm_combine.h. */
#ifndef MLX_MOE_H
#define MLX_MOE_H

#include <stdbool.h>

#include "mlx/c/array.h"
#include "mlx/c/optional.h"
#include "mlx/c/stream.h"
#include "mlx/c/string.h"

#ifdef __cplusplus
extern "C" {
#endif

/* act(gather_qmm(x, gate...), gather_qmm(x, up...)), fused.
 * x [..., M, K]; weights as gather_qmm (transpose = true: w [E..., N, K*bits/32] uint32, scales and
 * (affine) biases [E..., N, K/group_size]); lhs_indices / rhs_indices optional (arange defaults,
 * broadcast together to B); result B + [M, N].
 * mode: "affine", "mxfp4", "nvfp4" or "mxfp8". activation: "swiglu" (silu(g) * u; alpha and limit
 * must be absent) or "gpt_oss" (g = min(g, limit), u = clip(u, -limit, limit),
 * g * sigmoid(alpha * g) * (u + 1); defaults alpha 1.702, limit 7); NULL means "swiglu".
 * gate_bias / up_bias: optional per-expert additive biases [E..., N] added before the activation. */
int mlx_gather_qmm_swiglu(
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
    const mlx_stream s);

/* Same arguments and result, composed from MLX's own ops (gather_qmm twice, then the activation in
 * the projection dtype): "MLX's composed path", for tests and benchmarks. */
int mlx_gather_qmm_swiglu_reference(
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
    const mlx_stream s);

/* sum_j scores[..., j] * (gather_qmm(h, w..., rhs_indices)[..., j, :, :] + bias[rhs_indices[..., j]]).
 * h [..., k, M, K], rhs_indices and scores [..., k] (h's batch broadcasts with rhs_indices like
 * gather_qmm's default lhs indices; scores must broadcast to that batch shape); result
 * [..., M, N] in promote(projection dtype, bias dtype, scores dtype). bias optional [E..., N]. */
int mlx_gather_qmm_combine(
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
    const mlx_stream s);

/* Same, composed from MLX's own ops (gather_qmm, multiply by scores, sum over k). */
int mlx_gather_qmm_combine_reference(
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
    const mlx_stream s);

/* The switch-GLU MoE block after routing, as one op:
 * gather_qmm_combine(gather_qmm_swiglu(x[..., None, None, :], gate, up, rhs_indices = indices),
 *                    down, indices, scores)[..., 0, :].
 * x [..., D]; indices and scores [..., k]; gate / up [E..., I, D*bits/32], down [E..., D, I*bits/32]
 * with their scales and (affine) biases, all three in the same mode, group_size and bits
 * (transpose = true layout). activation, alpha, limit, gate_bias and up_bias as
 * mlx_gather_qmm_swiglu; down_bias as mlx_gather_qmm_combine's bias. Result [..., D] in
 * mlx_gather_qmm_combine's dtype. On CUDA streams one kernel launch; elsewhere the two fused ops. */
int mlx_switch_glu_combine(
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
    const mlx_stream s);

/* x [..., K] times one quantized matrix w (logical [N, K], transpose = true layout: w [N, K*bits/32],
 * scales and (affine) biases [N, K/group_size]) plus bias [N] (optional, may be the empty handle),
 * every dot product accumulated in float32 and rounded once: [..., N] in promote(projection dtype,
 * bias dtype). The linear layer of the fused model path. */
int mlx_fused_quantized_linear(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    mlx_optional_int group_size,
    mlx_optional_int bits,
    const char* mode,
    const mlx_array bias,
    const mlx_stream s);

/* Which configurations of the fused ops run a fused kernel on this build's GPU: a static string in
 * *res (on builds without CUDA it says that GPU streams take MLX's composed ops). */
int mlx_moe_gpu_coverage(const char** res);

/* The name of GPU `index` as the driver reports it ("" when there is no GPU). */
int mlx_moe_gpu_device_name(mlx_string* res, int index);

/* One CUDA translation unit with the fused kernels exactly as MLX's NVRTC compiles them at first
 * use, for a representative set of variants (the ahead-of-time compile check builds it with nvcc
 * for sm_90). */
int mlx_moe_cuda_check_source(mlx_string* res);

/* Threads the fused CPU kernels use (the calling MLX stream thread included). Default:
 * MLX_MOE_NUM_THREADS if set, else the number of hardware threads. n in 1..256. */
int mlx_moe_set_num_threads(int n);
int mlx_moe_num_threads(int* res);

/* SIMD level of the fused CPU kernels: "auto" (best supported), "avx512" (x86_64 with AVX-512
 * F/BW/VL/DQ and VNNI, besides AVX2: integer dot products for bfloat16 activations with
 * affine 2/4/8-bit and mxfp4/nvfp4 weights, everything else as "avx2"), "avx2" (x86_64 with AVX2,
 * FMA and F16C) or "portable". Setting an unsupported level is an error. mlx_moe_simd_level stores the
 * current level's name (a static string) in *res. */
int mlx_moe_set_simd_level(const char* level);
int mlx_moe_simd_level(const char** res);

#ifdef __cplusplus
}
#endif

#endif
