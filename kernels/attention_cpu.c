/* kvscope's CPU decode attention in float32: each decode token's query heads over its paged K/V, read in
 * place through the block table (no gather, no padding, no mask), one call for every decode token of a step.
 *
 * Work items are requests, spread over the threads (or (request, K/V head) pairs when there are fewer
 * requests than threads). An item reads each of its slot rows once: scores = q . k * scale for every query
 * head and context position, then a softmax per head (max subtracted, expf, sum), then
 * out = sum_j p_j v_j / sum. Accumulation is float32. Built with -ffast-math (so the expf loop is
 * vectorised), which lets the compiler reorder additions: results differ from torch's
 * scaled_dot_product_attention in the last bits (the tests bound it).
 *
 * Layouts: q [T, H, D] (token rows q_tok apart, heads D apart, unit stride), out likewise (o_tok apart);
 * k_cache, v_cache [num_blocks, block_size, KVH, D] contiguous; block_tables [B, bt_stride] int32;
 * query_start_loc [B + 1] int32 (a decode request's one token is row query_start_loc[r]); seq_lens [B]
 * int32 (context length including the new token); requests [R] int32: which of the B requests to compute.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* The query heads of K/V heads [kh0, kh1) of one decode token: q and out point at head kh0 * group. Every
 * slot row is read once, all its K/V heads in the range together (a whole row when the range is all heads). */
static void decode_one(const float *q, float *out, const float *k_cache, const float *v_cache, const int *table,
                       int L, int kh0, int kh1, int group, int KVH, int D, int bs, float scale, float *s,
                       float *acc) {
    const size_t row = (size_t)KVH * D; /* floats from one slot to the next */
    const int heads = (kh1 - kh0) * group;
    for (int b = 0, j = 0; j < L; b++) {
        const float *kb = k_cache + (size_t)table[b] * bs * row + (size_t)kh0 * D;
        for (int off = 0; off < bs && j < L; off++, j++) {
            for (int h = 0; h < heads; h++) {
                const float *qh = q + (size_t)h * D, *kr = kb + off * row + (size_t)(h / group) * D;
                float dot = 0.f;
#pragma omp simd reduction(+ : dot)
                for (int d = 0; d < D; d++) dot += qh[d] * kr[d];
                s[(size_t)h * L + j] = dot * scale;
            }
        }
    }
    for (int h = 0; h < heads; h++) {
        float *sh = s + (size_t)h * L, m = sh[0], sum = 0.f;
        for (int j = 1; j < L; j++) m = sh[j] > m ? sh[j] : m;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < L; j++) { sh[j] = expf(sh[j] - m); sum += sh[j]; }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < L; j++) sh[j] *= inv;
    }
    for (int i = 0; i < heads * D; i++) acc[i] = 0.f;
    for (int b = 0, j = 0; j < L; b++) {
        const float *vb = v_cache + (size_t)table[b] * bs * row + (size_t)kh0 * D;
        for (int off = 0; off < bs && j < L; off++, j++) {
            for (int h = 0; h < heads; h++) {
                const float p = s[(size_t)h * L + j], *vr = vb + off * row + (size_t)(h / group) * D;
                float *ah = acc + (size_t)h * D;
#pragma omp simd
                for (int d = 0; d < D; d++) ah[d] += p * vr[d];
            }
        }
    }
    for (int i = 0; i < heads * D; i++) out[i] = acc[i];
}

/* One thread's share (an orphaned `omp for`) of the decode attention; `s` and `acc` are this thread's scratch
 * (group * span * longest and group * span * D floats, span = KVH / split). Returns -1 when they are NULL. */
int kvscope_paged_decode_f32_team(const float *q, long q_tok, float *out, long o_tok, const float *k_cache,
                                  const float *v_cache, const int *block_tables, long bt_stride,
                                  const int *query_start_loc, const int *seq_lens, const int *requests, int R, int H,
                                  int KVH, int D, int bs, float scale, int split, float *s, float *acc) {
    const int group = H / KVH, items = R * split, span = KVH / split;
#pragma omp for schedule(dynamic, 1)
    for (int w = 0; w < items; w++) {
        if (s == NULL || acc == NULL) continue;
        const int r = requests[w / split], kh0 = (w % split) * span, t = query_start_loc[r];
        const size_t head0 = (size_t)kh0 * group * D;
        decode_one(q + (size_t)t * q_tok + head0, out + (size_t)t * o_tok + head0, k_cache, v_cache,
                   block_tables + (size_t)r * bt_stride, seq_lens[r], kh0, kh0 + span, group, KVH, D, bs, scale, s,
                   acc);
    }
    return s == NULL || acc == NULL ? -1 : 0;
}

/* Returns 0, or -1 when a scratch allocation failed. Work items are requests (whole slot rows read once), or
 * (request, K/V head) pairs when there are fewer requests than threads. */
int kvscope_paged_decode_f32(const float *q, long q_tok, float *out, long o_tok, const float *k_cache,
                             const float *v_cache, const int *block_tables, long bt_stride,
                             const int *query_start_loc, const int *seq_lens, const int *requests, int R, int H,
                             int KVH, int D, int bs, float scale, int threads) {
    const int group = H / KVH, split = R < threads ? KVH : 1, items = R * split, span = KVH / split;
    long work = 0, longest = 1;
    for (int i = 0; i < R; i++) {
        work += seq_lens[requests[i]];
        if (seq_lens[requests[i]] > longest) longest = seq_lens[requests[i]];
    }
    work *= (long)H * D;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && items > 1 && work >= 8192) reduction(| : failed)
    {
        float *s = malloc(sizeof(float) * (size_t)span * group * (size_t)longest);
        float *acc = malloc(sizeof(float) * (size_t)span * group * (size_t)D);
        failed |= kvscope_paged_decode_f32_team(q, q_tok, out, o_tok, k_cache, v_cache, block_tables, bt_stride,
                                                query_start_loc, seq_lens, requests, R, H, KVH, D, bs, scale, split,
                                                s, acc) != 0;
        free(s);
        free(acc);
    }
    return failed ? -1 : 0;
}
