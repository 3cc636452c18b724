// zmlx mlx-sys: process groups (distributed_group.h). The collective operations are generated
// (gen_distributed.cpp).
#include "mlx/c/private/capi.h"

using namespace mlxc;

extern "C" mlx_distributed_group mlx_distributed_group_new(void) {
  return mlx_distributed_group{nullptr};
}
extern "C" int mlx_distributed_group_free(mlx_distributed_group group) {
  return drop(group);
}
extern "C" int mlx_distributed_init(mlx_distributed_group* res, bool strict, const char* bk) {
  return guard([&] { put(res, mx::distributed::init(strict, bk ? std::string(bk) : std::string("any"))); });
}
extern "C" int mlx_distributed_group_rank(mlx_distributed_group group) {
  return guard_value(-1, [&] { return get(group).rank(); });
}
extern "C" int mlx_distributed_group_size(mlx_distributed_group group) {
  return guard_value(-1, [&] { return get(group).size(); });
}
extern "C" int mlx_distributed_group_split(mlx_distributed_group* res, mlx_distributed_group group, int color, int key) {
  return guard([&] { put(res, get(group).split(color, key)); });
}
extern "C" bool mlx_distributed_is_available(const char* bk) {
  return guard_value(false, [&] { return mx::distributed::is_available(bk ? std::string(bk) : std::string("any")); });
}
