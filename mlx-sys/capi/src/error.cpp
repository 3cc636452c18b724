// zmlx mlx-sys: error handler of the C API. The default never exits the process.
#include <cstdarg>
#include <cstdio>
#include <mutex>

#include "mlx/c/private/capi.h"

namespace {

struct Handler {
  mlx_error_handler_func fn = nullptr;
  void* data = nullptr;
  void (*dtor)(void*) = nullptr;
};

std::mutex& handler_mutex() {
  static std::mutex m;
  return m;
}

Handler& handler() {
  static Handler h;
  return h;
}

thread_local std::string last_error;
thread_local unsigned long errors_reported = 0;

} // namespace

namespace mlxc {

unsigned long error_count() {
  return errors_reported;
}

const char* last_error_message() {
  return last_error.c_str();
}

void report_error(const char* msg) {
  last_error = msg ? msg : "";
  ++errors_reported;
  Handler h;
  {
    std::lock_guard<std::mutex> lock(handler_mutex());
    h = handler();
  }
  if (h.fn) {
    h.fn(last_error.c_str(), h.data);
  }
}

} // namespace mlxc

extern "C" void mlx_set_error_handler(
    mlx_error_handler_func fn,
    void* data,
    void (*dtor)(void*)) {
  Handler old;
  {
    std::lock_guard<std::mutex> lock(handler_mutex());
    old = handler();
    handler() = Handler{fn, data, dtor};
  }
  if (old.dtor) {
    old.dtor(old.data);
  }
}

extern "C" void _mlx_error(const char* file, const int line, const char* fmt, ...) {
  char buf[4096];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt ? fmt : "(null)", args);
  va_end(args);
  std::string msg(buf);
  if (file) {
    msg += " at ";
    msg += file;
    msg += ":";
    msg += std::to_string(line);
  }
  mlxc::report_error(msg.c_str());
}

extern "C" const char* mlx_last_error(void) {
  return last_error.c_str();
}

extern "C" void mlx_clear_last_error(void) {
  last_error.clear();
}
