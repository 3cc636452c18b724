#!/usr/bin/env python3
"""Writes `patches/`: the fork's primitives as a `git format-patch` series against MLX 0.32.4.

    python3 upstream/gen_patches.py [--mlx-src DIR]                 # rewrite patches/
    python3 upstream/gen_patches.py [--mlx-src DIR] --check         # exit 1 if patches/ is stale
    python3 upstream/gen_patches.py [--mlx-src DIR] --apply-check   # git am the committed series on a fresh tree

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
--full-index --no-signature` writes the series, so the same input gives the same bytes. Patches are never edited
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
    # Primitives with a state() that MLX's export serializes.
    exported: list = field(default_factory=list)


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

Python: mlx.core.add_rms_norm(x, residual, weight, eps) -> (h, y), tested against
mx.add + mx.fast.rms_norm over dtypes, shapes, layouts and with gradients.
""",
        headers=["mlx/fused/add_rms_norm.h"],
        cpu_primitives=[("AddRMSNorm", True)],
        exported=["AddRMSNorm"],
    ),
]

# Overlay / authored file -> in-tree path, per patch. Source paths starting with "mlx/" are under mlx_local/,
# the others under upstream/. Device-independent code goes to mlx/fused/ (compiled in every build), the CPU
# kernels and their engines to mlx/backend/cpu/fused/ (compiled with MLX_BUILD_CPU).
FILES = [
    # 1: add_rms_norm, and the shared helpers it needs.
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
    (1, "python/tests/test_fused_add_rms_norm.py", "python/tests/test_fused_add_rms_norm.py"),
]

# Registration in MLX's own files: (patch, file, the line after which the text goes, text).
INSERTS = [
    (1, "mlx/CMakeLists.txt", "add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/io)",
     "add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/fused)\n"),
    (1, "mlx/backend/cpu/CMakeLists.txt", None, "\nadd_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/fused)\n"),
    (1, "python/src/CMakeLists.txt", "  ${CMAKE_CURRENT_SOURCE_DIR}/fast.cpp",
     "  ${CMAKE_CURRENT_SOURCE_DIR}/fused.cpp\n"),
    (1, "python/src/mlx.cpp", "void init_fast(nb::module_&);", "void init_fused(nb::module_&);\n"),
    (1, "python/src/mlx.cpp", "  init_fast(m);", "  init_fused(m);\n"),
    (1, "docs/src/python/ops.rst", "   add", "   add_rms_norm\n"),
]

# Per-patch registration derived from Patch fields: (file, anchor line, text for one item).
# (file, anchor, which patches include their headers there)
HEADER_INCLUDES = [
    ("mlx/mlx.h", '#include "mlx/fft.h"', lambda p: True),
    ("mlx/export.cpp", '#include "mlx/fast_primitives.h"', lambda p: p.exported),
    ("mlx/backend/no_cpu/primitives.cpp", '#include "mlx/fast_primitives.h"', lambda p: p.cpu_primitives),
]
NO_CPU_ANCHOR = ("mlx/backend/no_cpu/primitives.cpp", "NO_CPU(GatherQMM)")
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
    return REPO / "mlx_local" / src if src.startswith("mlx/") else UPSTREAM / src


def rewrite_includes(text, src):
    """Overlay C++ in its in-tree form: local includes through the FILES table, MLX headers in quotes."""
    table = {s: d for _, s, d in FILES if s.startswith("mlx/")}

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
    if src.startswith("mlx/") and path.suffix in (".h", ".cpp", ".cuh"):
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


def inserts_upto(n):
    """(file, anchor) -> stacked text, for patches 1..n."""
    ins = []
    for p, f, anchor, text in INSERTS:
        if p <= n:
            ins.append((f, anchor, text))
    for p in PATCHES[:n]:
        for f, anchor, wanted in HEADER_INCLUDES:
            if wanted(p):
                ins.append((f, anchor, "".join(f'#include "{h}"\n' for h in p.headers)))
        ins.append((*NO_CPU_ANCHOR, "".join(
            f"NO_CPU{'_MULTI' if multi else ''}({name})\n" for name, multi in p.cpu_primitives)))
        # After the last entry of the factory: the closing "};" moves to the new last entry.
        for name in p.exported:
            ins.append((*EXPORT_ANCHOR, name))
    return ins


def apply_inserts(base, path, ins):
    text = base
    lines = text.split("\n")
    stacked = {}
    order = []
    for f, anchor, t in ins:
        if f != path or not t:
            continue
        if anchor not in stacked:
            stacked[anchor] = []
            order.append(anchor)
        stacked[anchor].append(t)
    for anchor in order:
        if anchor == EXPORT_ANCHOR[1]:
            idx = [i for i, l in enumerate(lines) if l == anchor]
            if len(idx) != 1:
                fail(f"{path}: the line {anchor!r} occurs {len(idx)} times (want 1)")
            i = idx[0]
            new = ["      SERIALIZE_PRIMITIVE(CustomKernel),"]
            names = stacked[anchor]
            new += [f"      SERIALIZE_PRIMITIVE({nm})," for nm in names[:-1]]
            new.append(f"      SERIALIZE_PRIMITIVE({names[-1]})}};")
            lines[i:i + 1] = new
            continue
        add = "".join(stacked[anchor]).rstrip("\n").split("\n")
        if anchor is None:
            if lines and lines[-1] == "":
                lines[-1:] = add + [""]
            else:
                lines += add
            continue
        idx = [i for i, l in enumerate(lines) if l == anchor]
        if len(idx) != 1:
            fail(f"{path}: the line {anchor!r} occurs {len(idx)} times (want 1)")
        lines[idx[0] + 1:idx[0] + 1] = add
    return "\n".join(lines)


def tree_state(base_dir, n):
    """{in-tree path: content} of every path the series touches, after patches 1..n."""
    state = {}
    for p, src, dst in FILES:
        if p <= n:
            state[dst] = file_content(src)
    state.update(generated_files(n))
    ins = inserts_upto(n)
    for f in sorted({f for f, _, t in ins if t}):
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
    tree = base_tree(src, tmp)
    for n in range(1, len(PATCHES) + 1):
        for path, text in tree_state(tree, n).items():
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


def apply_check(src, tmp):
    tree = base_tree(src, tmp)
    series = sorted(OUT.glob("*.patch"))
    if not series:
        fail(f"no patches in {OUT}")
    git(tree, "am", "-q", "-3", *map(str, series))
    print(f"{len(series)} patches apply to MLX {'.'.join(map(str, MLX_VERSION))} with git am")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mlx-src", help="folder with mlx-0.32.4.tar.gz, or an MLX v0.32.4 checkout")
    ap.add_argument("--check", action="store_true", help="exit 1 if patches/ differs from what would be written")
    ap.add_argument("--apply-check", action="store_true", help="apply the committed patches/ to a fresh tree")
    args = ap.parse_args()
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
            print(f"patches/ is current ({len(new)} patches)")
            return
        if OUT.is_dir():
            shutil.rmtree(OUT)
        OUT.mkdir()
        for k, v in sorted(new.items()):
            (OUT / k).write_bytes(v)
        print(f"wrote {len(new)} patches to {OUT.relative_to(REPO)}/")


if __name__ == "__main__":
    main()
