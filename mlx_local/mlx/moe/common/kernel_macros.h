// Copyright © 2026 zmlx contributors.
//
// Macros shared by the SIMD engines (engine_avx2.cpp, engine_avx512.cpp).
#pragma once

#define MOE_INLINE inline __attribute__((always_inline))
// Small fixed-count loops over rows / accumulators must be fully unrolled so that the accumulator
// arrays live in registers (GCC's -O2 does not unroll them by itself).
#if defined(__clang__)
#define MOE_UNROLL _Pragma("unroll")
#else
#define MOE_UNROLL _Pragma("GCC unroll 16")
#endif
