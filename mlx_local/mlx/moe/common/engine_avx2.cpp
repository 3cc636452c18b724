// Copyright © 2026 zmlx contributors.
//
// The AVX2 + FMA + F16C engine (x86_64). Every function in this file is compiled with a target
// attribute (pragma region below), never with global -mavx2 flags, and is only reached after
// runtime detection (simd.cpp), so the library still runs on x86_64 CPUs without AVX2.
//
// Lane layout. A weight row is processed in blocks of 8 lanes x P elements: lane j of a block holds
// P consecutive elements (one uint32 word for 2/4/8 bits, 3 bytes for 3 and 6 bits, 20 bits for 5
// bits), and "position" p is the p-th element of every lane. Activations are permuted once per
// call so that the 8 values multiplying position p of a block are contiguous:
//   lane[blk * BE + p * 8 + j] = x[blk * BE + j * P + p]          (BE = 8 * P)
// Elements after the last whole block stay in natural order (scalar tail).
//
// Affine decode in registers: position p of every lane is (word & (mask << bits*p)), converted to
// float without shifting; the activations of the direct layout are prescaled by 2^-(bits*p)
// (exact: a power of two) to compensate. Per group: sum_k x*q is accumulated, multiplied by the
// scale once, and bias * sum_k x is added from per-group activation sums. (The prescaled copies of
// activations far below their row's largest lose precision or become 0, which is invisible in the
// result; a row whose largest magnitude is below 2^-64 switches the call to the exact path.
// float32 activations never use this path: see XPrep::exact.)
#include "mlx/moe/common/engine.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

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
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace mlx::core::moe {

namespace {

// Up to this many rows per expert use the direct path (in chunks of up to 4 rows); more use the
// tile path (weights dequantized once per call into float32 and reused by all rows): past one chunk
// of rows the direct path decodes every weight twice and the tile's one decode wins (BENCHMARKS.md).
constexpr int64_t kDirectMaxRows = 4;
// float32 activations (exact dequantization): up to this many rows per expert dequantize in
// registers, more use the tile path (where the two cross over: BENCHMARKS.md).
constexpr int64_t kExactDirectMaxRows = 2;
// Weight rows per dequantized tile, and the K chunk of the tile micro kernel (floats).
constexpr int64_t kTileRows = 16;
constexpr int64_t kChunk = 512;
// Software prefetch distance (bytes) ahead of the weight stream; weight rows of one expert are
// contiguous, so this runs into the following rows.
constexpr int64_t kPrefetch = 1536;

MOE_INLINE void prefetch(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

template <ElemFormat E, int BITS>
struct Layout {
  static constexpr int P = (BITS == 3) ? 8 : (BITS == 5 || BITS == 6) ? 4 : 32 / BITS;
  static constexpr int BE = 8 * P; // elements per block
  static constexpr int LB = BE * BITS / 8; // bytes per block
  static constexpr bool kTop = (BITS * P == 32); // position P-1 reaches bit 31
  // Bytes a block load touches (3/5/6 bits read two overlapping 16-byte halves).
  static constexpr int kRead = (BITS == 3 || BITS == 6) ? 28 : (BITS == 5) ? 26 : 32;
  // Prescale of position p in the direct layout (affine only).
  static float prescale(int p) {
    if (E != ElemFormat::Int || (kTop && p == P - 1)) {
      return 1.0f;
    }
    return std::ldexp(1.0f, -BITS * p);
  }
};

struct Consts {
  __m256 e2m1;
  __m256i sign;
  __m256i m7f;
  __m256 p120;
  // Written out (not default member initializers) so that the constructor carries the target
  // attribute of this region.
  MOE_INLINE Consts()
      : e2m1(_mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f)),
        sign(_mm256_set1_epi32(static_cast<int>(0x80000000u))),
        m7f(_mm256_set1_epi32(0x7f)),
        p120(_mm256_castsi256_ps(_mm256_set1_epi32(0x7b800000))) {} // 2^120
};

MOE_INLINE float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// The 8 lanes of block data starting at p. `safe`: the block is near the end of its row, copy it
// first so that the wide loads never touch memory past the row.
template <int BITS>
MOE_INLINE __m256i load_block(const uint8_t* p, bool safe) {
  if constexpr (BITS == 3 || BITS == 5 || BITS == 6) {
    constexpr int LB = (BITS == 5) ? 20 : 24;
    constexpr int H = (BITS == 5) ? 10 : 12;
    alignas(32) uint8_t buf[32];
    if (safe) {
      std::memcpy(buf, p, LB);
      std::memset(buf + LB, 0, 32 - LB);
      p = buf;
    }
    __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + H));
    __m256i v = _mm256_set_m128i(hi, lo);
    if constexpr (BITS == 5) {
      const __m256i shuf = _mm256_setr_epi8(
          0, 1, 2, -1, 2, 3, 4, -1, 5, 6, 7, -1, 7, 8, 9, -1, //
          0, 1, 2, -1, 2, 3, 4, -1, 5, 6, 7, -1, 7, 8, 9, -1);
      v = _mm256_shuffle_epi8(v, shuf);
      return _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
    } else {
      const __m256i shuf = _mm256_setr_epi8(
          0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, //
          0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
      return _mm256_shuffle_epi8(v, shuf);
    }
  } else {
    (void)safe;
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
}

// Position p of every lane as float: the raw (unshifted) integer for affine, the value for fp.
template <ElemFormat E, int BITS, int p>
MOE_INLINE __m256 decode_pos(__m256i v, const Consts& c) {
  using L = Layout<E, BITS>;
  if constexpr (E == ElemFormat::Int) {
    if constexpr (L::kTop && p == L::P - 1) {
      return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, BITS * p));
    } else {
      constexpr int mask = static_cast<int>(((1u << BITS) - 1u) << (BITS * p));
      return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(mask)));
    }
  } else if constexpr (E == ElemFormat::E2M1) {
    __m256i idx = v;
    if constexpr (p > 0) {
      idx = _mm256_srli_epi32(v, 4 * p);
    }
    __m256 mag = _mm256_permutevar8x32_ps(c.e2m1, idx); // uses the low 3 bits of each lane
    __m256i sgn = v;
    if constexpr (p < 7) {
      sgn = _mm256_slli_epi32(v, 28 - 4 * p);
    }
    sgn = _mm256_and_si256(sgn, c.sign);
    return _mm256_xor_ps(mag, _mm256_castsi256_ps(sgn));
  } else {
    __m256i byte = v;
    if constexpr (p > 0) {
      byte = _mm256_srli_epi32(v, 8 * p);
    }
    __m256i m7 = _mm256_and_si256(byte, c.m7f);
    // (m7 << 20) read as float32 is 2^-120 times the e4m3 magnitude (subnormals included).
    __m256 mag = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(m7, 20)), c.p120);
    __m256i sgn = v;
    if constexpr (p < 3) {
      sgn = _mm256_slli_epi32(v, 24 - 8 * p);
    }
    sgn = _mm256_and_si256(sgn, c.sign);
    __m256i nan = _mm256_cmpeq_epi32(m7, c.m7f); // 0x7f / 0xff: NaN (all ones)
    return _mm256_or_ps(
        _mm256_or_ps(mag, _mm256_castsi256_ps(sgn)), _mm256_castsi256_ps(nan));
  }
}

// lane j -> j / LPG (which group of the block lane j belongs to).
template <int LPG>
MOE_INLINE __m256i lane_group_index() {
  return _mm256_setr_epi32(
      0 / LPG, 1 / LPG, 2 / LPG, 3 / LPG, 4 / LPG, 5 / LPG, 6 / LPG, 7 / LPG);
}

// The direct path's accumulation over the blocks of one group (or one block): t[r][p % NT] +=
// decode(p) * x_r[p]. The accumulators are members (not behind a pointer) so that they stay in
// registers once everything is inlined.
template <ElemFormat E, int BITS, int R, int NT>
struct DirectAcc {
  __m256 t[R][NT];
  __m256i v;
  const float* x[R];
  int64_t off;
  const Consts* c;

  MOE_INLINE void zero() {
    MOE_UNROLL
    for (int r = 0; r < R; ++r) {
      MOE_UNROLL
      for (int i = 0; i < NT; ++i) {
        t[r][i] = _mm256_setzero_ps();
      }
    }
  }
  template <int p>
  MOE_INLINE void step() {
    __m256 q = decode_pos<E, BITS, p>(v, *c);
    MOE_UNROLL
    for (int r = 0; r < R; ++r) {
      t[r][p % NT] = _mm256_fmadd_ps(q, _mm256_loadu_ps(x[r] + off + p * 8), t[r][p % NT]);
    }
  }
  template <int... I>
  MOE_INLINE void run(std::integer_sequence<int, I...>) {
    (step<I>(), ...);
  }
  MOE_INLINE void block(__m256i vv, int64_t o) {
    v = vv;
    off = o;
    run(std::make_integer_sequence<int, Layout<E, BITS>::P>{});
  }
  MOE_INLINE __m256 sum(int r) const {
    if constexpr (NT == 4) {
      return _mm256_add_ps(_mm256_add_ps(t[r][0], t[r][1]), _mm256_add_ps(t[r][2], t[r][3]));
    } else if constexpr (NT == 2) {
      return _mm256_add_ps(t[r][0], t[r][1]);
    } else {
      return t[r][0];
    }
  }
};

// One block of the tile decode: out[p * 8 ..] = decode(p) * S_p + B (affine) or decode(p) * S.
template <ElemFormat E, int BITS>
struct TileBlock {
  __m256i v;
  float* out;
  __m256 s;
  __m256 b;
  const float* pre;
  const Consts* c;

  template <int p>
  MOE_INLINE void step() {
    __m256 q = decode_pos<E, BITS, p>(v, *c);
    __m256 val;
    if constexpr (E == ElemFormat::Int) {
      val = _mm256_fmadd_ps(q, _mm256_mul_ps(s, _mm256_set1_ps(pre[p])), b);
    } else {
      val = _mm256_mul_ps(q, s);
    }
    _mm256_storeu_ps(out + p * 8, val);
  }
  template <int... I>
  MOE_INLINE void run(std::integer_sequence<int, I...>) {
    (step<I>(), ...);
  }
};

// Direct path: out[r] = sum_k x_r[k] * W[k] for one weight row and R <= 4 activation rows.
template <ElemFormat E, int BITS, int G, int R>
void direct_rows(
    const uint8_t* wrow,
    int64_t row_bytes,
    int64_t K,
    int64_t groups,
    const float* s,
    const float* b,
    const float* const* xd,
    const float* const* gs,
    float* out) {
  using L = Layout<E, BITS>;
  constexpr int NT = (R == 1) ? 4 : (R == 2) ? 2 : 1;
  const Consts c;
  const int64_t nblk = K / L::BE;
  __m256 acc[R];
  MOE_UNROLL
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
  }
  DirectAcc<E, BITS, R, NT> da;
  MOE_UNROLL
  for (int r = 0; r < R; ++r) {
    da.x[r] = xd[r];
  }
  da.c = &c;
  if constexpr (L::BE <= G) {
    constexpr int BPG = G / L::BE;
    for (int64_t g = 0; g < groups; ++g) {
      da.zero();
      for (int bi = 0; bi < BPG; ++bi) {
        const int64_t blk = g * BPG + bi;
        const bool safe = blk * L::LB + L::kRead > row_bytes;
        if ((blk * L::LB) % 64 < L::LB) {
          prefetch(wrow + blk * L::LB + kPrefetch);
        }
        da.block(load_block<BITS>(wrow + blk * L::LB, safe), blk * L::BE);
      }
      const __m256 sv = _mm256_broadcast_ss(s + g);
      MOE_UNROLL
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_fmadd_ps(da.sum(r), sv, acc[r]);
      }
    }
  } else {
    constexpr int LPG = G / L::P;
    constexpr int GPB = L::BE / G; // groups per block
    const __m256i idx = lane_group_index<LPG>();
    for (int64_t blk = 0; blk < nblk; ++blk) {
      if ((blk * L::LB) % 64 < L::LB) {
        prefetch(wrow + blk * L::LB + kPrefetch);
      }
      da.zero();
      const bool safe = blk * L::LB + L::kRead > row_bytes;
      da.block(load_block<BITS>(wrow + blk * L::LB, safe), blk * L::BE);
      const __m256 sv = _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + blk * GPB), idx);
      MOE_UNROLL
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_fmadd_ps(da.sum(r), sv, acc[r]);
      }
    }
  }
  float total[R];
  MOE_UNROLL
  for (int r = 0; r < R; ++r) {
    total[r] = hsum(acc[r]);
  }
  // Natural-order tail after the last whole block (only when a block spans several groups).
  const int64_t kfull = nblk * L::BE;
  if (kfull < K) {
    for (int64_t k = kfull; k < K; ++k) {
      float w;
      if constexpr (E == ElemFormat::Int) {
        w = static_cast<float>(extract_bits(wrow, row_bytes, k, BITS));
      } else if constexpr (E == ElemFormat::E2M1) {
        w = e2m1_to_f32(static_cast<uint8_t>((wrow[k >> 1] >> ((k & 1) * 4)) & 0xfu));
      } else {
        w = e4m3_to_f32(wrow[k]);
      }
      w *= s[k / G];
      MOE_UNROLL
      for (int r = 0; r < R; ++r) {
        total[r] += w * xd[r][k];
      }
    }
  }
  if constexpr (E == ElemFormat::Int) {
    // + sum_g bias_g * sum_{k in g} x_k
    // (b holds the next row's biases after this row's: only whole vectors of this row's groups,
    // then the rest one by one.)
    const int64_t gv = groups / 8 * 8;
    MOE_UNROLL
    for (int r = 0; r < R; ++r) {
      __m256 bacc = _mm256_setzero_ps();
      for (int64_t g = 0; g < gv; g += 8) {
        bacc = _mm256_fmadd_ps(_mm256_loadu_ps(b + g), _mm256_loadu_ps(gs[r] + g), bacc);
      }
      float t = hsum(bacc);
      for (int64_t g = gv; g < groups; ++g) {
        t += b[g] * gs[r][g];
      }
      total[r] += t;
    }
  } else {
    (void)b;
    (void)gs;
  }
  MOE_UNROLL
  for (int r = 0; r < R; ++r) {
    out[r] = total[r];
  }
}

// The exact direct path (float32 activations, affine weights): each weight is dequantized in
// registers as fma(q, scale, bias) -- the float32 rounding of MLX's float32 path -- and multiplied
// into the rows' accumulators; no per-group decomposition. Activations in the plain lane layout.
template <int BITS, int R, int NT>
struct ExactAcc {
  static constexpr int P = Layout<ElemFormat::Int, BITS>::P;
  __m256 t[R][NT];
  __m256 sp[P]; // scale * prescale(p)
  __m256 bv;
  __m256i v;
  const float* x[R];
  int64_t off;
  const Consts* c;

  MOE_INLINE void scales(__m256 sv, __m256 b, const float* pre) {
    MOE_UNROLL
    for (int p = 0; p < P; ++p) {
      sp[p] = _mm256_mul_ps(sv, _mm256_set1_ps(pre[p]));
    }
    bv = b;
  }
  template <int p>
  MOE_INLINE void step() {
    const __m256 w = _mm256_fmadd_ps(decode_pos<ElemFormat::Int, BITS, p>(v, *c), sp[p], bv);
    MOE_UNROLL
    for (int r = 0; r < R; ++r) {
      t[r][p % NT] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x[r] + off + p * 8), t[r][p % NT]);
    }
  }
  template <int... I>
  MOE_INLINE void run(std::integer_sequence<int, I...>) {
    (step<I>(), ...);
  }
  MOE_INLINE void block(__m256i vv, int64_t o) {
    v = vv;
    off = o;
    run(std::make_integer_sequence<int, P>{});
  }
};

template <int BITS, int G, int R>
void direct_rows_exact(
    const uint8_t* wrow,
    int64_t row_bytes,
    int64_t K,
    int64_t groups,
    const float* s,
    const float* b,
    const float* const* xl,
    float* out) {
  using L = Layout<ElemFormat::Int, BITS>;
  constexpr int NT = (R == 1) ? 4 : (R == 2) ? 2 : 1;
  const Consts c;
  float pre[L::P];
  for (int p = 0; p < L::P; ++p) {
    pre[p] = L::prescale(p);
  }
  ExactAcc<BITS, R, NT> ea;
  MOE_UNROLL
  for (int r = 0; r < R; ++r) {
    ea.x[r] = xl[r];
    MOE_UNROLL
    for (int i = 0; i < NT; ++i) {
      ea.t[r][i] = _mm256_setzero_ps();
    }
  }
  ea.c = &c;
  const int64_t nblk = K / L::BE;
  if constexpr (L::BE <= G) {
    constexpr int BPG = G / L::BE;
    for (int64_t g = 0; g < groups; ++g) {
      ea.scales(_mm256_broadcast_ss(s + g), _mm256_broadcast_ss(b + g), pre);
      for (int bi = 0; bi < BPG; ++bi) {
        const int64_t blk = g * BPG + bi;
        const bool safe = blk * L::LB + L::kRead > row_bytes;
        if ((blk * L::LB) % 64 < L::LB) {
          prefetch(wrow + blk * L::LB + kPrefetch);
        }
        ea.block(load_block<BITS>(wrow + blk * L::LB, safe), blk * L::BE);
      }
    }
  } else {
    constexpr int LPG = G / L::P;
    constexpr int GPB = L::BE / G;
    const __m256i idx = lane_group_index<LPG>();
    for (int64_t blk = 0; blk < nblk; ++blk) {
      if ((blk * L::LB) % 64 < L::LB) {
        prefetch(wrow + blk * L::LB + kPrefetch);
      }
      ea.scales(
          _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + blk * GPB), idx),
          _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + blk * GPB), idx),
          pre);
      const bool safe = blk * L::LB + L::kRead > row_bytes;
      ea.block(load_block<BITS>(wrow + blk * L::LB, safe), blk * L::BE);
    }
  }
  MOE_UNROLL
  for (int r = 0; r < R; ++r) {
    __m256 tt = ea.t[r][0];
    MOE_UNROLL
    for (int i = 1; i < NT; ++i) {
      tt = _mm256_add_ps(tt, ea.t[r][i]);
    }
    float total = hsum(tt);
    for (int64_t k = nblk * L::BE; k < K; ++k) {
      const int64_t g = k / G;
      const float w = std::fma(
          static_cast<float>(extract_bits(wrow, row_bytes, k, BITS)), s[g], b[g]);
      total += w * xl[r][k];
    }
    out[r] = total;
  }
}

// Dequantizes one weight row into the lane layout (natural-order tail).
template <ElemFormat E, int BITS, int G>
void decode_tile_row(
    const uint8_t* wrow,
    int64_t row_bytes,
    int64_t K,
    const float* s,
    const float* b,
    float* out) {
  using L = Layout<E, BITS>;
  const Consts c;
  float pre[L::P];
  for (int p = 0; p < L::P; ++p) {
    pre[p] = L::prescale(p);
  }
  const int64_t nblk = K / L::BE;
  if constexpr (L::BE <= G) {
    constexpr int BPG = G / L::BE;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t g = blk / BPG;
      const bool safe = blk * L::LB + L::kRead > row_bytes;
      TileBlock<E, BITS> tb{
          load_block<BITS>(wrow + blk * L::LB, safe),
          out + blk * L::BE,
          _mm256_broadcast_ss(s + g),
          _mm256_broadcast_ss(b + g),
          pre,
          &c};
      tb.run(std::make_integer_sequence<int, L::P>{});
    }
  } else {
    constexpr int LPG = G / L::P;
    constexpr int GPB = L::BE / G;
    const __m256i idx = lane_group_index<LPG>();
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const bool safe = blk * L::LB + L::kRead > row_bytes;
      TileBlock<E, BITS> tb{
          load_block<BITS>(wrow + blk * L::LB, safe),
          out + blk * L::BE,
          _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + blk * GPB), idx),
          _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + blk * GPB), idx),
          pre,
          &c};
      tb.run(std::make_integer_sequence<int, L::P>{});
    }
  }
  const int64_t kfull = nblk * L::BE;
  if (kfull < K) {
    for (int64_t k = kfull; k < K; ++k) {
      const int64_t g = k / G;
      if constexpr (E == ElemFormat::Int) {
        out[k] = s[g] * static_cast<float>(extract_bits(wrow, row_bytes, k, BITS)) + b[g];
      } else if constexpr (E == ElemFormat::E2M1) {
        out[k] = s[g] * e2m1_to_f32(static_cast<uint8_t>((wrow[k >> 1] >> ((k & 1) * 4)) & 0xfu));
      } else {
        out[k] = s[g] * e4m3_to_f32(wrow[k]);
      }
    }
  }
}

// Register-blocked micro kernel: RR activation rows x NW dequantized weight rows over K elements
// (a chunk of the rows); adds the dot products into y.
template <int RR, int NW>
void micro(const float* const* x, const float* w, int64_t ldw, int64_t K, float* y, int64_t ldy) {
  __m256 acc[RR][NW];
  MOE_UNROLL
  for (int r = 0; r < RR; ++r) {
    MOE_UNROLL
    for (int n = 0; n < NW; ++n) {
      acc[r][n] = _mm256_setzero_ps();
    }
  }
  for (int64_t k = 0; k < K; k += 8) {
    __m256 wv[NW];
    MOE_UNROLL
    for (int n = 0; n < NW; ++n) {
      wv[n] = _mm256_loadu_ps(w + n * ldw + k);
    }
    MOE_UNROLL
    for (int r = 0; r < RR; ++r) {
      __m256 xv = _mm256_loadu_ps(x[r] + k);
      // Keep xv in a register: folding it into each FMA as a memory operand would load it NW
      // times and make the loop load-bound.
      asm("" : "+x"(xv));
      MOE_UNROLL
      for (int n = 0; n < NW; ++n) {
        acc[r][n] = _mm256_fmadd_ps(xv, wv[n], acc[r][n]);
      }
    }
  }
  MOE_UNROLL
  for (int r = 0; r < RR; ++r) {
    MOE_UNROLL
    for (int n = 0; n < NW; ++n) {
      y[r * ldy + n] += hsum(acc[r][n]);
    }
  }
}

template <int NW>
void micro_rows(int64_t rr, const float* const* x, const float* w, int64_t ldw, int64_t K, float* y, int64_t ldy) {
  switch (rr) {
    case 1:
      micro<1, NW>(x, w, ldw, K, y, ldy);
      break;
    case 2:
      micro<2, NW>(x, w, ldw, K, y, ldy);
      break;
    case 3:
      micro<3, NW>(x, w, ldw, K, y, ldy);
      break;
    default:
      micro<4, NW>(x, w, ldw, K, y, ldy);
      break;
  }
}

void convert_floats(const void* src, Dtype t, int64_t off, int64_t n, float* dst) {
  int64_t i = 0;
  if (t == float32) {
    std::memcpy(dst, static_cast<const float*>(src) + off, n * sizeof(float));
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(src) + off;
  if (t == bfloat16) {
    for (; i + 8 <= n; i += 8) {
      __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; ++i) {
      dst[i] = bf16_to_f32(p[i]);
    }
  } else {
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(
          dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
    }
    for (; i < n; ++i) {
      dst[i] = f16_to_f32(p[i]);
    }
  }
}

// Scales and biases (zeros for the fp modes) of stored rows [r0, r0 + nr) of expert e, row after
// row (m.groups each; the rows' scales are contiguous in memory), zero-padded by 16.
void scale_rows(const QMat& m, int64_t e, int64_t r0, int64_t nr, float* s, float* b) {
  const int64_t off = m.scale_offset(e, r0);
  const int64_t n = m.groups * nr;
  switch (m.scale) {
    case ScaleFormat::Float:
      convert_floats(m.scales, m.scale_dtype, off, n, s);
      break;
    case ScaleFormat::E8M0: {
      const uint8_t* p = static_cast<const uint8_t*>(m.scales) + off;
      int64_t i = 0;
      const __m256i tiny = _mm256_set1_epi32(0x00400000);
      for (; i + 8 <= n; i += 8) {
        int64_t raw;
        std::memcpy(&raw, p + i, 8);
        __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(raw));
        __m256i f = _mm256_slli_epi32(v, 23);
        __m256i zero = _mm256_cmpeq_epi32(v, _mm256_setzero_si256());
        _mm256_storeu_ps(s + i, _mm256_castsi256_ps(_mm256_blendv_epi8(f, tiny, zero)));
      }
      for (; i < n; ++i) {
        s[i] = e8m0_to_f32(p[i]);
      }
      break;
    }
    case ScaleFormat::E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(m.scales) + off;
      for (int64_t i = 0; i < n; ++i) {
        s[i] = e4m3_to_f32(p[i]);
      }
      break;
    }
  }
  if (m.elem == ElemFormat::Int) {
    convert_floats(m.biases, m.bias_dtype, off, n, b);
  } else {
    std::fill_n(b, n, 0.0f);
  }
  std::fill_n(s + n, 16, 0.0f);
  std::fill_n(b + n, 16, 0.0f);
}

template <ElemFormat E, int BITS, int G>
void dots_impl(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  const int64_t K = m.cols;
  const int64_t ng = m.groups;
  if constexpr (E == ElemFormat::Int) {
    if (R <= kExactDirectMaxRows && p.exact) {
      const float* xl[kDirectMaxRows];
      for (int64_t r = 0; r < R; ++r) {
        xl[r] = p.lane_row(slots[r]);
      }
      float out[4];
      float* sb = detail::scratch(0, nb * ng + 16);
      float* bb = detail::scratch(1, nb * ng + 16);
      scale_rows(m, e, n0, nb, sb, bb);
      for (int64_t j = 0; j < nb; ++j) {
        const float* s = sb + j * ng;
        const float* b = bb + j * ng;
        const uint8_t* wrow = m.row(e, n0 + j);
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
          const int64_t rr = std::min<int64_t>(4, R - r0);
          const float* const* xc = xl + r0;
          switch (rr) {
            case 1:
              direct_rows_exact<BITS, G, 1>(wrow, m.row_bytes, K, ng, s, b, xc, out);
              break;
            case 2:
              direct_rows_exact<BITS, G, 2>(wrow, m.row_bytes, K, ng, s, b, xc, out);
              break;
            case 3:
              direct_rows_exact<BITS, G, 3>(wrow, m.row_bytes, K, ng, s, b, xc, out);
              break;
            default:
              direct_rows_exact<BITS, G, 4>(wrow, m.row_bytes, K, ng, s, b, xc, out);
              break;
          }
          for (int64_t r = 0; r < rr; ++r) {
            y[(r0 + r) * ldy + j] = out[r];
          }
        }
      }
      return;
    }
  }
  if (R <= kDirectMaxRows && !p.exact) {
    // Rows in chunks of up to 4 (the weight row is decoded again per chunk, from L1).
    const float* xd[kDirectMaxRows];
    const float* gs[kDirectMaxRows];
    for (int64_t r = 0; r < R; ++r) {
      xd[r] = p.direct_row(slots[r]);
      gs[r] = E == ElemFormat::Int ? p.gsum_row(slots[r]) : nullptr;
    }
    float out[4];
    float* sb = detail::scratch(0, nb * ng + 16);
    float* bb = detail::scratch(1, nb * ng + 16);
    scale_rows(m, e, n0, nb, sb, bb);
    for (int64_t j = 0; j < nb; ++j) {
      const float* s = sb + j * ng;
      const float* b = bb + j * ng;
      const uint8_t* wrow = m.row(e, n0 + j);
      for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t rr = std::min<int64_t>(4, R - r0);
        const float* const* xc = xd + r0;
        const float* const* gc = gs + r0;
        switch (rr) {
          case 1:
            direct_rows<E, BITS, G, 1>(wrow, m.row_bytes, K, m.groups, s, b, xc, gc, out);
            break;
          case 2:
            direct_rows<E, BITS, G, 2>(wrow, m.row_bytes, K, m.groups, s, b, xc, gc, out);
            break;
          case 3:
            direct_rows<E, BITS, G, 3>(wrow, m.row_bytes, K, m.groups, s, b, xc, gc, out);
            break;
          default:
            direct_rows<E, BITS, G, 4>(wrow, m.row_bytes, K, m.groups, s, b, xc, gc, out);
            break;
        }
        for (int64_t r = 0; r < rr; ++r) {
          y[(r0 + r) * ldy + j] = out[r];
        }
      }
    }
    return;
  }
  float* tile = detail::scratch(2, kTileRows * K + 16);
  float* sb = detail::scratch(0, kTileRows * ng + 16);
  float* bb = detail::scratch(1, kTileRows * ng + 16);
  for (int64_t j0 = 0; j0 < nb; j0 += kTileRows) {
    const int64_t tb = std::min(kTileRows, nb - j0);
    scale_rows(m, e, n0 + j0, tb, sb, bb);
    for (int64_t t = 0; t < tb; ++t) {
      decode_tile_row<E, BITS, G>(
          m.row(e, n0 + j0 + t), m.row_bytes, K, sb + t * ng, bb + t * ng, tile + t * K);
    }
    for (int64_t r = 0; r < R; ++r) {
      std::fill_n(y + r * ldy + j0, tb, 0.0f);
    }
    // K in chunks so that the 4 activation rows of a chunk stay in L1 while the tile's rows
    // stream past them.
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, K - k0);
      for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t rr = std::min<int64_t>(4, R - r0);
        const float* x[4];
        for (int64_t r = 0; r < rr; ++r) {
          x[r] = p.lane_row(slots[r0 + r]) + k0;
        }
        int64_t t = 0;
        for (; t + 2 <= tb; t += 2) {
          micro_rows<2>(rr, x, tile + t * K + k0, K, kc, y + r0 * ldy + j0 + t, ldy);
        }
        if (t < tb) {
          micro_rows<1>(rr, x, tile + t * K + k0, K, kc, y + r0 * ldy + j0 + t, ldy);
        }
      }
    }
  }
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

template <int BITS>
DotsFn int_dots(int group) {
  switch (group) {
    case 32:
      return dots_impl<ElemFormat::Int, BITS, 32>;
    case 64:
      return dots_impl<ElemFormat::Int, BITS, 64>;
    case 128:
      return dots_impl<ElemFormat::Int, BITS, 128>;
    default:
      return nullptr;
  }
}

DotsFn select_dots(const QMat& m) {
  switch (m.elem) {
    case ElemFormat::Int:
      switch (m.bits) {
        case 2:
          return int_dots<2>(m.group);
        case 3:
          return int_dots<3>(m.group);
        case 4:
          return int_dots<4>(m.group);
        case 5:
          return int_dots<5>(m.group);
        case 6:
          return int_dots<6>(m.group);
        case 8:
          return int_dots<8>(m.group);
        default:
          return nullptr;
      }
    case ElemFormat::E2M1:
      if (m.bits != 4) {
        return nullptr;
      }
      if (m.group == 16) {
        return dots_impl<ElemFormat::E2M1, 4, 16>;
      }
      if (m.group == 32) {
        return dots_impl<ElemFormat::E2M1, 4, 32>;
      }
      return nullptr;
    case ElemFormat::E4M3:
      if (m.bits == 8 && m.group == 32) {
        return dots_impl<ElemFormat::E4M3, 8, 32>;
      }
      return nullptr;
  }
  return nullptr;
}

void avx2_dots(
    const QMat& m,
    int64_t e,
    int64_t n0,
    int64_t nb,
    const XPrep& p,
    const int64_t* slots,
    int64_t R,
    float* y,
    int64_t ldy) {
  if (!m.transpose) {
    detail::dots_nt(m, e, n0, nb, p, slots, R, y, ldy);
    return;
  }
  DotsFn fn = select_dots(m);
  if (fn == nullptr) {
    throw std::invalid_argument("[moe] unsupported quantization for the AVX2 engine");
  }
  fn(m, e, n0, nb, p, slots, R, y, ldy);
}

// Block geometry of a weight format: elements per lane (P) and per block (BE), and the prescale of
// each position in the direct layout.
struct Geometry {
  int P = 0;
  int BE = 0;
  float pre[16] = {};
};

template <ElemFormat E, int BITS>
Geometry geometry_of() {
  using L = Layout<E, BITS>;
  Geometry g;
  g.P = L::P;
  g.BE = L::BE;
  for (int p = 0; p < L::P; ++p) {
    g.pre[p] = L::prescale(p);
  }
  return g;
}

Geometry geometry(const QMat& m) {
  switch (m.elem) {
    case ElemFormat::E2M1:
      return geometry_of<ElemFormat::E2M1, 4>();
    case ElemFormat::E4M3:
      return geometry_of<ElemFormat::E4M3, 8>();
    case ElemFormat::Int:
      break;
  }
  switch (m.bits) {
    case 2:
      return geometry_of<ElemFormat::Int, 2>();
    case 3:
      return geometry_of<ElemFormat::Int, 3>();
    case 4:
      return geometry_of<ElemFormat::Int, 4>();
    case 5:
      return geometry_of<ElemFormat::Int, 5>();
    case 6:
      return geometry_of<ElemFormat::Int, 6>();
    default:
      return geometry_of<ElemFormat::Int, 8>();
  }
}

void avx2_prepare(
    const QMat& m,
    const void* x,
    Dtype xt,
    const int64_t* src_rows,
    int64_t n,
    XPrep& p) {
  if (!m.transpose) {
    detail::prepare_natural(m, x, xt, src_rows, n, p);
    return;
  }
  const int64_t K = m.cols;
  // float32 activations with affine weights use the tile path only (see XPrep::exact).
  p.exact = xt == float32 && m.elem == ElemFormat::Int;
  const bool affine = m.elem == ElemFormat::Int && !p.exact;
  const Geometry geo = geometry(m);
  const int64_t groups = m.groups;
  p.K = K;
  p.stride = K;
  p.gstride = (groups + 7) / 8 * 8;
  p.lane.resize(static_cast<size_t>(n * K));
  if (affine) {
    p.direct.resize(static_cast<size_t>(n * K));
    p.gsum.assign(static_cast<size_t>(n * p.gstride), 0.0f);
  } else {
    p.direct.clear();
    p.gsum.clear();
  }
  const int64_t nblk = K / geo.BE;
  const int64_t kfull = nblk * geo.BE;
  const int64_t chunk = detail::prepare_chunk(n, K);
  const int64_t pieces = (n + chunk - 1) / chunk;
  // A row whose largest magnitude is below 2^-64 would lose precision to float32 subnormals in the
  // prescaled copy (down to 2^-28 of the row); then the whole call takes the exact path instead.
  std::atomic<bool> tiny{false};
  ThreadPool::instance().parallel_for(pieces, [&](int64_t c) {
    float* nat = detail::scratch(3, K + 16);
    for (int64_t r = c * chunk; r < std::min(n, (c + 1) * chunk); ++r) {
      detail::load_row(x, xt, src_rows[r], K, nat);
      if (affine) {
        float mx = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          mx = std::max(mx, std::fabs(nat[k]));
        }
        if (mx > 0.0f && mx < 0x1p-64f) {
          tiny.store(true, std::memory_order_relaxed);
        }
      }
      float* lane = p.lane.data() + r * K;
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const float* src = nat + blk * geo.BE;
        float* dst = lane + blk * geo.BE;
        for (int pp = 0; pp < geo.P; ++pp) {
          for (int j = 0; j < 8; ++j) {
            dst[pp * 8 + j] = src[j * geo.P + pp];
          }
        }
      }
      std::copy(nat + kfull, nat + K, lane + kfull);
      if (affine) {
        float* direct = p.direct.data() + r * K;
        for (int64_t blk = 0; blk < nblk; ++blk) {
          for (int pp = 0; pp < geo.P; ++pp) {
            const __m256 pre = _mm256_set1_ps(geo.pre[pp]);
            const int64_t o = blk * geo.BE + pp * 8;
            _mm256_storeu_ps(direct + o, _mm256_mul_ps(_mm256_loadu_ps(lane + o), pre));
          }
        }
        std::copy(nat + kfull, nat + K, direct + kfull);
        float* gs = p.gsum.data() + r * p.gstride;
        for (int64_t g = 0; g < groups; ++g) {
          double acc = 0.0;
          for (int64_t k = g * m.group; k < (g + 1) * m.group; ++k) {
            acc += nat[k];
          }
          gs[g] = static_cast<float>(acc);
        }
      }
    }
  });
  if (tiny.load()) {
    // The natural-order lanes are exact; dequantize weights exactly instead (see XPrep::exact).
    p.exact = true;
    p.direct.clear();
    p.gsum.clear();
  }
}

const Engine kAvx2{SimdLevel::Avx2, avx2_prepare, avx2_dots};

} // namespace

const Engine& avx2_engine() {
  return kAvx2;
}

} // namespace mlx::core::moe

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif // x86_64
