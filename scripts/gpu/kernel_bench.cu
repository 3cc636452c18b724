// Kernel benchmark of the fused MoE CUDA kernels without MLX: the device code of
// mlx_local/mlx/backend/cuda/moe/kernels.cuh in launch-shape variants (rows per warp, chunks in flight,
// rows per pass, launch bounds), launched with the argument layout MLX's fast::cuda_kernel generates, for
// the Qwen3-30B-A3B, Mixtral-8x7B and gpt-oss-20b MoE layers at several T. Weights are rotated over
// >= 1.3 GB (more than 8x the L2), inputs and expert choices vary per call, outputs are poisoned with NaN
// before the checks. Every variant must give bitwise the same result as the default shape (they sum in
// the same order), and the one-launch layer kernel the same as the two launches; the program exits
// non-zero otherwise. Times: CUDA graphs of 48 calls, median of 7 replays, per call; GB/s over the
// distinct experts' bytes, beside the card's copy bandwidth measured first.
// Build: scripts/gpu/build-kernel-bench.sh (nvcc from pip, static CUDA runtime); run on the GPU host:
// .devbin/kernel_bench [qwen3,mixtral,gpt-oss].
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <algorithm>
#include <string>
#include <functional>
namespace mlx::core::cu {
using Shape = cuda::std::array<int32_t, 10>;
using Strides = cuda::std::array<int64_t, 10>;
}
#include "mlx/backend/cuda/moe/kernels.cuh"
using namespace mlx::core::cu;
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1);} } while (0)

typedef __nv_bfloat16 bf;

// ---- wrappers: same parameter lists as MLX's generated kernels
#define SW_PARAMS(TX, TS, TB, TBI, TO) const float* nil, const TX* x, const __grid_constant__ Shape x_shape, const __grid_constant__ Strides x_strides, int x_ndim, \
  const uint32_t* gw, const __grid_constant__ Shape gw_shape, int gw_ndim, const TS* gs, const TB* gb, const uint32_t* uw, const TS* us, const TB* ub, \
  const float* lhs, const __grid_constant__ Shape lhs_shape, const __grid_constant__ Strides lhs_strides, int lhs_ndim, \
  const uint32_t* rhs, const __grid_constant__ Shape rhs_shape, const __grid_constant__ Strides rhs_strides, int rhs_ndim, \
  const TBI* gbias, const __grid_constant__ Strides gbias_strides, int gbias_ndim, const TBI* ubias, const __grid_constant__ Strides ubias_strides, int ubias_ndim, TO* out
#define SW_ARGS nil, x, x_shape.data(), x_strides.data(), x_ndim, gw, gw_shape.data(), gw_ndim, gs, gb, uw, us, ub, lhs, lhs_shape.data(), lhs_strides.data(), lhs_ndim, \
  rhs, rhs_shape.data(), rhs_strides.data(), rhs_ndim, gbias, gbias_strides.data(), gbias_ndim, ubias, ubias_strides.data(), ubias_ndim, out

template <int FMT, int BITS, int GS, int ACT, int AB, int LB, int NT, int RW, int U, bool PF, int MINB, typename TX, typename TS, typename TB, typename TBI, typename TO>
__global__ void __launch_bounds__(128, MINB) sw_new(SW_PARAMS(TX, TS, TB, TBI, TO)) {
  zmlx_moe::swiglu_entry<FMT, BITS, GS, ACT, AB, LB, NT, RW, U, PF>(SW_ARGS);
}
#define CO_PARAMS(TH, TS, TB, TSC, TBI, TO) const float* nil, const TH* h, const __grid_constant__ Shape h_shape, const __grid_constant__ Strides h_strides, int h_ndim, \
  const uint32_t* w, const __grid_constant__ Shape w_shape, int w_ndim, const TS* sc, const TB* bi, \
  const uint32_t* rhs, const __grid_constant__ Shape rhs_shape, const __grid_constant__ Strides rhs_strides, int rhs_ndim, \
  const TSC* scores, const __grid_constant__ Shape scores_shape, const __grid_constant__ Strides scores_strides, int scores_ndim, \
  const TBI* bias, const __grid_constant__ Strides bias_strides, int bias_ndim, TO* out
#define CO_ARGS nil, h, h_shape.data(), h_strides.data(), h_ndim, w, w_shape.data(), w_ndim, sc, bi, rhs, rhs_shape.data(), rhs_strides.data(), rhs_ndim, \
  scores, scores_shape.data(), scores_strides.data(), scores_ndim, bias, bias_strides.data(), bias_ndim, out
template <int FMT, int BITS, int GS, int RW, int U, int MINB, typename TH, typename TS, typename TB, typename TSC, typename TBI, typename TO>
__global__ void __launch_bounds__(128, MINB) co_new(CO_PARAMS(TH, TS, TB, TSC, TBI, TO)) {
  zmlx_moe::combine_entry<FMT, BITS, GS, RW, U>(CO_ARGS);
}

template <int FMT, int BITS, int GS, int ACT, int AB, int LB, int NT, int RW, int U, bool PF, int CRW, int CU, int MINB, typename TX, typename TS, typename TB, typename TBI, typename TO, typename TH>
__global__ void __launch_bounds__(128, MINB) lay_new(const float* nil, const TX* x, const __grid_constant__ Shape x_shape, const __grid_constant__ Strides x_strides, int x_ndim,
  const uint32_t* gw, const __grid_constant__ Shape gw_shape, int gw_ndim, const TS* gs, const TB* gb, const uint32_t* uw, const TS* us, const TB* ub,
  const uint32_t* rhs, const __grid_constant__ Shape rhs_shape, const __grid_constant__ Strides rhs_strides, int rhs_ndim,
  const TBI* gbias, const __grid_constant__ Strides gbias_strides, int gbias_ndim, const TBI* ubias, const __grid_constant__ Strides ubias_strides, int ubias_ndim,
  const uint32_t* dw, const __grid_constant__ Shape dw_shape, int dw_ndim, const TS* ds, const TB* db,
  const TX* scores, const __grid_constant__ Shape scores_shape, const __grid_constant__ Strides scores_strides, int scores_ndim,
  const TBI* dbias, const __grid_constant__ Strides dbias_strides, int dbias_ndim, const uint32_t* ctr, TO* out, TH* hbuf) {
  zmlx_moe::layer_entry<FMT, BITS, GS, ACT, AB, LB, NT, RW, U, PF, CRW, CU>(nil, x, x_shape.data(), x_strides.data(), x_ndim, gw, gw_shape.data(), gw_ndim, gs, gb, uw, us, ub,
    rhs, rhs_shape.data(), rhs_strides.data(), rhs_ndim, gbias, gbias_strides.data(), gbias_ndim, ubias, ubias_strides.data(), ubias_ndim,
    dw, dw_shape.data(), dw_ndim, ds, db, scores, scores_shape.data(), scores_strides.data(), scores_ndim, dbias, dbias_strides.data(), dbias_ndim, ctr, out, hbuf);
}
// ---- random fill
__device__ uint32_t hash32(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  z ^= z >> 31; z *= 0x94D049BB133111EBull; z ^= z >> 29;
  return (uint32_t)z;
}
__global__ void fill_u32(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = hash32(i, seed);
}
__global__ void fill_bf(bf* p, size_t n, uint32_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2bfloat16(lo + (hi - lo) * (hash32(i, seed) >> 8) * (1.f / 16777216.f));
}
__global__ void fill_u8(uint8_t* p, size_t n, uint32_t seed, int lo, int span) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = (uint8_t)(lo + hash32(i, seed) % span);
}
template <typename T> __global__ void fill_nan(T* p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = (T)__uint_as_float(0x7fc00000u);
}
__global__ void touch(const float4* a, float4* b, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) { float4 v = a[i]; v.x += 1.f; b[i] = v; }
}
template <typename T> float tofh(T v);
template <> float tofh<float>(float v) { return v; }
template <> float tofh<bf>(bf v) { return __bfloat162float(v); }

struct AffTag { using SCT = bf; using BT = bf; static constexpr int FMT = 0, GS = 64, ACT = 0, AB = 0, LB = 0; };
struct MxTag { using SCT = uint8_t; using BT = float; static constexpr int FMT = 1, GS = 32, ACT = 1, AB = 0x3fd9db23, LB = 0x40e00000; };
struct Spec { const char* name; int D, I, E, k, fmt, bits, gs; bool gpt; };
struct Copy { uint32_t *gw, *uw, *dw; void *gs, *gb, *us, *ub, *ds, *db; bf *gbias, *ubias, *dbias; };

static Shape shp(std::vector<int> v) { Shape s{}; for (size_t i = 0; i < v.size(); ++i) s[i] = v[i]; return s; }
static Strides rowstr(std::vector<int> v) { Strides s{}; int64_t m = 1; for (int i = (int)v.size() - 1; i >= 0; --i) { s[i] = m; m *= v[i]; } return s; }

float median(std::vector<float> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

// Times fn(iteration) captured as a graph of `n` launches; returns per-iteration microseconds (median of replays).
float time_graph(cudaStream_t st, int n, const std::function<void(int)>& fn) {
  for (int i = 0; i < 3; ++i) fn(i);
  CK(cudaStreamSynchronize(st));
  cudaGraph_t g; cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < n; ++i) fn(i);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  std::vector<float> t;
  for (int r = 0; r < 7; ++r) {
    CK(cudaEventRecord(a, st)); CK(cudaGraphLaunch(ge, st)); CK(cudaEventRecord(b, st)); CK(cudaEventSynchronize(b));
    float ms; cudaEventElapsedTime(&ms, a, b); t.push_back(ms * 1000.f / n);
  }
  CK(cudaGetLastError());
  cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
  return median(t);
}

int main(int argc, char** argv) {
  double copy_gbs = 0;
  int failures = 0;
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t st; CK(cudaStreamCreate(&st));
  // copy bandwidth: 1 GiB read + 1 GiB written
  {
    size_t n = (1ull << 30) / 16; float4 *a, *b; CK(cudaMalloc(&a, n * 16)); CK(cudaMalloc(&b, n * 16));
    fill_u32<<<1024, 256, 0, st>>>((uint32_t*)a, n * 4, 1);
    float us = time_graph(st, 4, [&](int) { touch<<<4 * prop.multiProcessorCount, 512, 0, st>>>(a, b, n); });
    copy_gbs = 2.0 * n * 16 / us / 1e3;
    printf("copy kernel bandwidth: %.0f GB/s (read+write of 1 GiB)\n", copy_gbs);
    float us2 = time_graph(st, 4, [&](int) { cudaMemcpyAsync(b, a, n * 16, cudaMemcpyDeviceToDevice, st); });
    printf("cudaMemcpy D2D bandwidth: %.0f GB/s\n", 2.0 * n * 16 / us2 / 1e3);
    cudaFree(a); cudaFree(b);
  }
  // argv[1]: layers to run (substring match, e.g. "qwen3,mixtral"); argv[2]: token counts (e.g. "1,16").
  const char* only = argc > 1 ? argv[1] : "";
  const char* only_t = argc > 2 ? argv[2] : "";
  Spec specs[] = {{"qwen3", 2048, 768, 128, 8, 0, 4, 64, false}, {"mixtral", 4096, 14336, 8, 2, 0, 4, 64, false},
                  {"gpt-oss", 2880, 2880, 32, 4, 1, 4, 32, true}};
  for (const Spec& sp : specs) {
    if (*only && !strstr(only, sp.name)) continue;
    const int D = sp.D, I = sp.I, E = sp.E, k = sp.k;
    const bool aff = sp.fmt == 0;
    const size_t gw_words = (size_t)E * I * D * sp.bits / 32, dw_words = (size_t)E * D * I * sp.bits / 32;
    const size_t gsn = (size_t)E * I * (D / sp.gs), dsn = (size_t)E * D * (I / sp.gs);
    const size_t sbytes = aff ? 2 : 1;
    const double layer_bytes = 4.0 * (2 * gw_words + dw_words) + sbytes * (2 * gsn + dsn) * (aff ? 2 : 1) + (sp.gpt ? 2.0 * E * (2 * I + D) : 0);
    int ncopies = std::max(2, (int)ceil(1.3e9 / layer_bytes));
    std::vector<Copy> cp(ncopies);
    uint32_t seed = 7;
    for (auto& c : cp) {
      CK(cudaMalloc(&c.gw, gw_words * 4)); CK(cudaMalloc(&c.uw, gw_words * 4)); CK(cudaMalloc(&c.dw, dw_words * 4));
      fill_u32<<<2048, 256, 0, st>>>(c.gw, gw_words, seed++); fill_u32<<<2048, 256, 0, st>>>(c.uw, gw_words, seed++); fill_u32<<<2048, 256, 0, st>>>(c.dw, dw_words, seed++);
      CK(cudaMalloc(&c.gs, gsn * sbytes)); CK(cudaMalloc(&c.us, gsn * sbytes)); CK(cudaMalloc(&c.ds, dsn * sbytes));
      if (aff) {
        CK(cudaMalloc(&c.gb, gsn * 2)); CK(cudaMalloc(&c.ub, gsn * 2)); CK(cudaMalloc(&c.db, dsn * 2));
        fill_bf<<<1024, 256, 0, st>>>((bf*)c.gs, gsn, seed++, 0.002f, 0.004f); fill_bf<<<1024, 256, 0, st>>>((bf*)c.us, gsn, seed++, 0.002f, 0.004f);
        fill_bf<<<1024, 256, 0, st>>>((bf*)c.ds, dsn, seed++, 0.002f, 0.004f);
        fill_bf<<<1024, 256, 0, st>>>((bf*)c.gb, gsn, seed++, -0.03f, 0.0f); fill_bf<<<1024, 256, 0, st>>>((bf*)c.ub, gsn, seed++, -0.03f, 0.0f);
        fill_bf<<<1024, 256, 0, st>>>((bf*)c.db, dsn, seed++, -0.03f, 0.0f);
      } else {
        c.gb = c.ub = c.db = nullptr;
        fill_u8<<<1024, 256, 0, st>>>((uint8_t*)c.gs, gsn, seed++, 118, 4); fill_u8<<<1024, 256, 0, st>>>((uint8_t*)c.us, gsn, seed++, 118, 4);
        fill_u8<<<1024, 256, 0, st>>>((uint8_t*)c.ds, dsn, seed++, 118, 4);
      }
      c.gbias = c.ubias = c.dbias = nullptr;
      if (sp.gpt) {
        CK(cudaMalloc(&c.gbias, (size_t)E * I * 2)); CK(cudaMalloc(&c.ubias, (size_t)E * I * 2)); CK(cudaMalloc(&c.dbias, (size_t)E * D * 2));
        fill_bf<<<256, 256, 0, st>>>(c.gbias, (size_t)E * I, seed++, -0.1f, 0.1f); fill_bf<<<256, 256, 0, st>>>(c.ubias, (size_t)E * I, seed++, -0.1f, 0.1f);
        fill_bf<<<256, 256, 0, st>>>(c.dbias, (size_t)E * D, seed++, -0.1f, 0.1f);
      }
    }
    float* nil; CK(cudaMalloc(&nil, 4));
    printf("\n== %s: D %d I %d E %d k %d, %s, layer %.1f MB, %d copies\n", sp.name, D, I, E, k, aff ? "affine 4-bit g64" : "mxfp4", layer_bytes / 1e6, ncopies);
    const int Ts[] = {1, 4, 16, 64};
    for (int T : Ts) {
      if (*only_t) {
        bool listed = false;
        for (const char* q = only_t; *q;) {
          listed |= atoi(q) == T;
          while (*q && *q != ',') ++q;
          if (*q == ',') ++q;
        }
        if (!listed) continue;
      }
      if (!strcmp(sp.name, "mixtral") && T > 4) continue;
      if (!strcmp(sp.name, "gpt-oss") && T > 16) continue;
      const int NS = 32; // index sets
      std::vector<uint32_t> hidx((size_t)NS * T * k);
      std::vector<float> distinct(NS);
      uint64_t rng = 0x1234567ull + T;
      auto nxt = [&]() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; };
      for (int s = 0; s < NS; ++s) {
        std::vector<char> seen(E, 0);
        for (int t = 0; t < T; ++t) {
          std::vector<uint32_t> ch;
          while ((int)ch.size() < k) { uint32_t c = nxt() % E; if (std::find(ch.begin(), ch.end(), c) == ch.end()) ch.push_back(c); }
          for (int j = 0; j < k; ++j) { hidx[((size_t)s * T + t) * k + j] = ch[j]; seen[ch[j]] = 1; }
        }
        distinct[s] = std::count(seen.begin(), seen.end(), 1);
      }
      float mean_distinct = 0; for (float d : distinct) mean_distinct += d / NS;
      uint32_t* idx; CK(cudaMalloc(&idx, hidx.size() * 4)); CK(cudaMemcpy(idx, hidx.data(), hidx.size() * 4, cudaMemcpyHostToDevice));
      bf *x, *scores, *h, *y; float *hf, *yf, *hf2, *yf2;
      CK(cudaMalloc(&x, (size_t)NS * T * D * 2)); fill_bf<<<256, 256, 0, st>>>(x, (size_t)NS * T * D, 99 + T, -1.f, 1.f);
      CK(cudaMalloc(&scores, (size_t)NS * T * k * 2)); fill_bf<<<256, 256, 0, st>>>(scores, (size_t)NS * T * k, 77 + T, 0.05f, 0.3f);
      CK(cudaMalloc(&h, (size_t)T * k * I * 2)); CK(cudaMalloc(&y, (size_t)T * D * 2));
      CK(cudaMalloc(&hf, (size_t)T * k * I * 4)); CK(cudaMalloc(&yf, (size_t)T * D * 4));
      CK(cudaMalloc(&hf2, (size_t)T * k * I * 4)); CK(cudaMalloc(&yf2, (size_t)T * D * 4));
      // shapes as switch_glu_combined passes them
      Shape xs = shp({T, 1, 1, D}); Strides xst = rowstr({T, 1, 1, D});
      Shape gws = shp({E, I, D * sp.bits / 32}); Shape dws = shp({E, D, I * sp.bits / 32});
      Shape rs = shp({T, k}); Strides rst = rowstr({T, k});
      Shape hs = shp({T, k, 1, I}); Strides hst = rowstr({T, k, 1, I});
      Strides bst2 = rowstr({E, I}), bstd = rowstr({E, D});
      Shape z{}; Strides zs{};
      Shape xs2 = shp({T, D}); Strides xst2 = rowstr({T, D});
      uint32_t* ctr; CK(cudaMalloc(&ctr, 16)); CK(cudaMemset(ctr, 0, 16));
      bf* hl; CK(cudaMalloc(&hl, (size_t)T * k * I * 2));
      const double sw_bytes = mean_distinct * (2.0 * I * (D * sp.bits / 8.0 + (D / sp.gs) * sbytes * (aff ? 2 : 1)) + (sp.gpt ? 4.0 * I : 0));
      const double co_bytes = mean_distinct * (1.0 * D * (I * sp.bits / 8.0 + (I / sp.gs) * sbytes * (aff ? 2 : 1)) + (sp.gpt ? 2.0 * D : 0));
      const int npairs = T * k;
      const int slots = std::min(npairs, E);
      printf("\n-- %s T=%d: %.1f distinct experts; swiglu %.1f MB, combine %.1f MB\n", sp.name, T, mean_distinct, sw_bytes / 1e6, co_bytes / 1e6);

      // launchers
      // explicit launch helpers per format to keep types straight
#define SWL(KERN, TILE, OUTP) [&](int it) { const Copy& c = cp[it % ncopies]; const int s = it % NS; \
        dim3 grid((I + (TILE) - 1) / (TILE), slots); \
        KERN<<<grid, 128, 0, st>>>(nil, x + (size_t)s * T * D, xs, xst, 4, c.gw, gws, 3, (const SCT*)c.gs, aff ? (const BT*)c.gb : (const BT*)nil, c.uw, (const SCT*)c.us, aff ? (const BT*)c.ub : (const BT*)nil, \
          nil, z, zs, 0, idx + (size_t)s * T * k, rs, rst, 2, sp.gpt ? c.gbias : (const bf*)nil, bst2, 2, sp.gpt ? c.ubias : (const bf*)nil, bst2, 2, OUTP); }
#define COL(KERN, TILE, HIN, OUTP) [&](int it) { const Copy& c = cp[it % ncopies]; const int s = it % NS; \
        dim3 grid((D + (TILE) - 1) / (TILE), T); \
        KERN<<<grid, 128, 0, st>>>(nil, HIN, hs, hst, 4, c.dw, dws, 3, (const SCT*)c.ds, aff ? (const BT*)c.db : (const BT*)nil, \
          idx + (size_t)s * T * k, rs, rst, 2, scores + (size_t)s * T * k, rs, rst, 2, sp.gpt ? c.dbias : (const bf*)nil, bstd, 2, OUTP); }
#define LAYL(RW, U, CRW, CU, NT, MB, OUTP) [&](int it) { const Copy& c = cp[it % ncopies]; const int s = it % NS; \
        const long S = (long)((I + 4 * RW - 1) / (4 * RW)) * slots, Cb = (long)((D + 4 * CRW - 1) / (4 * CRW)) * T; \
        lay_new<FMT, 4, GS, ACT, AB, LB, NT, RW, U, true, CRW, CU, MB><<<S + Cb, 128, 0, st>>>(nil, x + (size_t)s * T * D, xs2, xst2, 2, c.gw, gws, 3, (const SCT*)c.gs, aff ? (const BT*)c.gb : (const BT*)nil, c.uw, (const SCT*)c.us, aff ? (const BT*)c.ub : (const BT*)nil, \
          idx + (size_t)s * T * k, rs, rst, 2, sp.gpt ? c.gbias : (const bf*)nil, bst2, 2, sp.gpt ? c.ubias : (const bf*)nil, bst2, 2, \
          c.dw, dws, 3, (const SCT*)c.ds, aff ? (const BT*)c.db : (const BT*)nil, scores + (size_t)s * T * k, rs, rst, 2, sp.gpt ? c.dbias : (const bf*)nil, bstd, 2, ctr, OUTP, hl); }
      auto run_all = [&](auto fmt_tag) {
        using SCT = typename decltype(fmt_tag)::SCT; using BT = typename decltype(fmt_tag)::BT;
        constexpr int FMT = decltype(fmt_tag)::FMT, GS = decltype(fmt_tag)::GS, ACT = decltype(fmt_tag)::ACT, AB = decltype(fmt_tag)::AB, LB = decltype(fmt_tag)::LB;
        const bool decode = T * k <= E;
        // Bitwise agreement with the default shape (float32 outputs).
        auto agree = [&](const char* what, float* a, float* b, size_t n) {
          std::vector<float> ha(n), hb(n); CK(cudaMemcpy(ha.data(), a, n * 4, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(hb.data(), b, n * 4, cudaMemcpyDeviceToHost));
          size_t diff = 0, nan = 0;
          for (size_t i = 0; i < n; ++i) { if (std::isnan(ha[i]) || std::isnan(hb[i])) ++nan; else if (ha[i] != hb[i]) ++diff; }
          const bool ok = diff == 0 && nan == 0;
          if (!ok) ++failures;
          printf("   check %-30s %s (%zu differ, %zu NaN of %zu)\n", what, ok ? "same" : "DIFFERS", diff, nan, n);
        };
        auto sync = [&] { CK(cudaStreamSynchronize(st)); CK(cudaGetLastError()); };
        const size_t nh = (size_t)T * k * I, ny = (size_t)T * D;
        fill_nan<<<256, 256, 0, st>>>(hf, nh);
        if (decode) SWL((sw_new<FMT, 4, GS, ACT, AB, LB, 1, 4, 1, true, 1>), 16, hf)(0);
        else SWL((sw_new<FMT, 4, GS, ACT, AB, LB, 2, 2, 2, true, 1>), 8, hf)(0);
#define SWA(NT, RW, U, MB) fill_nan<<<256, 256, 0, st>>>(hf2, nh); SWL((sw_new<FMT, 4, GS, ACT, AB, LB, NT, RW, U, true, MB>), 4 * RW, hf2)(0); sync(); \
        agree("swiglu NT" #NT " RW" #RW " U" #U " mb" #MB, hf, hf2, nh)
        SWA(1, 2, 2, 1); SWA(4, 1, 2, 8); SWA(2, 4, 1, 8);
        if (decode) SWL((sw_new<FMT, 4, GS, ACT, AB, LB, 1, 4, 1, true, 1>), 16, h)(0);
        else SWL((sw_new<FMT, 4, GS, ACT, AB, LB, 2, 2, 2, true, 1>), 8, h)(0);
        fill_nan<<<256, 256, 0, st>>>(yf, ny);
        COL((co_new<FMT, 4, GS, 2, 1, 1>), 8, h, yf)(0);
#define COA(RW, U, MB) fill_nan<<<256, 256, 0, st>>>(yf2, ny); COL((co_new<FMT, 4, GS, RW, U, MB>), 4 * RW, h, yf2)(0); sync(); \
        agree("combine RW" #RW " U" #U " mb" #MB, yf, yf2, ny)
        COA(4, 2, 8); COA(1, 4, 1);
        fill_nan<<<256, 256, 0, st>>>(yf2, ny);
        for (int r = 0; r < 3; ++r) LAYL(4, 1, 2, 1, 1, 1, yf2)(0);
        sync();
        agree("one-launch layer, 3 launches", yf, yf2, ny);
        uint32_t hc[4]; CK(cudaMemcpy(hc, ctr, 16, cudaMemcpyDeviceToHost));
        if (hc[0] || hc[1] || hc[2]) { ++failures; printf("   counters not reset: %u %u %u\n", hc[0], hc[1], hc[2]); }
        const int N = 48;
        auto rep = [&](const char* what, double bytes, float us) {
          printf("   %-38s %8.2f us  %6.0f GB/s  %4.0f%% of copy\n", what, us, bytes / us / 1e3, 100.0 * bytes / us / 1e3 / copy_gbs);
        };
#define SWV(NT, RW, U, MB) rep("swiglu NT" #NT " RW" #RW " U" #U " mb" #MB, sw_bytes, time_graph(st, N, SWL((sw_new<FMT, 4, GS, ACT, AB, LB, NT, RW, U, true, MB>), 4 * RW, h)))
#define COV(RW, U, MB) rep("combine RW" #RW " U" #U " mb" #MB, co_bytes, time_graph(st, N, COL((co_new<FMT, 4, GS, RW, U, MB>), 4 * RW, h, y)))
#define LAV(RW, U, CRW, CU, NT, MB) rep("layer, 1 launch " #RW "," #U "/" #CRW "," #CU " NT" #NT " mb" #MB, sw_bytes + co_bytes, time_graph(st, N, LAYL(RW, U, CRW, CU, NT, MB, y)))
        if (decode) {
          SWV(1, 4, 1, 1); SWV(1, 4, 1, 4); SWV(1, 4, 1, 8); SWV(1, 2, 2, 1); SWV(1, 2, 1, 8); SWV(1, 4, 2, 8);
        } else {
          SWV(2, 2, 2, 1); SWV(2, 2, 2, 8); SWV(1, 4, 1, 1); SWV(2, 4, 1, 8); SWV(4, 2, 2, 1); SWV(4, 4, 1, 8);
        }
        COV(2, 1, 1); COV(2, 1, 8); COV(4, 2, 1); COV(4, 2, 8); COV(2, 2, 1);
        if (decode) {
          rep("layer, 2 launches (defaults)", sw_bytes + co_bytes, time_graph(st, N, [&](int it) { SWL((sw_new<FMT, 4, GS, ACT, AB, LB, 1, 4, 1, true, 1>), 16, h)(it); COL((co_new<FMT, 4, GS, 2, 1, 1>), 8, h, y)(it); }));
          LAV(4, 1, 2, 1, 1, 1); LAV(4, 1, 2, 1, 1, 4); LAV(4, 1, 2, 1, 1, 8);
        } else {
          rep("layer, 2 launches (defaults)", sw_bytes + co_bytes, time_graph(st, N, [&](int it) { SWL((sw_new<FMT, 4, GS, ACT, AB, LB, 2, 2, 2, true, 1>), 8, h)(it); COL((co_new<FMT, 4, GS, 2, 1, 1>), 8, h, y)(it); }));
          LAV(2, 2, 2, 1, 2, 1); LAV(2, 2, 2, 1, 2, 4);
        }
        CK(cudaGetLastError());
      };
      if (aff) run_all(AffTag{}); else run_all(MxTag{});
      cudaFree(ctr); cudaFree(hl); cudaFree(idx); cudaFree(x); cudaFree(scores); cudaFree(h); cudaFree(y); cudaFree(hf); cudaFree(yf); cudaFree(hf2); cudaFree(yf2);
    }
    for (auto& c : cp) { cudaFree(c.gw); cudaFree(c.uw); cudaFree(c.dw); cudaFree(c.gs); cudaFree(c.us); cudaFree(c.ds); if (aff) { cudaFree(c.gb); cudaFree(c.ub); cudaFree(c.db); } if (sp.gpt) { cudaFree(c.gbias); cudaFree(c.ubias); cudaFree(c.dbias); } }
    cudaFree(nil);
  }
  printf("\n%d check(s) failed\n", failures);
  return failures == 0 ? 0 : 1;
}
