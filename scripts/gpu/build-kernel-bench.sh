#!/usr/bin/env bash
# Builds scripts/gpu/kernel_bench.cu (the fused MoE CUDA kernels without MLX: launch-shape variants,
# bitwise checks between them, timings) for sm_90a with the static CUDA runtime into
# .devbin/kernel_bench, for the GPU host (no MLX wheel needed there). nvcc: ZMLX_NVCC, else the one pip
# installs (nvidia-cuda-nvcc 13.0 with its headers, as .ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
nvcc=${ZMLX_NVCC:-}
if [ -z "$nvcc" ]; then
  nvcc=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'nvcc'))" 2>/dev/null || true)
fi
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
  echo "build-kernel-bench: no nvcc (set ZMLX_NVCC or pip install nvidia-cuda-nvcc)" >&2
  exit 1
fi
cu=$(cd "$(dirname "$nvcc")/.." && pwd)
mkdir -p .devbin
"$nvcc" -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I mlx_local -I "$cu/include" \
  -I "$cu/include/cccl" -o .devbin/kernel_bench scripts/gpu/kernel_bench.cu -L "$cu/lib" \
  -lcudart_static -lrt -ldl -lpthread
ls -la .devbin/kernel_bench
