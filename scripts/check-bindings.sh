#!/usr/bin/env bash
# Regenerates mlx-sys's Rust bindings with bindgen (needs libclang) and compares them with the committed
# mlx-sys/src/bindings.rs. `--write` updates the committed file instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build -q -p mlx-sys --features bindgen
fresh=$(ls -t "$target"/debug/build/mlx-sys-*/out/bindings.rs | head -n 1)
if [ "${1:-}" = "--write" ]; then
  cp "$fresh" mlx-sys/src/bindings.rs
  echo "check-bindings: wrote mlx-sys/src/bindings.rs"
elif ! diff -q "$fresh" mlx-sys/src/bindings.rs >/dev/null; then
  diff -u mlx-sys/src/bindings.rs "$fresh" | head -n 40
  echo "check-bindings: mlx-sys/src/bindings.rs is stale: run scripts/check-bindings.sh --write" >&2
  exit 1
else
  echo "check-bindings: committed bindings are current"
fi
