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
 * (grouped-query attention without repeating keys). Two passes over the keys: scores and their maxima,
 * then exp-weights and the weighted sum of values; K and V are each read once per item.
 *
 * Built and loaded by flopwise/serve/cpu_kernels.py (a C compiler at run time, ctypes); when that is not
 * possible the engine uses the equivalent PyTorch path in paged.py. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static void attend(float *out, const float *q, const float *k_pool, const float *v_pool, const int32_t *table,
                   int64_t n, int64_t KV, int64_t G, int64_t D, int64_t BS, float scale, float *scores) {
    const int64_t H = KV * G;
    const int64_t block_elems = KV * BS * D;
    float mx[H];
    for (int64_t h = 0; h < H; h++) mx[h] = -FLT_MAX;
    const int64_t nblocks = (n + BS - 1) / BS;
    for (int64_t b = 0; b < nblocks; b++) {
        const float *kb = k_pool + (int64_t)table[b] * block_elems;
        if (b + 1 < nblocks) {
            const char *next = (const char *)(k_pool + (int64_t)table[b + 1] * block_elems);
            for (int64_t off = 0; off < block_elems * 4; off += 64) __builtin_prefetch(next + off);
        }
        const int64_t m = n - b * BS < BS ? n - b * BS : BS;
        for (int64_t kh = 0; kh < KV; kh++) {
            for (int64_t o = 0; o < m; o++) {
                const float *kr = kb + (kh * BS + o) * D;
                for (int64_t g = 0; g < G; g++) {
                    const int64_t h = kh * G + g;
                    const float *qr = q + h * D;
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t d = 0; d < D; d++) s += qr[d] * kr[d];
                    s *= scale;
                    scores[h * n + b * BS + o] = s;
                    if (s > mx[h]) mx[h] = s;
                }
            }
        }
    }
    float sum[H];
    for (int64_t h = 0; h < H; h++) {
        float *sc = scores + h * n;
        const float m = mx[h];
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < n; j++) {
            const float p = expf(sc[j] - m);
            sc[j] = p;
            total += p;
        }
        sum[h] = total;
        for (int64_t d = 0; d < D; d++) out[h * D + d] = 0.f;
    }
    for (int64_t b = 0; b < nblocks; b++) {
        const float *vb = v_pool + (int64_t)table[b] * block_elems;
        if (b + 1 < nblocks) {
            const char *next = (const char *)(v_pool + (int64_t)table[b + 1] * block_elems);
            for (int64_t off = 0; off < block_elems * 4; off += 64) __builtin_prefetch(next + off);
        }
        const int64_t m = n - b * BS < BS ? n - b * BS : BS;
        for (int64_t kh = 0; kh < KV; kh++) {
            for (int64_t o = 0; o < m; o++) {
                const float *vr = vb + (kh * BS + o) * D;
                for (int64_t g = 0; g < G; g++) {
                    const int64_t h = kh * G + g;
                    const float p = scores[h * n + b * BS + o];
                    float *acc = out + h * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) acc[d] += p * vr[d];
                }
            }
        }
    }
    for (int64_t h = 0; h < H; h++) {
        const float inv = 1.f / sum[h];
        for (int64_t d = 0; d < D; d++) out[h * D + d] *= inv;
    }
}

/* Returns 0, or -1 if scratch memory could not be allocated. */
int paged_attention_f32(float *out, const float *q, const float *k_pool, const float *v_pool, const int32_t *tables,
                        const int32_t *rows, const int32_t *row_slot, const int32_t *row_len, int64_t R, int64_t H,
                        int64_t KV, int64_t D, int64_t BS, int64_t W, float scale, int nthreads) {
    const int64_t G = H / KV;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int64_t cap = 0;
        float *scores = NULL;
#pragma omp for schedule(dynamic, 4)
        for (int64_t i = 0; i < R; i++) {
            const int64_t n = row_len[i];
            if (H * n > cap) {
                free(scores);
                cap = H * n;
                scores = (float *)malloc(cap * sizeof(float));
                if (scores == NULL) {
                    cap = 0;
                    failed = 1;
                    continue;
                }
            }
            const int64_t t = rows[i];
            attend(out + t * H * D, q + t * H * D, k_pool, v_pool, tables + (int64_t)row_slot[i] * W, n, KV, G, D,
                   BS, scale, scores);
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
