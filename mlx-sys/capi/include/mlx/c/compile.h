/* zmlx mlx-sys: compilation of closures (mlx-c 0.7.0 compatible). */
#ifndef MLX_COMPILE_H
#define MLX_COMPILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mlx/c/closure.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mlx_compile_mode_ {
  MLX_COMPILE_MODE_DISABLED,
  MLX_COMPILE_MODE_NO_SIMPLIFY,
  MLX_COMPILE_MODE_NO_FUSE,
  MLX_COMPILE_MODE_ENABLED
} mlx_compile_mode;

/* A (weak) reference to MLX's cache of compiled functions. */
typedef struct mlx_compile_cache_ {
  void* ctx;
} mlx_compile_cache;
mlx_compile_cache mlx_compile_cache_new();
int mlx_compile_cache_free(mlx_compile_cache cache);

int mlx_compile(mlx_closure* res, const mlx_closure fun, bool shapeless);
/* Compiles `fun` under the cache key `fun_id` (with extra key words `constants`). */
int mlx_detail_compile(
    mlx_closure* res,
    const mlx_closure fun,
    uintptr_t fun_id,
    bool shapeless,
    const uint64_t* constants,
    size_t constants_num);
int mlx_detail_compile_cache(mlx_compile_cache* res);
int mlx_detail_compile_clear_cache(const mlx_compile_cache cache);
int mlx_detail_compile_erase(const mlx_compile_cache cache, uintptr_t fun_id);
int mlx_disable_compile(void);
int mlx_enable_compile(void);
int mlx_set_compile_mode(mlx_compile_mode mode);

#ifdef __cplusplus
}
#endif

#endif
