#!/usr/bin/env bash
# Dev-time ABI check: runs bindgen (same settings as mlx-sys) over mlx-c 0.7.0's headers and over ours,
# then compares every `pub fn` signature, struct, enum and type alias. Needs libclang and the crates.io
# mlx-sys 0.7.0 sources in the cargo registry (`cargo fetch` in a project using it). Not part of cargo test.
#   scripts/abi-check.sh            report differences (exit 1 if a shared item differs)
#   scripts/abi-check.sh --missing  also list mlx-c functions we do not provide
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
mlxc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/mlx-sys-0.7.0/src/mlx-c 2>/dev/null | head -n 1)
if [ -z "$mlxc" ]; then
  echo "abi-check: mlx-sys 0.7.0 sources not found in the cargo registry" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tool_target=${CARGO_TARGET_DIR:-$repo/target}/abi-check
cargo build -q --release --manifest-path scripts/abi-check/Cargo.toml --target-dir "$tool_target"
"$tool_target"/release/abi-check "$mlxc" >"$tmp/mlxc.rs"
"$tool_target"/release/abi-check "$repo/mlx-sys/capi/include" >"$tmp/ours.rs"
python3 scripts/abi-compare.py "$tmp/mlxc.rs" "$tmp/ours.rs" "$@"
