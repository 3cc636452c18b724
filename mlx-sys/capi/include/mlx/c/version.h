/* zmlx mlx-sys: version of the linked MLX (mlx-c 0.7.0 compatible). */
#ifndef MLX_VERSION_H
#define MLX_VERSION_H

#include "mlx/c/string.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets *str_ to the version string of the linked libmlx. */
int mlx_version(mlx_string* str_);

#ifdef __cplusplus
}
#endif

#endif
