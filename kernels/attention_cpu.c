/* kvscope's CPU decode attention in float32: each decode token's query heads over its paged K/V, read in
 * place through the block table (no gather, no padding, no mask), one call for every decode token of a step.
 *
 * Work items are requests, spread over the threads; with fewer requests than threads each request's keys
 * are split into as many ranges (flash-decoding's split-KV), whose partial softmax states are merged after
 * a barrier. An item reads each of its slot rows once, whole: scores = q . k * scale for every query head
 * and context position, then per head the running max m, l = sum exp(score - m) and acc = sum exp(...) v;
 * out = acc / l (or, split, the partial states rescaled to their common max and summed). Float32 throughout.
 * Built with -ffast-math (so the expf loop is vectorised), which lets the compiler reorder additions:
 * results differ from torch's scaled_dot_product_attention in the last bits (the tests bound it).
 *
 * Layouts: q [T, H, D] (token rows q_tok apart, heads D apart, unit stride), out likewise (o_tok apart);
 * k_cache, v_cache [num_blocks, block_size, KVH, D] contiguous; block_tables [B, bt_stride] int32;
 * query_start_loc [B + 1] int32 (a decode request's one token is row query_start_loc[r]); seq_lens [B]
 * int32 (context length including the new token); requests [R] int32: which of the B requests to compute.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* Software prefetch of key j's slot row (row floats): the hardware prefetchers lose the stream at every block
 * boundary (a block's rows are contiguous, the next block is anywhere), and one request's keys are read by one
 * thread, one dependent load at a time. Keys are prefetched 16 ahead, values 8 ahead: the attention 10-25% faster
 * at 64 requests and at one (step-interleaved in the decode program; 8 or 32 ahead measured the same). */
static inline void prefetch_slot(const float *cache, const int *table, int j, int bs, size_t row) {
    const float *r = cache + ((size_t)table[j / bs] * bs + j % bs) * row;
    for (size_t c = 0; c < row; c += 16) __builtin_prefetch(r + c);
}

/* Keys [j0, j1) of one decode token, all its heads (q and every slot row read whole): for query head h its
 * scores' max m[h], l[h] = sum_j exp(score_j - m[h]) and the unnormalised acc[h * D ..] = sum_j exp(..) v_j.
 * s: heads * (j1 - j0) floats of scratch. An empty range gives m = -FLT_MAX, l = 0, acc = 0. */
static void decode_range(const float *q, const float *k_cache, const float *v_cache, const int *table, int j0,
                         int j1, int group, int KVH, int D, int bs, float scale, float *s, float *acc, float *m,
                         float *l) {
    const size_t row = (size_t)KVH * D; /* floats from one slot to the next */
    const int heads = KVH * group, n = j1 - j0;
    for (int i = 0; i < heads * D; i++) acc[i] = 0.f;
    for (int h = 0; h < heads; h++) { m[h] = -FLT_MAX; l[h] = 0.f; }
    if (n <= 0) return;
    for (int j = j0; j < j1; j++) {
        const float *kr = k_cache + ((size_t)table[j / bs] * bs + j % bs) * row;
        if (j + 16 < j1) prefetch_slot(k_cache, table, j + 16, bs, row);
        for (int h = 0; h < heads; h++) {
            const float *qh = q + (size_t)h * D, *kh = kr + (size_t)(h / group) * D;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int d = 0; d < D; d++) dot += qh[d] * kh[d];
            s[(size_t)h * n + (j - j0)] = dot * scale;
        }
    }
    for (int h = 0; h < heads; h++) {
        float *sh = s + (size_t)h * n, mh = sh[0], sum = 0.f;
        for (int j = 1; j < n; j++) mh = sh[j] > mh ? sh[j] : mh;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) { sh[j] = expf(sh[j] - mh); sum += sh[j]; }
        m[h] = mh;
        l[h] = sum;
    }
    for (int j = j0; j < j0 + 8 && j < j1; j++) prefetch_slot(v_cache, table, j, bs, row);
    for (int j = j0; j < j1; j++) {
        const float *vr = v_cache + ((size_t)table[j / bs] * bs + j % bs) * row;
        if (j + 8 < j1) prefetch_slot(v_cache, table, j + 8, bs, row);
        for (int h = 0; h < heads; h++) {
            const float p = s[(size_t)h * n + (j - j0)], *vh = vr + (size_t)(h / group) * D;
            float *ah = acc + (size_t)h * D;
#pragma omp simd
            for (int d = 0; d < D; d++) ah[d] += p * vh[d];
        }
    }
}

/* One thread's share (orphaned `omp for`s; no barrier at the end: the caller's) of the decode attention of `R`
 * requests, each request's keys in `ksplit` ranges. s: this thread's scratch, H * longest context floats; acc: H * (D + 2) floats; part (shared by
 * the team, used when ksplit > 1): R * ksplit * H * (D + 2) floats. Returns -1 when scratch is missing. */
int kvscope_paged_decode_f32_team(const float *q, long q_tok, float *out, long o_tok, const float *k_cache,
                                  const float *v_cache, const int *block_tables, long bt_stride,
                                  const int *query_start_loc, const int *seq_lens, const int *requests, int R, int H,
                                  int KVH, int D, int bs, float scale, int ksplit, float *part, float *s,
                                  float *acc) {
    const int group = H / KVH, items = R * ksplit;
    const size_t state = (size_t)H * (D + 2); /* one item's partial softmax state */
    int missing = s == NULL || acc == NULL || (ksplit > 1 && part == NULL);
#pragma omp for schedule(dynamic, 1) nowait
    for (int w = 0; w < items; w++) {
        if (missing) continue;
        const int r = requests[w / ksplit], ks = w % ksplit, t = query_start_loc[r], L = seq_lens[r];
        const int chunk = (L + ksplit - 1) / ksplit, j0 = ks * chunk, j1 = j0 + chunk < L ? j0 + chunk : L;
        float *a = ksplit > 1 ? part + (size_t)w * state : acc, *m = a + (size_t)H * D, *l = m + H;
        decode_range(q + (size_t)t * q_tok, k_cache, v_cache, block_tables + (size_t)r * bt_stride, j0, j1, group,
                     KVH, D, bs, scale, s, a, m, l);
        if (ksplit == 1)
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++) out[(size_t)t * o_tok + (size_t)h * D + d] = a[(size_t)h * D + d] / l[h];
    }
    if (ksplit > 1 && part != NULL) { /* the same for every thread (a thread without scratch fails the call) */
#pragma omp barrier
#pragma omp for schedule(static) nowait
        for (int w = 0; w < R * H; w++) { /* merge one head's ranges: rescale to the common max, sum, divide */
            const int i = w / H, h = w % H, t = query_start_loc[requests[i]];
            float top = -FLT_MAX, total = 0.f;
            for (int ks = 0; ks < ksplit; ks++) {
                const float *m = part + (size_t)(i * ksplit + ks) * state + (size_t)H * D, *l = m + H;
                if (l[h] > 0.f && m[h] > top) top = m[h];
            }
            float *o = out + (size_t)t * o_tok + (size_t)h * D;
            for (int d = 0; d < D; d++) o[d] = 0.f;
            for (int ks = 0; ks < ksplit; ks++) {
                const float *a = part + (size_t)(i * ksplit + ks) * state, *m = a + (size_t)H * D, *l = m + H;
                if (l[h] <= 0.f) continue;
                const float f = expf(m[h] - top);
                total += l[h] * f;
                for (int d = 0; d < D; d++) o[d] += a[(size_t)h * D + d] * f;
            }
            for (int d = 0; d < D; d++) o[d] /= total;
        }
    }
    return missing ? -1 : 0;
}

/* Key ranges per request: one, or (fewer requests than threads) as many as there are threads. */
static int key_splits(int R, int threads) { return R < threads ? threads : 1; }

/* Returns 0, or -1 when a scratch allocation failed. */
int kvscope_paged_decode_f32(const float *q, long q_tok, float *out, long o_tok, const float *k_cache,
                             const float *v_cache, const int *block_tables, long bt_stride,
                             const int *query_start_loc, const int *seq_lens, const int *requests, int R, int H,
                             int KVH, int D, int bs, float scale, int threads) {
    const int ksplit = key_splits(R, threads);
    long work = 0, longest = 1;
    for (int i = 0; i < R; i++) {
        work += seq_lens[requests[i]];
        if (seq_lens[requests[i]] > longest) longest = seq_lens[requests[i]];
    }
    work *= (long)H * D;
    float *part = ksplit > 1 ? malloc(sizeof(float) * (size_t)R * ksplit * H * (D + 2)) : NULL;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && R * ksplit > 1 && work >= 8192) reduction(| : failed)
    {
        float *s = malloc(sizeof(float) * (size_t)H * (size_t)longest);
        float *acc = malloc(sizeof(float) * (size_t)H * (size_t)(D + 2));
        failed |= kvscope_paged_decode_f32_team(q, q_tok, out, o_tok, k_cache, v_cache, block_tables, bt_stride,
                                                query_start_loc, seq_lens, requests, R, H, KVH, D, bs, scale, ksplit,
                                                part, s, acc) != 0;
        free(s);
        free(acc);
    }
    free(part);
    return failed ? -1 : 0;
}
