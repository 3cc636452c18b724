// zmlx mlx-sys: exporting/importing functions (export.h) and printing graphs (graph_utils.h).
#include <cstdio>
#include <sstream>

#include "mlx/c/private/capi.h"

#include <mlx/export_impl.h>
#include <mlx/graph_utils.h>

using namespace mlxc;

MLXC_HANDLE(mlx_function_exporter, mx::FunctionExporter)
MLXC_HANDLE(mlx_imported_function, mx::ImportedFunction)
MLXC_HANDLE(mlx_node_namer, mx::NodeNamer)

namespace {

// An args-and-kwargs function for MLX's exporter, from a closure that takes positional arrays only.
std::function<Arrays(const Arrays&, const ArrayMap&)> positional(ClosureFn fn) {
  return [fn = std::move(fn)](const Arrays& args, const ArrayMap& kwargs) {
    if (!kwargs.empty()) {
      throw std::invalid_argument("this exported function takes no keyword arguments");
    }
    return fn(args);
  };
}

const ArrayMap& kwargs_of(mlx_map_string_to_array kwargs) {
  static const ArrayMap none;
  return kwargs.ctx ? get(kwargs) : none;
}

void write_all(FILE* os, const std::string& text) {
  if (os == nullptr) {
    throw std::invalid_argument("null FILE*");
  }
  if (std::fwrite(text.data(), 1, text.size(), os) != text.size()) {
    throw std::runtime_error("writing the graph failed");
  }
}

const mx::NodeNamer& namer_of(mlx_node_namer namer) {
  static const mx::NodeNamer none;
  return namer.ctx ? get(namer) : none;
}

} // namespace

// --- export.h ------------------------------------------------------------------------------------------

extern "C" int mlx_export_function(const char* file, const mlx_closure fun, const mlx_vector_array args, bool shapeless) {
  return guard([&] { mx::export_function(str(file, "file"), get(fun), get(args), shapeless); });
}
extern "C" int mlx_export_function_kwargs(
    const char* file,
    const mlx_closure_kwargs fun,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs,
    bool shapeless) {
  return guard([&] {
    mx::export_function(str(file, "file"), get(fun), get(args), kwargs_of(kwargs), shapeless);
  });
}
extern "C" mlx_function_exporter mlx_function_exporter_new(const char* file, const mlx_closure fun, bool shapeless) {
  return guard_value(mlx_function_exporter{}, [&] {
    return make<mlx_function_exporter>(mx::exporter(str(file, "file"), positional(get(fun)), shapeless));
  });
}
extern "C" int mlx_function_exporter_free(mlx_function_exporter xfunc) {
  return drop(xfunc);
}
extern "C" int mlx_function_exporter_apply(const mlx_function_exporter xfunc, const mlx_vector_array args) {
  return guard([&] { get(xfunc)(get(args)); });
}
extern "C" int mlx_function_exporter_apply_kwargs(
    const mlx_function_exporter xfunc,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs) {
  return guard([&] { get(xfunc)(get(args), kwargs_of(kwargs)); });
}
extern "C" mlx_imported_function mlx_imported_function_new(const char* file) {
  return guard_value(mlx_imported_function{}, [&] {
    return make<mlx_imported_function>(mx::import_function(str(file, "file")));
  });
}
extern "C" int mlx_imported_function_free(mlx_imported_function xfunc) {
  return drop(xfunc);
}
extern "C" int mlx_imported_function_apply(
    mlx_vector_array* res,
    const mlx_imported_function xfunc,
    const mlx_vector_array args) {
  return guard([&] { put(res, get(xfunc)(get(args))); });
}
extern "C" int mlx_imported_function_apply_kwargs(
    mlx_vector_array* res,
    const mlx_imported_function xfunc,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs) {
  return guard([&] { put(res, get(xfunc)(get(args), kwargs_of(kwargs))); });
}

// --- graph_utils.h -------------------------------------------------------------------------------------

extern "C" mlx_node_namer mlx_node_namer_new() {
  return guard_value(mlx_node_namer{}, [] { return make<mlx_node_namer>(mx::NodeNamer{}); });
}
extern "C" int mlx_node_namer_free(mlx_node_namer namer) {
  return drop(namer);
}
extern "C" int mlx_node_namer_set_name(mlx_node_namer namer, const mlx_array arr, const char* name) {
  return guard([&] { get(namer).set_name(get(arr), str(name, "name")); });
}
extern "C" int mlx_node_namer_get_name(const char** name, mlx_node_namer namer, const mlx_array arr) {
  return guard([&] { out(name) = get(namer).get_name(get(arr)).c_str(); });
}
extern "C" int mlx_export_to_dot(FILE* os, const mlx_node_namer namer, const mlx_vector_array outputs) {
  return guard([&] {
    std::ostringstream text;
    mx::export_to_dot(text, namer_of(namer), get(outputs));
    write_all(os, text.str());
  });
}
extern "C" int mlx_print_graph(FILE* os, const mlx_node_namer namer, const mlx_vector_array outputs) {
  return guard([&] {
    std::ostringstream text;
    mx::print_graph(text, namer_of(namer), get(outputs));
    write_all(os, text.str());
  });
}
