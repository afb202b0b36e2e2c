/* kvscope's CPU RMSNorm and RoPE in float32: one call each instead of the dozen small torch ops they take.
 *
 * Both follow Hugging Face's Llama arithmetic operation by operation, with no fused multiply-adds (the
 * functions are compiled with fp-contract off), so that they round as the torch reference does:
 *   rms_norm: y = w * (x * (1 / sqrt(sum(x^2) / H + eps)))  per row of H;
 *   rope:     (x1, x2) -> (x1 * cos - x2 * sin, x2 * cos + x1 * sin) on each head's halves, in place.
 * The sum of squares is a SIMD reduction, so its addition order differs from torch's.
 */
#include <math.h>
#include <stddef.h>

#define EXACT __attribute__((optimize("fp-contract=off")))

/* One thread's share (an orphaned `omp for` over rows, no barrier at its end: the caller's) of y [T, H]
 * (contiguous) = rms_norm(x [T, H], rows ldx apart) * w [H]. */
EXACT void kvscope_rms_norm_f32_team(const float *x, long ldx, const float *w, float *y, int T, int H, float eps) {
#pragma omp for schedule(static) nowait
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * ldx;
        float *yt = y + (size_t)t * H;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int h = 0; h < H; h++) ss += xt[h] * xt[h];
        const float r = 1.0f / sqrtf(ss / (float)H + eps);
#pragma omp simd
        for (int h = 0; h < H; h++) yt[h] = w[h] * (xt[h] * r);
    }
}

EXACT void kvscope_rms_norm_f32(const float *x, long ldx, const float *w, float *y, int T, int H, float eps,
                                int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1 && (long)T * H >= 65536)
    kvscope_rms_norm_f32_team(x, ldx, w, y, T, H, eps);
}

/* Rotate `heads` vectors of D floats per token, in place: x [T, heads, D] with the given token and head
 * strides (unit stride within a head), by cos_sin [positions[t], D] (cos in the first D/2, sin after). */
EXACT static void rotate(float *x, long tok_stride, long head_stride, int heads, const long *positions,
                         const float *cos_sin, int D, int T) {
    const int half = D / 2;
    for (int t = 0; t < T; t++) {
        const float *c = cos_sin + (size_t)positions[t] * D, *s = c + half;
        for (int h = 0; h < heads; h++) {
            float *x1 = x + (size_t)t * tok_stride + (size_t)h * head_stride, *x2 = x1 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                const float a = x1[i], b = x2[i];
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

void kvscope_rope_f32(float *q, long q_tok, long q_head, int q_heads, float *k, long k_tok, long k_head,
                      int k_heads, const long *positions, const float *cos_sin, int D, int T) {
    rotate(q, q_tok, q_head, q_heads, positions, cos_sin, D, T);
    rotate(k, k_tok, k_head, k_heads, positions, cos_sin, D, T);
}
