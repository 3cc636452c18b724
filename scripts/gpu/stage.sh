#!/usr/bin/env bash
# Builds the CUDA variant (`--features cuda`, target/cuda) of the CLI and the fused-op test binaries and
# copies them, stripped, to .devbin/ (the CLI and the op tests) and .devt/ (add_rms_norm and the
# transformation tests), both git-ignored, for scripts/gpu/device-check.sh on the GPU host. Each
# folder fits one call's carry beside .devB/ (64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
cargo build -q --release --features cuda
cargo test -q --release --features cuda --no-run
rm -rf .devbin .devt && mkdir -p .devbin .devt
cp "$CARGO_TARGET_DIR/release/zmlx" .devbin/zmlx
stage() { # folder test...
  local dir=$1
  shift
  for t in "$@"; do
    f=$(ls -t "$CARGO_TARGET_DIR"/release/deps/$t-* | grep -v '\.d$' | head -n 1)
    cp "$f" "$dir/$t"
  done
}
stage .devbin fused_ops fused quantized_linear moe
stage .devt add_rms_norm grad lora vmap
strip .devbin/* .devt/*
du -sh .devbin .devt
