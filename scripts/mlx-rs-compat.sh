#!/usr/bin/env bash
# Runs the unmodified test suite of mlx-rs 0.33.0 against our mlx-sys (not part of `cargo test`).
#
# Copies mlx-rs 0.33.0 from the cargo registry (fetching it if needed) to a temporary folder, makes it a
# stand-alone workspace whose `mlx-sys` is patched to <repo>/mlx-sys, and runs `cargo test --no-fail-fast`
# twice: with default features and with `--no-default-features`. Each run covers the lib tests, the
# integration tests and the doctests. Prints passed/failed/ignored per test target and per run, the names
# of failing tests, and flags any test process that died instead of exiting (abort, signal).
#
#   scripts/mlx-rs-compat.sh [--keep] [-- extra args for cargo test]
#
# Environment: MLX_RS_COMPAT_TARGET (cargo target dir, default $CARGO_TARGET_DIR/mlx-rs-compat or
# target/mlx-rs-compat), MLX_RS_COMPAT_RUNS ("default nodefault" by default; either one alone),
# MLX_RS_COMPAT_LOGS (folder for the full logs, default a temporary folder that is printed).
# Exit status: 0 if every test passed (or was ignored) and no process died, 1 otherwise.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=0.33.0
keep=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--keep] [-- cargo test args]" >&2; exit 2 ;;
  esac
  shift
done

find_src() {
  ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/mlx-rs-$version 2>/dev/null | head -n 1
}
src=$(find_src)
if [ -z "$src" ]; then
  # Let cargo download it: a throwaway project that depends on exactly this version.
  fetch=$(mktemp -d)
  mkdir -p "$fetch/src" && touch "$fetch/src/lib.rs"
  printf '[package]\nname = "fetch-mlx-rs"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nmlx-rs = "=%s"\n' \
    "$version" >"$fetch/Cargo.toml"
  (cd "$fetch" && cargo fetch -q)
  rm -rf "$fetch"
  src=$(find_src)
  [ -n "$src" ] || { echo "mlx-rs-compat: could not fetch mlx-rs $version" >&2; exit 2; }
fi

work=$(mktemp -d)
logs=${MLX_RS_COMPAT_LOGS:-$work/logs}
mkdir -p "$logs"
cleanup() { if [ "$keep" = 0 ]; then rm -rf "$work/mlx-rs"; fi; }
trap cleanup EXIT
cp -r "$src" "$work/mlx-rs"
chmod -R u+w "$work/mlx-rs"
cat >>"$work/mlx-rs/Cargo.toml" <<EOF

[workspace]

[patch.crates-io]
mlx-sys = { path = "$repo/mlx-sys" }
EOF
export CARGO_TARGET_DIR=${MLX_RS_COMPAT_TARGET:-${CARGO_TARGET_DIR:-$repo/target}/mlx-rs-compat}

summarize() { # log -> per-target lines and a total; returns 1 on failure or a dead process
  python3 - "$1" <<'PY'
import re, sys
log = open(sys.argv[1], errors="replace").read().splitlines()
target, rows, failed_names, dead = None, [], [], []
tot = [0, 0, 0]
for line in log:
    m = re.match(r"\s*Running (?:unittests )?(\S+)", line)
    if m:
        target = m.group(1)
    if line.strip().startswith("Doc-tests"):
        target = "doctests " + line.split()[-1]
    m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        p, f, i = map(int, m.groups())
        rows.append((target, p, f, i))
        tot = [tot[0] + p, tot[1] + f, tot[2] + i]
    m = re.match(r"test (.+?) \.\.\. FAILED", line)
    if m:
        failed_names.append(f"{target}: {m.group(1)}")
    if re.search(r"process didn't exit successfully.*(signal|SIGABRT|SIGSEGV)", line) or \
       re.search(r"(terminate called|Aborted \(core dumped\)|fatal runtime error)", line):
        dead.append(line.strip())
    if re.match(r"error(\[E\d+\])?: ", line) and not re.search(r"test failed|doctest failed|targets? failed", line):
        dead.append(line.strip())
for t, p, f, i in rows:
    print(f"  {t}: {p} passed, {f} failed, {i} ignored")
print(f"  TOTAL: {tot[0]} passed, {tot[1]} failed, {tot[2]} ignored")
for n in failed_names:
    print(f"  FAILED {n}")
for d in dead:
    print(f"  PROCESS ERROR: {d}")
sys.exit(1 if tot[1] or dead or not rows else 0)
PY
}

status=0
for run in ${MLX_RS_COMPAT_RUNS:-default nodefault}; do
  case "$run" in
    default) flags=() ;;
    nodefault) flags=(--no-default-features) ;;
    *) echo "mlx-rs-compat: unknown run $run" >&2; exit 2 ;;
  esac
  log="$logs/$run.log"
  echo "== mlx-rs $version, cargo test ${flags[*]:-(default features)} (log: $log)"
  (cd "$work/mlx-rs" && cargo test --no-fail-fast "${flags[@]}" "${extra[@]}") >"$log" 2>&1 || true
  summarize "$log" || status=1
done
[ "$keep" = 1 ] && echo "mlx-rs-compat: kept $work/mlx-rs"
exit $status
