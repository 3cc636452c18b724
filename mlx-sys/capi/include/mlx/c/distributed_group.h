/* zmlx mlx-sys: groups of processes for distributed communication (mlx-c 0.7.0 compatible). */
#ifndef MLX_DISTRIBUTED_GROUP_H
#define MLX_DISTRIBUTED_GROUP_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mlx_distributed_group_ {
  void* ctx;
} mlx_distributed_group;

mlx_distributed_group mlx_distributed_group_new(void);
int mlx_distributed_group_free(mlx_distributed_group group);
/* Initializes backend `bk` ("any", "ring", "mpi", ...); `strict` makes an unavailable backend an
 * error instead of a group of size 1. */
int mlx_distributed_init(mlx_distributed_group* res, bool strict, const char* bk);
/* Rank and size of the group (-1 on error). */
int mlx_distributed_group_rank(mlx_distributed_group group);
int mlx_distributed_group_size(mlx_distributed_group group);
int mlx_distributed_group_split(
    mlx_distributed_group* res,
    mlx_distributed_group group,
    int color,
    int key);
bool mlx_distributed_is_available(const char* bk);

#ifdef __cplusplus
}
#endif

#endif
