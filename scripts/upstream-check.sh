#!/usr/bin/env bash
# The patch series in patches/ inside MLX 0.32.4: apply it to a fresh copy of the MLX source tarball, build
# MLX for CPU offline (the recipe of the shared source's README), and run MLX's C++ tests, its
# python/tests/test_quantized.py and the series' new Python tests.
#
#   scripts/upstream-check.sh [--base] [--cargo] [--work DIR] [--mlx-src DIR] [--jobs N]
#
#   --base      build and test MLX without the series (the counts the patched build is compared with)
#   --cargo     then also run this repository's `cargo test` in the from-source mode (MLX_SOURCE_DIR=the
#               --mlx-src folder: mlx-sys builds the patched MLX itself, in $MLX_SYS_CACHE, default
#               $WORK/mlx-sys-cache, with the same ccache); not with --base
#   --work      where the tree, the build and the logs go (default: ${TMPDIR:-/tmp}/zmlx-upstream); the
#               tree is unpacked at the same path every run, so a kept ccache directory is hit
#   --mlx-src   the folder with mlx-0.32.4.tar.gz and gguf-tools-8fa6eb6.tar.gz (default: ../shared/mlx-src
#               next to the checkout, or $ZMLX_MLX_SRC)
#   --jobs      parallel compile jobs (default: the number of cores)
#
# CCACHE_DIR (default: $WORK/ccache) keeps compiled objects between runs. Prerequisites (Debian): cmake
# ninja-build libblas-dev liblapack-dev liblapacke-dev nlohmann-json3-dev libfmt-dev doctest-dev ccache, and
# PyPI nanobind==3.1.0 and numpy. Prints the time of each phase and a summary line of test counts.
# libmlx is built shared, as MLX's setup.py builds the wheel: a public symbol missing MLX_API fails here.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
base=0
cargo_test=0
work=${TMPDIR:-/tmp}/zmlx-upstream
mlx_src=${ZMLX_MLX_SRC:-$repo/../shared/mlx-src}
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --base) base=1 ;;
    --cargo) cargo_test=1 ;;
    --work) work=$2; shift ;;
    --mlx-src) mlx_src=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ $base = 1 ] && [ $cargo_test = 1 ]; then
  echo "--cargo tests the patched MLX: not with --base" >&2; exit 2
fi
work=$(mkdir -p "$work" && cd "$work" && pwd)
mlx_src=$(cd "$mlx_src" 2>/dev/null && pwd || echo "$mlx_src")
export CCACHE_DIR=${CCACHE_DIR:-$work/ccache}
export CCACHE_BASEDIR=$work
start=$(date +%s)
phase_start=$start
phase() {
  local now; now=$(date +%s)
  echo "=== $* (+$((now - phase_start))s, total $((now - start))s)"
  phase_start=$now
}

phase "prepare $work"
for f in mlx-0.32.4.tar.gz gguf-tools-8fa6eb6.tar.gz; do
  [ -f "$mlx_src/$f" ] || { echo "missing $mlx_src/$f (pass --mlx-src)" >&2; exit 1; }
done
rm -rf "$work/src" "$work/build" "$work/deps"
mkdir -p "$work/deps" "$work/logs"
tar xzf "$mlx_src/mlx-0.32.4.tar.gz" -C "$work" && mv "$work/mlx-0.32.4" "$work/src"
tar xzf "$mlx_src/gguf-tools-8fa6eb6.tar.gz" -C "$work/deps"
# FetchContent stand-ins from the Debian packages: nlohmann json (only its single_include folder is used)
# and doctest (its CMake scripts and an INTERFACE target).
mkdir -p "$work/deps/json/single_include" "$work/deps/doctest/scripts/cmake"
ln -s /usr/include/nlohmann "$work/deps/json/single_include/nlohmann"
ln -s /usr/lib/cmake/doctest/doctest.cmake /usr/lib/cmake/doctest/doctestAddTests.cmake \
  "$work/deps/doctest/scripts/cmake/"
cat >"$work/deps/doctest/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(doctest CXX)
add_library(doctest INTERFACE)
EOF
# The base commit, then the series on top with git am (what a maintainer would run).
(
  cd "$work/src"
  export GIT_AUTHOR_NAME=mlx GIT_AUTHOR_EMAIL=mlx@localhost GIT_COMMITTER_NAME=mlx
  export GIT_COMMITTER_EMAIL=mlx@localhost GIT_AUTHOR_DATE='2000-01-01T00:00:00Z'
  export GIT_COMMITTER_DATE='2000-01-01T00:00:00Z'
  git init -q && git add -A && git commit -q -m "MLX 0.32.4"
  if [ $base = 0 ]; then
    git am -q -3 "$repo"/patches/*.patch
    git log --oneline | cat
  fi
)

phase "configure"
nanobind_dir=$(python3 -m nanobind --cmake_dir)
cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DMLX_BUILD_METAL=OFF -DMLX_BUILD_CUDA=OFF \
  -DFETCHCONTENT_SOURCE_DIR_JSON="$work/deps/json" \
  -DFETCHCONTENT_SOURCE_DIR_DOCTEST="$work/deps/doctest" \
  -DFETCHCONTENT_SOURCE_DIR_GGUFLIB="$work/deps/gguf-tools" \
  -DUSE_SYSTEM_FMT=ON -DMLX_BUILD_EXAMPLES=OFF -DMLX_BUILD_TESTS=ON -DBUILD_SHARED_LIBS=ON \
  -DMLX_BUILD_PYTHON_BINDINGS=ON -DMLX_BUILD_PYTHON_STUBS=OFF \
  -DMLX_PYTHON_BINDINGS_OUTPUT_DIRECTORY="$work/src/python/mlx" \
  -DFETCHCONTENT_TRY_FIND_PACKAGE_MODE=ALWAYS -Dnanobind_DIR="$nanobind_dir" \
  -DPython_EXECUTABLE="$(command -v python3)" >"$work/logs/configure.log" 2>&1 \
  || { tail -n 40 "$work/logs/configure.log"; exit 1; }

phase "ninja mlx"
ninja -C "$work/build" -j "$jobs" mlx >"$work/logs/mlx.log" 2>&1 || { tail -n 60 "$work/logs/mlx.log"; exit 1; }
phase "ninja tests"
ninja -C "$work/build" -j "$jobs" tests >"$work/logs/tests.log" 2>&1 || { tail -n 60 "$work/logs/tests.log"; exit 1; }
phase "ninja core (the Python module)"
ninja -C "$work/build" -j "$jobs" core >"$work/logs/core.log" 2>&1 || { tail -n 60 "$work/logs/core.log"; exit 1; }

phase "C++ tests (ctest)"
# One at a time: several of MLX's export tests write the same temporary file.
(cd "$work/build" && ctest --output-on-failure >"$work/logs/ctest.log" 2>&1) || true
grep -E 'tests passed|tests failed' "$work/logs/ctest.log"
ctest_failed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of.*/\1/p' "$work/logs/ctest.log")
ctest_total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$work/logs/ctest.log")
ctest_status=0
if [ -z "$ctest_failed" ] || [ "$ctest_failed" != 0 ]; then
  ctest_status=1
  ctest_failed=${ctest_failed:-0}
  ctest_total=${ctest_total:-0}
  echo "ctest FAILED:"; grep -E 'Failed|\*\*\*' "$work/logs/ctest.log" | head -n 40
fi

phase "Python tests"
py_tests=(test_quantized.py)
if [ $base = 0 ]; then
  py_tests+=($(cd "$work/src/python/tests" && ls test_fused_*.py 2>/dev/null || true))
fi
py_status=0
for t in "${py_tests[@]}"; do
  # The module finds libmlx through LD_LIBRARY_PATH (a wheel carries it in mlx/lib).
  if (cd "$work/src/python/tests" && PYTHONPATH="$work/src/python" LD_LIBRARY_PATH="$work/build" \
    python3 "$t" >"$work/logs/$t.log" 2>&1); then
    echo "$t: $(tail -n 3 "$work/logs/$t.log" | tr '\n' ' ')"
  else
    py_status=1
    echo "$t FAILED:"; tail -n 40 "$work/logs/$t.log"
  fi
done

cargo_status=0
cargo_summary=
if [ $cargo_test = 1 ]; then
  phase "cargo test with MLX_SOURCE_DIR=$mlx_src"
  if (cd "$repo" && MLX_SOURCE_DIR="$mlx_src" MLX_SYS_CACHE="${MLX_SYS_CACHE:-$work/mlx-sys-cache}" \
    cargo test >"$work/logs/cargo-test.log" 2>&1); then
    cargo_summary="; cargo test (from source): $(grep -E '^test result' "$work/logs/cargo-test.log" \
      | awk '{p += $4; f += $6} END {print p " passed, " f " failed"}')"
  else
    cargo_status=1
    cargo_summary="; cargo test (from source) FAILED"
    tail -n 60 "$work/logs/cargo-test.log"
  fi
fi

phase "done"
echo "summary: ctest $((ctest_total - ctest_failed))/$ctest_total passed; python: ${py_tests[*]} $([ $py_status = 0 ] && echo OK || echo FAILED)$cargo_summary"
ccache -s 2>/dev/null | grep -E 'Hits|Misses|hit rate' || true
[ $ctest_status = 0 ] && [ $py_status = 0 ] && [ $cargo_status = 0 ]
