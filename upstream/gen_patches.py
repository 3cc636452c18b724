#!/usr/bin/env python3
"""Writes `patches/`: the fork's primitives as a `git format-patch` series against MLX 0.32.4.

    python3 upstream/gen_patches.py [--mlx-src DIR]                 # rewrite patches/
    python3 upstream/gen_patches.py [--mlx-src DIR] --check         # exit 1 if patches/ is stale
    python3 upstream/gen_patches.py [--mlx-src DIR] --apply-check   # git am the committed series on a fresh tree
    python3 upstream/gen_patches.py --lint        # list this project's references left in the in-tree files

`--mlx-src` is a folder holding `mlx-0.32.4.tar.gz` (the project's shared copy) or an MLX checkout at v0.32.4
(a folder with `mlx/version.h`); default `$ZMLX_MLX_SRC`, else `../shared/mlx-src` next to the repository.

How a patch is made: the base tree (the MLX source, committed once as a root commit) plus, for patches 1..n,
  - the files of `FILES`: an overlay file (`mlx_local/...`) or an authored file (`upstream/...`) copied to its
    in-tree path; overlay C++ gets its includes rewritten by the same table (`#include "mlx/moe/..."` becomes
    the in-tree path; `<mlx/x.h>` becomes `"mlx/x.h"`, MLX's style), nothing else;
  - the registration lines of `INSERTS`: text added after one line of an MLX file (the line must occur exactly
    once in the base file; the texts of several patches after the same line stack up in patch order);
  - the generated build and binding files (`generated_files`): the CMake source lists of `mlx/fused/` and
    `mlx/backend/cpu/fused/`, and `python/src/fused.cpp` (the bindings' head and the fragments of
    `upstream/python/src/`).
Each state is committed with a fixed author, date and message (`PATCHES`), and `git format-patch --zero-commit
--full-index --no-signature` writes the series, so the same input gives the same bytes. Next to it goes
`overlay-map.txt` (the overlay entries of `FILES`), which mlx-sys's from-source build reads. Patches are never edited
by hand: change the overlay, the authored files or the tables here, then run this script.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UPSTREAM = REPO / "upstream"
OUT = REPO / "patches"
# Written next to the series (not a patch: `git am patches/*.patch` never reads it).
MAP = "overlay-map.txt"
MLX_VERSION = (0, 32, 4)
TARBALL = "mlx-0.32.4.tar.gz"
AUTHOR = ("zmlx contributors", "zmlx@users.noreply.github.com")
DATE = "2026-01-01T00:00:00+00:00"


@dataclass
class Patch:
    slug: str  # the file name after the number
    subject: str
    body: str
    # In-tree headers that declare the patch's ops and primitives (included from mlx/mlx.h, export.cpp, the
    # no_cpu stubs and the Python bindings).
    headers: list = field(default_factory=list)
    # Primitives whose eval_cpu lives under mlx/backend/cpu/ (a no_cpu build gets a stub) and whether they have
    # several outputs (NO_CPU_MULTI).
    cpu_primitives: list = field(default_factory=list)
    # Primitives with a state() that MLX's export serializes (the arguments of SERIALIZE_PRIMITIVE), and the
    # headers export.cpp needs for them beyond `headers`.
    exported: list = field(default_factory=list)
    export_headers: list = field(default_factory=list)


PATCHES = [
    Patch(
        slug="add_rms_norm",
        subject="Add add_rms_norm: the residual add and RMS norm as one primitive",
        body="""\
A transformer block ends its attention and MLP sublayers with h = x + residual followed
by rms_norm(h) for the next sublayer: two full passes over the activations, and on CPU
two graph nodes per step. add_rms_norm returns both outputs (h for the residual stream,
y = rms_norm(h, weight, eps) for the next sublayer) from one pass per row.

Semantics are exactly the composed graph's: h is MLX's add (one rounding), y normalizes
the rounded h with float32 statistics and is rounded once (the composed CPU path rounds
after the normalization and again after the weight; MLX's CUDA rms_norm kernel rounds
once, as here). float32, float16 and bfloat16, any layout, optional weight.

The primitive runs on CPU streams; GPU streams build the composed graph (add, then
fast::rms_norm). vjp, jvp and vmap are those of the composed graph. The primitive is
registered for export. The shared helpers under mlx/fused/common and
mlx/backend/cpu/fused (scalar dtype conversions, the composed-graph transformations,
the CPU kernels' thread pool) are used by the MoE primitives that follow.

mlx/backend/cuda/fused/gpu.h declares the CUDA entry points of the fused ops (this
one's and the MoE ops' that follow); this patch adds the build without fused CUDA
kernels (no_cuda.cpp), where every entry point reports "not fused" and the ops
compose.

Python: mlx.core.add_rms_norm(x, residual, weight, eps) -> (h, y), tested against
mx.add + mx.fast.rms_norm over dtypes, shapes, layouts and with gradients.
""",
        headers=["mlx/fused/add_rms_norm.h"],
        cpu_primitives=[("AddRMSNorm", True)],
        exported=["AddRMSNorm"],
    ),
    Patch(
        slug="gather_qmm_swiglu",
        subject="Add gather_qmm_swiglu: fused gate/up projections and activation of a quantized MoE",
        body="""\
In a quantized Mixture-of-Experts layer the experts' gate and up projections are two
gather_qmm calls on the same input and indices, followed by silu(g) * u: two
[tokens, k, N] intermediates written and read back, and each selected expert's
weights decoded twice per call. gather_qmm_swiglu computes
act(gather_qmm(x, gate_w, ...), gather_qmm(x, up_w, ...)) in one primitive.

Arguments and layouts are exactly gather_qmm's (lhs/rhs indices, transpose,
group_size, bits, mode) for both projections; every quantization mode MLX has
(affine 2/3/4/5/6/8-bit with groups 32/64/128, mxfp4, nvfp4, mxfp8); float32,
float16 and bfloat16 activations; the output dtype is gather_qmm's. Activations:
"swiglu" and "gpt_oss" (clamped, with alpha and limit), with optional per-expert
additive biases before the activation.

CPU streams run a fused kernel that groups rows by expert (each expert's weights
are decoded once per call), accumulates in float32 and rounds once, spreading
work over a thread pool, with AVX2 / AVX-512 paths chosen at run time. Indices are
bounds-checked (an out-of-range index fails evaluation; MLX's gather_qmm does not
check). Other devices build the composed graph. vjp / jvp (with respect to x and
the additive biases) and vmap are those of the composed graph; the quantized
weights and the indices are constants, as in gather_qmm.

Python: mlx.core.gather_qmm_swiglu, tested against two mx.gather_qmm calls and a
float64 oracle for every mode, three dtypes and both activations.
""",
        headers=["mlx/fused/gather_qmm_swiglu.h"],
        cpu_primitives=[("GatherQMMSwiGLU", False)],
        exported=["GatherQMMSwiGLU", 'moe::CheckedIndices, "CheckedIndices"'],
        export_headers=["mlx/fused/common/checked_indices.h"],
    ),
    Patch(
        slug="gather_qmm_combine",
        subject="Add gather_qmm_combine and fused_quantized_linear",
        body="""\
The down projection of a quantized MoE layer is a gather_qmm to [tokens, k, 1, D]
followed by a multiply with the router scores and a sum over k. gather_qmm_combine
fuses the three: sum_j scores[..., j] * (gather_qmm(h, w, rhs_indices)[..., j, :, :]
+ bias[rhs_indices[..., j]]), accumulated in float32 over the experts and rounded
once, without the [tokens, k, D] intermediate.

Same arguments, modes and dtypes as gather_qmm; the result dtype promotes the
projection's with the scores' (and the bias's). fused_quantized_linear is the
same kernel with one expert and score 1: a quantized linear layer accumulated in
float32 (attention and router projections of the same models); on other devices
it is quantized_matmul (+ bias).

CPU streams run the fused kernel; other devices the composed graph. vjp / jvp
(with respect to h, scores and bias) and vmap are those of the composed graph.

Python: mlx.core.gather_qmm_combine and mlx.core.fused_quantized_linear, tested
against gather_qmm / quantized_matmul and a float64 oracle for every mode.
""",
        headers=["mlx/fused/gather_qmm_combine.h"],
        cpu_primitives=[("GatherQMMCombine", False)],
        exported=["GatherQMMCombine"],
    ),
    Patch(
        slug="switch_glu_combine",
        subject="Add switch_glu_combine: a quantized MoE expert block as one op",
        body="""\
switch_glu_combine(x, gate, up, down, indices, scores) is mlx-lm's SwitchGLU layer
with the score-weighted sum over the experts:
gather_qmm_combine(gather_qmm_swiglu(x[..., None, None, :], gate, up, indices),
down, indices, scores)[..., 0, :], with the arguments of both validated up front.
It adds no primitive: on every device it is the two fused ops (a backend with a
one-launch kernel for the whole block can take it here).

Python: mlx.core.switch_glu_combine, tested to equal the two fused ops exactly and
the graph of MLX's own ops within tolerance.
""",
        headers=["mlx/fused/switch_glu.h"],
    ),
]

# Overlay / authored file -> in-tree path, per patch. Source paths starting with "upstream/" are authored files
# of this repository (binding tests, stubs), the others overlay files under mlx_local/. Device-independent code
# goes to mlx/fused/ (compiled in every build), the CPU kernels and their engines to mlx/backend/cpu/fused/
# (compiled with MLX_BUILD_CPU).
FILES = [
    # 1: add_rms_norm, the shared helpers it needs, the CUDA entry points' declarations and their stub
    # for builds without the fused CUDA kernels.
    (1, "mlx/norm/add_rms_norm/add_rms_norm.h", "mlx/fused/add_rms_norm.h"),
    (1, "mlx/norm/add_rms_norm/add_rms_norm.cpp", "mlx/fused/add_rms_norm.cpp"),
    (1, "mlx/norm/add_rms_norm/cpu.cpp", "mlx/backend/cpu/fused/add_rms_norm.cpp"),
    (1, "mlx/moe/common/composed_transforms.h", "mlx/fused/common/composed_transforms.h"),
    (1, "mlx/moe/common/composed_transforms.cpp", "mlx/fused/common/composed_transforms.cpp"),
    (1, "mlx/moe/common/quant_modes.h", "mlx/fused/common/quant_modes.h"),
    (1, "mlx/moe/common/quant_modes.cpp", "mlx/fused/common/quant_modes.cpp"),
    (1, "mlx/moe/common/dequant.h", "mlx/fused/common/dequant.h"),
    (1, "mlx/moe/common/dequant.cpp", "mlx/fused/common/dequant.cpp"),
    (1, "mlx/moe/common/kernel_macros.h", "mlx/fused/common/kernel_macros.h"),
    (1, "mlx/moe/common/thread_pool.h", "mlx/backend/cpu/fused/thread_pool.h"),
    (1, "mlx/moe/common/thread_pool.cpp", "mlx/backend/cpu/fused/thread_pool.cpp"),
    (1, "mlx/backend/cuda/moe/gpu.h", "mlx/backend/cuda/fused/gpu.h"),
    (1, "upstream/mlx/backend/cuda/fused/no_cuda.cpp", "mlx/backend/cuda/fused/no_cuda.cpp"),
    (1, "upstream/python/tests/test_fused_add_rms_norm.py", "python/tests/test_fused_add_rms_norm.py"),
    # 2: gather_qmm_swiglu, the MoE ops' shared validation and input handling, the CPU engines.
    (2, "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h", "mlx/fused/gather_qmm_swiglu.h"),
    (2, "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.cpp", "mlx/fused/gather_qmm_swiglu.cpp"),
    (2, "mlx/moe/gather_qmm_swiglu/cpu.cpp", "mlx/backend/cpu/fused/gather_qmm_swiglu.cpp"),
    (2, "mlx/moe/common/batch_inputs.h", "mlx/fused/common/batch_inputs.h"),
    (2, "mlx/moe/common/batch_inputs.cpp", "mlx/fused/common/batch_inputs.cpp"),
    (2, "mlx/moe/common/checked_indices.h", "mlx/fused/common/checked_indices.h"),
    (2, "mlx/moe/common/checked_indices.cpp", "mlx/fused/common/checked_indices.cpp"),
    (2, "mlx/moe/common/validate.h", "mlx/fused/common/validate.h"),
    (2, "mlx/moe/common/validate.cpp", "mlx/fused/common/validate.cpp"),
    (2, "mlx/moe/common/routing.h", "mlx/backend/cpu/fused/routing.h"),
    (2, "mlx/moe/common/routing.cpp", "mlx/backend/cpu/fused/routing.cpp"),
    (2, "mlx/moe/common/simd.h", "mlx/backend/cpu/fused/simd.h"),
    (2, "mlx/moe/common/simd.cpp", "mlx/backend/cpu/fused/simd.cpp"),
    (2, "mlx/moe/common/engine.h", "mlx/backend/cpu/fused/engine.h"),
    (2, "mlx/moe/common/engine.cpp", "mlx/backend/cpu/fused/engine.cpp"),
    (2, "mlx/moe/common/engine_avx2.cpp", "mlx/backend/cpu/fused/engine_avx2.cpp"),
    (2, "mlx/moe/common/engine_avx512.cpp", "mlx/backend/cpu/fused/engine_avx512.cpp"),
    (2, "upstream/python/tests/test_fused_gather_qmm_swiglu.py", "python/tests/test_fused_gather_qmm_swiglu.py"),
    # 3: gather_qmm_combine and fused_quantized_linear.
    (3, "mlx/moe/gather_qmm_combine/gather_qmm_combine.h", "mlx/fused/gather_qmm_combine.h"),
    (3, "mlx/moe/gather_qmm_combine/gather_qmm_combine.cpp", "mlx/fused/gather_qmm_combine.cpp"),
    (3, "mlx/moe/gather_qmm_combine/cpu.cpp", "mlx/backend/cpu/fused/gather_qmm_combine.cpp"),
    (3, "upstream/python/tests/test_fused_gather_qmm_combine.py", "python/tests/test_fused_gather_qmm_combine.py"),
    # 4: switch_glu_combine (an op over the two primitives).
    (4, "mlx/moe/switch_glu/switch_glu.h", "mlx/fused/switch_glu.h"),
    (4, "mlx/moe/switch_glu/switch_glu.cpp", "mlx/fused/switch_glu.cpp"),
    (4, "upstream/python/tests/test_fused_switch_glu_combine.py", "python/tests/test_fused_switch_glu_combine.py"),
]

# Overlay files that are not part of the series, and why; every other file under mlx_local/ must be in FILES.
NOT_IN_SERIES = {
    "mlx/c/": "the C API of the fused ops: mlx-c's business, not MLX's",
    "mlx/backend/cuda/moe/gpu.cpp": "the fused CUDA kernels: not in the series yet (UPSTREAM_PLAN.md, Left)",
    "mlx/backend/cuda/moe/kernels.cuh": "the fused CUDA kernels: not in the series yet (UPSTREAM_PLAN.md, Left)",
}

# Registration in MLX's own files: (patch, file, the line after which the text goes, text); an anchor
# starting with "<" puts the text before that line.
INSERTS = [
    (1, "mlx/CMakeLists.txt", "add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/io)",
     "add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/fused)\n"),
    (1, "mlx/backend/cpu/CMakeLists.txt", None, "\nadd_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/fused)\n"),
    (1, "python/src/CMakeLists.txt", "  ${CMAKE_CURRENT_SOURCE_DIR}/fast.cpp",
     "  ${CMAKE_CURRENT_SOURCE_DIR}/fused.cpp\n"),
    (1, "python/src/mlx.cpp", "void init_fast(nb::module_&);", "void init_fused(nb::module_&);\n"),
    (1, "python/src/mlx.cpp", "  init_fast(m);", "  init_fused(m);\n"),
    (1, "docs/src/python/ops.rst", "   add", "   add_rms_norm\n"),
    # Until a patch adds the fused CUDA kernels, every build takes the stub.
    (1, "mlx/CMakeLists.txt", "add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/io)",
     "target_sources(mlx PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/backend/cuda/fused/no_cuda.cpp)\n"),
    (2, "docs/src/python/ops.rst", "<   greater", "   gather_qmm_swiglu\n"),
    (3, "docs/src/python/ops.rst", "   gather_qmm", "   gather_qmm_combine\n"),
    (3, "docs/src/python/ops.rst", "   full_like", "   fused_quantized_linear\n"),
    (4, "docs/src/python/ops.rst", "   swapaxes", "   switch_glu_combine\n"),
]

# Where each patch's headers are included: (file, anchor line, which patches).
HEADER_INCLUDES = [
    ("mlx/mlx.h", '#include "mlx/fft.h"', lambda p: True),
    ("mlx/export.cpp", '#include "mlx/fast_primitives.h"', lambda p: p.exported),
    ("mlx/backend/no_cpu/primitives.cpp", '#include "mlx/fast_primitives.h"', lambda p: p.cpu_primitives),
]
NO_CPU_FILE = "mlx/backend/no_cpu/primitives.cpp"
EXPORT_ANCHOR = ("mlx/export.cpp", "      SERIALIZE_PRIMITIVE(CustomKernel)};")

BINDINGS_HEAD = """\
// Copyright © 2026 zmlx contributors.
//
// Python bindings of the fused ops of mlx/fused/ (functions of mlx.core).

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

{includes}
#include "python/src/utils.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

void init_fused(nb::module_& m) {{
"""


def fail(msg):
    print(f"error: gen_patches: {msg}", file=sys.stderr)
    sys.exit(1)


def source_path(src):
    return REPO / src if src.startswith("upstream/") else REPO / "mlx_local" / src


def rewrite_includes(text, src):
    """Overlay C++ in its in-tree form: local includes through the FILES table, MLX headers in quotes."""
    table = {s: d for _, s, d in FILES if not s.startswith("upstream/")}

    def sub(m):
        inc = m.group(2)
        if m.group(1) == "<":
            return f'#include "{inc}"'
        if inc in table:
            return f'#include "{table[inc]}"'
        fail(f"{src} includes {inc}, which is not in the FILES table")

    return re.sub(r'#include ([<"])(mlx/[^">]+)[">]', sub, text)


def file_content(src):
    path = source_path(src)
    if not path.is_file():
        fail(f"missing {path}")
    text = path.read_text()
    if not src.startswith("upstream/") and path.suffix in (".h", ".cpp", ".cuh"):
        text = rewrite_includes(text, src)
    return text


def generated_files(n):
    """The build lists and the Python bindings after patches 1..n."""
    out = {}
    lists = {"mlx/fused/": [], "mlx/backend/cpu/fused/": []}
    for p, _, dst in FILES:
        if p <= n and dst.endswith(".cpp"):
            for d, srcs in lists.items():
                if dst.startswith(d):
                    srcs.append(dst[len(d):])
    for d, srcs in lists.items():
        if srcs:
            items = "\n          ".join(f"${{CMAKE_CURRENT_SOURCE_DIR}}/{s}" for s in sorted(srcs))
            out[d + "CMakeLists.txt"] = f"target_sources(\n  mlx\n  PRIVATE {items})\n"
    headers = [h for p in PATCHES[:n] for h in p.headers]
    text = BINDINGS_HEAD.format(includes="\n".join(f'#include "{h}"' for h in sorted(headers)))
    frags = []
    for p in PATCHES[:n]:
        frag = UPSTREAM / "python" / "src" / f"{p.slug}.cpp"
        if not frag.is_file():
            fail(f"missing {frag}")
        frags.append(frag.read_text().rstrip("\n") + "\n")
    out["python/src/fused.cpp"] = text + "\n".join(frags) + "}\n"
    return out


def no_cpu_anchor(base_dir, name):
    """The NO_CPU line of the base stubs after which `name` goes in alphabetical order."""
    path = NO_CPU_FILE
    lines = (base_dir / path).read_text().split("\n")
    # Only the stubs of mlx::core itself (those of fast:: and distributed:: follow in nested namespaces).
    lines = lines[:lines.index("namespace fast {")]
    stubs = [(re.match(r"NO_CPU(?:_MULTI)?\((\w+)\)$", l), l) for l in lines]
    before = [l for m, l in stubs if m and m.group(1) < name]
    if not before:
        fail(f"{path}: no NO_CPU line sorts before {name}")
    return before[-1]


def inserts_upto(base_dir, n):
    """(file, anchor, text, keep sorted) for patches 1..n."""
    ins = []
    for p, f, anchor, text in INSERTS:
        if p <= n:
            ins.append((f, anchor, text, False))
    for p in PATCHES[:n]:
        for f, anchor, wanted in HEADER_INCLUDES:
            if wanted(p):
                hs = p.headers + (p.export_headers if f == "mlx/export.cpp" else [])
                ins += [(f, anchor, f'#include "{h}"\n', True) for h in hs]
        for name, multi in p.cpu_primitives:
            stub = f"NO_CPU{'_MULTI' if multi else ''}({name})\n"
            ins.append((NO_CPU_FILE, no_cpu_anchor(base_dir, name), stub, True))
        # After the last entry of the factory: the closing "};" moves to the new last entry.
        for name in p.exported:
            ins.append((*EXPORT_ANCHOR, name, False))
    return ins


def apply_inserts(base, path, ins):
    lines = base.split("\n")
    stacked = {}
    order = []
    for f, anchor, t, keep_sorted in ins:
        if f != path or not t:
            continue
        if anchor not in stacked:
            stacked[anchor] = ([], keep_sorted)
            order.append(anchor)
        stacked[anchor][0].append(t)
    for anchor in order:
        texts, keep_sorted = stacked[anchor]
        if anchor == EXPORT_ANCHOR[1]:
            idx = [i for i, l in enumerate(lines) if l == anchor]
            if len(idx) != 1:
                fail(f"{path}: the line {anchor!r} occurs {len(idx)} times (want 1)")
            new = ["      SERIALIZE_PRIMITIVE(CustomKernel),"]
            new += [f"      SERIALIZE_PRIMITIVE({nm})," for nm in texts[:-1]]
            new.append(f"      SERIALIZE_PRIMITIVE({texts[-1]})}};")
            lines[idx[0]:idx[0] + 1] = new
            continue
        add = "".join(texts).rstrip("\n").split("\n")
        if keep_sorted:
            add.sort()
        if anchor is None:
            if lines and lines[-1] == "":
                lines[-1:] = add + [""]
            else:
                lines += add
            continue
        before = anchor.startswith("<")
        line = anchor[1:] if before else anchor
        idx = [i for i, l in enumerate(lines) if l == line]
        if len(idx) != 1:
            fail(f"{path}: the line {line!r} occurs {len(idx)} times (want 1)")
        at = idx[0] if before else idx[0] + 1
        lines[at:at] = add
    return "\n".join(lines)


def check_coverage():
    """Every overlay file is in FILES or NOT_IN_SERIES, and every FILES source exists."""
    local = REPO / "mlx_local"
    mapped = {src for _, src, _ in FILES}
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local).as_posix()
        if path.is_file() and rel not in mapped and not any(rel.startswith(k) for k in NOT_IN_SERIES):
            fail(f"mlx_local/{rel} is neither in FILES nor in NOT_IN_SERIES")
    dsts = [d for _, _, d in FILES]
    if len(set(dsts)) != len(dsts):
        fail("two FILES entries have the same in-tree path")


def tree_state(base_dir, n):
    """{in-tree path: content} of every path the series touches, after patches 1..n; base_dir is the
    unmodified MLX tree."""
    state = {}
    for p, src, dst in FILES:
        if p <= n:
            state[dst] = file_content(src)
    state.update(generated_files(n))
    ins = inserts_upto(base_dir, n)
    for f in sorted({f for f, _, t, _ in ins if t}):
        base = (base_dir / f).read_text()
        state[f] = apply_inserts(base, f, ins)
    return state


def git(cwd, *args, capture=False):
    env = dict(os.environ)
    env.update({
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(cwd),
        "GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1], "GIT_AUTHOR_DATE": DATE,
        "GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1], "GIT_COMMITTER_DATE": DATE,
        "TZ": "UTC", "LC_ALL": "C",
    })
    r = subprocess.run(["git", "-c", "core.autocrlf=false", "-c", "diff.algorithm=myers", *args], cwd=cwd,
                       env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        fail(f"git {' '.join(args)} failed in {cwd}: {r.stderr.strip()}")
    return r.stdout


def mlx_src_dir(arg):
    if arg:
        return Path(arg)
    if os.environ.get("ZMLX_MLX_SRC"):
        return Path(os.environ["ZMLX_MLX_SRC"])
    return REPO.parent / "shared" / "mlx-src"


def base_tree(src, tmp):
    """A git repository at tmp/mlx with the MLX source committed as its root commit."""
    dst = tmp / "mlx"
    if (src / TARBALL).is_file():
        with tarfile.open(src / TARBALL) as t:
            if hasattr(tarfile, "tar_filter"):
                t.extractall(tmp, filter="tar")
            else:
                t.extractall(tmp)
        (tmp / "mlx-0.32.4").rename(dst)
    elif (src / "mlx" / "version.h").is_file():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "build"))
    else:
        fail(f"{src} holds neither {TARBALL} nor an MLX checkout (pass --mlx-src or set ZMLX_MLX_SRC)")
    ver = (dst / "mlx" / "version.h").read_text()
    got = tuple(int(re.search(rf"#define MLX_VERSION_{k} (\d+)", ver).group(1)) for k in ("MAJOR", "MINOR", "PATCH"))
    if got != MLX_VERSION:
        fail(f"{src} is MLX {'.'.join(map(str, got))}, the series is made against "
             f"{'.'.join(map(str, MLX_VERSION))}")
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "commit", "-q", "-m", "MLX 0.32.4")
    return dst


def generate(src, out, tmp):
    check_coverage()
    tree = base_tree(src, tmp)
    # The registration inserts apply to the base files, kept aside from the tree the commits are made in.
    base = tmp / "base"
    shutil.copytree(tree, base, ignore=shutil.ignore_patterns(".git"))
    for n in range(1, len(PATCHES) + 1):
        for path, text in tree_state(base, n).items():
            f = tree / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        p = PATCHES[n - 1]
        git(tree, "add", "-A")
        git(tree, "commit", "-q", "-m", f"{p.subject}\n\n{p.body}")
    out.mkdir(parents=True, exist_ok=True)
    git(tree, "format-patch", "-q", "--zero-commit", "--full-index", "--no-signature", "--no-binary",
        "-o", str(out), f"HEAD~{len(PATCHES)}")
    names = sorted(f.name for f in out.iterdir())
    want = [f"{i + 1:04d}-{p.slug}.patch" for i, p in enumerate(PATCHES)]
    # Name the files by slug (format-patch names them by subject).
    for old, new in zip(names, want):
        (out / old).rename(out / new)
    (out / MAP).write_text(overlay_map())


def overlay_map():
    """The FILES table's overlay entries as text: what mlx-sys's from-source build (MLX_SOURCE_DIR) needs to
    compile the C API (mlx_local/mlx/c/, which includes overlay paths) against the patched MLX's headers."""
    lines = [
        "# Generated by upstream/gen_patches.py from its FILES table: an overlay file (under mlx_local/) and",
        "# its path in the patched MLX tree. The from-source build of mlx-sys (MLX_SOURCE_DIR) compiles the",
        "# C API against the patched MLX through it.",
    ]
    lines += [f"{src} {dst}" for _, src, dst in FILES if not src.startswith("upstream/")]
    return "\n".join(lines) + "\n"


def apply_check(src, tmp):
    tree = base_tree(src, tmp)
    series = sorted(OUT.glob("*.patch"))
    if not series:
        fail(f"no patches in {OUT}")
    git(tree, "am", "-q", "-3", *map(str, series))
    print(f"{len(series)} patches apply to MLX {'.'.join(map(str, MLX_VERSION))} with git am")


# What an MLX reviewer cannot follow: references to this project, its files and its machines. The overlay's
# comments are to lose them before submission (UPSTREAM_PLAN.md); --lint lists where they are.
LINT = re.compile(r"BENCHMARKS\.md|zmlx|ZMLX_|mlx_local|\bcpu\.cpp\b|\bwheels?\b|Zen 4|2-vCPU")


def lint():
    hits = 0
    for p, src, dst in FILES:
        if src.startswith("upstream/"):
            continue
        for i, line in enumerate(file_content(src).split("\n"), 1):
            if LINT.search(line) and not line.startswith("// Copyright"):
                print(f"{dst}:{i}: {line.strip()}")
                hits += 1
    print(f"{hits} lines")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mlx-src", help="folder with mlx-0.32.4.tar.gz, or an MLX v0.32.4 checkout")
    ap.add_argument("--check", action="store_true", help="exit 1 if patches/ differs from what would be written")
    ap.add_argument("--apply-check", action="store_true", help="apply the committed patches/ to a fresh tree")
    ap.add_argument("--lint", action="store_true", help="list references to this project in the in-tree files")
    args = ap.parse_args()
    if args.lint:
        lint()
        return
    src = mlx_src_dir(args.mlx_src)
    with tempfile.TemporaryDirectory(prefix="zmlx-patches-") as t:
        tmp = Path(t)
        if args.apply_check:
            apply_check(src, tmp)
            return
        out = tmp / "out" if args.check else tmp / "new"
        generate(src, out, tmp)
        new = {f.name: f.read_bytes() for f in out.iterdir()}
        if args.check:
            old = {f.name: f.read_bytes() for f in OUT.glob("*")} if OUT.is_dir() else {}
            stale = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
            if stale:
                fail("patches/ is stale (" + ", ".join(stale) + "): run python3 upstream/gen_patches.py")
            print(f"patches/ is current ({sum(k.endswith('.patch') for k in new)} patches and {MAP})")
            return
        if OUT.is_dir():
            shutil.rmtree(OUT)
        OUT.mkdir()
        for k, v in sorted(new.items()):
            (OUT / k).write_bytes(v)
        print(f"wrote {sum(k.endswith('.patch') for k in new)} patches and {MAP} to {OUT.relative_to(REPO)}/")


if __name__ == "__main__":
    main()
