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
tests=(smoke capi_ext capi_export fused_ops hardening quantized_linear fuzz)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo test -q --release "${args[@]}" --no-run
# libmlx's static initializers run before the test binary's own: the runtimes must be loaded first.
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# MLX keeps some allocations for the process's life on purpose (its scheduler, JIT caches): no leak report.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ZMLX_FUZZ_SECS=${ZMLX_FUZZ_SECS:-10}
status=0
for t in "${tests[@]}"; do
  bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/"$t"-* | grep -v '\.d$' | head -n 1)
  echo "=== $t"
  LD_PRELOAD="$preload" "$bin" --test-threads=1 || status=1
done
exit $status
