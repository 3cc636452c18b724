/* zmlx mlx-sys: Metal backend controls (mlx-c 0.7.0 compatible). On a build without Metal,
 * mlx_metal_is_available reports false and the other functions return an error. */
#ifndef MLX_METAL_H
#define MLX_METAL_H

#include <stdbool.h>

#include "mlx/c/string.h"

#ifdef __cplusplus
extern "C" {
#endif

int mlx_metal_get_metallib_path(mlx_string* res);
int mlx_metal_is_available(bool* res);
int mlx_metal_set_metallib_path(const char* path);
int mlx_metal_start_capture(const char* path);
int mlx_metal_stop_capture(void);

#ifdef __cplusplus
}
#endif

#endif
