/* zmlx mlx-sys: half-precision storage types of the C API (mlx-c 0.7.0 compatible names). */
#ifndef MLX_HALF_H
#define MLX_HALF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Declared on every architecture (mlx-c declares them on Arm only): callers on x86_64 use the
 * float16/bfloat16 accessors too. Both are 16-bit IEEE half / bfloat16 bit patterns. */
#define HAS_FLOAT16
#define HAS_BFLOAT16

#if defined(__aarch64__) || defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
#include <arm_fp16.h>
typedef __fp16 float16_t;
#elif defined(__clang__) && !defined(__cplusplus)
/* clang accepts __fp16 as a storage-only type on every target. */
typedef __fp16 float16_t;
#else
/* Same size and alignment as a half; the C API only stores and loads these bits. */
typedef uint16_t float16_t;
#endif

#if defined(__aarch64__) && defined(__ARM_FEATURE_BF16)
#include <arm_bf16.h>
typedef __bf16 bfloat16_t;
#else
typedef uint16_t bfloat16_t;
#endif

#ifdef __cplusplus
}
#endif

#endif
