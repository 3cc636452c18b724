/* zmlx mlx-sys: printing computation graphs (mlx-c 0.7.0 compatible). */
#ifndef MLX_GRAPH_UTILS_H
#define MLX_GRAPH_UTILS_H

#include <stdio.h>

#include "mlx/c/array.h"
#include "mlx/c/vector.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Names for arrays in printed graphs (unnamed arrays get generated names). */
typedef struct mlx_node_namer_ {
  void* ctx;
} mlx_node_namer;
mlx_node_namer mlx_node_namer_new();
int mlx_node_namer_free(mlx_node_namer namer);
int mlx_node_namer_set_name(mlx_node_namer namer, const mlx_array arr, const char* name);
/* `*name` stays valid while the namer lives and the name of `arr` is unchanged. */
int mlx_node_namer_get_name(const char** name, mlx_node_namer namer, const mlx_array arr);
/* `namer` may be the empty handle. */
int mlx_export_to_dot(FILE* os, const mlx_node_namer namer, const mlx_vector_array outputs);
int mlx_print_graph(FILE* os, const mlx_node_namer namer, const mlx_vector_array outputs);

#ifdef __cplusplus
}
#endif

#endif
