// zmlx mlx-sys: memory statistics, version, and platform shims.
#include <chrono>

#include "mlx/c/private/capi.h"

using namespace mlxc;

extern "C" int mlx_clear_cache(void) {
  return guard([] { mx::clear_cache(); });
}
extern "C" int mlx_get_active_memory(size_t* res) {
  return guard([&] { out(res) = mx::get_active_memory(); });
}
extern "C" int mlx_get_cache_memory(size_t* res) {
  return guard([&] { out(res) = mx::get_cache_memory(); });
}
extern "C" int mlx_get_memory_limit(size_t* res) {
  return guard([&] { out(res) = mx::get_memory_limit(); });
}
extern "C" int mlx_get_peak_memory(size_t* res) {
  return guard([&] { out(res) = mx::get_peak_memory(); });
}
extern "C" int mlx_reset_peak_memory(void) {
  return guard([] { mx::reset_peak_memory(); });
}
extern "C" int mlx_set_cache_limit(size_t* res, size_t limit) {
  return guard([&] { out(res) = mx::set_cache_limit(limit); });
}
extern "C" int mlx_set_memory_limit(size_t* res, size_t limit) {
  return guard([&] { out(res) = mx::set_memory_limit(limit); });
}
extern "C" int mlx_set_wired_limit(size_t* res, size_t limit) {
  return guard([&] { out(res) = mx::set_wired_limit(limit); });
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

// --- metal.h, cuda.h ------------------------------------------------------------------------------------

namespace {

void need_metal() {
  if (!mx::metal::is_available()) {
    throw std::runtime_error("Metal is not available: this MLX build has no Metal backend");
  }
}

} // namespace

extern "C" int mlx_metal_is_available(bool* res) {
  return guard([&] {
    out(res) = mx::metal::is_available();
  });
}
// The metallib path is plain configuration, kept by MLX on every build.
extern "C" int mlx_metal_get_metallib_path(mlx_string* res) {
  return guard([&] { put(res, mx::metal::get_metallib_path()); });
}
extern "C" int mlx_metal_set_metallib_path(const char* path) {
  return guard([&] { mx::metal::set_metallib_path(str(path, "path")); });
}
extern "C" int mlx_metal_start_capture(const char* path) {
  return guard([&] {
    need_metal();
    mx::metal::start_capture(str(path, "path"));
  });
}
extern "C" int mlx_metal_stop_capture(void) {
  return guard([] {
    need_metal();
    mx::metal::stop_capture();
  });
}
extern "C" int mlx_cuda_is_available(bool* res) {
  return guard([&] {
    out(res) = mx::cu::is_available();
  });
}
