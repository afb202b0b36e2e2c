/* kvscope's CPU SwiGLU activation in float32: act = silu(gate) * up = gate / (1 + exp(-gate)) * up, from the
 * fused gate | up projection's rows [T, 2 I] into act [T, I]; one call instead of torch's three ops (a chunk, a
 * silu and a product, each a pass over memory). Built with -ffast-math, so that expf is vectorised (glibc's
 * libmvec): the results differ from torch's silu in the last bits (the tests bound it). */
#include <math.h>
#include <omp.h>
#include <stddef.h>

/* One thread's share (no barrier at its end: the caller's) of the T * I products, split evenly over `nth`
 * threads by element; each row's elements in one vectorised loop. */
void kvscope_silu_and_mul_f32_team(const float *gate_up, float *act, int T, int I, int tid, int nth) {
    const long n = (long)T * I, j1 = n * (tid + 1) / nth;
    for (long j = n * tid / nth; j < j1;) {
        const long t = j / I, i1 = j1 - t * I < I ? j1 - t * I : I;
        const float *g = gate_up + t * 2 * I, *u = g + I;
        float *a = act + t * I;
        for (long i = j - t * I; i < i1; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        j = t * I + i1;
    }
}

void kvscope_silu_and_mul_f32(const float *gate_up, float *act, int T, int I, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1 && (long)T * I >= 65536)
    {
        kvscope_silu_and_mul_f32_team(gate_up, act, T, I, omp_get_thread_num(), omp_get_num_threads());
    }
}
