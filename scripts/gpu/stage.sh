#!/usr/bin/env bash
# Builds the CUDA variant (`--features cuda`, target/cuda) of the CLI and the fused-op test binaries and
# copies them, stripped, to .devbin/ (git-ignored) for scripts/gpu/device-check.sh on the GPU host.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
cargo build -q --release --features cuda
cargo test -q --release --features cuda --no-run
rm -rf .devbin && mkdir -p .devbin
cp "$CARGO_TARGET_DIR/release/zmlx" .devbin/zmlx
for t in fused_ops fused quantized_linear moe; do
  f=$(ls -t "$CARGO_TARGET_DIR"/release/deps/$t-* | grep -v '\.d$' | head -n 1)
  cp "$f" ".devbin/$t"
done
strip .devbin/*
du -sh .devbin
