/* Paged attention on CPU, fp32: each query row attends to the first `row_len` keys of its sequence, read
 * through the sequence's block table straight from the KV pool (no gathered copy of the history).
 *
 * Layouts (row-major, contiguous):
 *   q, out    [T, H, D]          query rows of this step and their outputs (rows not listed are untouched)
 *   k_pool    [NB, KV, BS, D]    one layer's key blocks; v_pool alike
 *   tables    [S, W] int32       block table of each sequence slot
 *   rows      [R] int32          the rows to compute; row_slot[i] / row_len[i] belong to rows[i]
 *
 * Work item = (row, KV head): the G = H / KV query heads of a group share one pass over their keys
 * (grouped-query attention without repeating keys). One pass over the blocks with the online softmax
 * (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"): per block, scores, a new running
 * maximum, rescale of the running sum and output, then the block's values. K and V are read once, and the
 * scratch is a block's scores on the stack (no allocation).
 *
 * Plain C that the compiler vectorises (-O3 with `omp simd`); exp is a branch-free polynomial so that its
 * loop vectorises too. Built and loaded by flopwise/serve/cpu_kernels.py (a C compiler at run time,
 * ctypes); when that is not possible the engine uses the equivalent PyTorch path in paged.py. */
#include <float.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0 (scores minus their maximum), relative error ~1e-7: Cody-Waite range reduction and
 * the Cephes expf polynomial; rounding by the 1.5 * 2^23 trick so that no libm call blocks vectorisation. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n; n >= -126 after the clamp */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static inline __attribute__((always_inline)) void attend(float *restrict out, const float *restrict q, const float *restrict k_pool,
                   const float *restrict v_pool, const int32_t *restrict table, int64_t n, int64_t kh, int64_t KV,
                   int64_t G, int64_t D, int64_t BS, float scale) {
    const int64_t block_elems = KV * BS * D;
    float acc[G * D], s[G * BS], mx[G], sum[G];
    for (int64_t i = 0; i < G * D; i++) acc[i] = 0.f;
    for (int64_t g = 0; g < G; g++) mx[g] = -FLT_MAX, sum[g] = 0.f;
    const int64_t nblocks = (n + BS - 1) / BS;
    for (int64_t b = 0; b < nblocks; b++) {
        const float *kb = k_pool + (int64_t)table[b] * block_elems + kh * BS * D;
        const float *vb = v_pool + (int64_t)table[b] * block_elems + kh * BS * D;
        const int64_t m = n - b * BS < BS ? n - b * BS : BS;
        for (int64_t g = 0; g < G; g++) {
            const float *qr = q + g * D;
            float *sg = s + g * BS;
            float bmax = -FLT_MAX;
            for (int64_t o = 0; o < m; o++) {
                const float *kr = kb + o * D;
                float dot = 0.f;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < D; d++) dot += qr[d] * kr[d];
                sg[o] = dot * scale;
                bmax = sg[o] > bmax ? sg[o] : bmax;
            }
            const float new_max = bmax > mx[g] ? bmax : mx[g];
            const float correction = exp_neg(mx[g] - new_max);
            float total = 0.f;
#pragma omp simd reduction(+ : total)
            for (int64_t o = 0; o < m; o++) {
                sg[o] = exp_neg(sg[o] - new_max);
                total += sg[o];
            }
            sum[g] = sum[g] * correction + total;
            mx[g] = new_max;
            float *ag = acc + g * D;
            if (correction != 1.f) {
#pragma omp simd
                for (int64_t d = 0; d < D; d++) ag[d] *= correction;
            }
            for (int64_t o = 0; o < m; o++) {
                const float p = sg[o];
                const float *vr = vb + o * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) ag[d] += p * vr[d];
            }
        }
    }
    for (int64_t g = 0; g < G; g++) {
        const float inv = 1.f / sum[g];
#pragma omp simd
        for (int64_t d = 0; d < D; d++) out[g * D + d] = acc[g * D + d] * inv;
    }
}

/* Returns 0 (kept for the ABI: the kernel no longer allocates). */
int paged_attention_f32(float *out, const float *q, const float *k_pool, const float *v_pool, const int32_t *tables,
                        const int32_t *rows, const int32_t *row_slot, const int32_t *row_len, int64_t R, int64_t H,
                        int64_t KV, int64_t D, int64_t BS, int64_t W, float scale, int nthreads) {
    const int64_t G = H / KV;
    (void)nthreads;
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads) if (nthreads > 1 && R * KV > 16)
    for (int64_t item = 0; item < R * KV; item++) {
        const int64_t i = item / KV, kh = item % KV;
        const int64_t t = rows[i];
        const int64_t off = t * H * D + kh * G * D;
        const int32_t *table = tables + (int64_t)row_slot[i] * W;
        switch (D) { /* common head sizes as constants: the inner loops unroll into whole vectors */
        case 32: attend(out + off, q + off, k_pool, v_pool, table, row_len[i], kh, KV, G, 32, BS, scale); break;
        case 64: attend(out + off, q + off, k_pool, v_pool, table, row_len[i], kh, KV, G, 64, BS, scale); break;
        case 128: attend(out + off, q + off, k_pool, v_pool, table, row_len[i], kh, KV, G, 128, BS, scale); break;
        default: attend(out + off, q + off, k_pool, v_pool, table, row_len[i], kh, KV, G, D, BS, scale);
        }
    }
    return 0;
}
