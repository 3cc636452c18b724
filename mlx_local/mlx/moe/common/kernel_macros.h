// Copyright © 2026 zmlx contributors.
//
// Macros shared by the CPU kernels (the SIMD engines engine_avx2.cpp / engine_avx512.cpp and the
// vectorizable loops around them).
#pragma once

#define MOE_INLINE inline __attribute__((always_inline))
// Small fixed-count loops over rows / accumulators must be fully unrolled so that the accumulator
// arrays live in registers (GCC's -O2 does not unroll them by itself).
#if defined(__clang__)
#define MOE_UNROLL _Pragma("unroll")
#else
#define MOE_UNROLL _Pragma("GCC unroll 16")
#endif

// A plain loop compiled for several instruction sets; the loader picks the best the CPU has (used
// for vectorizable scalar code outside the engines: activations, output conversion).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define MOE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOE_CLONES
#endif
