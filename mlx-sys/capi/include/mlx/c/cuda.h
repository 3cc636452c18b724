/* zmlx mlx-sys: CUDA backend query (mlx-c 0.7.0 compatible). */
#ifndef MLX_CUDA_H
#define MLX_CUDA_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

int mlx_cuda_is_available(bool* res);

#ifdef __cplusplus
}
#endif

#endif
