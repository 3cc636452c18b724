#!/usr/bin/env bash
# Runs the CUDA build's checks and benchmarks on the GPU test host, from binaries built on a development
# machine (`scripts/gpu/stage.sh` puts them in .devbin/). Source the MLX CUDA wheel's setup first
# (../shared/gpu: `cp .devA/* /tmp/` in one call, then `source .devB/setup-on-gpu-host.sh` in the next).
#
#   bash scripts/gpu/device-check.sh STEP[,STEP...]
#
# Steps: info, kernel-bench (scripts/gpu/kernel_bench.cu, built by scripts/gpu/build-kernel-bench.sh; needs no
# MLX wheel; KB_LAYERS / KB_TOKENS restrict it, e.g. "qwen3" "1,16"), ncu-kernels (Nsight Compute on the kernel
# benchmark's default-shape swiglu and combine kernels of KB_LAYERS at KB_TOKENS), tests (the fused-op test files on the GPU, outputs poisoned with NaN before every kernel),
# transforms (tests/add_rms_norm.rs, grad.rs, lora.rs and vmap.rs on the GPU, from TBIN, default .devt),
# bench-norm (add_rms_norm against MLX's add + rms_norm), bench (the MoE layer benchmark, all layers), bench-qwen3 (Qwen3 layer only), default (the default run),
# validate (the fidelity check on two presets), ncu (kernel times of one Qwen3 decode layer from Nsight
# Compute). Each step's output goes to $OUT/<step>.log (OUT: the device tool's output folder, else
# /tmp/zmlx-out); the last lines printed are a summary.
set -u
BIN=${BIN:-.devbin}
OUT=${OUT:-/tmp/zmlx-out}
# Per-test-process logs stay on the host (the device tool returns few files); tests.log has their summary.
LOGS=${LOGS:-/tmp/zmlx-test-logs}
mkdir -p "$OUT" "$LOGS"
steps=${1:-info,tests}
summary=()

run_step() { # name timeout command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  summary+=("$name: exit $rc in $((SECONDS - t0)) s")
}

# Test processes run in the background on the GPU: start_test launches one (its log in $LOGS), then
# wait_tests waits for each in turn and prints its result line and its log's lines matching a pattern.
# MLX_ENABLE_TF32=0: float32 matmuls in float32 (MLX defaults to TF32 on CUDA), as the tests assume.
export_test_env() {
  export ZMLX_TEST_DEVICE=gpu ZMLX_GPU_POISON=1 MLX_ENABLE_TF32=0
}
pids=()
names=()
start_test() { # limit name command...
  local limit=$1 name=$2
  shift 2
  timeout "$limit" "$@" --test-threads=1 >"$LOGS/test-$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}
wait_tests() { # pattern lines
  local k r rc=0
  for k in "${!pids[@]}"; do
    wait "${pids[$k]}"
    r=$?
    [ $r = 0 ] || rc=1
    echo "--- ${names[$k]}: exit $r; $(grep -E '^test result' "$LOGS/test-${names[$k]}.log" | tail -n 1)"
    grep -E "$1" "$LOGS/test-${names[$k]}.log" | head -n "$2"
  done
  return $rc
}

# The fused-op tests in parallel processes (each CUDA kernel variant is compiled by NVRTC at first use,
# one at a time within a process): the two op matrices in FUSED_SHARDS shards each, the rest of
# fused_ops, and the other test files.
tests() {
  export_test_env
  local n=${FUSED_SHARDS:-4} limit=${PER_TEST_LIMIT:-180}
  for i in $(seq 0 $((n - 1))); do
    FUSED_SHARD=$i/$n start_test "$limit" "swiglu-$i" "$BIN/fused_ops" swiglu_matches_oracle_and_composed --nocapture
    FUSED_SHARD=$i/$n start_test "$limit" "combine-$i" "$BIN/fused_ops" combine_matches_oracle_and_composed --nocapture
  done
  start_test "$limit" fused_ops-rest "$BIN/fused_ops" --skip swiglu_matches_oracle_and_composed \
    --skip combine_matches_oracle_and_composed --nocapture
  start_test "$limit" fused "$BIN/fused" --nocapture
  start_test "$limit" quantized_linear "$BIN/quantized_linear" --nocapture
  start_test "$limit" moe "$BIN/moe" --nocapture
  wait_tests "cases, worst|FAILED|FAIL |panicked|failed:|out_of_range|nvcc|max error" 24
}

# add_rms_norm and the transformations of the fused ops on the GPU, one process per test file.
transforms() {
  export_test_env
  local t
  for t in add_rms_norm grad lora vmap; do
    start_test "${PER_TEST_LIMIT:-240}" "$t" "${TBIN:-.devt}/$t"
  done
  wait_tests "^test |FAILED|panicked|error" 30
}

if [ "$steps" = __transforms ]; then
  transforms
  exit $?
fi
if [ "$steps" = __tests ]; then
  tests
  exit $?
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader
IFS=, read -ra list <<<"$steps"
for s in "${list[@]}"; do
  case $s in
    info) run_step info 60 "$BIN/zmlx" --device gpu info ;;
    kernel-bench) run_step kernel-bench 150 "$BIN/kernel_bench" ${KB_LAYERS:-} ${KB_TOKENS:-} ;;
    ncu-kernels)
      # The default-shape kernels of one layer and token count in the kernel benchmark (its first
      # swiglu and combine launches), with the sections BENCHMARKS.md quotes.
      run_step "ncu-kernels-${KB_LAYERS:-qwen3}-${KB_TOKENS:-1}" "${NCU_LIMIT:-150}" ncu --clock-control none \
        --kernel-name regex:'sw_new|co_new' --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats \
        --section WarpStateStats --section MemoryWorkloadAnalysis \
        "$BIN/kernel_bench" "${KB_LAYERS:-qwen3}" "${KB_TOKENS:-1}"
      ;;
    tests) run_step tests "${TESTS_LIMIT:-300}" bash "$0" __tests ;;
    transforms) run_step transforms "${TESTS_LIMIT:-300}" bash "$0" __transforms ;;
    bench-norm) run_step bench-norm "${BENCH_LIMIT:-200}" "$BIN/zmlx" --device gpu bench norm --tokens 1,16,128,1024,4096 --dtype bfloat16,float32 --budget "${BUDGET:-0.5}" ;;
    bench) run_step bench "${BENCH_LIMIT:-400}" "$BIN/zmlx" --device gpu bench layer --budget "${BUDGET:-0.5}" ;;
    bench-qwen3) run_step bench-qwen3 200 "$BIN/zmlx" --device gpu bench layer --layer qwen3 --budget "${BUDGET:-0.5}" ;;
    default) run_step default "${DEFAULT_LIMIT:-200}" "$BIN/zmlx" --device gpu ;;
    validate)
      run_step validate-gpt-oss "${VALIDATE_LIMIT:-150}" "$BIN/zmlx" --device gpu validate --synthetic gpt-oss-tiny --steps 64
      run_step validate-q8-f16 "${VALIDATE_LIMIT:-150}" "$BIN/zmlx" --device gpu validate --synthetic qwen3-tiny-q8-f16 --steps 64
      ;;
    ncu)
      run_step ncu "${NCU_LIMIT:-150}" ncu --clock-control none --kernel-name regex:zmlx_moe --launch-skip 20 --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread,launch__grid_size \
        "$BIN/zmlx" --device gpu bench layer --layer qwen3 --tokens 1,4 --budget 0.05 --iters 20
      ;;
    *) echo "unknown step $s" ;;
  esac
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
