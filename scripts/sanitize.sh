#!/usr/bin/env bash
# The project's C++ (mlx_local/, mlx-sys/capi/) under AddressSanitizer and UndefinedBehaviorSanitizer: builds it
# instrumented (MLX's own prebuilt library is not), links the sanitizer runtimes into the test binaries, and runs
# the C API and fused-op tests (and the fuzz harnesses) with the runtimes preloaded. Any report stops the run with
# a non-zero status. Dev tool, not part of CI.
#   scripts/sanitize.sh            ZMLX_FUZZ_SECS (default 10) per fuzz harness
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/sanitize}
export CXXFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# The runtimes are named explicitly: the linker rustc drives (rust-lld) does not add them for -fsanitize.
export RUSTFLAGS="-C link-arg=-fsanitize=address,undefined -C link-arg=-lasan -C link-arg=-lubsan"
# package:test target; the C API's tests are mlx-sys's, the fused ops' zmlx's.
tests=(mlx-sys:smoke mlx-sys:capi_ext mlx-sys:capi_export mlx-sys:fuzz_capi zmlx:fused_ops zmlx:hardening zmlx:quantized_linear zmlx:fuzz)
args=()
for pt in "${tests[@]}"; do args+=(-p "${pt%%:*}" --test "${pt#*:}"); done
cargo test -q --release "${args[@]}" --no-run
# libmlx's static initializers run before the test binary's own: the runtimes must be loaded first. Cargo
# runs the binaries through this runner (and puts libmlx on their loader path, which mlx-sys's test
# binaries, without the zmlx binaries' rpath, need).
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
host=$(rustc -vV | sed -n 's/^host: //p')
export "CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER=env LD_PRELOAD=$preload"
# MLX keeps some allocations for the process's life on purpose (its scheduler, JIT caches): no leak report.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ZMLX_FUZZ_SECS=${ZMLX_FUZZ_SECS:-10}
status=0
for pt in "${tests[@]}"; do
  echo "=== $pt"
  cargo test --release -p "${pt%%:*}" --test "${pt#*:}" -- --test-threads=1 || status=1
done
exit $status
