/* kvscope's CPU attention in float32 over the paged K/V, read in place through the block tables (no gather, no
 * padding, no mask): one call for every decode token of a step, one for every request with several query
 * tokens (prompt chunks, drafts to verify).
 *
 * Decode: work items are requests, spread over the threads; with fewer requests than threads each request's
 * keys are split into as many ranges (flash-decoding's split-KV), whose partial softmax states are merged after
 * a barrier. An item reads each of its slot rows once, whole: scores = q . k * scale for every query head
 * and context position, then per head the running max m, l = sum exp(score - m) and acc = sum exp(...) v;
 * out = acc / l (or, split, the partial states rescaled to their common max and summed).
 * Prompt chunks: a flash-attention loop per (request, K/V head, 16 query tokens), causal, 16 keys at a time.
 * Float32 throughout. Built with -ffast-math (so the expf loops are vectorised), which lets the compiler
 * reorder additions: results differ from torch's scaled_dot_product_attention in the last bits (the tests
 * bound it).
 *
 * Layouts: q [T, H, D] (token rows q_tok apart, heads D apart, unit stride), out likewise (o_tok apart);
 * k_cache, v_cache [num_blocks, block_size, KVH, D] contiguous; block_tables [B, bt_stride] int32;
 * query_start_loc [B + 1] int32 (request r's tokens are rows query_start_loc[r] .. query_start_loc[r + 1] - 1);
 * seq_lens [B] int32 (context length including the new tokens); requests [R] int32: which of the B requests
 * to compute.
 */
#include <float.h>
#include <omp.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "kvscope_isa.h"

/* Key j's slot row of a pool (`row` floats a slot), through the request's block table. */
static inline const float *slot_row(const float *cache, const int *table, int j, int bs, size_t row) {
    return cache + ((size_t)table[j / bs] * bs + j % bs) * row;
}

/* Software prefetch of key j's slot row (row floats): the hardware prefetchers lose the stream at every block
 * boundary (a block's rows are contiguous, the next block is anywhere), and one request's keys are read by one
 * thread, one dependent load at a time. Keys are prefetched 16 ahead, values 8 ahead: the attention 10-25% faster
 * at 64 requests and at one (step-interleaved in the decode program; 8 or 32 ahead measured the same). */
static inline void prefetch_slot(const float *cache, const int *table, int j, int bs, size_t row) {
    const float *r = slot_row(cache, table, j, bs, row);
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
        const float *kr = slot_row(k_cache, table, j, bs, row);
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
        const float *vr = slot_row(v_cache, table, j, bs, row);
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
 * requests, each request's keys in `ksplit` ranges. s: this thread's scratch, H * longest context floats; acc:
 * H * (D + 2) floats; part (shared by the team, used when ksplit > 1): R * ksplit * H * (D + 2) floats. Returns
 * -1 when scratch is missing. */
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

/* ---- prompt chunks: causal attention of several query tokens per request (prefill, drafts to verify) ---- */

enum { KEY_BLOCK = 16, QUERY_TILE = 16 }; /* keys per step of the online softmax; query tokens per work item */

/* One work item's state: query tokens [i0, i1) of a request (positions first_pos + i; rows row0 + i of q and
 * out), the `group` query heads of K/V head g, each over keys 0 .. its position. Rows r = (i - i0) * group + hh
 * (head g * group + hh), `rows` of them, rounded up to fours (`padded`, the padding rows zero queries whose
 * output is dropped). In the thread's scratch: Q (scaled) and O [padded][D], m and l [padded], the block's keys
 * transposed Kt [D][KEY_BLOCK], the block's probabilities S [padded][KEY_BLOCK]. */
typedef struct {
    int rows, padded, first_pos, i0, g, group, D;
    float *Q, *O, *m, *l, *Kt, *S;
    const float *vrow[KEY_BLOCK]; /* the block's value rows of head g */
} Tile;

static size_t tile_floats(int padded, int D) {
    return (size_t)padded * (2 * (size_t)D + 2 + KEY_BLOCK) + (size_t)D * KEY_BLOCK;
}

static void tile_begin(Tile *t, float *scratch, const float *q, long q_tok, int row0, int i0, int i1, int first_pos,
                       int g, int group, int D, float scale) {
    t->rows = (i1 - i0) * group;
    t->padded = (t->rows + 3) / 4 * 4;
    t->first_pos = first_pos, t->i0 = i0, t->g = g, t->group = group, t->D = D;
    t->Q = scratch, t->O = t->Q + (size_t)t->padded * D, t->m = t->O + (size_t)t->padded * D;
    t->l = t->m + t->padded, t->Kt = t->l + t->padded, t->S = t->Kt + (size_t)D * KEY_BLOCK;
    for (int r = 0; r < t->padded; r++) {
        const float *qr = r < t->rows
                               ? q + (size_t)(row0 + i0 + r / group) * q_tok + (size_t)(g * group + r % group) * D
                               : NULL;
        for (int d = 0; d < D; d++) {
            t->Q[(size_t)r * D + d] = qr ? qr[d] * scale : 0.f;
            t->O[(size_t)r * D + d] = 0.f;
        }
        t->m[r] = -1e30f; /* finite: this file is built with -ffast-math, which assumes no infinities */
        t->l[r] = 0.f;
    }
}

/* Keys j0 .. j0 + nk - 1 of head g: Kt[d][c] (zero past nk) and the value rows. */
static void tile_keys(Tile *t, const float *k_cache, const float *v_cache, const int *table, int j0, int nk, int bs,
                      size_t slot_row_floats) {
    const int D = t->D;
    for (int c = 0; c < KEY_BLOCK; c++) {
        const float *kr = slot_row(k_cache, table, c < nk ? j0 + c : 0, bs, slot_row_floats) + (size_t)t->g * D;
        t->vrow[c] = slot_row(v_cache, table, c < nk ? j0 + c : 0, bs, slot_row_floats) + (size_t)t->g * D;
        for (int d = 0; d < D; d++) t->Kt[(size_t)d * KEY_BLOCK + c] = c < nk ? kr[d] : 0.f;
    }
}

/* out's rows = O / l. */
static void tile_end(const Tile *t, float *out, long o_tok, int row0) {
    const int D = t->D, group = t->group;
    for (int r = 0; r < t->rows; r++) {
        float *o = out + (size_t)(row0 + t->i0 + r / group) * o_tok + (size_t)(t->g * group + r % group) * D;
        const float inv = 1.0f / t->l[r];
        for (int d = 0; d < D; d++) o[d] = t->O[(size_t)r * D + d] * inv;
    }
}

/* One key block of a tile, portable: per row its 16 scores (one vector: the keys are transposed), the masked
 * online softmax, then the values added in. */
static void tile_block(Tile *t, int j0, int nk) {
    const int D = t->D;
    for (int r = 0; r < t->rows; r++) {
        const int pos = t->first_pos + t->i0 + r / t->group;
        float *p = t->S + (size_t)r * KEY_BLOCK;
        if (pos < j0) { /* every key of this block is after this row's position */
            for (int c = 0; c < KEY_BLOCK; c++) p[c] = 0.f;
            continue;
        }
        float s[KEY_BLOCK] = {0.f};
        const float *qr = t->Q + (size_t)r * D;
        for (int d = 0; d < D; d++) {
            const float qd = qr[d], *kt = t->Kt + (size_t)d * KEY_BLOCK;
#pragma omp simd
            for (int c = 0; c < KEY_BLOCK; c++) s[c] += qd * kt[c];
        }
        float top = t->m[r];
        for (int c = 0; c < KEY_BLOCK; c++) {
            if (j0 + c > pos) s[c] = -1e30f;
            top = s[c] > top ? s[c] : top;
        }
        const float alpha = expf(t->m[r] - top);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < KEY_BLOCK; c++) {
            p[c] = expf(s[c] - top);
            sum += p[c];
        }
        t->m[r] = top;
        t->l[r] = t->l[r] * alpha + sum;
        float *o = t->O + (size_t)r * D;
#pragma omp simd
        for (int d = 0; d < D; d++) o[d] *= alpha;
    }
    for (int c = 0; c < nk; c++) {
        const float *vr = t->vrow[c];
        for (int r = 0; r < t->rows; r++) {
            const float p = t->S[(size_t)r * KEY_BLOCK + c];
            float *o = t->O + (size_t)r * D;
#pragma omp simd
            for (int d = 0; d < D; d++) o[d] += p * vr[d];
        }
    }
}

#if KVSCOPE_AVX512
/* tile_block with AVX-512, for D a multiple of 16: rows go four at a time (their 16 scores in four vectors, each
 * key vector loaded once for the four; their output rows held in registers, 64 floats of each at a time, while
 * the block's values are added in). The same arithmetic as the portable loop, the additions grouped
 * differently. */
static void tile_block_avx512(Tile *t, int j0, int nk) {
    const int D = t->D;
    const __m512 lane = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    float *P = t->S; /* the four rows' probabilities */
    for (int r = 0; r < t->rows; r += 4) {
        __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const float *q0 = t->Q + (size_t)r * D;
        for (int d = 0; d < D; d++) {
            const __m512 kt = _mm512_loadu_ps(t->Kt + (size_t)d * KEY_BLOCK);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) s[u] = _mm512_fmadd_ps(_mm512_set1_ps(q0[(size_t)u * D + d]), kt, s[u]);
        }
        float alpha[4];
        for (int u = 0; u < 4; u++) { /* masked online softmax of row r + u over this block */
            const int pos = t->first_pos + t->i0 + (r + u) / t->group; /* padding rows: any, output unused */
            const __mmask16 after = _mm512_cmp_ps_mask(_mm512_add_ps(lane, _mm512_set1_ps((float)j0)),
                                                       _mm512_set1_ps((float)pos), _CMP_GT_OQ);
            const __m512 sm = _mm512_mask_blend_ps(after, s[u], _mm512_set1_ps(-1e30f));
            const float top = fmaxf(t->m[r + u], _mm512_reduce_max_ps(sm));
            float *p = P + (size_t)u * KEY_BLOCK, sum = 0.f;
            _mm512_storeu_ps(p, _mm512_sub_ps(sm, _mm512_set1_ps(top)));
#pragma omp simd reduction(+ : sum)
            for (int c = 0; c < KEY_BLOCK; c++) {
                p[c] = expf(p[c]);
                sum += p[c];
            }
            alpha[u] = expf(t->m[r + u] - top);
            t->m[r + u] = top;
            t->l[r + u] = t->l[r + u] * alpha[u] + sum;
        }
        for (int d = 0; d < D; d += 64) { /* O rows r .. r + 3, floats d .. d + 63, in 16 registers */
            const int nv = D - d < 64 ? (D - d) / 16 : 4;
            float *o_rows = t->O + (size_t)r * D + d;
            __m512 o[4][4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++)
                    o[u][v] = v < nv ? _mm512_mul_ps(_mm512_loadu_ps(o_rows + (size_t)u * D + 16 * v),
                                                     _mm512_set1_ps(alpha[u]))
                                     : _mm512_setzero_ps();
            for (int c = 0; c < nk; c++) {
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++) {
                    if (v >= nv) break;
                    const __m512 val = _mm512_loadu_ps(t->vrow[c] + d + 16 * v);
#pragma GCC unroll 4
                    for (int u = 0; u < 4; u++)
                        o[u][v] = _mm512_fmadd_ps(_mm512_set1_ps(P[(size_t)u * KEY_BLOCK + c]), val, o[u][v]);
                }
            }
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++)
                    if (v < nv) _mm512_storeu_ps(o_rows + (size_t)u * D + 16 * v, o[u][v]);
        }
    }
}
#endif

/* One work item (see Tile), over keys 0 .. its last position, 16 at a time. */
static void prefill_item(const float *q, long q_tok, float *out, long o_tok, const float *k_cache,
                         const float *v_cache, const int *table, int row0, int i0, int i1, int first_pos, int g,
                         int group, int KVH, int D, int bs, float scale, float *scratch) {
    Tile t;
    tile_begin(&t, scratch, q, q_tok, row0, i0, i1, first_pos, g, group, D, scale);
    const int last = first_pos + i1 - 1; /* the tile's last position: its keys end there */
    for (int j0 = 0; j0 <= last; j0 += KEY_BLOCK) {
        const int nk = last + 1 - j0 < KEY_BLOCK ? last + 1 - j0 : KEY_BLOCK;
        tile_keys(&t, k_cache, v_cache, table, j0, nk, bs, (size_t)KVH * D);
#if KVSCOPE_AVX512
        if (D % 16 == 0) {
            tile_block_avx512(&t, j0, nk);
            continue;
        }
#endif
        tile_block(&t, j0, nk);
    }
    tile_end(&t, out, o_tok, row0);
}

/* The query tokens of the `R` chosen requests (indices into the batch; each request's tokens are rows
 * query_start_loc[r] .. query_start_loc[r + 1] - 1, at the last positions of its seq_lens[r] keys), causal
 * over their paged K/V. Layouts as kvscope_paged_decode_f32's. Work items (request, K/V head, tile of 16
 * query tokens) go to the threads longest first. Returns 0, or -1 when scratch could not be allocated. */
int kvscope_paged_prefill_f32(const float *q, long q_tok, float *out, long o_tok, const float *k_cache,
                              const float *v_cache, const int *block_tables, long bt_stride,
                              const int *query_start_loc, const int *seq_lens, const int *requests, int R, int H,
                              int KVH, int D, int bs, float scale, int threads) {
    const int group = H / KVH;
    int items = 0;
    for (int i = 0; i < R; i++) {
        const int r = requests[i], n = query_start_loc[r + 1] - query_start_loc[r];
        items += KVH * ((n + QUERY_TILE - 1) / QUERY_TILE);
    }
    int *work = malloc(sizeof(int) * 3 * (size_t)(items > 0 ? items : 1)); /* (request index, head, first token) */
    if (work == NULL) return -1;
    int w = 0;
    for (int i = 0; i < R; i++) { /* the last tiles (most keys) first */
        const int r = requests[i], n = query_start_loc[r + 1] - query_start_loc[r];
        for (int t = (n - 1) / QUERY_TILE * QUERY_TILE; t >= 0 && n > 0; t -= QUERY_TILE)
            for (int g = 0; g < KVH; g++, w++) {
                work[3 * w] = i;
                work[3 * w + 1] = g;
                work[3 * w + 2] = t;
            }
    }
    const size_t per_thread = tile_floats((QUERY_TILE * group + 3) / 4 * 4, D);
    const int nth = threads > 1 && items > 1 ? threads : 1;
    float *scratch = malloc(sizeof(float) * per_thread * nth);
    if (scratch == NULL) {
        free(work);
        return -1;
    }
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1) if (nth > 1)
    for (int k = 0; k < items; k++) {
        const int i = work[3 * k], g = work[3 * k + 1], i0 = work[3 * k + 2], r = requests[i];
        const int row0 = query_start_loc[r], n = query_start_loc[r + 1] - row0;
        const int i1 = i0 + QUERY_TILE < n ? i0 + QUERY_TILE : n;
        prefill_item(q, q_tok, out, o_tok, k_cache, v_cache, block_tables + (size_t)r * bt_stride, row0, i0, i1,
                     seq_lens[r] - n, g, group, KVH, D, bs, scale, scratch + per_thread * omp_get_thread_num());
    }
    free(scratch);
    free(work);
    return 0;
}
