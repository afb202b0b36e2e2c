/* Which hand-written paths a kvscope C kernel compiles. kvscope.kernels.cpu.c_library builds each library for one
 * build, KVSCOPE_CPU_ISA (a part of its cache key), on top of -march=native:
 *
 *   native    (the default) the AVX-512 paths where the compiler targets AVX-512F, the portable C elsewhere
 *   portable  -DKVSCOPE_PORTABLE: the portable C only (what a CPU without AVX-512 runs), on any CPU
 *   avx512    -mavx512f -DKVSCOPE_REQUIRE_AVX512: the AVX-512 paths on any x86-64 compiler (a CPU without
 *             AVX-512F builds it, for its compiler to check, and does not load it)
 *
 * A source includes this header and writes `#if KVSCOPE_AVX512` around its AVX-512 paths (immintrin.h comes
 * with it).
 */
#ifndef KVSCOPE_ISA_H
#define KVSCOPE_ISA_H

#if defined(__AVX512F__) && !defined(KVSCOPE_PORTABLE)
#define KVSCOPE_AVX512 1
#include <immintrin.h>
#else
#define KVSCOPE_AVX512 0
#endif

#if defined(KVSCOPE_REQUIRE_AVX512) && !KVSCOPE_AVX512
#error "KVSCOPE_CPU_ISA=avx512, but the compiler does not target AVX-512F with these flags"
#endif

#endif
