// Copyright © 2026 zmlx contributors.
//
// The AVX-512 engine (x86_64 with AVX-512 F/BW/VL and VNNI): an integer dot-product path for
// bfloat16 activations and the weight formats whose elements are small integers — affine 2, 4 and
// 8 bits (q in [0, 2^bits)) and e2m1 (mxfp4, nvfp4: 2 * value is an integer in [-12, 12]).
// Everything else (float32 and float16 activations, affine 3/5/6 bits, mxfp8, transpose = false,
// non-finite activations) goes to the AVX2 engine.
//
// Activations. Each quantization group of an activation row is stored as int16 values x16 and one
// power-of-two float32 scale xs with max|x| / xs in [2^14, 2^15): x = xs * x16 exactly for every
// bfloat16 element within 2^7 of the group's largest (bfloat16 has 8 significant bits), and for
// the smaller ones the rounding error is at most xs / 2 <= max|x| / 2^15. Affine 4-bit weights use
// the same int16 values, split into bytes (see byte_format). (float16, with 11
// significant bits, would be exact only within 2^4 of the largest: measured, its error against a
// float64 oracle then reached 1.3e-5 of the largest output with float32 results, above the 1e-5 the
// tests allow, so float16 stays on the float32 kernels.) gsum holds xs * sum(x16) per group, so that
// a dot product is exactly the one with these activations.
//
// Dot products. A 64-byte chunk of a weight row is read as 32 uint16 lanes; lane l holds the
// P = 16 / bits consecutive elements l * P .. l * P + P - 1 of the chunk, and "position" j (shift
// bits * j, mask) gives the j-th of them in every lane. The activations are laid out to match:
//   xq[c * CE + j * 32 + l] = x16[c * CE + l * P + j]            (CE = 32 * P elements per chunk)
// vpdpwssd multiplies the 32 (weight, activation) int16 pairs and adds adjacent pairs into 16 int32
// lanes: int32 lane m of a chunk sums elements [m * CE / 16, (m + 1) * CE / 16) — exact (at most
// 8 products of |q| <= 255 and |x16| <= 32767 per lane and chunk). Per chunk the int32 lanes are
// converted to float32 and multiplied by the scale of their group (weight scale * xs, one permute
// from the row's scale vector) into float32 accumulators. Affine adds sum_g bias_g * gsum_g.
// A row that ends inside a chunk is read with a masked load (the activation tail is zero).
#include "mlx/moe/common/engine.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>

// GCC 12's AVX-512 intrinsics build their pass-through operands from _mm512_undefined_*(), which
// -W(maybe-)uninitialized reports at every inlined use (a false positive of the header).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include "mlx/moe/common/kernel_macros.h"
#include "mlx/moe/common/thread_pool.h"

#if defined(__clang__)
#pragma clang attribute push(                                                             \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif


namespace mlx::core::moe {

namespace {

constexpr int kChunkBytes = 64;
// Activation rows handled together per weight row (their accumulators stay in registers).
constexpr int kRows = 4;
// Software prefetch distance (bytes) ahead of the weight stream (rows of one expert are contiguous).
constexpr int64_t kPrefetch = 2048;
// Rows ahead at which the scale and bias rows are prefetched.
constexpr int64_t kScaleAhead = 8;

// Mask of the first min(n, 16) lanes (n >= 0).
MOE_INLINE __mmask16 first_lanes(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffffu : (1u << n) - 1u);
}

// Whether the integer path handles this weight format.
bool int_format(const QMat& m) {
  if (!m.transpose) {
    return false;
  }
  if (m.elem == ElemFormat::Int) {
    return (m.bits == 2 || m.bits == 4 || m.bits == 8) && m.group % (32 / m.bits) == 0;
  }
  return m.elem == ElemFormat::E2M1 && m.bits == 4 && m.group % 8 == 0;
}

// Elements per uint16 lane and per chunk.
int lane_elems(const QMat& m) {
  return 16 / m.bits;
}

template <ElemFormat E, int BITS>
struct Fmt {
  static constexpr int P = 16 / BITS;
  static constexpr int CE = 32 * P;
  // Affine 4-bit: the byte path (see byte_format).
  static constexpr bool kBytes = E == ElemFormat::Int && BITS == 4;
};

// Affine 4-bit weights use vpdpbusd (64 unsigned-byte x signed-byte products per instruction)
// instead of vpdpwssd. A chunk's 64 bytes give the even elements (low nibbles, v & 15) and the odd
// ones ((v >> 4) & 15) as bytes in [0, 16): 3 operations instead of 6 for four int16 positions.
// The int16 activations are split as a = 256 h + l (h = a >> 8 signed, l = a & 255 unsigned) and
// stored per chunk as four 64-byte planes: h of the even elements, h of the odd, l of the even, l
// of the odd (byte b of a plane belongs to weight byte b). The weights in [0, 16) are valid as
// either operand: unsigned against h, signed against l. Per chunk: acc = dot(even, h_even) +
// dot(odd, h_odd); acc <<= 8; acc += dot(l_even, even) + dot(l_odd, odd) — int32 lane m sums
// elements [8m, 8m + 8) exactly, the same sums as the int16 path (|sum| <= 8 * 15 * 2^15).
bool byte_format(const QMat& m) {
  return m.elem == ElemFormat::Int && m.bits == 4;
}

// Position j of every uint16 lane of a chunk as int16.
template <ElemFormat E, int BITS, int j>
MOE_INLINE __m512i take(__m512i v, __m512i lut) {
  constexpr int P = Fmt<E, BITS>::P;
  __m512i s = v;
  if constexpr (j > 0) {
    s = _mm512_srli_epi16(v, BITS * j);
  }
  if constexpr (E == ElemFormat::Int) {
    (void)lut;
    if constexpr (j == P - 1) {
      return s;
    } else {
      return _mm512_and_si512(s, _mm512_set1_epi16(static_cast<short>((1 << BITS) - 1)));
    }
  } else {
    // vpermw uses the low 5 bits of each index: the table repeats its 16 entries, so the bit of
    // the next nibble above this one does not matter.
    return _mm512_permutexvar_epi16(s, lut);
  }
}

// Decode with one activation row: kWideRows adjacent weight rows of one expert at once. The
// activation loads and the loop are shared by the rows and their sums come out of one horizontal
// reduction, which raised one thread's weight rate in L2 and the layer's speed from DRAM
// (BENCHMARKS.md). Eight rows spill registers and were slower.
constexpr int kWideRows = 4;
static_assert(kWideRows <= kRows, "the scale scratch holds kRows rows");
// Prefetch of several weight rows at once (see Dots::run).
constexpr int64_t kWalkBytes = 8192;
constexpr int64_t kStreamAhead = 1024;
// Prefetch into L2 further ahead than the L1 prefetch above (see Dots::run): blocks ahead of the
// walk of several-row blocks, bytes ahead for one row, bytes ahead per row for long rows.
constexpr int64_t kFarBlocks = 4;
constexpr int64_t kFarBytes = 8192;
constexpr int64_t kFarStream = 4096;
// Bytes at the start of a block of rows prefetched into L2 before its loop starts.
constexpr int64_t kFarHead = 16384;
static_assert(kStreamAhead * kWideRows <= kWalkBytes, "long rows are longer than kStreamAhead");

// Dot products of W adjacent weight rows of one expert with R activation rows: W * R independent
// accumulator chains (the chunks of a row are independent until the float32 accumulation, so
// consecutive chunks overlap). W = 1: one weight row against up to kRows activation rows (prefill
// passes, decode with three or four rows per expert, rows left over); W = kWideRows, R = 1: decode
// with one row; W = R = 2: decode with two.
template <ElemFormat E, int BITS, int G, int W, int R, bool SREG = false>
struct Dots {
  using F = Fmt<E, BITS>;
  __m512 acc[W][R]; // set by the caller before run()
  const int16_t* x[R];
  const float* sc[W][R]; // per group: weight scale * activation scale (zero-padded)
  // SREG: the same in registers instead (rows of at most 32 groups): groups 0-15 and 16-31.
  __m512 sr[W][R][2];
  __m512i lut;
  __m512i gidx; // int32 lane m -> group offset within the chunk's first group
  const uint8_t* rows_end = nullptr; // end of the expert's weight rows (set before run())

  // The loop state (weight chunks v, int32 sums ia, float32 accumulators a) lives in run()'s locals,
  // passed by reference: as members of the struct, the compiler stored v and acc to the stack on
  // every chunk.
  template <int j>
  MOE_INLINE void pos(int64_t xo, const __m512i (&v)[W], __m512i (&ia)[W][R]) const {
    __m512i q[W];
    MOE_UNROLL
    for (int w = 0; w < W; ++w) {
      q[w] = take<E, BITS, j>(v[w], lut);
    }
    MOE_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_loadu_si512(x[r] + xo + j * 32);
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        ia[w][r] = _mm512_dpwssd_epi32(ia[w][r], q[w], xv);
      }
    }
  }
  template <int... J>
  MOE_INLINE void positions(
      int64_t xo,
      const __m512i (&v)[W],
      __m512i (&ia)[W][R],
      std::integer_sequence<int, J...>) const {
    if constexpr (F::kBytes) {
      // xo counts int16s: the chunk's planes start at byte 2 * xo.
      const __m512i lo4 = _mm512_set1_epi8(15);
      __m512i qe[W];
      __m512i qo[W];
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        qe[w] = _mm512_and_si512(v[w], lo4);
        qo[w] = _mm512_and_si512(_mm512_srli_epi16(v[w], 4), lo4);
      }
      MOE_UNROLL
      for (int r = 0; r < R; ++r) {
        const auto* xb = reinterpret_cast<const uint8_t*>(x[r] + xo);
        const __m512i he = _mm512_loadu_si512(xb);
        const __m512i ho = _mm512_loadu_si512(xb + 64);
        const __m512i le = _mm512_loadu_si512(xb + 128);
        const __m512i lo = _mm512_loadu_si512(xb + 192);
        MOE_UNROLL
        for (int w = 0; w < W; ++w) {
          __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qe[w], he);
          t = _mm512_dpbusd_epi32(t, qo[w], ho);
          t = _mm512_slli_epi32(t, 8);
          t = _mm512_dpbusd_epi32(t, le, qe[w]);
          ia[w][r] = _mm512_dpbusd_epi32(t, lo, qo[w]);
        }
      }
    } else {
      (pos<J>(xo, v, ia), ...);
    }
  }
  MOE_INLINE void chunk(int64_t c, const __m512i (&v)[W], __m512 (&a)[W][R]) const {
    __m512i ia[W][R];
    if constexpr (!F::kBytes) {
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        MOE_UNROLL
        for (int r = 0; r < R; ++r) {
          ia[w][r] = _mm512_setzero_si512();
        }
      }
    }
    positions(c * F::CE, v, ia, std::make_integer_sequence<int, F::P>{});
    const int64_t g0 = (c * F::CE) / G;
    // SREG: lane m's group is g0 + gidx[m] of the row's (at most 32) groups in sr[w][r][0..1].
    __m512i idx = gidx;
    if constexpr (SREG) {
      idx = _mm512_add_epi32(gidx, _mm512_set1_epi32(static_cast<int>(g0)));
    }
    MOE_UNROLL
    for (int w = 0; w < W; ++w) {
      MOE_UNROLL
      for (int r = 0; r < R; ++r) {
        __m512 s;
        if constexpr (SREG) {
          s = _mm512_permutex2var_ps(sr[w][r][0], idx, sr[w][r][1]);
        } else {
          s = _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(sc[w][r] + g0));
        }
        a[w][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[w][r]), s, a[w][r]);
      }
    }
  }

  // out[w * R + r] = dot(weight row w (at w0 + w * row_bytes), activation row r) + the lanes of
  // acc[w][r] as set by the caller.
  MOE_INLINE void run(const uint8_t* w0, int64_t row_bytes, float* out) {
    const int64_t full = row_bytes / kChunkBytes;
    // Non-temporal prefetch, W lines per chunk (the weights are read once per call; the hardware
    // prefetcher alone lets the stream stall behind the arithmetic). One row: kPrefetch bytes ahead.
    // Several rows in a block of at most kWalkBytes: the next block, read front to back while this
    // one is computed (its W * row_bytes are one contiguous range). Longer rows: each row
    // kStreamAhead bytes ahead of itself, and past its end the same row of the next block. In A/B
    // measurements the walk is what made the Qwen3 layer faster; for blocks near L1's size (Mixtral's
    // 28 KiB blocks of the down projection) it was slower than one row at a time, and per-row
    // prefetch for short rows was slower than the walk. Each of these is doubled by an L2 prefetch
    // further ahead, within the expert's rows (several-row blocks: kFarBlocks blocks ahead; one row:
    // kFarBytes; long rows: kFarStream per row), which was faster in both layers (an L1 hint there
    // was slower). Numbers: BENCHMARKS.md.
    const bool walk = W == 1 || W * row_bytes <= kWalkBytes;
    const int64_t ahead = W == 1 ? kPrefetch : std::max<int64_t>(kPrefetch, W * row_bytes);
    const uint8_t* far = w0 + kFarBlocks * W * row_bytes;
    const bool walk_far = W > 1 && walk && far + W * row_bytes <= rows_end;
    __m512 a[W][R];
    MOE_UNROLL
    for (int w = 0; w < W; ++w) {
      MOE_UNROLL
      for (int r = 0; r < R; ++r) {
        a[w][r] = acc[w][r];
      }
    }
    __m512i v[W];
    for (int64_t c = 0; c < full; ++c) {
      if (walk) {
        MOE_UNROLL
        for (int w = 0; w < W; ++w) {
          _mm_prefetch(
              reinterpret_cast<const char*>(w0 + ahead + (c * W + w) * kChunkBytes), _MM_HINT_NTA);
          if (walk_far) {
            _mm_prefetch(reinterpret_cast<const char*>(far + (c * W + w) * kChunkBytes), _MM_HINT_T2);
          }
        }
        if constexpr (W == 1) {
          const uint8_t* f = w0 + c * kChunkBytes + kFarBytes;
          if (f < rows_end) {
            _mm_prefetch(reinterpret_cast<const char*>(f), _MM_HINT_T2);
          }
        }
      } else {
        const int64_t off = c * kChunkBytes + kStreamAhead;
        const int64_t at = off < row_bytes ? off : off + (W - 1) * row_bytes;
        const int64_t off_far = c * kChunkBytes + kFarStream;
        const int64_t at_far = off_far < row_bytes ? off_far : off_far + (W - 1) * row_bytes;
        MOE_UNROLL
        for (int w = 0; w < W; ++w) {
          _mm_prefetch(reinterpret_cast<const char*>(w0 + w * row_bytes + at), _MM_HINT_NTA);
          const uint8_t* f = w0 + w * row_bytes + at_far;
          if (f < rows_end) {
            _mm_prefetch(reinterpret_cast<const char*>(f), _MM_HINT_T2);
          }
        }
      }
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        __m512i t = _mm512_loadu_si512(w0 + w * row_bytes + c * kChunkBytes);
        // Keep the chunk in a register: otherwise the compiler folds the load into every shift /
        // mask (P loads of the same line per chunk, and the load ports are the tightest resource).
        // (On a scalar: on the array element the compiler also stored every chunk to the stack.)
        __asm__("" : "+v"(t));
        v[w] = t;
      }
      chunk(c, v, a);
    }
    const int64_t rest = row_bytes - full * kChunkBytes;
    if (rest > 0) {
      const __mmask64 mk = (~uint64_t{0}) >> (64 - rest);
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        v[w] = _mm512_maskz_loadu_epi8(mk, w0 + w * row_bytes + full * kChunkBytes);
      }
      chunk(full, v, a);
    }
    if constexpr (W == 4 && R == 1) {
      __m256 h[W];
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        h[w] = _mm256_add_ps(_mm512_castps512_ps256(a[w][0]), _mm512_extractf32x8_ps(a[w][0], 1));
      }
      // [a01 a23 b01 b23 | a45 a67 b45 b67] and the same for rows 2, 3; then
      // [a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567].
      const __m256 ab = _mm256_hadd_ps(h[0], h[1]);
      const __m256 cd = _mm256_hadd_ps(h[2], h[3]);
      const __m256 t = _mm256_hadd_ps(ab, cd);
      _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    } else {
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        MOE_UNROLL
        for (int r = 0; r < R; ++r) {
          out[w * R + r] = _mm512_reduce_add_ps(a[w][r]);
        }
      }
    }
  }
};

// 16 scale / bias values (float32, float16, bfloat16, e8m0 or e4m3 storage) from p + i as float32;
// lanes outside mk are zero.
MOE_INLINE __m512 load16(const void* p, Dtype t, ScaleFormat f, int64_t i, __mmask16 mk) {
  if (f == ScaleFormat::Float) {
    if (t == float32) {
      return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(p) + i);
    }
    const __m256i h = _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(p) + i);
    if (t == bfloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_cvtph_ps(h);
  }
  const __m512i v =
      _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, static_cast<const uint8_t*>(p) + i));
  if (f == ScaleFormat::E8M0) {
    // 2^(s - 127); s == 0 is 2^-127 (a float32 subnormal), as MLX decodes it.
    const __m512i bits = _mm512_slli_epi32(v, 23);
    const __mmask16 zero = _mm512_mask_cmpeq_epi32_mask(mk, v, _mm512_setzero_si512());
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(bits, zero, _mm512_set1_epi32(0x00400000)));
  }
  // e4m3fn: (m7 << 20) read as float32 is 2^-120 times the magnitude (subnormals included); 0x7f
  // and 0xff are NaN.
  const __m512i m7 = _mm512_and_si512(v, _mm512_set1_epi32(0x7f));
  __m512 mag = _mm512_mul_ps(
      _mm512_castsi512_ps(_mm512_slli_epi32(m7, 20)),
      _mm512_castsi512_ps(_mm512_set1_epi32(0x7b800000)));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
  mag = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), sign));
  const __mmask16 nan = _mm512_cmpeq_epi32_mask(m7, _mm512_set1_epi32(0x7f));
  return _mm512_mask_mov_ps(mag, nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
}

template <ElemFormat E, int BITS, int G>
void int_dots_impl(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  using F = Fmt<E, BITS>;
  const int64_t ng = m.groups;
  // Scale stride per activation row: the chunk's first group + 16 lanes must stay inside.
  const int64_t scs = ng + 32;
  float* sc = detail::scratch(2, kRows * scs);
  // Scale (and bias) rows are decoded row by row alongside the weights and prefetched kScaleAhead
  // rows ahead, so that they stream with the weights instead of stalling the block's start.
  const auto* sbase = static_cast<const uint8_t*>(m.scales);
  const auto* bbase = static_cast<const uint8_t*>(m.biases);
  const int64_t ssz = m.scale == ScaleFormat::Float ? size_of(m.scale_dtype) : 1;
  const int64_t bsz = E == ElemFormat::Int ? size_of(m.bias_dtype) : 0;
  auto prefetch_scales = [&](int64_t j) {
    const int64_t off = m.scale_offset(e, n0 + j);
    for (int64_t o = 0; o < ng * ssz; o += kChunkBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(sbase + off * ssz + o), _MM_HINT_NTA);
    }
    for (int64_t o = 0; o < ng * bsz; o += kChunkBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(bbase + off * bsz + o), _MM_HINT_NTA);
    }
  };
  for (int r = 0; r < kRows; ++r) {
    std::fill_n(sc + r * scs + ng, scs - ng, 0.0f);
  }
  __m512i lut = _mm512_setzero_si512();
  if constexpr (E == ElemFormat::E2M1) {
    lut = _mm512_set_epi16(
        -12, -8, -6, -4, -3, -2, -1, 0, 12, 8, 6, 4, 3, 2, 1, 0, //
        -12, -8, -6, -4, -3, -2, -1, 0, 12, 8, 6, 4, 3, 2, 1, 0);
  }
  alignas(64) int32_t gi[16];
  for (int l = 0; l < 16; ++l) {
    gi[l] = static_cast<int32_t>((l * (F::CE / 16)) / G);
  }
  const __m512i gidx = _mm512_load_si512(gi);

  // End of the expert's weight rows: the far prefetch stays inside them.
  const uint8_t* rows_end = m.row(e, m.rows);
  // The block's weights are one contiguous stream: start its first kPrefetch bytes now (the loop
  // prefetches kPrefetch bytes ahead of itself from there on), and the next kFarHead bytes into L2
  // (where the loop's L2 prefetch starts).
  {
    const uint8_t* w0 = m.row(e, n0);
    const int64_t head = std::min<int64_t>(kPrefetch, nb * m.row_bytes);
    for (int64_t o = 0; o < head; o += kChunkBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(w0 + o), _MM_HINT_NTA);
    }
    const int64_t head_far = std::min<int64_t>(kFarHead, nb * m.row_bytes);
    for (int64_t o = head; o < head_far; o += kChunkBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(w0 + o), _MM_HINT_T2);
    }
    for (int64_t j = 0; j < std::min(nb, kScaleAhead); ++j) {
      prefetch_scales(j);
    }
  }
  // W weight rows from row j against the activation rows r0 .. r0 + RR - 1. A row's scales are
  // decoded in registers straight into each activation row's combined scales (weight scale *
  // activation scale), and its affine bias term sum_g bias_g * gsum_g starts the float32
  // accumulators (one horizontal sum per row and activation row).
  auto decode = [&]<int W, int RR, bool SREG>(int64_t j, int64_t r0) {
      static_assert(W * RR <= kRows, "the scale scratch holds kRows rows");
      Dots<E, BITS, G, W, RR, SREG> d;
      d.lut = lut;
      d.gidx = gidx;
      const float* xs[RR];
      const float* gsm[RR];
      MOE_UNROLL
      for (int r = 0; r < RR; ++r) {
        d.x[r] = p.xq_row(slots[r0 + r]);
        xs[r] = p.xscale_row(slots[r0 + r]);
        gsm[r] = p.gsum_row(slots[r0 + r]);
      }
      int64_t off[W];
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        off[w] = m.scale_offset(e, n0 + j + w);
        MOE_UNROLL
        for (int r = 0; r < RR; ++r) {
          d.sc[w][r] = sc + (w * RR + r) * scs;
          d.acc[w][r] = _mm512_setzero_ps();
        }
      }
      // Combined scales (and the affine bias term) of groups g..g+15; put(w, r, v) keeps them.
      // xscale and gsum rows are zero-padded to a multiple of 16 (gstride).
      auto combine16 = [&](int64_t g, auto&& put) {
        const __mmask16 mk = first_lanes(ng - g);
        MOE_UNROLL
        for (int w = 0; w < W; ++w) {
          __m512 sv = load16(m.scales, m.scale_dtype, m.scale, off[w] + g, mk);
          if constexpr (E == ElemFormat::E2M1) {
            sv = _mm512_mul_ps(sv, _mm512_set1_ps(0.5f));
          }
          MOE_UNROLL
          for (int r = 0; r < RR; ++r) {
            put(w, r, _mm512_mul_ps(sv, _mm512_loadu_ps(xs[r] + g)));
          }
          if constexpr (E == ElemFormat::Int) {
            const __m512 bv = load16(m.biases, m.bias_dtype, ScaleFormat::Float, off[w] + g, mk);
            MOE_UNROLL
            for (int r = 0; r < RR; ++r) {
              d.acc[w][r] = _mm512_fmadd_ps(bv, _mm512_loadu_ps(gsm[r] + g), d.acc[w][r]);
            }
          }
        }
      };
      if constexpr (SREG) {
        MOE_UNROLL
        for (int h = 0; h < 2; ++h) {
          if (16 * h < ng) {
            combine16(16 * h, [&](int w, int r, __m512 v) { d.sr[w][r][h] = v; });
          } else {
            MOE_UNROLL
            for (int w = 0; w < W; ++w) {
              MOE_UNROLL
              for (int r = 0; r < RR; ++r) {
                d.sr[w][r][h] = _mm512_setzero_ps();
              }
            }
          }
        }
      } else {
        for (int64_t g = 0; g < ng; g += 16) {
          combine16(g, [&](int w, int r, __m512 v) {
            _mm512_storeu_ps(sc + (w * RR + r) * scs + g, v);
          });
        }
      }
      float out[W * RR];
      d.rows_end = rows_end;
      d.run(m.row(e, n0 + j), m.row_bytes, out);
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        MOE_UNROLL
        for (int r = 0; r < RR; ++r) {
          y[(r0 + r) * ldy + j + w] = out[w * RR + r];
        }
      }
    };
  if (R <= 0) {
    return;
  }
  // Weight row j against the rr <= kRows activation rows from r0.
  auto one_row = [&]<bool SREG>(int64_t j, int64_t r0, int64_t rr) {
    switch (rr) {
      case 4:
        decode.template operator()<1, 4, SREG>(j, r0);
        break;
      case 3:
        decode.template operator()<1, 3, SREG>(j, r0);
        break;
      case 2:
        decode.template operator()<1, 2, SREG>(j, r0);
        break;
      default:
        decode.template operator()<1, 1, SREG>(j, r0);
        break;
    }
  };
  // Decode (R <= kRows): the weights and their scale rows stream once, W rows at a time (W =
  // kWideRows for one activation row, 2 for two, else 1; rows left over one at a time).
  // Prefill: pass after pass over the block (the weights from L2 after the first), kRows activation
  // rows at a time, so that those rows stay in L1; each pass is the decode step with one weight row
  // (faster than passes that decoded each scale row once per block into a scratch buffer and then
  // combined it with each activation row in memory, with a horizontal sum for the bias term).
  // The scale rows are prefetched during the first pass.
  auto rows = [&]<bool SREG>() {
    int64_t j = 0;
    // W weight rows (against the RR = R activation rows) per step while W of them are left.
    auto wide = [&]<int W, int RR>() {
      for (; j + W <= nb; j += W) {
        for (int w = 0; w < W; ++w) {
          if (j + w + kScaleAhead < nb) {
            prefetch_scales(j + w + kScaleAhead);
          }
        }
        decode.template operator()<W, RR, SREG>(j, 0);
      }
    };
    if (R == 1) {
      wide.template operator()<kWideRows, 1>();
    } else if (R == 2) {
      // Two weight rows per step (faster at T = 4 and 16 in A/B runs; two rows for three or four
      // activation rows were not).
      wide.template operator()<2, 2>();
    }
    for (int64_t r0 = 0; r0 < R; r0 += kRows) {
      for (int64_t jj = r0 == 0 ? j : 0; jj < nb; ++jj) {
        if (r0 == 0 && jj + kScaleAhead < nb) {
          prefetch_scales(jj + kScaleAhead);
        }
        one_row.template operator()<SREG>(jj, r0, std::min<int64_t>(kRows, R - r0));
      }
    }
  };
  // Rows of at most 32 groups (K <= 2048 at group size 64) keep their combined scales in two
  // registers instead of a scratch row that every chunk reloads from (faster in L2).
  if (ng <= 32) {
    rows.template operator()<true>();
  } else {
    rows.template operator()<false>();
  }
}

// ------------------------------------------------------------------------------------------------
// Tiled path (prefill: at least kTileMinRows activation rows for one expert).
//
// The few-rows path above converts every 16-lane int32 vector of a chunk (one weight row x one
// activation row) to float32 and multiplies it by its scales: one FMA per four VNNI instructions,
// and on Zen 4 an FMA competes with VNNI for the same pipes, while shifts, int32 adds, cvt and
// in-lane shuffles nearly co-issue with it (op-mix measurements: BENCHMARKS.md). Within a
// chunk the 16 lanes hold only 16 / L groups (L lanes each), so most of those multiplications are
// redundant. The tile computes kTilePairs (weight row, activation row) pairs per chunk — W weight
// rows x RT activation rows, the weights decoded once for the RT rows and each activation load
// used for W rows — and first adds the L lanes of each group together in int32 with in-register
// shuffles (a tree of merges, each taking two vectors to one), so that one cvt + mul + FMA serves
// all pairs when L >= 8 (8 / L vectors otherwise). The sums stay exact in int32 (a group's sum is
// at most G * 255 * 32767 < 2^31 for G <= 128). The scale of each lane of a merged vector is
// (weight scale of its row and group) x (activation scale of its row and group): the weight scales
// of 8 rows come from a per-superblock table through a permute, the activation scales from a
// table laid out per chunk and lane once per call. Affine biases: bias x (activation group sum),
// added in the same lanes (once per (pair, group)).
//
// Weights: superblocks of kTileRows rows (contiguous, a few KiB) stay in L1 while every activation
// row block passes over them (blocks of 4 rows with W = 2, then 2 rows with W = 4, then 1 row with
// W = 8), so each weight byte is read from memory once per call; the superblock two ahead is
// prefetched during the first pass. Rows past the last whole superblock go to the few-rows path.
constexpr int kTilePairs = 8;
constexpr int kTileRows = 8;
constexpr int64_t kTileAhead = 2; // superblocks ahead of the prefetch

template <ElemFormat E, int BITS, int G>
struct TileShape {
  using F = Fmt<E, BITS>;
  static constexpr int CE = F::CE;
  static constexpr int EL = CE / 16; // elements per int32 lane
  static constexpr int L = G / EL >= 16 ? 16 : G / EL; // lanes of one group in a chunk
  static constexpr int Gc = 16 / L; // groups per chunk (1: a group spans CE or more elements)
  static constexpr int LEV = L >= 8 ? 3 : (L >= 4 ? 2 : 1); // merge levels
  static constexpr int O = kTilePairs >> LEV; // merged vectors per chunk
  // Lanes of one group in the merged vectors are summed; the tile needs them to be >= 4 (and the
  // weight scale table W * Gc <= 32 for W = 8).
  static constexpr bool kOk = L >= 4;
};

// Two vectors to one: per 128-bit block [u0 + u1, u2 + u3, v0 + v1, v2 + v3] (adjacent lanes of
// the same group).
MOE_INLINE __m512i merge_in_block(__m512i u, __m512i v) {
  const __m512 a = _mm512_shuffle_ps(_mm512_castsi512_ps(u), _mm512_castsi512_ps(v), 0x88);
  const __m512 b = _mm512_shuffle_ps(_mm512_castsi512_ps(u), _mm512_castsi512_ps(v), 0xDD);
  return _mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b));
}

// Two vectors to one by 128-bit blocks: [p0 + p1, p2 + p3, q0 + q1, q2 + q3].
MOE_INLINE __m512i merge_blocks(__m512i p, __m512i q) {
  return _mm512_add_epi32(_mm512_shuffle_i32x4(p, q, 0x88), _mm512_shuffle_i32x4(p, q, 0xDD));
}

// Where the lanes of the merged vectors come from: merged vector o, lane l holds sums of lanes of
// pair pair[o][l], one of them being lane src[o][l] of that pair's chunk vector (all of the same
// group, see merge_in_block / merge_blocks).
struct TileMap {
  int8_t pair[kTilePairs][16];
  int8_t src[kTilePairs][16];
};

TileMap tile_map(int levels) {
  TileMap m{};
  int n = kTilePairs;
  for (int p = 0; p < n; ++p) {
    for (int l = 0; l < 16; ++l) {
      m.pair[p][l] = static_cast<int8_t>(p);
      m.src[p][l] = static_cast<int8_t>(l);
    }
  }
  for (int lev = 0; lev < levels; ++lev) {
    TileMap t{};
    for (int o = 0; o < n / 2; ++o) {
      for (int l = 0; l < 16; ++l) {
        int from = 0;
        int lane = 0;
        if (lev < 2) {
          const int b = l / 4;
          const int k = l % 4;
          from = 2 * o + k / 2;
          lane = 4 * b + 2 * (k % 2);
        } else {
          const int b = l / 4;
          const int k = l % 4;
          from = 2 * o + b / 2;
          lane = 8 * (b % 2) + k;
        }
        t.pair[o][l] = m.pair[from][lane];
        t.src[o][l] = m.src[from][lane];
      }
    }
    m = t;
    n /= 2;
  }
  return m;
}

// Per-call tables of the tiled path (see tile_dots).
struct TileTables {
  const float* xsl; // [chunk][O][16]: activation scale of each merged lane
  const float* gsl; // [chunk][O][16]: activation group sum of each merged lane (first lane of
                    // its (pair, group) only; affine)
};

// W weight rows (from w0, row_bytes apart) x RT activation rows: out[w * RT + r].
template <ElemFormat E, int BITS, int G, int W, int RT>
MOE_INLINE void tile_run(
    const uint8_t* w0,
    int64_t row_bytes,
    const int16_t* const* x,
    const float* wt, // [chunk][kTileRows][Gc] weight scales of the superblock, from this tile's row
    const float* bt, // the same for biases (affine)
    const TileTables& tt,
    const __m512i* widx, // [O] lane -> w * Gc + j
    const int8_t (*pair)[16],
    const uint8_t* pf, // prefetch W lines per chunk from here (nullptr: none)
    __m512i lut,
    float* out) {
  using S = TileShape<E, BITS, G>;
  using F = Fmt<E, BITS>;
  constexpr int O = S::O;
  constexpr int64_t wstride = kTileRows * S::Gc;
  const int64_t full = row_bytes / kChunkBytes;
  const int64_t chunks = (row_bytes + kChunkBytes - 1) / kChunkBytes;
  __m512 acc[O];
  MOE_UNROLL
  for (int o = 0; o < O; ++o) {
    acc[o] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < chunks; ++c) {
    if (pf != nullptr) {
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        _mm_prefetch(reinterpret_cast<const char*>(pf + (c * W + w) * kChunkBytes), _MM_HINT_T0);
      }
    }
    __m512i v[W];
    MOE_UNROLL
    for (int w = 0; w < W; ++w) {
      if (c < full) {
        v[w] = _mm512_loadu_si512(w0 + w * row_bytes + c * kChunkBytes);
      } else {
        const __mmask64 mk = (~uint64_t{0}) >> (64 - (row_bytes - full * kChunkBytes));
        v[w] = _mm512_maskz_loadu_epi8(mk, w0 + w * row_bytes + c * kChunkBytes);
      }
    }
    __m512i t[kTilePairs];
    if constexpr (F::kBytes) {
      const __m512i lo4 = _mm512_set1_epi8(15);
      __m512i qe[W];
      __m512i qo[W];
      MOE_UNROLL
      for (int w = 0; w < W; ++w) {
        qe[w] = _mm512_and_si512(v[w], lo4);
        qo[w] = _mm512_and_si512(_mm512_srli_epi16(v[w], 4), lo4);
      }
      MOE_UNROLL
      for (int r = 0; r < RT; ++r) {
        const auto* xb = reinterpret_cast<const uint8_t*>(x[r] + c * F::CE);
        const __m512i he = _mm512_loadu_si512(xb);
        const __m512i ho = _mm512_loadu_si512(xb + 64);
        const __m512i le = _mm512_loadu_si512(xb + 128);
        const __m512i lo = _mm512_loadu_si512(xb + 192);
        MOE_UNROLL
        for (int w = 0; w < W; ++w) {
          __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qe[w], he);
          s = _mm512_dpbusd_epi32(s, qo[w], ho);
          s = _mm512_slli_epi32(s, 8);
          s = _mm512_dpbusd_epi32(s, le, qe[w]);
          t[w * RT + r] = _mm512_dpbusd_epi32(s, lo, qo[w]);
        }
      }
    } else {
      MOE_UNROLL
      for (int p = 0; p < kTilePairs; ++p) {
        t[p] = _mm512_setzero_si512();
      }
      [&]<int... J>(std::integer_sequence<int, J...>) {
        (
            [&] {
              __m512i q[W];
              MOE_UNROLL
              for (int w = 0; w < W; ++w) {
                q[w] = take<E, BITS, J>(v[w], lut);
              }
              MOE_UNROLL
              for (int r = 0; r < RT; ++r) {
                const __m512i xv = _mm512_loadu_si512(x[r] + c * F::CE + J * 32);
                MOE_UNROLL
                for (int w = 0; w < W; ++w) {
                  t[w * RT + r] = _mm512_dpwssd_epi32(t[w * RT + r], q[w], xv);
                }
              }
            }(),
            ...);
      }(std::make_integer_sequence<int, F::P>{});
    }
    // Merge tree: level 1 and 2 within 128-bit blocks, level 3 across them.
    MOE_UNROLL
    for (int i = 0; i < 4; ++i) {
      t[i] = merge_in_block(t[2 * i], t[2 * i + 1]);
    }
    if constexpr (S::LEV >= 2) {
      MOE_UNROLL
      for (int i = 0; i < 2; ++i) {
        t[i] = merge_in_block(t[2 * i], t[2 * i + 1]);
      }
    }
    if constexpr (S::LEV >= 3) {
      t[0] = merge_blocks(t[0], t[1]);
    }
    const float* wc = wt + c * wstride;
    MOE_UNROLL
    for (int o = 0; o < O; ++o) {
      __m512 ws;
      if constexpr (W * S::Gc <= 16) {
        ws = _mm512_permutexvar_ps(widx[o], _mm512_loadu_ps(wc));
      } else {
        ws = _mm512_permutex2var_ps(_mm512_loadu_ps(wc), widx[o], _mm512_loadu_ps(wc + 16));
      }
      const __m512 sc = _mm512_mul_ps(ws, _mm512_loadu_ps(tt.xsl + (c * O + o) * 16));
      acc[o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t[o]), sc, acc[o]);
      if constexpr (E == ElemFormat::Int) {
        const float* bc = bt + c * wstride;
        __m512 bs;
        if constexpr (W * S::Gc <= 16) {
          bs = _mm512_permutexvar_ps(widx[o], _mm512_loadu_ps(bc));
        } else {
          bs = _mm512_permutex2var_ps(_mm512_loadu_ps(bc), widx[o], _mm512_loadu_ps(bc + 16));
        }
        acc[o] = _mm512_fmadd_ps(bs, _mm512_loadu_ps(tt.gsl + (c * O + o) * 16), acc[o]);
      }
    }
  }
  alignas(64) float lanes[O][16];
  MOE_UNROLL
  for (int o = 0; o < O; ++o) {
    _mm512_store_ps(lanes[o], acc[o]);
  }
  float sum[kTilePairs] = {};
  for (int o = 0; o < O; ++o) {
    for (int l = 0; l < 16; ++l) {
      sum[pair[o][l]] += lanes[o][l];
    }
  }
  for (int p = 0; p < kTilePairs; ++p) {
    out[p] = sum[p];
  }
}

// Activation rows per block of the tiled path and its weight rows per tile (W * RT = kTilePairs).
constexpr int kTileBlocks[3][2] = {{4, 2}, {2, 4}, {1, 8}};

template <ElemFormat E, int BITS, int G>
void tile_dots(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  using S = TileShape<E, BITS, G>;
  constexpr int O = S::O;
  constexpr int Gc = S::Gc;
  static const TileMap map = tile_map(S::LEV);
  const int64_t ng = m.groups;
  const int64_t chunks = (m.row_bytes + kChunkBytes - 1) / kChunkBytes;
  const int64_t nb8 = nb / kTileRows * kTileRows;
  // Group of merged lane (o, l) in chunk c: first group of the chunk + lane_group[o][l].
  int lane_group[O][16];
  for (int o = 0; o < O; ++o) {
    for (int l = 0; l < 16; ++l) {
      lane_group[o][l] = Gc == 1 ? 0 : (map.src[o][l] * S::EL) / G;
    }
  }
  auto first_group = [&](int64_t c) { return (c * S::CE) / G; };
  // Activation tables, one per row block (blocks of 4, then 2, then 1 rows).
  const int64_t tab = chunks * O * 16;
  float* xtab = detail::scratch(0, 2 * ((R + 3) / 4 + 2) * tab + 64);
  struct Block {
    int64_t r0;
    int rt;
    const float* xsl;
    const float* gsl;
  };
  Block blocks[256 / 4 + 3];
  int nblocks = 0;
  {
    int64_t r0 = 0;
    float* at = xtab;
    for (const auto& bw : kTileBlocks) {
      const int rt = bw[0];
      for (; r0 + rt <= R; r0 += rt) {
        Block& b = blocks[nblocks++];
        b.r0 = r0;
        b.rt = rt;
        float* xsl = at;
        float* gsl = at + tab;
        at += 2 * tab;
        b.xsl = xsl;
        b.gsl = gsl;
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t g0 = first_group(c);
          // The bias term goes to the first lane of each (pair, group): a chunk's groups are new
          // unless a group spans several chunks (Gc == 1), then only its first chunk counts.
          const bool new_groups = Gc > 1 || c == 0 || g0 != first_group(c - 1);
          bool seen[kTilePairs][Gc] = {};
          for (int o = 0; o < O; ++o) {
            for (int l = 0; l < 16; ++l) {
              const int pr = map.pair[o][l];
              const int r = pr % rt;
              const int j = lane_group[o][l];
              const int64_t g = g0 + j;
              const int64_t slot = slots[r0 + r];
              float xs = 0.0f;
              float gs = 0.0f;
              if (g < ng) {
                xs = p.xscale_row(slot)[g];
                if (new_groups && !seen[pr][j]) {
                  seen[pr][j] = true;
                  gs = p.gsum_row(slot)[g];
                }
              }
              xsl[(c * O + o) * 16 + l] = xs;
              gsl[(c * O + o) * 16 + l] = gs;
            }
          }
        }
      }
    }
  }
  // Lane -> w * Gc + j permute indices, per tile shape.
  __m512i widx[3][O];
  for (int s = 0; s < 3; ++s) {
    const int rt = kTileBlocks[s][0];
    for (int o = 0; o < O; ++o) {
      alignas(64) int32_t idx[16];
      for (int l = 0; l < 16; ++l) {
        idx[l] = (map.pair[o][l] / rt) * Gc + lane_group[o][l];
      }
      widx[s][o] = _mm512_load_si512(idx);
    }
  }
  __m512i lut = _mm512_setzero_si512();
  if constexpr (E == ElemFormat::E2M1) {
    lut = _mm512_set_epi16(
        -12, -8, -6, -4, -3, -2, -1, 0, 12, 8, 6, 4, 3, 2, 1, 0, //
        -12, -8, -6, -4, -3, -2, -1, 0, 12, 8, 6, 4, 3, 2, 1, 0);
  }
  // Weight scale and bias tables of one superblock: [chunk][kTileRows][Gc] (+ 32 of padding for
  // the permute loads).
  const int64_t tchunks = std::max<int64_t>(chunks, (ng + 15) / 16 * 16 / Gc);
  const int64_t wtab = tchunks * kTileRows * Gc + 32;
  float* wt = detail::scratch(1, 2 * wtab + (ng + 16) * kTileRows);
  float* bt = wt + wtab;
  float* dec = bt + wtab; // [kTileRows][ng + 16] decoded scales (then biases)
  std::fill_n(wt + wtab - 32, 32, 0.0f);
  std::fill_n(bt + wtab - 32, 32, 0.0f);
  const int64_t ngp = ng + 16;
  const auto* sbase = static_cast<const uint8_t*>(m.scales);
  const auto* bbase = static_cast<const uint8_t*>(m.biases);
  const int64_t ssz = m.scale == ScaleFormat::Float ? size_of(m.scale_dtype) : 1;
  const int64_t bsz = E == ElemFormat::Int ? size_of(m.bias_dtype) : 0;
  // Table of chunk c: [row w][j] = scale (bias) of row w, group first_group(c) + j, zero past the
  // row's groups. With two groups per chunk (the common case: 4-bit g64, 8-bit g32) this is an 8 x 8
  // transpose of 64-bit (two-group) elements, 16 groups of the 8 rows at a time.
  auto decode_table = [&](int64_t j0, const void* src, Dtype dt, ScaleFormat f, float mul, float* dst) {
    int64_t off[kTileRows];
    for (int w = 0; w < kTileRows; ++w) {
      off[w] = m.scale_offset(e, n0 + j0 + w);
    }
    if constexpr (Gc == 2) {
      for (int64_t g = 0; g < ng; g += 16) {
        const __mmask16 mk = first_lanes(ng - g);
        __m512i rw[kTileRows];
        for (int w = 0; w < kTileRows; ++w) {
          __m512 v = load16(src, dt, f, off[w] + g, mk);
          if (mul != 1.0f) {
            v = _mm512_mul_ps(v, _mm512_set1_ps(mul));
          }
          rw[w] = _mm512_castps_si512(v);
        }
        // rw[w] = [w:c0 .. w:c7] (64-bit) -> out[c] = [0:c .. 7:c].
        __m512i t1[kTileRows];
        for (int w = 0; w < kTileRows; w += 2) {
          t1[w] = _mm512_unpacklo_epi64(rw[w], rw[w + 1]); // [w c0, w+1 c0, w c2, w+1 c2, ..]
          t1[w + 1] = _mm512_unpackhi_epi64(rw[w], rw[w + 1]); // odd chunks
        }
        const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
        const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
        __m512i t2[kTileRows];
        for (int h = 0; h < 2; ++h) {
          // rows 4h .. 4h + 3: [c0 rows, c4 rows] and [c2, c6] (from even), [c1, c5], [c3, c7].
          t2[4 * h + 0] = _mm512_permutex2var_epi64(t1[4 * h], lo, t1[4 * h + 2]);
          t2[4 * h + 1] = _mm512_permutex2var_epi64(t1[4 * h], hi, t1[4 * h + 2]);
          t2[4 * h + 2] = _mm512_permutex2var_epi64(t1[4 * h + 1], lo, t1[4 * h + 3]);
          t2[4 * h + 3] = _mm512_permutex2var_epi64(t1[4 * h + 1], hi, t1[4 * h + 3]);
        }
        // t2[k] for k = 0..3 (rows 0-3) and t2[4 + k] (rows 4-7): chunk order c0/c4, c2/c6, c1/c5,
        // c3/c7 in the low / high 256 bits.
        const int first[4] = {0, 2, 1, 3};
        const int64_t c0 = g / 2;
        for (int k = 0; k < 4; ++k) {
          const __m512i a = _mm512_shuffle_i64x2(t2[k], t2[4 + k], 0x44); // low halves
          const __m512i b = _mm512_shuffle_i64x2(t2[k], t2[4 + k], 0xEE); // high halves
          _mm512_storeu_si512(dst + (c0 + first[k]) * 16, a);
          _mm512_storeu_si512(dst + (c0 + first[k] + 4) * 16, b);
        }
      }
    } else {
      for (int w = 0; w < kTileRows; ++w) {
        for (int64_t g = 0; g < ng; g += 16) {
          __m512 v = load16(src, dt, f, off[w] + g, first_lanes(ng - g));
          if (mul != 1.0f) {
            v = _mm512_mul_ps(v, _mm512_set1_ps(mul));
          }
          _mm512_storeu_ps(dec + w * ngp + g, v);
        }
      }
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t g0 = first_group(c);
        for (int w = 0; w < kTileRows; ++w) {
          for (int j = 0; j < Gc; ++j) {
            const int64_t g = g0 + j;
            dst[(c * kTileRows + w) * Gc + j] = g < ng ? dec[w * ngp + g] : 0.0f;
          }
        }
      }
    }
  };
  const int64_t sb_bytes = kTileRows * m.row_bytes;
  const uint8_t* rows_end = m.row(e, m.rows);
  float out[kTilePairs];
  for (int64_t j0 = 0; j0 < nb8; j0 += kTileRows) {
    // Scale and bias rows of the superblock kTileAhead ahead.
    if (j0 + kTileAhead * kTileRows < nb8) {
      const int64_t off = m.scale_offset(e, n0 + j0 + kTileAhead * kTileRows);
      for (int64_t o = 0; o < kTileRows * ng * ssz; o += kChunkBytes) {
        _mm_prefetch(reinterpret_cast<const char*>(sbase + off * ssz + o), _MM_HINT_T0);
      }
      for (int64_t o = 0; o < kTileRows * ng * bsz; o += kChunkBytes) {
        _mm_prefetch(reinterpret_cast<const char*>(bbase + off * bsz + o), _MM_HINT_T0);
      }
    }
    decode_table(j0, m.scales, m.scale_dtype, m.scale, E == ElemFormat::E2M1 ? 0.5f : 1.0f, wt);
    if constexpr (E == ElemFormat::Int) {
      decode_table(j0, m.biases, m.bias_dtype, ScaleFormat::Float, 1.0f, bt);
    }
    const uint8_t* wsb = m.row(e, n0 + j0);
    const uint8_t* pf = wsb + kTileAhead * sb_bytes;
    if (pf + sb_bytes > rows_end) {
      pf = nullptr;
    }
    for (int bi = 0; bi < nblocks; ++bi) {
      const Block& b = blocks[bi];
      const TileTables tt{b.xsl, b.gsl};
      const int16_t* x[4];
      for (int r = 0; r < b.rt; ++r) {
        x[r] = p.xq_row(slots[b.r0 + r]);
      }
      auto run = [&]<int W, int RT>(int s) {
        for (int wo = 0; wo < kTileRows; wo += W) {
          tile_run<E, BITS, G, W, RT>(
              wsb + wo * m.row_bytes,
              m.row_bytes,
              x,
              wt + wo * Gc,
              bt + wo * Gc,
              tt,
              widx[s],
              map.pair,
              bi == 0 && pf != nullptr ? pf + wo * m.row_bytes : nullptr,
              lut,
              out);
          for (int w = 0; w < W; ++w) {
            for (int r = 0; r < RT; ++r) {
              y[(b.r0 + r) * ldy + j0 + wo + w] = out[w * RT + r];
            }
          }
        }
      };
      if (b.rt == 4) {
        run.template operator()<2, 4>(0);
      } else if (b.rt == 2) {
        run.template operator()<4, 2>(1);
      } else {
        run.template operator()<8, 1>(2);
      }
    }
  }
  if (nb8 < nb) {
    int_dots_impl<E, BITS, G>(m, e, n0 + nb8, nb - nb8, p, slots, R, y + nb8, ldy);
  }
}

// Activation rows per expert from which the tiled path is used.
constexpr int64_t kTileMinRows = 4;

template <ElemFormat E, int BITS, int G>
void int_dots(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  if constexpr (TileShape<E, BITS, G>::kOk) {
    if (R >= kTileMinRows && nb >= kTileRows && R <= 256) {
      tile_dots<E, BITS, G>(m, e, n0, nb, p, slots, R, y, ldy);
      return;
    }
  }
  int_dots_impl<E, BITS, G>(m, e, n0, nb, p, slots, R, y, ldy);
}

using DotsFn = void (*)(
    const QMat&,
    int64_t,
    int64_t,
    int64_t,
    const XPrep&,
    const int64_t*,
    int64_t,
    float*,
    int64_t);

template <ElemFormat E, int BITS>
DotsFn by_group(int group) {
  switch (group) {
    case 16:
      return int_dots<E, BITS, 16>;
    case 32:
      return int_dots<E, BITS, 32>;
    case 64:
      return int_dots<E, BITS, 64>;
    case 128:
      return int_dots<E, BITS, 128>;
    default:
      return nullptr;
  }
}

DotsFn select_int_dots(const QMat& m) {
  if (m.elem == ElemFormat::E2M1) {
    return by_group<ElemFormat::E2M1, 4>(m.group);
  }
  switch (m.bits) {
    case 2:
      return by_group<ElemFormat::Int, 2>(m.group);
    case 4:
      return by_group<ElemFormat::Int, 4>(m.group);
    case 8:
      return by_group<ElemFormat::Int, 8>(m.group);
    default:
      return nullptr;
  }
}

void avx512_dots(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  if (!p.q16) {
    avx2_engine().dots(m, e, n0, nb, p, slots, R, y, ldy);
    return;
  }
  DotsFn fn = select_int_dots(m);
  if (fn == nullptr) {
    throw std::invalid_argument("[moe] unsupported quantization for the AVX-512 integer path");
  }
  fn(m, e, n0, nb, p, slots, R, y, ldy);
}

// The chunk layout of `chunks` whole chunks: dst[c * CE + j * 32 + l] = src[c * CE + l * P + j]
// (CE = 32 * P). Output vector j of a chunk takes elements j, j + P, ... of its P input vectors:
// vpermt2w gathers them from a pair of input vectors, a masked move merges the pairs.
template <int P>
void chunk_layout(const int16_t* src, int16_t* dst, int64_t chunks) {
  static_assert(P == 2 || P == 4 || P == 8);
  __m512i idx[P];
  for (int j = 0; j < P; ++j) {
    alignas(64) int16_t t[32];
    for (int l = 0; l < 32; ++l) {
      const int e = l * P + j; // element of the chunk: vector e / 32, lane e % 32
      t[l] = static_cast<int16_t>(((e / 32) % 2) * 32 + e % 32);
    }
    idx[j] = _mm512_load_si512(t);
  }
  for (int64_t c = 0; c < chunks; ++c) {
    __m512i r[P];
    MOE_UNROLL
    for (int q = 0; q < P; ++q) {
      r[q] = _mm512_loadu_si512(src + c * 32 * P + 32 * q);
    }
    MOE_UNROLL
    for (int j = 0; j < P; ++j) {
      __m512i out = _mm512_permutex2var_epi16(r[0], idx[j], r[1]);
      MOE_UNROLL
      for (int k = 1; k < P / 2; ++k) {
        // Output lanes [64k / P, 64(k + 1) / P) come from vectors 2k and 2k + 1.
        const uint64_t lanes = ((uint64_t{1} << (64 / P)) - 1u) << (64 * k / P);
        out = _mm512_mask_mov_epi16(
            out, static_cast<__mmask32>(lanes), _mm512_permutex2var_epi16(r[2 * k], idx[j], r[2 * k + 1]));
      }
      _mm512_storeu_si512(dst + c * 32 * P + 32 * j, out);
    }
  }
}

// The byte path's layout of `chunks` whole chunks of 128 int16 activations: per chunk the planes
// h(even), h(odd), l(even), l(odd) of 64 bytes each, h = a >> 8 and l = a & 255.
void byte_layout(const int16_t* src, int16_t* dst, int64_t chunks) {
  const __m512i low8 = _mm512_set1_epi32(255);
  for (int64_t c = 0; c < chunks; ++c) {
    auto* out = reinterpret_cast<uint8_t*>(dst + c * 128);
    MOE_UNROLL
    for (int q = 0; q < 4; ++q) {
      // 16 int32 lanes: element 2i in the low half, 2i + 1 in the high half.
      const __m512i v = _mm512_loadu_si512(src + c * 128 + 32 * q);
      const __m512i ev = _mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16);
      const __m512i od = _mm512_srai_epi32(v, 16);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * q), _mm512_cvtepi32_epi8(_mm512_srai_epi32(ev, 8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 64 + 16 * q), _mm512_cvtepi32_epi8(_mm512_srai_epi32(od, 8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 128 + 16 * q), _mm512_cvtepi32_epi8(_mm512_and_si512(ev, low8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 192 + 16 * q), _mm512_cvtepi32_epi8(_mm512_and_si512(od, low8)));
    }
  }
}

// One activation row to the chunk layout (int16 lanes, or the byte path's planes). Returns false
// if the row has a non-finite value.
bool quantize_row(const QMat& m, const float* nat, int64_t K, int16_t* xq, float* xs, float* gs) {
  const bool bytes = byte_format(m);
  const int P = lane_elems(m);
  const int64_t CE = 32 * P;
  const int64_t G = m.group;
  const int64_t ng = m.groups;
  int16_t* tmp = reinterpret_cast<int16_t*>(detail::scratch(3, K / 2 + 64));
  for (int64_t g = 0; g < ng; ++g) {
    const float* src = nat + g * G;
    // Largest magnitude of the group, and whether any element is NaN or infinite (fpclass: QNaN,
    // SNaN, +inf, -inf).
    __m512 mxv = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t k = 0; k < G; k += 16) {
      const __mmask16 mk = first_lanes(G - k);
      const __m512 v = _mm512_maskz_loadu_ps(mk, src + k);
      bad |= _mm512_fpclass_ps_mask(v, 0x99);
      mxv = _mm512_max_ps(mxv, _mm512_abs_ps(v));
    }
    if (bad != 0) {
      return false;
    }
    const float mx = _mm512_reduce_max_ps(mxv);
    // mx = f * 2^ex with f in [0.5, 1) (frexp), from the exponent bits for normal mx.
    int ex = 0;
    const uint32_t mbits = std::bit_cast<uint32_t>(mx);
    if ((mbits >> 23) != 0) {
      ex = static_cast<int>(mbits >> 23) - 126;
    } else if (mx > 0.0f) {
      std::frexp(mx, &ex);
    }
    if (mx > 0.0f && 15 - ex >= -126 && 15 - ex <= 127) {
      // Power-of-two scale: max|x| * 2^(15 - ex) lies in [2^14, 2^15). Scaling by a power of two is
      // exact, so every element within 2^7 of the group's largest (bfloat16) is represented
      // exactly; smaller ones are rounded (to nearest even) to a multiple of the scale.
      const __m512 up =
          _mm512_set1_ps(std::bit_cast<float>(static_cast<uint32_t>(15 - ex + 127) << 23));
      const __m512i lim = _mm512_set1_epi32(32767);
      __m512i sum = _mm512_setzero_si512();
      for (int64_t k = 0; k < G; k += 16) {
        const __mmask16 mk = first_lanes(G - k);
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, src + k), up));
        q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_sub_epi32(_mm512_setzero_si512(), lim)), lim);
        sum = _mm512_add_epi32(sum, q);
        _mm256_mask_storeu_epi16(tmp + g * G + k, mk, _mm512_cvtepi32_epi16(q));
      }
      const double sc = std::bit_cast<double>(static_cast<uint64_t>(ex - 15 + 1023) << 52);
      xs[g] = static_cast<float>(sc);
      gs[g] = static_cast<float>(sc * static_cast<double>(_mm512_reduce_add_epi32(sum)));
    } else if (mx > 0.0f) {
      // Scales outside float32's normal range (only for extreme magnitudes): in double.
      const double up = std::ldexp(1.0, 15 - ex);
      int64_t sum = 0;
      for (int64_t k = 0; k < G; ++k) {
        const double v = std::nearbyint(static_cast<double>(src[k]) * up);
        const int16_t q = static_cast<int16_t>(std::clamp(v, -32767.0, 32767.0));
        tmp[g * G + k] = q;
        sum += q;
      }
      const double sc = std::ldexp(1.0, ex - 15);
      xs[g] = static_cast<float>(sc);
      gs[g] = static_cast<float>(sc * static_cast<double>(sum));
    } else {
      std::fill_n(tmp + g * G, G, int16_t{0});
      xs[g] = 0.0f;
      gs[g] = 0.0f;
    }
  }
  if (bytes) {
    const int64_t chunks = (K + CE - 1) / CE;
    std::fill(tmp + K, tmp + chunks * CE, int16_t{0});
    byte_layout(tmp, xq, chunks);
    return true;
  }
  const int64_t full = K / CE;
  switch (P) {
    case 2:
      chunk_layout<2>(tmp, xq, full);
      break;
    case 4:
      chunk_layout<4>(tmp, xq, full);
      break;
    default:
      chunk_layout<8>(tmp, xq, full);
      break;
  }
  if (full * CE < K) {
    for (int j = 0; j < P; ++j) {
      for (int l = 0; l < 32; ++l) {
        const int64_t k = full * CE + l * P + j;
        xq[full * CE + j * 32 + l] = k < K ? tmp[k] : int16_t{0};
      }
    }
  }
  return true;
}

void avx512_prepare(
    const QMat& m,
    const void* x,
    Dtype xt,
    const int64_t* src_rows,
    int64_t n,
    XPrep& p) {
  if (xt != bfloat16 || !int_format(m) || select_int_dots(m) == nullptr) {
    p.q16 = false;
    avx2_engine().prepare(m, x, xt, src_rows, n, p);
    return;
  }
  const int64_t K = m.cols;
  const int64_t CE = 32 * lane_elems(m);
  p.K = K;
  p.stride = 0;
  p.exact = false;
  p.lane.clear();
  p.direct.clear();
  p.q16 = true;
  p.qstride = (K + CE - 1) / CE * CE;
  p.gstride = (m.groups + 15) / 16 * 16;
  p.xq.assign(static_cast<size_t>(n * p.qstride), 0);
  p.xscale.assign(static_cast<size_t>(n * p.gstride), 0.0f);
  p.gsum.assign(static_cast<size_t>(n * p.gstride), 0.0f);
  std::atomic<bool> finite{true};
  const int64_t chunk = detail::prepare_chunk(n, K);
  const int64_t pieces = (n + chunk - 1) / chunk;
  ThreadPool::instance().parallel_for(pieces, [&](int64_t c) {
    float* nat = detail::scratch(2, K + 16);
    for (int64_t r = c * chunk; r < std::min(n, (c + 1) * chunk); ++r) {
      detail::load_row(x, xt, src_rows[r], K, nat);
      if (!quantize_row(
              m,
              nat,
              K,
              p.xq.data() + r * p.qstride,
              p.xscale.data() + r * p.gstride,
              p.gsum.data() + r * p.gstride)) {
        finite.store(false, std::memory_order_relaxed);
      }
    }
  });
  if (!finite.load()) {
    // Infinities and NaNs propagate as in float arithmetic on the AVX2 path.
    p.q16 = false;
    p.xq.clear();
    p.xscale.clear();
    avx2_engine().prepare(m, x, xt, src_rows, n, p);
  }
}

const Engine kAvx512{SimdLevel::Avx512, avx512_prepare, avx512_dots};

} // namespace

const Engine& avx512_engine() {
  return kAvx512;
}

} // namespace mlx::core::moe

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif // x86_64
