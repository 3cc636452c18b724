#!/usr/bin/env python3
"""Generates the mechanical part of mlx-sys's C API from the specs in this folder.

Each `<name>.spec` becomes `capi/include/mlx/c/<name>.h` (declarations) and `capi/src/gen_<name>.cpp`
(implementations: argument conversion, the MLX C++ call, result storage, all inside `guard`). The specs
of the fork's own C API (`mlx_local/mlx/c/*.spec`, e.g. the fused MoE ops) become `<name>.h` and
`gen_<name>.cpp` beside them. The output is committed; run this script after editing a spec:

    python3 mlx-sys/codegen/gen.py           # rewrite the generated files
    python3 mlx-sys/codegen/gen.py --check   # exit 1 if a generated file is missing or stale (CI)

Spec syntax (one declaration per line; `#` starts a comment):

    @title <text>                  first line of the header's comment
    @include <header> ...          extra #include lines of the header (mlx/c/... or <system.h>)
    @ns <C++ namespace>            namespace of calls written as a bare name (default mx)
    @prefix <text>                 C name prefix (default mlx_)
    @raw ... @end                  C text copied into the header as is (hand-written parts)
    @cpp ... @end                  C++ text copied to the top of the generated .cpp
    name(params) [-> result] [nostream] [= callee | = expression]

A parameter is `[type] name`; the type defaults to `array`. Types and their C form:

    array      const mlx_array            -> get(x)          (must be a non-empty handle)
    array?     const mlx_array            -> opt(x)          (the empty handle means "absent")
    reduced    const mlx_array            -> reduce_input(get(x)): the input of a reduction (capi.h); of an
                                             op's only `reduced` input, with its `int* axes` / `int axis`
                                             (with neither: all axes)
    nonempty   const mlx_array            -> nonempty(get(x)): an array that must have elements (capi.h)
    arrays     const mlx_vector_array     -> get(x)
    int* / shape / int64*                 -> `const T* x, size_t x_num` as std::vector<int> / Shape / Strides
    int*?      like int*, a null pointer means "absent" (std::nullopt)
    int float double bool size_t uint64_t -> passed through
    dtype      mlx_dtype                  -> to_cpp(x)
    int? float? dtype?  mlx_optional_*    -> opt(x)
    size?      mlx_optional_int           -> opt_size(x): like int?, but a value must be positive
    str        const char*                -> std::string (null is an error)
    str=VALUE  const char*                -> std::string (null means VALUE)
    fft_norm   mlx_fft_norm               -> fft_norm(x)
    group?     const mlx_distributed_group -> group(x)       (the empty handle means the global group)

The result is `array` (default: `mlx_array* res`), `arrays` (`mlx_vector_array* res`), `array, array`
(`mlx_array* res_0, mlx_array* res_1` from a pair or tuple) or `void`. Unless `nostream`, a last
parameter `const mlx_stream s` is added. `= callee` names the C++ function (default: the C name
without prefix), called with the converted parameters in order and then the stream. An expression
(anything containing `(`) is used verbatim, with `$name` replaced by the converted parameter and `$s`
by the stream.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent
# The fork's C API: specs and generated files side by side.
LOCAL = ROOT.parent / "mlx_local" / "mlx" / "c"

SCALARS = {"int", "float", "double", "bool", "size_t", "uint64_t"}
# type -> (C declaration(s) with {n} for the name, C++ conversion with {n})
TYPES = {
    "array": (["const mlx_array {n}"], "mlxc::get({n})"),
    "array?": (["const mlx_array {n} /* may be null */"], "mlxc::opt({n})"),
    "reduced": (["const mlx_array {n}"], "mlxc::reduce_input(mlxc::get({n}))"),
    "nonempty": (["const mlx_array {n}"], 'mlxc::nonempty(mlxc::get({n}), "{n}")'),
    "arrays": (["const mlx_vector_array {n}"], "mlxc::get({n})"),
    "int*": (["const int* {n}", "size_t {n}_num"], 'mlxc::ints({n}, {n}_num, "{n}")'),
    "int*?": (["const int* {n} /* may be null */", "size_t {n}_num"], "mlxc::opt_ints({n}, {n}_num)"),
    "shape": (["const int* {n}", "size_t {n}_num"], 'mlxc::shape({n}, {n}_num, "{n}")'),
    "int64*": (["const int64_t* {n}", "size_t {n}_num"], 'mlxc::strides({n}, {n}_num, "{n}")'),
    "dtype": (["mlx_dtype {n}"], "mlxc::to_cpp({n})"),
    "int?": (["mlx_optional_int {n}"], "mlxc::opt({n})"),
    "size?": (["mlx_optional_int {n}"], 'mlxc::opt_size({n}, "{n}")'),
    "float?": (["mlx_optional_float {n}"], "mlxc::opt({n})"),
    "dtype?": (["mlx_optional_dtype {n}"], "mlxc::opt({n})"),
    "str": (["const char* {n}"], 'mlxc::str({n}, "{n}")'),
    "fft_norm": (["mlx_fft_norm {n}"], "mlxc::fft_norm({n})"),
    "group?": (["const mlx_distributed_group {n} /* may be null */"], "mlxc::group({n})"),
}
for t in SCALARS:
    TYPES[t] = ([t + " {n}"], "{n}")

RESULTS = {
    "array": ["mlx_array* res"],
    "arrays": ["mlx_vector_array* res"],
    "array, array": ["mlx_array* res_0", "mlx_array* res_1"],
    "void": [],
}

DECL = re.compile(r"^(\w+)\((.*?)\)\s*(?:->\s*([\w, ]+?))?\s*(nostream)?\s*(?:=\s*(.+))?$")


class Spec:
    def __init__(self, name):
        self.name = name
        self.title = name
        self.includes = []
        self.ns = "mx"
        self.prefix = "mlx_"
        self.raw = []  # header text blocks, in order
        self.cpp = []
        self.funcs = []  # (c_name, params[(type, name)], result, stream, call)
        self.order = []  # ("raw", idx) / ("fn", idx): header layout
        self.local = False  # a spec of the fork's C API (mlx_local/mlx/c)


def parse(path):
    spec = Spec(path.stem)
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#include") else line.strip()
        if not stripped:
            continue
        if stripped in ("@raw", "@cpp"):
            block = []
            while i < len(lines) and lines[i].strip() != "@end":
                block.append(lines[i])
                i += 1
            i += 1
            if stripped == "@raw":
                spec.order.append(("raw", len(spec.raw)))
                spec.raw.append("\n".join(block))
            else:
                spec.cpp.append("\n".join(block))
            continue
        if stripped.startswith("@"):
            key, _, val = stripped.partition(" ")
            if key == "@title":
                spec.title = val
            elif key == "@include":
                spec.includes += val.split()
            elif key == "@ns":
                spec.ns = val
            elif key == "@prefix":
                spec.prefix = val
            else:
                sys.exit(f"{path}:{i}: unknown directive {key}")
            continue
        m = DECL.match(stripped)
        if not m:
            sys.exit(f"{path}:{i}: cannot parse: {stripped}")
        name, params_s, result, nostream, call = m.groups()
        params = []
        for p in filter(None, (x.strip() for x in params_s.split(","))):
            parts = p.split()
            ptype, pname = (parts[0], parts[1]) if len(parts) == 2 else ("array", parts[0])
            if ptype.startswith("str=") and re.fullmatch(r"str=\w+", ptype):
                TYPES[ptype] = (
                    ["const char* {n}"],
                    "({n} ? std::string({n}) : std::string(\"" + ptype[4:] + "\"))",
                )
            if ptype not in TYPES:
                sys.exit(f"{path}:{i}: unknown type {ptype}")
            params.append((ptype, pname))
        result = " ".join((result or "array").split())
        if result not in RESULTS:
            sys.exit(f"{path}:{i}: unknown result {result}")
        spec.order.append(("fn", len(spec.funcs)))
        spec.funcs.append((spec.prefix + name, params, result, not nostream, (call or name).strip()))
    return spec


def c_params(params, result, has_stream):
    out = list(RESULTS[result])
    for ptype, pname in params:
        out += [d.format(n=pname) for d in TYPES[ptype][0]]
    if has_stream:
        out.append("const mlx_stream s")
    return out


def c_decl(cname, params, result, has_stream, indent="    "):
    ps = c_params(params, result, has_stream) or ["void"]
    one = f"int {cname}({', '.join(ps)});"
    if len(one) <= 80:
        return one
    return f"int {cname}(\n" + ",\n".join(indent + p for p in ps) + ");"


def cpp_call(spec, params, has_stream, call):
    conv = {pname: TYPES[ptype][1].format(n=pname) for ptype, pname in params}
    # The one input of a reduction also gets the reduced axes (all of them when the op takes none).
    reduced = [pname for ptype, pname in params if ptype == "reduced"]
    if len(reduced) == 1:
        types = {pname: ptype for ptype, pname in params}
        arr = f"mlxc::get({reduced[0]})"
        if types.get("axes") == "int*":
            conv[reduced[0]] = f"mlxc::reduce_input({arr}, {conv['axes']})"
        elif types.get("axis") == "int":
            conv[reduced[0]] = f"mlxc::reduce_input({arr}, std::vector<int>{{axis}})"
        elif "axis" not in types and "axes" not in types:
            conv[reduced[0]] = f"mlxc::reduce_input_all({arr})"
    if "(" in call:
        expr = call
        for pname in sorted(conv, key=len, reverse=True):
            expr = re.sub(r"\$" + pname + r"\b", lambda _m, v=conv[pname]: v, expr)
        expr = expr.replace("$s", "mlxc::stream(s)")
        if "$" in expr:
            sys.exit(f"{spec.name}: unresolved placeholder in {call}")
        return expr
    args = [conv[pname] for _, pname in params]
    if has_stream:
        args.append("mlxc::stream(s)")
    callee = call if "::" in call else f"{spec.ns}::{call}"
    return f"{callee}({', '.join(args)})"


def cpp_body(spec, fn):
    cname, params, result, has_stream, call = fn
    expr = cpp_call(spec, params, has_stream, call)
    if result != "void" and not spec.local:
        # mlx-sys's ops pass MLX's results through mlxc::checked (capi.h: shapes MLX 0.32.4 lets
        # through unchecked). The fork's own ops validate their shapes themselves.
        expr = f'mlxc::checked({expr}, "{cname[len(spec.prefix):]}")'
    if result == "void":
        body = f"{expr};"
    elif result == "array, array":
        body = None
    else:
        body = f"put(res, {expr});"
    sig = c_decl(cname, params, result, has_stream, indent="    ")[:-1]
    if body is None:
        return f'extern "C" {sig} {{\n  return put_pair(res_0, res_1, [&] {{ return {expr}; }});\n}}'
    if "\n" in body:
        return f'extern "C" {sig} {{\n  return guard([&] {{\n    {body}\n  }});\n}}'
    one = f'extern "C" {sig} {{\n  return guard([&] {{ {body} }});\n}}'
    if max(len(x) for x in one.splitlines()) <= 110:
        return one
    return f'extern "C" {sig} {{\n  return guard([&] {{\n    {body}\n  }});\n}}'


GENERATED = "Generated by mlx-sys/codegen/gen.py from {spec}: edit the spec, not this file."


def spec_path(spec):
    return f"mlx_local/mlx/c/{spec.name}.spec" if spec.local else f"codegen/{spec.name}.spec"


def header(spec):
    guard_macro = f"MLX_{spec.name.upper()}_H"
    first = (
        f"/* zmlx: {spec.title}."
        if spec.local
        else f"/* zmlx mlx-sys: {spec.title} (mlx-c 0.7.0 compatible names, parameter order and semantics)."
    )
    out = [
        first,
        " * " + GENERATED.format(spec=spec_path(spec)),
        " * Result out-params first, stream last; 0 on success, non-zero after reporting an error. */",
        f"#ifndef {guard_macro}",
        f"#define {guard_macro}",
        "",
        "#include <stdbool.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
    ]
    incs = ["mlx/c/array.h", "mlx/c/optional.h", "mlx/c/stream.h", "mlx/c/vector.h"] + spec.includes
    seen = set()
    for inc in incs:
        if inc in seen:
            continue
        seen.add(inc)
        out.append(f"#include <{inc[1:-1]}>" if inc.startswith("<") else f'#include "{inc}"')
    out += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    for kind, idx in spec.order:
        if kind == "raw":
            out.append(spec.raw[idx])
        else:
            cname, params, result, has_stream, _ = spec.funcs[idx]
            out.append(c_decl(cname, params, result, has_stream))
    out += ["", "#ifdef __cplusplus", "}", "#endif", "", "#endif", ""]
    return "\n".join(out)


def source(spec):
    out = [
        f"// zmlx: {spec.title}." if spec.local else f"// zmlx mlx-sys: {spec.title}.",
        "// " + GENERATED.format(spec=spec_path(spec)),
        '#include "mlx/c/private/capi.h"',
        "",
        "using namespace mlxc;",
        "",
    ]
    for block in spec.cpp:
        out += [block, ""]
    for fn in spec.funcs:
        out += [cpp_body(spec, fn), ""]
    return "\n".join(out)


def outputs():
    for path in sorted(SPECS.glob("*.spec")):
        spec = parse(path)
        yield ROOT / "capi/include/mlx/c" / f"{spec.name}.h", header(spec)
        yield ROOT / "capi/src" / f"gen_{spec.name}.cpp", source(spec)
    for path in sorted(LOCAL.glob("*.spec")):
        spec = parse(path)
        spec.local = True
        yield LOCAL / f"{spec.name}.h", header(spec)
        yield LOCAL / f"gen_{spec.name}.cpp", source(spec)


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in outputs():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(path.relative_to(ROOT.parent))
        else:
            path.write_text(text)
            print(f"gen: wrote {path.relative_to(ROOT.parent)}")
    if stale:
        for p in stale:
            print(f"gen: stale: {p}", file=sys.stderr)
        print("gen: run python3 mlx-sys/codegen/gen.py and commit the result", file=sys.stderr)
        return 1
    if check:
        print("gen: generated C API files are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
