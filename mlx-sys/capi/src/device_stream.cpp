// zmlx mlx-sys: mlx_device, mlx_device_info, mlx_stream, mlx_stream_thread_local.
#include <sstream>
#include <variant>

#include "mlx/c/private/capi.h"

using namespace mlxc;

namespace {

using DeviceInfo = std::unordered_map<std::string, std::variant<std::string, size_t>>;

mx::Device::DeviceType device_type(const mlx_device_type& t) {
  switch (enum_int(t)) {
    case MLX_CPU:
      return mx::Device::cpu;
    case MLX_GPU:
      return mx::Device::gpu;
  }
  throw std::invalid_argument("invalid mlx_device_type value " + std::to_string(enum_int(t)));
}

const DeviceInfo& info_of(mlx_device_info info) {
  if (info.ctx == nullptr) {
    throw std::invalid_argument("empty mlx_device_info handle");
  }
  return *static_cast<const DeviceInfo*>(info.ctx);
}

const std::variant<std::string, size_t>& info_value(mlx_device_info info, const char* key) {
  auto& m = info_of(info);
  auto it = m.find(str(key, "device info key"));
  if (it == m.end()) {
    throw std::invalid_argument(std::string("no device info key '") + key + "'");
  }
  return it->second;
}

mx::ThreadLocalStream& tls_of(mlx_stream_thread_local tls) {
  if (tls.ctx == nullptr) {
    throw std::invalid_argument("empty mlx_stream_thread_local handle");
  }
  return *static_cast<mx::ThreadLocalStream*>(tls.ctx);
}

} // namespace

// --- device ---------------------------------------------------------------------------------------------

extern "C" mlx_device mlx_device_new(void) {
  return mlx_device{nullptr};
}
extern "C" mlx_device mlx_device_new_type(mlx_device_type type, int index) {
  return guard_value(mlx_device{}, [&] {
    if (index < 0) {
      throw std::invalid_argument("negative device index");
    }
    return make<mlx_device>(mx::Device(device_type(type), index));
  });
}
extern "C" int mlx_device_free(mlx_device dev) {
  return drop(dev);
}
extern "C" int mlx_device_set(mlx_device* dev, const mlx_device src) {
  return guard([&] { put(dev, get(src)); });
}
extern "C" int mlx_device_tostring(mlx_string* s, mlx_device dev) {
  return guard([&] {
    std::ostringstream os;
    os << get(dev);
    put(s, os.str());
  });
}
extern "C" bool mlx_device_equal(mlx_device lhs, mlx_device rhs) {
  return guard_value(false, [&] { return get(lhs) == get(rhs); });
}
extern "C" int mlx_device_get_index(int* index, mlx_device dev) {
  return guard([&] { out(index) = get(dev).index; });
}
extern "C" int mlx_device_get_type(mlx_device_type* type, mlx_device dev) {
  return guard([&] { out(type) = get(dev).type == mx::Device::cpu ? MLX_CPU : MLX_GPU; });
}
extern "C" int mlx_get_default_device(mlx_device* dev) {
  return guard([&] { put(dev, mx::default_device()); });
}
extern "C" int mlx_set_default_device(mlx_device dev) {
  return guard([&] { mx::set_default_device(get(dev)); });
}
extern "C" int mlx_device_is_available(bool* avail, mlx_device dev) {
  return guard([&] { out(avail) = mx::is_available(get(dev)); });
}
extern "C" int mlx_device_count(int* count, mlx_device_type type) {
  return guard([&] { out(count) = mx::device_count(device_type(type)); });
}

extern "C" mlx_device_info mlx_device_info_new(void) {
  return mlx_device_info{nullptr};
}
extern "C" int mlx_device_info_get(mlx_device_info* info, mlx_device dev) {
  return guard([&] {
    if (info == nullptr) {
      throw std::invalid_argument("null mlx_device_info result pointer");
    }
    auto copy = mx::device_info(get(dev));
    if (info->ctx) {
      *static_cast<DeviceInfo*>(info->ctx) = std::move(copy);
    } else {
      info->ctx = new DeviceInfo(std::move(copy));
    }
  });
}
extern "C" int mlx_device_info_free(mlx_device_info info) {
  delete static_cast<DeviceInfo*>(info.ctx);
  return 0;
}
extern "C" int mlx_device_info_has_key(bool* exists, mlx_device_info info, const char* key) {
  return guard([&] { out(exists) = info_of(info).count(str(key, "device info key")) > 0; });
}
extern "C" int mlx_device_info_is_string(bool* is_string, mlx_device_info info, const char* key) {
  return guard([&] { out(is_string) = std::holds_alternative<std::string>(info_value(info, key)); });
}
extern "C" int mlx_device_info_get_string(const char** value, mlx_device_info info, const char* key) {
  return guard([&] {
    auto& v = info_value(info, key);
    if (!std::holds_alternative<std::string>(v)) {
      throw std::invalid_argument(std::string("device info '") + key + "' is not a string");
    }
    out(value) = std::get<std::string>(v).c_str();
  });
}
extern "C" int mlx_device_info_get_size(size_t* value, mlx_device_info info, const char* key) {
  return guard([&] {
    auto& v = info_value(info, key);
    if (!std::holds_alternative<size_t>(v)) {
      throw std::invalid_argument(std::string("device info '") + key + "' is not a size");
    }
    out(value) = std::get<size_t>(v);
  });
}
extern "C" int mlx_device_info_get_keys(mlx_vector_string* keys, mlx_device_info info) {
  return guard([&] {
    std::vector<std::string> out;
    for (auto& [k, v] : info_of(info)) {
      out.push_back(k);
    }
    put(keys, std::move(out));
  });
}

// --- stream ---------------------------------------------------------------------------------------------

extern "C" mlx_stream mlx_stream_new(void) {
  return mlx_stream{nullptr};
}
extern "C" mlx_stream mlx_stream_new_device(mlx_device dev) {
  return guard_value(mlx_stream{}, [&] { return make<mlx_stream>(mx::new_stream(get(dev))); });
}
extern "C" mlx_stream mlx_stream_new_thread_unsafe(mlx_device dev) {
  return guard_value(mlx_stream{}, [&] { return make<mlx_stream>(mx::new_thread_unsafe_stream(get(dev))); });
}
extern "C" mlx_stream_thread_local mlx_stream_thread_local_new(mlx_device dev) {
  return guard_value(mlx_stream_thread_local{}, [&] {
    return mlx_stream_thread_local{new mx::ThreadLocalStream(mx::new_thread_local_stream(get(dev)))};
  });
}
extern "C" int mlx_stream_thread_local_set(mlx_stream_thread_local* tls, const mlx_stream_thread_local src) {
  return guard([&] {
    auto& s = tls_of(src);
    if (tls->ctx) {
      *static_cast<mx::ThreadLocalStream*>(tls->ctx) = s;
    } else {
      tls->ctx = new mx::ThreadLocalStream(s);
    }
  });
}
extern "C" int mlx_stream_thread_local_free(mlx_stream_thread_local tls) {
  delete static_cast<mx::ThreadLocalStream*>(tls.ctx);
  return 0;
}
extern "C" int mlx_stream_from_thread_local(mlx_stream* res, const mlx_stream_thread_local tls) {
  return guard([&] { put(res, mx::stream_from_thread_local_stream(tls_of(tls))); });
}
extern "C" int mlx_get_streams(mlx_vector_stream* res) {
  return guard([&] { put(res, mx::get_streams()); });
}
extern "C" int mlx_stream_set(mlx_stream* stream, const mlx_stream src) {
  return guard([&] { put(stream, get(src)); });
}
extern "C" int mlx_stream_free(mlx_stream stream) {
  return drop(stream);
}
extern "C" int mlx_stream_tostring(mlx_string* s, mlx_stream stream) {
  return guard([&] {
    std::ostringstream os;
    os << get(stream);
    put(s, os.str());
  });
}
extern "C" bool mlx_stream_equal(mlx_stream lhs, mlx_stream rhs) {
  return guard_value(false, [&] { return get(lhs) == get(rhs); });
}
extern "C" int mlx_stream_get_device(mlx_device* dev, mlx_stream stream) {
  return guard([&] { put(dev, get(stream).device); });
}
extern "C" int mlx_stream_get_index(int* index, mlx_stream stream) {
  return guard([&] { out(index) = get(stream).index; });
}
extern "C" int mlx_synchronize(mlx_stream stream) {
  return guard([&] { mx::synchronize(get(stream)); });
}
extern "C" int mlx_synchronize_default(void) {
  return guard([&] { mx::synchronize(); });
}
extern "C" int mlx_synchronize_thread_local(mlx_stream_thread_local tls) {
  return guard([&] { mx::synchronize(tls_of(tls)); });
}
extern "C" int mlx_clear_streams(void) {
  return guard([&] { mx::clear_streams(); });
}
extern "C" int mlx_get_default_stream(mlx_stream* stream, mlx_device dev) {
  return guard([&] { put(stream, mx::default_stream(get(dev))); });
}
extern "C" int mlx_set_default_stream(mlx_stream stream) {
  return guard([&] { mx::set_default_stream(get(stream)); });
}
extern "C" mlx_stream mlx_default_cpu_stream_new(void) {
  return guard_value(mlx_stream{}, [&] { return make<mlx_stream>(mx::default_stream(mx::Device(mx::Device::cpu))); });
}
extern "C" mlx_stream mlx_default_gpu_stream_new(void) {
  return guard_value(mlx_stream{}, [&] { return make<mlx_stream>(mx::default_stream(mx::Device(mx::Device::gpu))); });
}
