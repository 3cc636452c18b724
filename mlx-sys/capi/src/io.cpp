// zmlx mlx-sys: loading and saving (io.h) and the custom reader/writer and GGUF objects (io_types.h).
#include <cstdio>

#include "mlx/c/private/capi.h"

using namespace mlxc;

namespace {

// The MLX reader (Base = mx::io::Reader) or writer (mx::io::Writer) whose operations are the C
// callbacks of a vtable, called with `desc`. `free(desc)` runs when the last reference (a handle or a
// lazy array) is gone. A missing callback, a failing seek and a short transfer are errors.
template <class Base>
class VtableIO : public Base {
 public:
  VtableIO(void* desc, const mlx_io_vtable& vt) : desc_(desc), vt_(vt) {}
  VtableIO(const VtableIO&) = delete;
  VtableIO& operator=(const VtableIO&) = delete;
  ~VtableIO() override {
    if (vt_.free) {
      vt_.free(desc_);
    }
  }
  void* desc() const {
    return desc_;
  }
  bool is_open() const override {
    return need(vt_.is_open, "is_open")(desc_);
  }
  bool good() const override {
    return need(vt_.good, "good")(desc_);
  }
  size_t tell() override {
    return need(vt_.tell, "tell")(desc_);
  }
  void seek(int64_t off, std::ios_base::seekdir way = std::ios_base::beg) override {
    int whence = way == std::ios_base::beg ? SEEK_SET : way == std::ios_base::cur ? SEEK_CUR : SEEK_END;
    if (need(vt_.seek, "seek")(desc_, off, whence) != 0) {
      throw std::runtime_error("[" + label() + "] seek failed");
    }
  }
  std::string label() const override {
    const char* l = vt_.label ? vt_.label(desc_) : nullptr;
    return l ? std::string(l) : std::string("custom io");
  }

 protected:
  template <class F>
  F need(F f, const char* what) const {
    if (f == nullptr) {
      throw std::invalid_argument(std::string("mlx_io_vtable: no `") + what + "` callback");
    }
    return f;
  }
  void expect(size_t got, size_t n, const char* op) const {
    if (got != n) {
      throw std::runtime_error(
          "[" + label() + "] " + op + " transferred " + std::to_string(got) + " of " + std::to_string(n) + " bytes");
    }
  }

  void* desc_;
  mlx_io_vtable vt_;
};

class CReader final : public VtableIO<mx::io::Reader> {
 public:
  using VtableIO::VtableIO;
  void read(char* data, size_t n) override {
    expect(need(vt_.read, "read")(desc_, data, n), n, "read");
  }
  void read(char* data, size_t n, size_t offset) override {
    expect(need(vt_.read_at_offset, "read_at_offset")(desc_, data, n, offset), n, "read");
  }
};

class CWriter final : public VtableIO<mx::io::Writer> {
 public:
  using VtableIO::VtableIO;
  void write(const char* data, size_t n) override {
    expect(need(vt_.write, "write")(desc_, data, n), n, "write");
  }
};

} // namespace

MLXC_HANDLE(mlx_io_reader, std::shared_ptr<CReader>)
MLXC_HANDLE(mlx_io_writer, std::shared_ptr<CWriter>)
MLXC_HANDLE(mlx_io_gguf, mx::GGUFLoad)

// --- io_types.h: readers and writers -----------------------------------------------------------------

#define MLXC_IO(H, T)                                                                  \
  extern "C" H H##_new(void* desc, mlx_io_vtable vtable) {                             \
    return guard_value(H{}, [&] { return make<H>(std::make_shared<T>(desc, vtable)); }); \
  }                                                                                    \
  extern "C" int H##_descriptor(void** desc_, H io) {                                  \
    return guard([&] {                                                                 \
      out(desc_) = get(io)->desc(); \
    });                                                                                \
  }                                                                                    \
  extern "C" int H##_tostring(mlx_string* str_, H io) {                                \
    return guard([&] { put(str_, get(io)->label()); });                                \
  }                                                                                    \
  extern "C" int H##_free(H io) {                                                      \
    return drop(io);                                                                   \
  }
MLXC_IO(mlx_io_reader, CReader)
MLXC_IO(mlx_io_writer, CWriter)
#undef MLXC_IO

// --- io_types.h: GGUF contents ------------------------------------------------------------------------

namespace {

// mlx-c's statuses for GGUF lookups, returned without reporting an error: no such key, or the key
// holds metadata of another kind.
constexpr int kNotFound = 2;
constexpr int kWrongKind = 3;

// Runs `found(entry)` on the metadata entry `key`; the status is 0, kNotFound, kWrongKind (when
// `found` returns false) or 1 after an error.
template <class F>
int gguf_meta(mlx_io_gguf io, const char* key, F found) {
  int status = 0;
  int rc = guard([&] {
    auto& meta = get(io).second;
    auto it = meta.find(str(key, "key"));
    status = it == meta.end() ? kNotFound : found(it->second) ? 0 : kWrongKind;
  });
  return rc ? rc : status;
}

template <class T, class H>
int gguf_get(H* res, mlx_io_gguf io, const char* key) {
  return gguf_meta(io, key, [&](const mx::GGUFMetaData& v) {
    auto p = std::get_if<T>(&v);
    if (p) {
      put(res, *p);
    }
    return p != nullptr;
  });
}

// 0 with *flag telling whether `key` holds a T; kNotFound (and *flag false) for an absent key.
template <class T>
int gguf_has(bool* flag, mlx_io_gguf io, const char* key) {
  bool present = false;
  int status = gguf_meta(io, key, [&](const mx::GGUFMetaData& v) {
    present = std::holds_alternative<T>(v);
    return true;
  });
  int rc = guard([&] { out(flag) = present; });
  return rc ? rc : status;
}

// Stores value() (evaluated inside the guard) as metadata `key`.
template <class F>
int gguf_set(mlx_io_gguf io, const char* key, F value) {
  return guard([&] { get(io).second.insert_or_assign(str(key, "key"), mx::GGUFMetaData(value())); });
}

} // namespace

extern "C" mlx_io_gguf mlx_io_gguf_new(void) {
  return guard_value(mlx_io_gguf{}, [] { return make<mlx_io_gguf>(mx::GGUFLoad{}); });
}
extern "C" int mlx_io_gguf_free(mlx_io_gguf io) {
  return drop(io);
}
extern "C" int mlx_io_gguf_get_keys(mlx_vector_string* keys, mlx_io_gguf io) {
  return guard([&] {
    std::vector<std::string> out;
    for (auto& [k, _] : get(io).first) {
      out.push_back(k);
    }
    put(keys, std::move(out));
  });
}
extern "C" int mlx_io_gguf_get_array(mlx_array* arr, mlx_io_gguf io, const char* key) {
  int status = 0;
  int rc = guard([&] {
    auto& arrays = get(io).first;
    auto it = arrays.find(str(key, "key"));
    if (it == arrays.end()) {
      status = kNotFound;
    } else {
      put(arr, it->second);
    }
  });
  return rc ? rc : status;
}
extern "C" int mlx_io_gguf_get_metadata_array(mlx_array* arr, mlx_io_gguf io, const char* key) {
  return gguf_get<mx::array>(arr, io, key);
}
extern "C" int mlx_io_gguf_get_metadata_string(mlx_string* s, mlx_io_gguf io, const char* key) {
  return gguf_get<std::string>(s, io, key);
}
extern "C" int mlx_io_gguf_get_metadata_vector_string(mlx_vector_string* vstr, mlx_io_gguf io, const char* key) {
  return gguf_get<std::vector<std::string>>(vstr, io, key);
}
extern "C" int mlx_io_gguf_has_metadata_array(bool* flag, mlx_io_gguf io, const char* key) {
  return gguf_has<mx::array>(flag, io, key);
}
extern "C" int mlx_io_gguf_has_metadata_string(bool* flag, mlx_io_gguf io, const char* key) {
  return gguf_has<std::string>(flag, io, key);
}
extern "C" int mlx_io_gguf_has_metadata_vector_string(bool* flag, mlx_io_gguf io, const char* key) {
  return gguf_has<std::vector<std::string>>(flag, io, key);
}
extern "C" int mlx_io_gguf_set_array(mlx_io_gguf io, const char* key, const mlx_array arr) {
  return guard([&] { get(io).first.insert_or_assign(str(key, "key"), get(arr)); });
}
extern "C" int mlx_io_gguf_set_metadata_array(mlx_io_gguf io, const char* key, const mlx_array marr) {
  return gguf_set(io, key, [&] { return get(marr); });
}
extern "C" int mlx_io_gguf_set_metadata_string(mlx_io_gguf io, const char* key, const char* mstr) {
  return gguf_set(io, key, [&] { return str(mstr, "mstr"); });
}
extern "C" int mlx_io_gguf_set_metadata_vector_string(
    mlx_io_gguf io,
    const char* key,
    const mlx_vector_string mvstr) {
  return gguf_set(io, key, [&] { return get(mvstr); });
}

// --- io.h ---------------------------------------------------------------------------------------------

extern "C" int mlx_load_reader(mlx_array* res, mlx_io_reader in_stream, const mlx_stream s) {
  return guard([&] { put(res, mx::load(get(in_stream), stream(s))); });
}
extern "C" int mlx_load(mlx_array* res, const char* file, const mlx_stream s) {
  return guard([&] { put(res, mx::load(str(file, "file"), stream(s))); });
}
extern "C" int mlx_load_gguf(mlx_io_gguf* gguf, const char* file, const mlx_stream s) {
  return guard([&] { put(gguf, mx::load_gguf(str(file, "file"), stream(s))); });
}
extern "C" int mlx_load_safetensors_reader(
    mlx_map_string_to_array* res_0,
    mlx_map_string_to_string* res_1,
    mlx_io_reader in_stream,
    const mlx_stream s) {
  return put_pair(res_0, res_1, [&] { return mx::load_safetensors(get(in_stream), stream(s)); });
}
extern "C" int mlx_load_safetensors(
    mlx_map_string_to_array* res_0,
    mlx_map_string_to_string* res_1,
    const char* file,
    const mlx_stream s) {
  return put_pair(res_0, res_1, [&] { return mx::load_safetensors(str(file, "file"), stream(s)); });
}
extern "C" int mlx_save_writer(mlx_io_writer out_stream, const mlx_array a) {
  return guard([&] { mx::save(get(out_stream), get(a)); });
}
extern "C" int mlx_save(const char* file, const mlx_array a) {
  return guard([&] { mx::save(str(file, "file"), get(a)); });
}
extern "C" int mlx_save_gguf(const char* file, mlx_io_gguf gguf) {
  return guard([&] {
    auto& g = get(gguf);
    mx::save_gguf(str(file, "file"), g.first, g.second);
  });
}
extern "C" int mlx_save_safetensors_writer(
    mlx_io_writer in_stream,
    const mlx_map_string_to_array param,
    const mlx_map_string_to_string metadata) {
  return guard([&] {
    mx::save_safetensors(get(in_stream), get(param), metadata.ctx ? get(metadata) : StringMap{});
  });
}
extern "C" int mlx_save_safetensors(
    const char* file,
    const mlx_map_string_to_array param,
    const mlx_map_string_to_string metadata) {
  return guard([&] {
    mx::save_safetensors(str(file, "file"), get(param), metadata.ctx ? get(metadata) : StringMap{});
  });
}
