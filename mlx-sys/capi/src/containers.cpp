// zmlx mlx-sys: mlx_string, mlx_vector_*, mlx_map_string_to_*.
#include "mlx/c/private/capi.h"

using namespace mlxc;

// --- string -------------------------------------------------------------------------------------------

extern "C" mlx_string mlx_string_new(void) {
  return mlx_string{nullptr};
}
extern "C" mlx_string mlx_string_new_data(const char* s) {
  return guard_value(mlx_string{}, [&] { return make<mlx_string>(str(s, "mlx_string_new_data")); });
}
extern "C" int mlx_string_set(mlx_string* s, const mlx_string src) {
  return guard([&] { put(s, get(src)); });
}
extern "C" const char* mlx_string_data(mlx_string s) {
  return s.ctx ? get(s).c_str() : nullptr;
}
extern "C" int mlx_string_free(mlx_string s) {
  return drop(s);
}

// --- vectors ------------------------------------------------------------------------------------------

namespace {

// C element -> C++ element, for each vector kind.
inline mx::array elem(const mlx_array& a) {
  return get(a);
}
inline std::vector<mx::array> elem(const mlx_vector_array& v) {
  return get(v);
}
inline int elem(int v) {
  return v;
}
inline std::string elem(const char* s) {
  return str(s, "vector element");
}
inline mx::Stream elem(const mlx_stream& s) {
  return get(s);
}

template <class V, class E>
cpp_t<V> from_range(const E* data, size_t size) {
  if (data == nullptr && size != 0) {
    throw std::invalid_argument("null data with non-zero size");
  }
  cpp_t<V> out;
  out.reserve(size);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(elem(data[i]));
  }
  return out;
}

template <class V>
auto& at(V vec, size_t idx) {
  auto& v = get(vec);
  if (idx >= v.size()) {
    throw std::out_of_range(
        "index " + std::to_string(idx) + " out of range for a vector of size " + std::to_string(v.size()));
  }
  return v[idx];
}

template <class V>
size_t size_of(V vec) {
  return vec.ctx ? get(vec).size() : 0;
}

} // namespace

#define MLXC_VECTOR(NAME, VAL, PTR)                                                          \
  extern "C" mlx_vector_##NAME mlx_vector_##NAME##_new(void) {                               \
    return guard_value(mlx_vector_##NAME{}, [&] { return make<mlx_vector_##NAME>(cpp_t<mlx_vector_##NAME>{}); }); \
  }                                                                                          \
  extern "C" int mlx_vector_##NAME##_set(mlx_vector_##NAME* vec, const mlx_vector_##NAME src) { \
    return guard([&] { put(vec, get(src)); });                                               \
  }                                                                                          \
  extern "C" int mlx_vector_##NAME##_free(mlx_vector_##NAME vec) {                           \
    return drop(vec);                                                                        \
  }                                                                                          \
  extern "C" mlx_vector_##NAME mlx_vector_##NAME##_new_data(PTR data, size_t size) {         \
    return guard_value(mlx_vector_##NAME{}, [&] {                                            \
      return make<mlx_vector_##NAME>(from_range<mlx_vector_##NAME>(data, size));            \
    });                                                                                      \
  }                                                                                          \
  extern "C" mlx_vector_##NAME mlx_vector_##NAME##_new_value(VAL val) {                      \
    return guard_value(mlx_vector_##NAME{}, [&] {                                            \
      return make<mlx_vector_##NAME>(cpp_t<mlx_vector_##NAME>{elem(val)});                  \
    });                                                                                      \
  }                                                                                          \
  extern "C" int mlx_vector_##NAME##_set_data(mlx_vector_##NAME* vec, PTR data, size_t size) { \
    return guard([&] { put(vec, from_range<mlx_vector_##NAME>(data, size)); });             \
  }                                                                                          \
  extern "C" int mlx_vector_##NAME##_set_value(mlx_vector_##NAME* vec, VAL val) {            \
    return guard([&] { put(vec, cpp_t<mlx_vector_##NAME>{elem(val)}); });                   \
  }                                                                                          \
  extern "C" int mlx_vector_##NAME##_append_data(mlx_vector_##NAME vec, PTR data, size_t size) { \
    return guard([&] {                                                                       \
      auto more = from_range<mlx_vector_##NAME>(data, size);                                 \
      auto& v = get(vec);                                                                    \
      v.insert(v.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end())); \
    });                                                                                      \
  }                                                                                          \
  extern "C" int mlx_vector_##NAME##_append_value(mlx_vector_##NAME vec, VAL val) {          \
    return guard([&] { get(vec).push_back(elem(val)); });                                    \
  }                                                                                          \
  extern "C" size_t mlx_vector_##NAME##_size(mlx_vector_##NAME vec) {                        \
    return guard_value<size_t>(0, [&] { return size_of(vec); });                             \
  }

MLXC_VECTOR(array, const mlx_array, const mlx_array*)
MLXC_VECTOR(vector_array, const mlx_vector_array, const mlx_vector_array*)
MLXC_VECTOR(int, int, int*)
MLXC_VECTOR(string, const char*, const char**)
MLXC_VECTOR(stream, const mlx_stream, const mlx_stream*)
#undef MLXC_VECTOR

extern "C" int mlx_vector_array_get(mlx_array* res, const mlx_vector_array vec, size_t idx) {
  return guard([&] { put(res, at(vec, idx)); });
}
extern "C" int mlx_vector_vector_array_get(
    mlx_vector_array* res,
    const mlx_vector_vector_array vec,
    size_t idx) {
  return guard([&] { put(res, at(vec, idx)); });
}
extern "C" int mlx_vector_int_get(int* res, const mlx_vector_int vec, size_t idx) {
  return guard([&] { out(res) = at(vec, idx); });
}
extern "C" int mlx_vector_string_get(char** res, const mlx_vector_string vec, size_t idx) {
  // The characters stay owned by the vector (as in mlx-c).
  return guard([&] { out(res) = at(vec, idx).data(); });
}
extern "C" int mlx_vector_stream_get(mlx_stream* res, const mlx_vector_stream vec, size_t idx) {
  return guard([&] { put(res, at(vec, idx)); });
}

// --- maps ---------------------------------------------------------------------------------------------

namespace {

// Looks `key` up and hands the value to `store`: 0 if found, 2 if absent (no error), 1 on error.
template <class M, class Store>
int map_lookup(M map, const char* key, Store store) {
  int found = 0;
  int rc = guard([&] {
    auto& m = get(map);
    auto it = m.find(str(key, "map key"));
    if (it != m.end()) {
      store(it->second);
      found = 1;
    }
  });
  return rc ? rc : (found ? 0 : 2);
}

// Advances an iterator of map type `Map`, handing the entry to `store`: 0, or 2 at the end, 1 on error.
template <class Map, class It, class Store>
int iterator_next(const char** key, It it, Store store) {
  int done = 0;
  int rc = guard([&] {
    if (!it.ctx || !it.map_ctx) {
      throw std::invalid_argument("empty map iterator");
    }
    auto& i = *static_cast<typename Map::iterator*>(it.ctx);
    if (i == static_cast<Map*>(it.map_ctx)->end()) {
      done = 1;
      return;
    }
    out(key) = i->first.c_str();
    store(i->second);
    ++i;
  });
  return rc ? rc : (done ? 2 : 0);
}

} // namespace

extern "C" mlx_map_string_to_array mlx_map_string_to_array_new(void) {
  return guard_value(mlx_map_string_to_array{}, [] { return make<mlx_map_string_to_array>(ArrayMap{}); });
}
extern "C" int mlx_map_string_to_array_set(mlx_map_string_to_array* map, const mlx_map_string_to_array src) {
  return guard([&] { put(map, get(src)); });
}
extern "C" int mlx_map_string_to_array_free(mlx_map_string_to_array map) {
  return drop(map);
}
extern "C" int mlx_map_string_to_array_insert(mlx_map_string_to_array map, const char* key, const mlx_array value) {
  return guard([&] { get(map).insert_or_assign(str(key, "map key"), get(value)); });
}
extern "C" int mlx_map_string_to_array_get(mlx_array* value, const mlx_map_string_to_array map, const char* key) {
  return map_lookup(map, key, [&](const mx::array& v) { put(value, v); });
}
extern "C" mlx_map_string_to_array_iterator mlx_map_string_to_array_iterator_new(mlx_map_string_to_array map) {
  return guard_value(mlx_map_string_to_array_iterator{}, [&] {
    auto& m = get(map);
    return mlx_map_string_to_array_iterator{new ArrayMap::iterator(m.begin()), &m};
  });
}
extern "C" int mlx_map_string_to_array_iterator_free(mlx_map_string_to_array_iterator it) {
  delete static_cast<ArrayMap::iterator*>(it.ctx);
  return 0;
}
extern "C" int mlx_map_string_to_array_iterator_next(
    const char** key,
    mlx_array* value,
    mlx_map_string_to_array_iterator it) {
  return iterator_next<ArrayMap>(key, it, [&](const mx::array& v) { put(value, v); });
}

extern "C" mlx_map_string_to_string mlx_map_string_to_string_new(void) {
  return guard_value(mlx_map_string_to_string{}, [] { return make<mlx_map_string_to_string>(StringMap{}); });
}
extern "C" int mlx_map_string_to_string_set(mlx_map_string_to_string* map, const mlx_map_string_to_string src) {
  return guard([&] { put(map, get(src)); });
}
extern "C" int mlx_map_string_to_string_free(mlx_map_string_to_string map) {
  return drop(map);
}
extern "C" int mlx_map_string_to_string_insert(mlx_map_string_to_string map, const char* key, const char* value) {
  return guard([&] { get(map).insert_or_assign(str(key, "map key"), str(value, "map value")); });
}
extern "C" int mlx_map_string_to_string_get(const char** value, const mlx_map_string_to_string map, const char* key) {
  return map_lookup(map, key, [&](const std::string& v) { out(value) = v.c_str(); });
}
extern "C" mlx_map_string_to_string_iterator mlx_map_string_to_string_iterator_new(mlx_map_string_to_string map) {
  return guard_value(mlx_map_string_to_string_iterator{}, [&] {
    auto& m = get(map);
    return mlx_map_string_to_string_iterator{new StringMap::iterator(m.begin()), &m};
  });
}
extern "C" int mlx_map_string_to_string_iterator_free(mlx_map_string_to_string_iterator it) {
  delete static_cast<StringMap::iterator*>(it.ctx);
  return 0;
}
extern "C" int mlx_map_string_to_string_iterator_next(
    const char** key,
    const char** value,
    mlx_map_string_to_string_iterator it) {
  return iterator_next<StringMap>(key, it, [&](const std::string& v) { out(value) = v.c_str(); });
}
