/* kvscope's CPU decode program: a whole decode step, ids to logits, in one call and one OpenMP team.
 *
 * The CPU's counterpart of a CUDA graph. In a decode step of a small model the weights stream in about
 * 7-13 ms, while the ~15 torch-level calls per layer between the matmuls cost more than 100 us each layer
 * (each starts with cold caches after 14 MB of weights went through them), and so does every Python call
 * after the step's weights went through the caches. Here the same kernels run back to back from C, in the
 * model's order, separated by team barriers:
 *
 *   embed      x = E[ids]                        (rows copied; an id outside the vocabulary fails the step)
 *   for each layer:
 *   attn_norm  h = rms_norm(x)                   (kvscope_rms_norm_f32_team)
 *   qkv        qkv = h @ W_qkv^T                 (kvscope_linear_f32_team)
 *   rope       q, k rotated in place             (kvscope_rope_f32, one thread)
 *   kv_write   k, v rows to their slots          (here; slot -1: skipped)
 *   attention  out = paged decode attention      (kvscope_paged_decode_f32_team)
 *   o_proj     x += out @ W_o^T                  (linear, accumulating: torch's x + o, rounded alike)
 *   mlp_norm   h = rms_norm(x)
 *   mlp        x += (silu(gate) * up) @ W_down^T, gate | up = h @ W_gate_up^T
 *   then:
 *   final_norm h = rms_norm(x)
 *   lm_head    logits = h @ W_lm^T
 *
 * The kernels come from their own libraries (built with their own flags) as function pointers; this file does
 * no arithmetic of its own. Thread 0
 * stamps CLOCK_MONOTONIC (Python's perf_counter_ns) at every op's end, so each op keeps a measured slice.
 *
 * kvscope.kernels.cpu.decode_cpu mirrors DecodeProgram in ctypes; kvscope_layout_DecodeProgram (below the struct)
 * is its layout, which the binding checks its mirror against when it loads this library.
 */
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvscope_layout.h"

typedef void (*linear_fn)(const float *, long, const float *, float *, int, int, int, int);
typedef void (*silu_mul_fn)(const float *, float *, int, int, int, int);
typedef void (*norm_fn)(const float *, long, const float *, float *, int, int, float);
typedef void (*rope_fn)(float *, long, long, int, float *, long, long, int, const long *, const float *, int, int);
typedef int (*attend_fn)(const float *, long, float *, long, const float *, const float *, const int *, long,
                         const int *, const int *, const int *, int, int, int, int, int, float, int, float *,
                         float *, float *);

typedef struct {
    int tokens, layers, hidden, q_size, kv_size, intermediate, heads, kv_heads, head_dim, block_size, threads, vocab;
    float eps, scale, final_eps;
    long bt_stride;
    const long *input_ids;
    const float *embed, *final_norm, *lm_head; /* embed [vocab, hidden], lm_head [vocab, hidden] (may be embed) */
    float *logits;                             /* [tokens, vocab] */
    const float *const *attn_norm, *const *qkv, *const *o_proj, *const *mlp_norm, *const *gate_up, *const *down;
    float *const *k_cache, *const *v_cache;
    const long *positions, *slots;
    const int *block_tables, *query_start_loc, *seq_lens, *requests;
    const float *cos_sin;
    float *x, *h, *qkv_out, *attn_out, *gate_up_out, *act;
    linear_fn linear;
    norm_fn rms_norm;
    silu_mul_fn silu_and_mul;
    rope_fn rope;
    attend_fn attend;
    long *times;      /* [layers][8][2]: each op's start and end, ns */
    long *step_times; /* [3][2]: embed, final_norm, lm_head */
} DecodeProgram;

#define FIELD(f) KVSCOPE_FIELD(DecodeProgram, f)
KVSCOPE_LAYOUT(DecodeProgram, FIELD(tokens), FIELD(layers), FIELD(hidden), FIELD(q_size), FIELD(kv_size),
               FIELD(intermediate), FIELD(heads), FIELD(kv_heads), FIELD(head_dim), FIELD(block_size), FIELD(threads),
               FIELD(vocab), FIELD(eps), FIELD(scale), FIELD(final_eps), FIELD(bt_stride), FIELD(input_ids),
               FIELD(embed), FIELD(final_norm), FIELD(lm_head), FIELD(logits), FIELD(attn_norm), FIELD(qkv),
               FIELD(o_proj), FIELD(mlp_norm), FIELD(gate_up), FIELD(down), FIELD(k_cache), FIELD(v_cache),
               FIELD(positions), FIELD(slots), FIELD(block_tables), FIELD(query_start_loc), FIELD(seq_lens),
               FIELD(requests), FIELD(cos_sin), FIELD(x), FIELD(h), FIELD(qkv_out), FIELD(attn_out),
               FIELD(gate_up_out), FIELD(act), FIELD(linear), FIELD(rms_norm), FIELD(silu_and_mul), FIELD(rope),
               FIELD(attend), FIELD(times), FIELD(step_times));
#undef FIELD

enum { OPS_PER_LAYER = 8 };

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Returns 0; -1 when the scratch could not be allocated, -2 when a token id is outside the vocabulary (the
 * step's output is then unusable). */
int kvscope_decode_program_f32(const DecodeProgram *p) {
    const int T = p->tokens, H = p->hidden, D = p->head_dim, I = p->intermediate, nth = p->threads;
    const int qkv_n = p->q_size + 2 * p->kv_size, heads = p->heads;
    const int ksplit = T < nth ? nth : 1; /* fewer requests than threads: their keys split over the threads */
    int longest = 1;
    for (int t = 0; t < T; t++)
        if (p->seq_lens[t] > longest) longest = p->seq_lens[t];
    /* every thread's scratch, allocated before the team so that no thread can fail alone inside it */
    const size_t n_s = (size_t)heads * longest, n_acc = (size_t)heads * (D + 2);
    const size_t per_thread = n_s + n_acc;
    float *scratch = malloc(sizeof(float) * per_thread * nth);
    float *part = ksplit > 1 ? malloc(sizeof(float) * (size_t)T * ksplit * heads * (D + 2)) : NULL;
    if (scratch == NULL || (ksplit > 1 && part == NULL)) {
        free(scratch);
        free(part);
        return -1;
    }
    int bad_id = 0;
#pragma omp parallel num_threads(nth) reduction(| : bad_id)
    {
        const int tid = omp_get_thread_num(), t0 = T * tid / nth, t1 = T * (tid + 1) / nth; /* this thread's tokens */
        float *s = scratch + per_thread * tid, *acc = s + n_s;
        const int stamp = tid == 0;
        long last = stamp ? now_ns() : 0, *times = p->step_times;
#define STAMP(i)                                         \
    do {                                                 \
        if (stamp) {                                     \
            const long now = now_ns();                   \
            times[2 * (i)] = last;                       \
            times[2 * (i) + 1] = now;                    \
            last = now;                                  \
        }                                                \
    } while (0)
#define END_OP(i)                                        \
    do {                                                 \
        _Pragma("omp barrier");                          \
        STAMP(i);                                        \
    } while (0)
        for (int t = t0; t < t1; t++) {
            const long id = p->input_ids[t];
            if (id < 0 || id >= p->vocab) {
                bad_id = 1;
                memset(p->x + (size_t)t * H, 0, sizeof(float) * (size_t)H);
            } else {
                memcpy(p->x + (size_t)t * H, p->embed + (size_t)id * H, sizeof(float) * (size_t)H);
            }
        }
        END_OP(0);
        for (int l = 0; l < p->layers; l++) {
            times = p->times + (size_t)l * OPS_PER_LAYER * 2;
            p->rms_norm(p->x, H, p->attn_norm[l], p->h, T, H, p->eps);
            END_OP(0);
            p->linear(p->h, H, p->qkv[l], p->qkv_out, T, qkv_n, H, 0);
            END_OP(1);
            /* this thread's tokens: q and k rotated, then k and v to their slots (no barrier between) */
            float *q_t = p->qkv_out + (size_t)t0 * qkv_n;
            p->rope(q_t, qkv_n, D, p->heads, q_t + p->q_size, qkv_n, D, p->kv_heads, p->positions + t0, p->cos_sin, D,
                    t1 - t0);
            STAMP(2);
            for (int t = t0; t < t1; t++) {
                const long slot = p->slots[t];
                if (slot < 0) continue;
                const float *k = p->qkv_out + (size_t)t * qkv_n + p->q_size, *v = k + p->kv_size;
                memcpy(p->k_cache[l] + (size_t)slot * p->kv_size, k, sizeof(float) * (size_t)p->kv_size);
                memcpy(p->v_cache[l] + (size_t)slot * p->kv_size, v, sizeof(float) * (size_t)p->kv_size);
            }
            END_OP(3);
            p->attend(p->qkv_out, qkv_n, p->attn_out, (long)p->heads * D, p->k_cache[l], p->v_cache[l],
                      p->block_tables, p->bt_stride, p->query_start_loc, p->seq_lens, p->requests, T, p->heads,
                      p->kv_heads, D, p->block_size, p->scale, ksplit, part, s, acc);
            END_OP(4);
            p->linear(p->attn_out, (long)p->heads * D, p->o_proj[l], p->x, T, H, p->q_size, 1);
            END_OP(5);
            p->rms_norm(p->x, H, p->mlp_norm[l], p->h, T, H, p->eps);
            END_OP(6);
            p->linear(p->h, H, p->gate_up[l], p->gate_up_out, T, 2 * I, H, 0);
#pragma omp barrier
            p->silu_and_mul(p->gate_up_out, p->act, T, I, tid, nth);
#pragma omp barrier
            p->linear(p->act, I, p->down[l], p->x, T, H, I, 1);
            END_OP(7);
        }
        times = p->step_times;
        p->rms_norm(p->x, H, p->final_norm, p->h, T, H, p->final_eps);
        END_OP(1);
        p->linear(p->h, H, p->lm_head, p->logits, T, p->vocab, H, 0);
        END_OP(2);
#undef END_OP
#undef STAMP
    }
    free(scratch);
    free(part);
    return bad_id ? -2 : 0;
}
