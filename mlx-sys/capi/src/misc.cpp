// zmlx mlx-sys: memory statistics, version, and platform shims.
#include <chrono>

#include "mlx/c/private/capi.h"

using namespace mlxc;

extern "C" int mlx_clear_cache(void) {
  return guard([] { mx::clear_cache(); });
}
extern "C" int mlx_get_active_memory(size_t* res) {
  return guard([&] { *res = mx::get_active_memory(); });
}
extern "C" int mlx_get_cache_memory(size_t* res) {
  return guard([&] { *res = mx::get_cache_memory(); });
}
extern "C" int mlx_get_memory_limit(size_t* res) {
  return guard([&] { *res = mx::get_memory_limit(); });
}
extern "C" int mlx_get_peak_memory(size_t* res) {
  return guard([&] { *res = mx::get_peak_memory(); });
}
extern "C" int mlx_reset_peak_memory(void) {
  return guard([] { mx::reset_peak_memory(); });
}
extern "C" int mlx_set_cache_limit(size_t* res, size_t limit) {
  return guard([&] { *res = mx::set_cache_limit(limit); });
}
extern "C" int mlx_set_memory_limit(size_t* res, size_t limit) {
  return guard([&] { *res = mx::set_memory_limit(limit); });
}
extern "C" int mlx_set_wired_limit(size_t* res, size_t limit) {
  return guard([&] { *res = mx::set_wired_limit(limit); });
}

extern "C" int mlx_version(mlx_string* s) {
  return guard([&] { put(s, std::string(mx::version())); });
}

#if !defined(__APPLE__)
// mlx-rs seeds RandomState from mach_approximate_time() (a macOS call); elsewhere we provide it:
// a monotonic clock in nanoseconds.
extern "C" __attribute__((visibility("default"))) uint64_t mach_approximate_time(void) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::steady_clock::now().time_since_epoch())
          .count());
}
#endif
