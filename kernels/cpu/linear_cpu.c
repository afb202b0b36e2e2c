/* kvscope's CPU matmul: y[T, N] = x[T, K] @ w[N, K]^T in float32, w row-major (a Linear's own layout).
 *
 * Written for the shapes of LLM inference on a few cores. A decode step (T of 1 to a few dozen) is bound
 * by streaming w from memory once; a prompt (T in the hundreds) by the FMA units. One loop nest serves both:
 *
 *   - w is walked in tiles of R rows (8 when T == 1, else 4), each thread taking a contiguous range of tiles
 *     (OpenMP static schedule), so every weight byte is read from memory once per token block, in order.
 *   - For each tile, every token of the block is dotted with its R rows while they sit in L1: 8 x 1 or
 *     4 x 4 dot products at once (with AVX-512 by hand; elsewhere `omp simd` reductions the compiler
 *     keeps in vector registers).
 *   - Tokens go in blocks that fit in L2 (about 256 KiB of x), so a long prompt re-reads w once per block
 *     rather than once per token.
 *
 * Only the order of the float32 additions differs from a BLAS: partial sums across the SIMD lanes, added
 * at the end. Built at first use by kvscope.kernels.cpu.c_library with -O3 -march=native -fopenmp; OpenMP
 * here is torch's own runtime (same soname, loaded first), so these threads are torch's threads.
 */
#include <stddef.h>

#include "kvscope_isa.h"

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* Any rows x tokens: one dot product at a time (tile edges). */
static void tile_any(const float *restrict x, long ldx, const float *restrict w, int K, float *restrict y,
                     int ldy, int rows, int toks, int acc) {
    for (int t = 0; t < toks; t++) {
        const float *xt = x + (size_t)t * ldx;
        for (int r = 0; r < rows; r++) {
            const float *wr = w + (size_t)r * K;
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int k = 0; k < K; k++) s += wr[k] * xt[k];
            y[(size_t)t * ldy + r] = acc ? y[(size_t)t * ldy + r] + s : s;
        }
    }
}

#if KVSCOPE_AVX512
/* With AVX-512, single-token rows by hand: the portable 8 x 1 tile below, as GCC 12 vectorises it for this
 * CPU (which it tunes as an older one), streamed about 0.65 of the read bandwidth where this reaches 0.9. */

static inline __m512 load_k(const float *p, int k, int K) {
    return K - k >= 16 ? _mm512_loadu_ps(p + k) : _mm512_maskz_loadu_ps((__mmask16)((1u << (K - k)) - 1), p + k);
}

/* 8 rows x 1 token, one row at a time: a single stream through memory, four accumulators per row. */
static void tile_8x1(const float *restrict x, const float *restrict w, int K, float *restrict y, int acc) {
    for (int r = 0; r < 8; r++) {
        const float *wr = w + (size_t)r * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 16), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 32), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 48), _mm512_loadu_ps(x + k + 48), a3);
        }
        for (; k < K; k += 16) a0 = _mm512_fmadd_ps(load_k(wr, k, K), load_k(x, k, K), a0);
        const float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        y[r] = acc ? y[r] + sum : sum;
    }
}

#else /* portable C: the compiler vectorises the `omp simd` reductions */

/* 8 rows x 1 token: eight independent accumulators keep both FMA pipes busy while w streams. */
static void tile_8x1(const float *restrict x, const float *restrict w, int K, float *restrict y, int acc) {
    const float *w0 = w, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K, *w4 = w3 + K, *w5 = w4 + K, *w6 = w5 + K,
                *w7 = w6 + K;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f, s5 = 0.f, s6 = 0.f, s7 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
    for (int k = 0; k < K; k++) {
        const float b = x[k];
        s0 += w0[k] * b; s1 += w1[k] * b; s2 += w2[k] * b; s3 += w3[k] * b;
        s4 += w4[k] * b; s5 += w5[k] * b; s6 += w6[k] * b; s7 += w7[k] * b;
    }
    const float s[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
    for (int r = 0; r < 8; r++) y[r] = acc ? y[r] + s[r] : s[r];
}

#endif


#if KVSCOPE_AVX512
/* 4 rows x 4 tokens with AVX-512: sixteen vector accumulators, each load used four times, then one tree that
 * folds the sixteen into one vector of sixteen sums (15 shuffle-and-add steps, instead of sixteen full
 * horizontal reductions: 1.2-1.5x the portable tile below, which spends a quarter of its time reducing). */
static inline __m512 fold1(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
static inline __m512 fold2(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}
static inline __m512 fold3(__m512 a, __m512 b) { return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b)); }
static inline __m512 fold4(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE));
}
static void tile_4x4(const float *restrict x, long ldx, const float *restrict w, int K, float *restrict y, int ldy,
                     int acc) {
    const float *w0 = w, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    const float *x0 = x, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int k = 0; k < K; k += 16) {
        const __m512 p = load_k(x0, k, K), q = load_k(x1, k, K), r = load_k(x2, k, K), s = load_k(x3, k, K);
        __m512 u = load_k(w0, k, K);
        a00 = _mm512_fmadd_ps(u, p, a00); a10 = _mm512_fmadd_ps(u, q, a10);
        a20 = _mm512_fmadd_ps(u, r, a20); a30 = _mm512_fmadd_ps(u, s, a30);
        u = load_k(w1, k, K);
        a01 = _mm512_fmadd_ps(u, p, a01); a11 = _mm512_fmadd_ps(u, q, a11);
        a21 = _mm512_fmadd_ps(u, r, a21); a31 = _mm512_fmadd_ps(u, s, a31);
        u = load_k(w2, k, K);
        a02 = _mm512_fmadd_ps(u, p, a02); a12 = _mm512_fmadd_ps(u, q, a12);
        a22 = _mm512_fmadd_ps(u, r, a22); a32 = _mm512_fmadd_ps(u, s, a32);
        u = load_k(w3, k, K);
        a03 = _mm512_fmadd_ps(u, p, a03); a13 = _mm512_fmadd_ps(u, q, a13);
        a23 = _mm512_fmadd_ps(u, r, a23); a33 = _mm512_fmadd_ps(u, s, a33);
    }
    /* a{t}{r}: token t, row r; v_i with i = 4t + r. The tree leaves sum(v_i) in lane 4 * (i % 4) + i / 4. */
    const __m512 c0 = fold1(a00, a01), c1 = fold1(a02, a03), c2 = fold1(a10, a11), c3 = fold1(a12, a13);
    const __m512 c4 = fold1(a20, a21), c5 = fold1(a22, a23), c6 = fold1(a30, a31), c7 = fold1(a32, a33);
    const __m512 e0 = fold2(c0, c1), e1 = fold2(c2, c3), e2 = fold2(c4, c5), e3 = fold2(c6, c7);
    const __m512 sums = fold4(fold3(e0, e1), fold3(e2, e3));
    float out[16];
    _mm512_storeu_ps(out, sums);
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 4; r++) {
            float *yr = y + (size_t)t * ldy + r;
            *yr = acc ? *yr + out[4 * r + t] : out[4 * r + t];
        }
}
#else
/* 4 rows x 4 tokens: sixteen accumulators, each weight and activation load used four times. */
static void tile_4x4(const float *restrict x, long ldx, const float *restrict w, int K, float *restrict y, int ldy,
                     int acc) {
    const float *w0 = w, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    const float *x0 = x, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, b0 = 0.f, b1 = 0.f, b2 = 0.f, b3 = 0.f;
    float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f, d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3)
    for (int k = 0; k < K; k++) {
        const float p = x0[k], q = x1[k], r = x2[k], s = x3[k];
        const float u0 = w0[k], u1 = w1[k], u2 = w2[k], u3 = w3[k];
        a0 += u0 * p; a1 += u1 * p; a2 += u2 * p; a3 += u3 * p;
        b0 += u0 * q; b1 += u1 * q; b2 += u2 * q; b3 += u3 * q;
        c0 += u0 * r; c1 += u1 * r; c2 += u2 * r; c3 += u3 * r;
        d0 += u0 * s; d1 += u1 * s; d2 += u2 * s; d3 += u3 * s;
    }
    const float out[4][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}, {c0, c1, c2, c3}, {d0, d1, d2, d3}};
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 4; r++) {
            float *yr = y + (size_t)t * ldy + r;
            *yr = acc ? *yr + out[t][r] : out[t][r];
        }
}

#endif

/* One thread's share of y [T, N] (+)= x [T, K] @ w [N, K]^T: an orphaned `omp for`, so it runs inside an
 * enclosing parallel region (kvscope.kernels.cpu.decode_cpu's program) or, called alone, on one thread.
 * acc: add to y (a residual stream) instead of overwriting it; the sum is rounded as torch's x + (x @ w.T). */
void kvscope_linear_f32_team(const float *x, long ldx, const float *w, float *y, int T, int N, int K, int acc) {
    const int R = T == 1 ? 8 : 4;
    const int tiles = (N + R - 1) / R;
    int block = (int)((256L * 1024) / ((long)K * (long)sizeof(float))) / 4 * 4;
    if (block < 4) block = 4;
    for (int t0 = 0; t0 < T; t0 += block) {
        const int t1 = min_int(T, t0 + block);
#pragma omp for schedule(static) nowait
        for (int i = 0; i < tiles; i++) {
            const int r0 = i * R, rows = min_int(R, N - r0);
            const float *wt = w + (size_t)r0 * K;
            float *yt = y + r0;
            if (R == 8) {
                if (rows == 8) tile_8x1(x, wt, K, yt, acc);
                else tile_any(x, ldx, wt, K, yt, N, rows, 1, acc);
                continue;
            }
            int t = t0;
            if (rows == 4)
                for (; t + 4 <= t1; t += 4) tile_4x4(x + (size_t)t * ldx, ldx, wt, K, yt + (size_t)t * N, N, acc);
            if (t < t1) tile_any(x + (size_t)t * ldx, ldx, wt, K, yt + (size_t)t * N, N, rows, t1 - t, acc);
        }
    }
}

/* y [T, N] (row-major, contiguous) = x [T, K] (rows ldx apart, unit stride) @ w [N, K]^T (contiguous). */
void kvscope_linear_f32(const float *x, long ldx, const float *w, float *y, int T, int N, int K, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1 && (long)N * K >= 65536)
    kvscope_linear_f32_team(x, ldx, w, y, T, N, K, 0);
}
