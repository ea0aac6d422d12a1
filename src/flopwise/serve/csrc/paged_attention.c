/* Paged attention on CPU, fp32: each query row attends to the first `row_len` keys of its sequence, read
 * through the sequence's block table straight from the KV pool (no gathered copy of the history).
 *
 * Layouts (row-major, contiguous):
 *   q, out    [T, H, D]          query rows of this step and their outputs (rows not listed are untouched)
 *   k_pool    [NB, KV, D, BS]    one layer's key blocks, key-major inside a block: k_pool[b, h, d, o] is
 *                                dimension d of key o, so the keys of a block sit side by side per dimension
 *   v_pool    [NB, KV, BS, D]    one layer's value blocks
 *   tables    [S, W] int32       block table of each sequence slot
 *   rows      [R] int32          the rows to compute; row_slot[i] / row_len[i] belong to rows[i]
 *
 * Work item = (row, KV head): the G = H / KV query heads of a group share one pass over their keys
 * (grouped-query attention without repeating keys). One pass over the blocks with the online softmax
 * (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"): per block, scores, a new running
 * maximum, rescale of the running sum and output, then the block's values. K and V are read once, and the
 * scratch is a block's scores on the stack (no allocation).
 *
 * Scores: with keys side by side, one vector operation multiplies one query dimension into BS keys at once
 * (s[o] += q[d] * k[d][o] over o), so a block's scores need D multiply-adds per vector of keys and no
 * horizontal sum per key (a key-per-row layout reduces across d for every key). Values keep one key per
 * row: the output adds p[o] * v[o][:], a vector over d.
 *
 * Plain C that the compiler vectorises (-O3 with `omp simd`); exp is a branch-free polynomial so that its
 * loop vectorises too. Built and loaded by flopwise/serve/cpu_kernels.py (a C compiler at run time,
 * ctypes); when that is not possible the engine uses the equivalent PyTorch path in paged.py. */
#include <float.h>
#include <stdint.h>
#include <string.h>

/* The Cephes expf polynomial in r, shared by the scalar and the vector exp below (p starts at its first
 * coefficient; works for float and the 8-float vector type alike). */
#define EXP_POLY(p, r)                                                                                        \
    do {                                                                                                      \
        (p) = (p) * (r) + 1.3981999507e-3f;                                                                   \
        (p) = (p) * (r) + 8.3334519073e-3f;                                                                   \
        (p) = (p) * (r) + 4.1665795894e-2f;                                                                   \
        (p) = (p) * (r) + 1.6666665459e-1f;                                                                   \
        (p) = (p) * (r) + 5.0000001201e-1f;                                                                   \
        (p) = (p) * (r) * (r) + (r) + 1.0f;                                                                   \
    } while (0)
#define EXP_POLY_FIRST 1.9875691500e-4f

/* exp(x) for x <= 0 (scores minus their maximum), relative error ~1e-7: Cody-Waite range reduction and
 * the Cephes expf polynomial; rounding by the 1.5 * 2^23 trick so that no libm call blocks vectorisation. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = EXP_POLY_FIRST;
    EXP_POLY(p, r);
    const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n; n >= -126 after the clamp */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/* One (row, KV head): out[g, :] for the G query heads q[g, :] of the group. D and BS are constants where the
 * caller specialises them, so the loops over d and o become whole vectors held in registers. */
static inline __attribute__((always_inline)) void attend(float *restrict out, const float *restrict q,
                                                         const float *restrict k_pool, const float *restrict v_pool,
                                                         const int32_t *restrict table, int64_t n, int64_t kh,
                                                         int64_t KV, int64_t G, int64_t D, int64_t BS, float scale) {
    const int64_t block_elems = KV * BS * D;
    float acc[G * D], qs[G * D], s[BS], mx[G], sum[G];
    for (int64_t i = 0; i < G * D; i++) acc[i] = 0.f, qs[i] = q[i] * scale;
    for (int64_t g = 0; g < G; g++) mx[g] = -FLT_MAX, sum[g] = 0.f;
    const int64_t nblocks = (n + BS - 1) / BS;
    for (int64_t b = 0; b < nblocks; b++) {
        const float *kb = k_pool + (int64_t)table[b] * block_elems + kh * D * BS;
        const float *vb = v_pool + (int64_t)table[b] * block_elems + kh * BS * D;
        const int64_t m = n - b * BS < BS ? n - b * BS : BS;
        if (b + 1 < nblocks) { /* the next block is elsewhere in the pool: ask for it while this one computes */
            const char *kn = (const char *)(k_pool + (int64_t)table[b + 1] * block_elems + kh * D * BS);
            const char *vn = (const char *)(v_pool + (int64_t)table[b + 1] * block_elems + kh * BS * D);
            for (int64_t c = 0; c < D * BS * 4; c += 64) __builtin_prefetch(kn + c), __builtin_prefetch(vn + c);
        }
        for (int64_t g = 0; g < G; g++) {
            const float *qr = qs + g * D;
            /* scores of all BS keys (those past m are computed from whatever the block holds, then ignored);
             * two accumulators (even and odd d) halve the chain of dependent multiply-adds */
            float s0[BS], s1[BS];
#pragma omp simd
            for (int64_t o = 0; o < BS; o++) s0[o] = qr[0] * kb[o], s1[o] = 0.f;
            int64_t d = 1;
            if (D > 1) {
#pragma omp simd
                for (int64_t o = 0; o < BS; o++) s1[o] = qr[1] * kb[BS + o];
                d = 2;
            }
            for (; d + 1 < D; d += 2) {
                const float q0 = qr[d], q1 = qr[d + 1];
                const float *k0 = kb + d * BS, *k1 = k0 + BS;
#pragma omp simd
                for (int64_t o = 0; o < BS; o++) s0[o] += q0 * k0[o], s1[o] += q1 * k1[o];
            }
            if (d < D) {
                const float q0 = qr[d];
                const float *k0 = kb + d * BS;
#pragma omp simd
                for (int64_t o = 0; o < BS; o++) s0[o] += q0 * k0[o];
            }
            float bmax = -FLT_MAX;
            for (int64_t o = 0; o < m; o++) {
                s[o] = s0[o] + s1[o];
                bmax = s[o] > bmax ? s[o] : bmax;
            }
            const float new_max = bmax > mx[g] ? bmax : mx[g];
            const float correction = exp_neg(mx[g] - new_max);
            float total = 0.f;
#pragma omp simd reduction(+ : total)
            for (int64_t o = 0; o < m; o++) {
                s[o] = exp_neg(s[o] - new_max);
                total += s[o];
            }
            sum[g] = sum[g] * correction + total;
            mx[g] = new_max;
            float a[D];
#pragma omp simd
            for (int64_t e = 0; e < D; e++) a[e] = acc[g * D + e] * correction;
            for (int64_t o = 0; o < m; o++) {
                const float p = s[o];
                const float *vr = vb + o * D;
#pragma omp simd
                for (int64_t e = 0; e < D; e++) a[e] += p * vr[e];
            }
#pragma omp simd
            for (int64_t e = 0; e < D; e++) acc[g * D + e] = a[e];
        }
    }
    for (int64_t g = 0; g < G; g++) {
        const float inv = 1.f / sum[g];
#pragma omp simd
        for (int64_t e = 0; e < D; e++) out[g * D + e] = acc[g * D + e] * inv;
    }
}

/* Blocks of 16 keys and head sizes that are a multiple of 8 (the serving default: blocks of 16): the same
 * computation written with 8-float vectors (GCC/Clang vector extensions; where the target's vectors are
 * narrower the compiler splits them), so that a block's 16 scores and the output rows stay in registers,
 * with a vector exp, and a prefetch of the next block of the table while this one computes (blocks sit
 * anywhere in the pool: the hardware prefetcher cannot guess them; the kernel is bound by reading K and V). */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { return *(const v8u *)p; }
static inline v8 splat8(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline v8i splat8i(int32_t x) { return (v8i){x, x, x, x, x, x, x, x}; }
static inline v8 select8(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }
static inline v8 max8(v8 a, v8 b) { return select8(a > b, a, b); }

static inline v8 exp_neg8(v8 x) { /* exp_neg, lane by lane, in the same operations */
    x = max8(x, splat8(-87.0f));
    const v8 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const v8 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v8 p = splat8(EXP_POLY_FIRST);
    EXP_POLY(p, r);
    const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8)bits;
}

static inline __attribute__((always_inline)) void attend16(float *restrict out, const float *restrict q,
                                                           const float *restrict k_pool,
                                                           const float *restrict v_pool,
                                                           const int32_t *restrict table, int64_t n, int64_t kh,
                                                           int64_t KV, int64_t G, int64_t D, float scale) {
    enum { BS = 16 };
    const int64_t block_elems = KV * BS * D, DV = D / 8;
    v8 acc[G * DV];
    float mx[G], sum[G];
    for (int64_t i = 0; i < G * DV; i++) acc[i] = splat8(0.f);
    for (int64_t g = 0; g < G; g++) mx[g] = -FLT_MAX, sum[g] = 0.f;
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const int64_t nblocks = (n + BS - 1) / BS;
    for (int64_t b = 0; b < nblocks; b++) {
        const float *kb = k_pool + (int64_t)table[b] * block_elems + kh * D * BS;
        const float *vb = v_pool + (int64_t)table[b] * block_elems + kh * BS * D;
        const int64_t m = n - b * BS < BS ? n - b * BS : BS;
        if (b + 1 < nblocks) {
            const char *kn = (const char *)(k_pool + (int64_t)table[b + 1] * block_elems + kh * D * BS);
            const char *vn = (const char *)(v_pool + (int64_t)table[b + 1] * block_elems + kh * BS * D);
            for (int64_t c = 0; c < D * BS * 4; c += 64) __builtin_prefetch(kn + c), __builtin_prefetch(vn + c);
        }
        const v8i keep_lo = lane < splat8i((int32_t)m), keep_hi = lane + 8 < splat8i((int32_t)m);
        for (int64_t g = 0; g < G; g++) {
            const float *qr = q + g * D;
            /* scores of keys 0-7 and 8-15; even and odd d in separate sums (shorter chains of dependent adds) */
            v8 a0 = splat8(0.f), a1 = a0, c0 = a0, c1 = a0;
            for (int64_t d = 0; d < D; d += 2) {
                const v8 q0 = splat8(qr[d]), q1 = splat8(qr[d + 1]);
                const float *k0 = kb + d * BS;
                a0 += q0 * load8(k0), a1 += q0 * load8(k0 + 8);
                c0 += q1 * load8(k0 + BS), c1 += q1 * load8(k0 + BS + 8);
            }
            const v8 lo = select8(keep_lo, (a0 + c0) * scale, splat8(-FLT_MAX));
            const v8 hi = select8(keep_hi, (a1 + c1) * scale, splat8(-FLT_MAX));
            const v8 top = max8(lo, hi);
            float bmax = top[0];
            for (int i = 1; i < 8; i++) bmax = top[i] > bmax ? top[i] : bmax;
            const float new_max = bmax > mx[g] ? bmax : mx[g];
            const float correction = exp_neg(mx[g] - new_max);
            const v8 p_lo = select8(keep_lo, exp_neg8(lo - new_max), splat8(0.f));
            const v8 p_hi = select8(keep_hi, exp_neg8(hi - new_max), splat8(0.f));
            const v8 both = p_lo + p_hi;
            float total = 0.f;
            for (int i = 0; i < 8; i++) total += both[i];
            sum[g] = sum[g] * correction + total;
            mx[g] = new_max;
            float p[BS];
            *(v8u *)p = p_lo, *(v8u *)(p + 8) = p_hi;
            v8 *a = acc + g * DV;
            const v8 corr = splat8(correction);
            for (int64_t j = 0; j < DV; j++) a[j] *= corr;
            for (int64_t o = 0; o < m; o++) {
                const v8 po = splat8(p[o]);
                const float *vr = vb + o * D;
                for (int64_t j = 0; j < DV; j++) a[j] += po * load8(vr + 8 * j);
            }
        }
    }
    for (int64_t g = 0; g < G; g++) {
        const v8 inv = splat8(1.f / sum[g]);
        for (int64_t j = 0; j < DV; j++) *(v8u *)(out + g * D + 8 * j) = acc[g * DV + j] * inv;
    }
}

/* Returns 0 (kept for the ABI: the kernel does not allocate). */
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
        const int64_t len = row_len[i];
        /* common head and block sizes as constants: the inner loops unroll into whole vectors */
#define ATTEND(d, bs) attend(out + off, q + off, k_pool, v_pool, table, len, kh, KV, G, d, bs, scale)
#define ATTEND16(d) attend16(out + off, q + off, k_pool, v_pool, table, len, kh, KV, G, d, scale)
        if (BS == 16 && D == 32) ATTEND16(32);
        else if (BS == 16 && D == 64) ATTEND16(64);
        else if (BS == 16 && D == 128) ATTEND16(128);
        else if (BS == 16 && D % 8 == 0) ATTEND16(D);
        else ATTEND(D, BS);
#undef ATTEND
#undef ATTEND16
    }
    return 0;
}
