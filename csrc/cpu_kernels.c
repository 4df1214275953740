/* whisper_mlx CPU kernels: the hot spots MLX's Linux CPU backend leaves slow.
 *
 * 1. cblas_sgemm interposer. MLX computes every product with cblas_sgemm, including the
 *    one-row products of a decoder step; OpenBLAS 0.3.21 (Debian 12) then packs the whole
 *    weight matrix for each call (80 MB per token for the logits of tiny.en). Loaded with
 *    RTLD_GLOBAL before mlx.core, this library's cblas_sgemm forwards M == 1 products to
 *    cblas_sgemv and everything else to the real sgemm (OpenBLAS >= 0.3.27 does the same
 *    internally: GEMM_GEMV_FORWARD).
 * 2. Encoder self-attention: softmax(q k^T * scale) v over row blocks, so the (T, S) weights
 *    never exist whole, with a vectorized exp2. MLX's CPU exp is scalar on Linux (~20 ns/value)
 *    and dominated the encoder.
 * 3. GELU (erf form) in place, vectorized.
 * 4. Products with float16 weights (exact copies of float16 checkpoints), summed in float32:
 *    the logits, and the decoder's weight matrices.
 * 5. The whole decoder step (wm_decode_tokens): through MLX's graph a token costs ~300
 *    operations at 10-15 us each on the CPU, more than its arithmetic.
 * 6. The encoder's blocks (wm_encode) and each window's cross-attention keys/values
 *    (wm_cross_kv): products straight into their final layout, biases and norms in one pass,
 *    no per-layer transposes or temporaries.
 * 7. The pick with openai-whisper's logit filters (wm_pick): filters and the k best tokens of B
 *    rows in one pass over each row's vocabulary instead of NumPy's several.
 *
 * Plain C, no Python API: whisper_mlx/cpu_kernels.py loads it with ctypes. Functions marked
 * WM_SIMD are compiled for AVX2+FMA (x86-64-v3) and for the baseline, chosen at load time by
 * the CPU's features.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <sched.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "gelu_coeffs.h" /* whisper_mlx/assets: wm_gelu_one, the GELU the CUDA kernels share */
#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
/* x86-64-v3 = AVX2 + FMA + F16C, chosen by feature: "arch=haswell" is chosen by CPU model, which
 * left every AMD CPU on the baseline clone (3x slower here) */
#define WM_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WM_SIMD __attribute__((target_clones("avx2", "default")))
#else
#define WM_SIMD
#endif

enum { RowMajor = 101, ColMajor = 102, NoTrans = 111, Trans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

typedef void (*set_threads_fn)(int);
typedef int (*get_threads_fn)(void);

static sgemm_fn real_sgemm;
static sgemv_fn real_sgemv;
static set_threads_fn blas_set_threads; /* OpenBLAS's, where the BLAS has them */
static get_threads_fn blas_get_threads;

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);

/* Bind to the optimized BLAS at `path` (already loaded). Returns 0 on success. */
int wm_bind_blas(const char *path) {
    void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!handle) return -1;
    sgemm_fn gemm = (sgemm_fn)dlsym(handle, "cblas_sgemm");
    sgemv_fn gemv = (sgemv_fn)dlsym(handle, "cblas_sgemv");
    if (!gemm || !gemv || (void *)gemm == (void *)&cblas_sgemm) return -2;
    real_sgemv = gemv;
    real_sgemm = gemm;
    blas_set_threads = (set_threads_fn)dlsym(handle, "openblas_set_num_threads");
    blas_get_threads = (get_threads_fn)dlsym(handle, "openblas_get_num_threads");
    return 0;
}

/* Unbound (wm_bind_blas failed or was never called): the BLAS loaded after this library. */
static void bind_next(void) {
    real_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    real_sgemv = (sgemv_fn)dlsym(RTLD_NEXT, "cblas_sgemv");
}

/* How many one-row products went to sgemv (for tests and `doctor`). */
static long gemv_calls;
long wm_gemv_calls(void) { return gemv_calls; }

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
    if (!real_sgemm || !real_sgemv) bind_next();
    if (order == RowMajor && m == 1 && k > 0 && n > 0) {
        /* c (1 x n) = alpha * a (1 x k) op(b) (k x n) + beta * c */
        int incx = ta == NoTrans ? 1 : lda;
        __atomic_add_fetch(&gemv_calls, 1, __ATOMIC_RELAXED);
        if (tb == NoTrans)
            real_sgemv(RowMajor, Trans, k, n, alpha, b, ldb, a, incx, beta, c, 1);
        else
            real_sgemv(RowMajor, NoTrans, n, k, alpha, b, ldb, a, incx, beta, c, 1);
        return;
    }
    real_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* 2^x for x <= 0 (x >= -126 after clamping): split into integer and fraction, a degree-6
 * polynomial for 2^f on (-1, 0] (relative error < 2e-7), the integer added to the exponent. */
static inline __attribute__((always_inline)) float exp2_neg(float x) {
    x = x < -126.0f ? -126.0f : x;
    int32_t i = (int32_t)x; /* truncates toward zero: f = x - i in (-1, 0] */
    float f = x - (float)i;
    float p = 1.5353362e-4f;
    p = p * f + 1.3398874e-3f;
    p = p * f + 9.6180173e-3f;
    p = p * f + 5.5503382e-2f;
    p = p * f + 2.4022652e-1f;
    p = p * f + 6.9314718e-1f;
    p = p * f + 1.0f;
    union { int32_t i; float f; } scale = {(i + 127) << 23};
    return p * scale.f;
}

/* Rows of `w` (rows x cols, stride ld) become 2^(w - rowmax); their sums go to `sums`. */
WM_SIMD static void exp2_rows(float *w, int rows, int cols, int ld, float *sums) {
    for (int r = 0; r < rows; r++) {
        float *row = w + (size_t)r * ld;
        float mx = row[0];
        for (int j = 1; j < cols; j++) mx = row[j] > mx ? row[j] : mx;
        float s = 0.0f;
        for (int j = 0; j < cols; j++) {
            float e = exp2_neg(row[j] - mx);
            row[j] = e;
            s += e;
        }
        sums[r] = s;
    }
}

#ifndef WM_ROWS
#define WM_ROWS 128
#endif /* query rows per work item: 128 x 1500 scores stay in L2 */

typedef struct {
    const float *q, *k, *v;
    float *out;
    int ldq, ldk, ldv, ldo, t, s, n_head, d;
    float alpha;
    int next; /* the next (head, row block) work item, taken atomically */
    int failed;
} attention_job;

static void *attention_worker(void *arg) {
    attention_job *job = arg;
    int s = job->s, d = job->d, blocks = (job->t + WM_ROWS - 1) / WM_ROWS;
    float *w = malloc(sizeof(float) * (size_t)WM_ROWS * s);
    float sums[WM_ROWS];
    if (!w) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        int item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= blocks * job->n_head) break;
        int h = item / blocks, r0 = (item % blocks) * WM_ROWS;
        int rows = job->t - r0 < WM_ROWS ? job->t - r0 : WM_ROWS;
        const float *qb = job->q + (size_t)r0 * job->ldq + h * d;
        float *ob = job->out + (size_t)r0 * job->ldo + h * d;
        real_sgemm(RowMajor, NoTrans, Trans, rows, s, d, job->alpha, qb, job->ldq, job->k + h * d, job->ldk,
                   0.0f, w, s);
        exp2_rows(w, rows, s, s, sums);
        real_sgemm(RowMajor, NoTrans, NoTrans, rows, d, s, 1.0f, w, s, job->v + h * d, job->ldv, 0.0f, ob,
                   job->ldo);
        for (int r = 0; r < rows; r++) {
            float inv = 1.0f / sums[r];
            float *o = ob + (size_t)r * job->ldo;
            for (int j = 0; j < d; j++) o[j] *= inv;
        }
    }
    free(w);
    return NULL;
}

/* Unmasked multi-head attention for the encoder. q: (t, n_head*d) rows of stride ldq, k and v:
 * (s, n_head*d) with strides ldk, ldv; out: (t, n_head*d) with stride ldo. Work items are
 * (head, block of WM_ROWS query rows), shared by n_threads threads: scores in base 2
 * (scale * log2 e folded into the product), 2^x, weights @ v, then each output row divided by
 * its sum. Returns 0, or -1 if memory or a thread could not be had. */
int wm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv, float *out,
                 int ldo, int t, int s, int n_head, int d, float scale, int n_threads) {
    attention_job job = {q, k, v, out, ldq, ldk, ldv, ldo, t, s, n_head, d,
                         scale * 1.4426950408889634f, 0, 0};
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    /* each thread runs its own small products: the BLAS must not start threads of its own
     * (concurrent calls into a multi-threaded OpenBLAS serialize and thrash) */
    int blas_threads = n_threads > 1 && blas_get_threads && blas_set_threads ? blas_get_threads() : 0;
    if (blas_threads > 1) blas_set_threads(1);
    pthread_t threads[64];
    int started = 0;
    for (int i = 1; i < n_threads; i++)
        if (pthread_create(&threads[started], NULL, attention_worker, &job) == 0) started++;
    attention_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    if (blas_threads > 1) blas_set_threads(blas_threads);
    return job.failed ? -1 : 0;
}

/* x <- GELU(x) = 0.5 x (1 + erf(x / sqrt 2)), erf as Eigen's float rational approximation
 * (max error 4e-7): wm_gelu_one of whisper_mlx/assets/gelu_coeffs.h, shared with the CUDA kernels. */
WM_SIMD void wm_gelu(float *x, long n) {
    for (long i = 0; i < n; i++) x[i] = wm_gelu_one(x[i]);
}

/* ---- logits from a float16 copy of the token embedding ---------------------------------- */

/* IEEE half -> float, for the portable path. */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    union { uint32_t u; float f; } v = {bits};
    return v.f;
}

/* out[i, j] (+)= bias[j] + x[i] . w[j] for rows j0..j1 of w (n x k, IEEE float16 bits) and the m
 * rows of x (m x k, float32): products in float32, as in a float32 product of the same values. */
typedef struct {
    const float *x;
    const uint16_t *w;
    float *out;
    const float *bias; /* or NULL */
    int m, k, ldo, accumulate;
} dot_job;

static inline void dot_store(const dot_job *job, int i, int j, float acc) {
    float *o = job->out + (size_t)i * job->ldo + j;
    acc += job->bias ? job->bias[j] : 0.0f;
    *o = job->accumulate ? *o + acc : acc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* The sum of a's 8 lanes. */
__attribute__((target("avx2,fma,f16c"))) static inline float hsum8(__m256 a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* Up to 4 rows of x against one row of w at a time: each 8 values of w are converted once and
 * used by every row (at batch > 1 the conversions, not the bytes, were the cost). Each row's sum
 * runs in the order of a one-row product (two accumulators, alternate blocks of 8), so a row's
 * result does not depend on its neighbours. */
__attribute__((target("avx2,fma,f16c"))) static void dots_f16c(const dot_job *job, int j0, int j1) {
    const int m = job->m, k = job->k, k8 = k & ~7;
    for (int j = j0; j < j1; j++) {
        const uint16_t *row = job->w + (size_t)j * k;
        for (int i = 0; i < m; i += 4) {
            const int r = m - i < 4 ? m - i : 4;
            const float *x[4];
            for (int q = 0; q < 4; q++) x[q] = job->x + (size_t)(i + (q < r ? q : 0)) * k;
            __m256 a[4], b[4];
            for (int q = 0; q < 4; q++) a[q] = b[q] = _mm256_setzero_ps();
            int kk = 0;
            for (; kk + 16 <= k8; kk += 16) {
                __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk)));
                __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk + 8)));
                for (int q = 0; q < 4; q++) {
                    a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x[q] + kk), w0, a[q]);
                    b[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x[q] + kk + 8), w1, b[q]);
                }
            }
            if (kk < k8) {
                __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk)));
                for (int q = 0; q < 4; q++) a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x[q] + kk), w0, a[q]);
                kk += 8;
            }
            for (int q = 0; q < r; q++) {
                float acc = hsum8(_mm256_add_ps(a[q], b[q]));
                for (int t = kk; t < k; t++) acc += x[q][t] * _cvtsh_ss(row[t]);
                dot_store(job, i + q, j, acc);
            }
        }
    }
}
static int have_f16c(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
static void dots_f16c(const dot_job *job, int j0, int j1) { (void)job, (void)j0, (void)j1; }
static int have_f16c(void) { return 0; }
#endif

static void dots_generic(const dot_job *job, int j0, int j1) {
    const int m = job->m, k = job->k;
    for (int j = j0; j < j1; j++) {
        const uint16_t *row = job->w + (size_t)j * k;
        for (int i = 0; i < m; i++) {
            const float *x = job->x + (size_t)i * k;
            float acc = 0.0f;
            for (int kk = 0; kk < k; kk++) acc += x[kk] * half_to_float(row[kk]);
            dot_store(job, i, j, acc);
        }
    }
}

static void dots(const dot_job *job, int j0, int j1) { (have_f16c() ? dots_f16c : dots_generic)(job, j0, j1); }

/* ---- float16 vectors: conversion, y += a x, and dot products ------------------------------ */

/* float -> IEEE half bits, rounded to nearest even (as _mm256_cvtps_ph and NumPy), for the portable path. */
static inline uint16_t float_to_half(float f) {
    union { float f; uint32_t u; } v = {f};
    uint32_t sign = (v.u >> 16) & 0x8000, x = v.u & 0x7fffffff;
    if (x >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (x > 0x7f800000 ? 0x200 : 0)); /* inf, nan */
    if (x >= 0x477ff000) return (uint16_t)(sign | 0x7c00);                                  /* overflow */
    if (x < 0x38800000) { /* subnormal half (or zero): shift the mantissa, round to nearest even */
        if (x < 0x33000000) return (uint16_t)sign;
        uint32_t e = x >> 23, m = (x & 0x7fffff) | 0x800000, shift = 126 - e;
        uint32_t h = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        h += rest > half || (rest == half && (h & 1));
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((x - 0x38000000) >> 13), rest = x & 0x1fff;
    h += rest > 0x1000 || (rest == 0x1000 && (h & 1));
    return (uint16_t)(sign | h);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma,f16c"))) static void to_halves_f16c(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = float_to_half(src[i]);
}
/* y[0, n) += a * x[0, n), x float16 */
__attribute__((target("avx2,fma,f16c"))) static void axpy_f16c(float *y, float a, const uint16_t *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * _cvtsh_ss(x[i]);
}
/* y[0, n) . x[0, n), x float16, summed in float32 */
__attribute__((target("avx2,fma,f16c"))) static float dot_f16c(const float *y, const uint16_t *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(y + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(y + i + 8),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8))), a1);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float acc = _mm_cvtss_f32(h);
    for (; i < n; i++) acc += y[i] * _cvtsh_ss(x[i]);
    return acc;
}
#else
static void to_halves_f16c(uint16_t *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
static void axpy_f16c(float *y, float a, const uint16_t *x, int n) { (void)y, (void)a, (void)x, (void)n; }
static float dot_f16c(const float *y, const uint16_t *x, int n) { (void)y, (void)x, (void)n; return 0.0f; }
#endif

static void to_halves(uint16_t *dst, const float *src, size_t n) {
    if (have_f16c()) {
        to_halves_f16c(dst, src, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

static void axpy_f16(float *y, float a, const uint16_t *x, int n) {
    if (have_f16c()) {
        axpy_f16c(y, a, x, n);
        return;
    }
    for (int i = 0; i < n; i++) y[i] += a * half_to_float(x[i]);
}

static float dot_f16(const float *y, const uint16_t *x, int n) {
    if (have_f16c()) return dot_f16c(y, x, n);
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += y[i] * half_to_float(x[i]);
    return acc;
}

#define WM_VOCAB_ROWS 2048

typedef struct {
    dot_job dots;
    int n, next; /* rows of w, and the next block of WM_VOCAB_ROWS of them (taken atomically) */
} logits_job;

static void *logits_worker(void *arg) {
    logits_job *job = arg;
    for (;;) {
        int j0 = __atomic_fetch_add(&job->next, WM_VOCAB_ROWS, __ATOMIC_RELAXED);
        if (j0 >= job->n) break;
        dots(&job->dots, j0, j0 + WM_VOCAB_ROWS < job->n ? j0 + WM_VOCAB_ROWS : job->n);
    }
    return NULL;
}

/* out (m x n) = x (m x k, float32) @ w^T, w (n x k) IEEE float16 bits, accumulated in float32.
 * The decoder's logits: w is the token embedding (n_vocab x n_state), kept in float16 where
 * that is exact (checkpoints are float16), so each token streams half the bytes. */
void wm_logits_f16(const float *x, int m, int k, const uint16_t *w, int n, float *out, int n_threads) {
    logits_job job = {{x, w, out, NULL, m, k, n, 0}, n, 0};
    n_threads = n_threads < 1 ? 1 : (n_threads > 64 ? 64 : n_threads);
    pthread_t threads[64];
    int started = 0;
    for (int i = 1; i < n_threads; i++)
        if (pthread_create(&threads[started], NULL, logits_worker, &job) == 0) started++;
    logits_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
}

/* ---- one decoder step: the whole TextDecoder layer stack for new tokens -------------------- */

/* Each layer's parameters, in this order (openai/whisper's names; float32, row-major, Linear
 * weights as (out, in)). The key projection has no bias. */
enum {
    L_ATTN_LN_W, L_ATTN_LN_B, L_Q_W, L_Q_B, L_K_W, L_V_W, L_V_B, L_OUT_W, L_OUT_B,
    L_CROSS_LN_W, L_CROSS_LN_B, L_CQ_W, L_CQ_B, L_COUT_W, L_COUT_B,
    L_MLP_LN_W, L_MLP_LN_B, L_FC1_W, L_FC1_B, L_FC2_W, L_FC2_B, L_PARAMS
};
/* Each layer's caches: self-attention keys and values (batch, n_ctx, n_state), written at the
 * new positions; cross-attention keys and values, each (n_state, n_audio_ctx) = per head
 * (d, n_audio_ctx), projected once per window (wm_cross_kv, or wm_cross_kv_f16 when the step's
 * cross_f16 is set): row b reads window cross_index[b]'s, cross_stride values apart. */
enum { C_SELF_K, C_SELF_V, C_CROSS_K, C_CROSS_V, C_CACHES };

/* After the layers, the table holds the decoder's own parameters: positional embedding
 * (n_ctx, n_state), final layer norm weight and bias, token embedding as float16 bits. */
enum { D_POS, D_LN_W, D_LN_B, D_EMB16, D_PARAMS };

typedef struct {
    const float *const *params;
    float *const *caches;
    int n_layer, c, n_head, d, n_ctx, s_a, n_vocab, batch, t, offset, end, n, n_rows, n_threads;
    long cross_stride; /* values between windows of the cross-attention keys/values */
    int cross_f16;     /* those keys/values are float16 (else float32) */
    float alpha;
    const int32_t *tokens, *rows, *cross_index; /* cross_index: each row's window */
    float *x, *q, *o, *mlp, *logits;
    float *scratch; /* per thread: t * max(S, end) weights, t sums, n * c normed rows */
    size_t scratch_floats;
    int hrows;        /* rows of each thread's normed copy of x */
    int count, sense; /* barrier: threads arrived, and the phase's parity */
    int go;           /* set once every thread is started and n_threads is final */
    int sleepers;     /* threads asleep (or about to be) on sense or go */
    int work;         /* the current phase's next work item, reset at each barrier */
} step_job;

/* ---- waiting: spin briefly, then sleep on a futex ---------------------------------------- */

#ifdef __linux__
static void futex_wait(int *word, int value) { syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0); }
static void futex_wake_all(int *word) { syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0); }
#else
static void futex_wait(int *word, int value) { (void)word, (void)value, sched_yield(); }
static void futex_wake_all(int *word) { (void)word; }
#endif

#ifndef WM_SPIN_NS
#define WM_SPIN_NS 50000 /* spin this long at a barrier before sleeping: longer than a quiet phase's imbalance */
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Return once *word == want (it changes only from !want to want, by `publish`). Spin for
 * WM_SPIN_NS first (a quiet machine meets a barrier within microseconds, sooner than a sleep and
 * wake), then sleep on a futex: when another process holds one of our cores, the thread we wait
 * for is preempted, and a spinning waiter would keep from it the core it could run on. */
static void wait_for(int *word, int want, int *sleepers) {
    long long deadline = 0;
    for (int spins = 1;; spins++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want) return;
        cpu_relax();
        if (spins % 64 == 0) {
            long long t = now_ns();
            if (!deadline)
                deadline = t + WM_SPIN_NS;
            else if (t > deadline)
                break;
        }
    }
    for (;;) {
        /* sleepers, then word; publish writes word, then reads sleepers (all sequentially
         * consistent): either it sees this sleeper and wakes it, or this sees the new value
         * (the futex call also returns at once when the word no longer holds !want) */
        __atomic_add_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(word, __ATOMIC_SEQ_CST) != want) futex_wait(word, !want);
        __atomic_sub_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want) return;
    }
}

/* *word = value, waking whoever sleeps on it in wait_for. */
static void publish(int *word, int value, int *sleepers) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) > 0) futex_wake_all(word);
}

/* All threads wait here until every one has arrived (sense-reversing barrier; waiting as
 * wait_for: a short spin, then a futex); the last to arrive starts the next phase's work items. */
static void barrier(step_job *job, int *local_sense) {
    int sense = *local_sense = !*local_sense;
    if (__atomic_add_fetch(&job->count, 1, __ATOMIC_ACQ_REL) == job->n_threads) {
        __atomic_store_n(&job->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&job->work, 0, __ATOMIC_RELAXED); /* every thread is here: none takes items now */
        publish(&job->sense, sense, &job->sleepers);
        return;
    }
    wait_for(&job->sense, sense, &job->sleepers);
}

/* The k-th of `parts` near-equal slices of [0, n), rounded to multiples of 16 where n allows. */
static void slice(int n, int parts, int k, int *lo, int *hi) {
    int unit = n >= 16 * parts ? 16 : 1, units = (n + unit - 1) / unit;
    int a = (int)((long)units * k / parts) * unit, b = (int)((long)units * (k + 1) / parts) * unit;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

#define WM_DOT_ROWS 8 /* up to this many rows, products read the float16 weights directly */

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,f16c"))) static void halves_to_floats_f16c(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}
#else
static void halves_to_floats_f16c(float *dst, const uint16_t *src, size_t n) { (void)dst, (void)src, (void)n; }
#endif

static void halves_to_floats(float *dst, const uint16_t *src, size_t n) {
    if (have_f16c()) {
        halves_to_floats_f16c(dst, src, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

/* Columns [j0, j1) of y (n x out) = x (n x in) W^T + b, added to y when accumulate (the residual);
 * W (out x in) float16. A decoder step's few rows: dot products straight from the float16
 * weights (half the bytes of float32). A prompt's many rows: the slice of W converted to float32
 * in tmp, then sgemm. */
static void linear_cols(const float *x, int n, int in, const uint16_t *w, const float *b, int out, float *y,
                        int accumulate, int j0, int j1, float *tmp) {
    if (j1 <= j0) return;
    if (n <= WM_DOT_ROWS) {
        dot_job job = {x, w, y, b, n, in, out, accumulate};
        dots(&job, j0, j1);
        return;
    }
    halves_to_floats(tmp, w + (size_t)j0 * in, (size_t)(j1 - j0) * in);
    cblas_sgemm(RowMajor, NoTrans, Trans, n, j1 - j0, in, 1.0f, x, in, tmp, in, accumulate ? 1.0f : 0.0f, y + j0, out);
    if (b)
        for (int i = 0; i < n; i++)
            for (int j = j0; j < j1; j++) y[(size_t)i * out + j] += b[j];
}

/* y = LayerNorm(x) over rows of c values (eps 1e-5, as nn.LayerNorm). */
WM_SIMD static void layer_norm(const float *x, int n, int c, const float *w, const float *b, float *y) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * c;
        float *yi = y + (size_t)i * c;
        float mean = 0.0f, var = 0.0f;
        for (int j = 0; j < c; j++) mean += xi[j];
        mean /= (float)c;
        for (int j = 0; j < c; j++) var += (xi[j] - mean) * (xi[j] - mean);
        float inv = 1.0f / sqrtf(var / (float)c + 1e-5f);
        for (int j = 0; j < c; j++) yi[j] = (xi[j] - mean) * inv * w[j] + b[j];
    }
}

/* One head of attention for t query rows (q: stride ldq) over keys and values given as (s x d,
 * stride ldk / ldv) or, when kv_t, transposed as (d x s, stride s). Row r sees the first
 * len0 + r keys (causal) or all s when len0 < 0. Base-2 scores, normalized after the product. */
static void head_attention(const float *q, int ldq, const float *k, int ldk, int kv_t, const float *v, int ldv,
                           float *out, int ldo, int t, int s, int d, float alpha, int len0, float *w,
                           float *sums) {
    cblas_sgemm(RowMajor, NoTrans, kv_t ? NoTrans : Trans, t, s, d, alpha, q, ldq, k, kv_t ? s : ldk, 0.0f, w, s);
    for (int r = 0; r < t; r++) {
        int keep = len0 < 0 ? s : len0 + r;
        float *row = w + (size_t)r * s;
        exp2_rows(row, 1, keep, s, sums + r);
        for (int j = keep; j < s; j++) row[j] = 0.0f;
    }
    cblas_sgemm(RowMajor, NoTrans, kv_t ? Trans : NoTrans, t, d, s, 1.0f, w, s, v, kv_t ? s : ldv, 0.0f, out, ldo);
    for (int r = 0; r < t; r++) {
        float inv = 1.0f / sums[r];
        for (int j = 0; j < d; j++) out[(size_t)r * ldo + j] *= inv;
    }
}

/* Cross-attention of one head for t query rows over a window's keys and values stored as
 * float16, each transposed (d x s, stride s) as wm_cross_kv_f16 writes them: the scores row by
 * row of the keys (y += a x over s), the outputs as dot products with the rows of the values,
 * so each stored value is read once per step (from memory), whatever t. */
static void head_attention_f16(const float *q, int ldq, const uint16_t *k, const uint16_t *v, float *out, int ldo,
                               int t, int s, int d, float alpha, float *w, float *sums) {
    for (size_t i = 0; i < (size_t)t * s; i++) w[i] = 0.0f;
    for (int j = 0; j < d; j++)
        for (int r = 0; r < t; r++) axpy_f16(w + (size_t)r * s, alpha * q[(size_t)r * ldq + j], k + (size_t)j * s, s);
    exp2_rows(w, t, s, s, sums);
    for (int j = 0; j < d; j++)
        for (int r = 0; r < t; r++) out[(size_t)r * ldo + j] = dot_f16(w + (size_t)r * s, v + (size_t)j * s, s) / sums[r];
}

#define W(i) ((const uint16_t *)p[i]) /* a float16 weight matrix of the layer */

#ifndef WM_CHUNKS
#define WM_CHUNKS 4 /* work items per thread in a phase: a thread slowed down (its core shared) takes fewer */
#endif

/* The next work item of the current phase (items are taken, not assigned: see barrier). */
static inline int take(step_job *job) { return __atomic_fetch_add(&job->work, 1, __ATOMIC_RELAXED); }

static void step_thread(step_job *job, int k) {
    const int c = job->c, d = job->d, n = job->n, t = job->t, nt = job->n_threads, s_a = job->s_a;
    const int h_items = job->batch * job->n_head, parts = nt * WM_CHUNKS;
    float *w = job->scratch + job->scratch_floats * k;
    float *sums = w + (size_t)t * (s_a > job->end ? s_a : job->end);
    float *h = sums + t; /* this thread's normed copy of x (n x c), made when it takes its first item */
    float *tmp = h + (size_t)job->hrows * c; /* float32 slices of weights, for many rows */
    int sense = 0, item, j0, j1, normed;
    const float *const *dp = job->params + (size_t)job->n_layer * L_PARAMS;
    /* token + positional embedding, rows split by thread */
    for (int i = k; i < n; i += nt) {
        const uint16_t *e = (const uint16_t *)dp[D_EMB16] + (size_t)job->tokens[i] * c;
        const float *pos = dp[D_POS] + (size_t)(job->offset + i % t) * c;
        for (int j = 0; j < c; j++) job->x[(size_t)i * c + j] = half_to_float(e[j]) + pos[j];
    }
    barrier(job, &sense);
    /* Each phase below is a list of items (slices of a product's output columns, or (row, head)
     * attention pairs) that the threads take until none is left, then a barrier. */
    for (int l = 0; l < job->n_layer; l++) {
        const float *const *p = job->params + (size_t)l * L_PARAMS;
        float *const *cache = job->caches + (size_t)l * C_CACHES;
        /* self-attention: q, and this step's keys/values written into the cache */
        for (normed = 0; (item = take(job)) < parts;) {
            if (!normed++) layer_norm(job->x, n, c, p[L_ATTN_LN_W], p[L_ATTN_LN_B], h);
            slice(c, parts, item, &j0, &j1);
            linear_cols(h, n, c, W(L_Q_W), p[L_Q_B], c, job->q, 0, j0, j1, tmp);
            for (int b = 0; b < job->batch; b++) {
                size_t at = ((size_t)b * job->n_ctx + job->offset) * c;
                linear_cols(h + (size_t)b * t * c, t, c, W(L_K_W), NULL, c, cache[C_SELF_K] + at, 0, j0, j1, tmp);
                linear_cols(h + (size_t)b * t * c, t, c, W(L_V_W), p[L_V_B], c, cache[C_SELF_V] + at, 0, j0, j1, tmp);
            }
        }
        barrier(job, &sense);
        while ((item = take(job)) < h_items) {
            int b = item / job->n_head, hd = item % job->n_head;
            size_t row = (size_t)b * t * c + hd * d, base = (size_t)b * job->n_ctx * c + hd * d;
            head_attention(job->q + row, c, cache[C_SELF_K] + base, c, 0, cache[C_SELF_V] + base, c, job->o + row,
                           c, t, job->end, d, job->alpha, job->offset + 1, w, sums);
        }
        barrier(job, &sense);
        while ((item = take(job)) < parts) {
            slice(c, parts, item, &j0, &j1);
            linear_cols(job->o, n, c, W(L_OUT_W), p[L_OUT_B], c, job->x, 1, j0, j1, tmp);
        }
        barrier(job, &sense);
        /* cross-attention over each row's window's audio features */
        for (normed = 0; (item = take(job)) < parts;) {
            if (!normed++) layer_norm(job->x, n, c, p[L_CROSS_LN_W], p[L_CROSS_LN_B], h);
            slice(c, parts, item, &j0, &j1);
            linear_cols(h, n, c, W(L_CQ_W), p[L_CQ_B], c, job->q, 0, j0, j1, tmp);
        }
        barrier(job, &sense);
        while ((item = take(job)) < h_items) {
            int b = item / job->n_head, hd = item % job->n_head;
            size_t row = (size_t)b * t * c + hd * d,
                   at = (size_t)job->cross_index[b] * job->cross_stride + (size_t)hd * d * s_a;
            if (job->cross_f16)
                head_attention_f16(job->q + row, c, (const uint16_t *)cache[C_CROSS_K] + at,
                                   (const uint16_t *)cache[C_CROSS_V] + at, job->o + row, c, t, s_a, d, job->alpha, w,
                                   sums);
            else
                head_attention(job->q + row, c, cache[C_CROSS_K] + at, 0, 1, cache[C_CROSS_V] + at, 0, job->o + row,
                               c, t, s_a, d, job->alpha, -1, w, sums);
        }
        barrier(job, &sense);
        while ((item = take(job)) < parts) {
            slice(c, parts, item, &j0, &j1);
            linear_cols(job->o, n, c, W(L_COUT_W), p[L_COUT_B], c, job->x, 1, j0, j1, tmp);
        }
        barrier(job, &sense);
        /* MLP: slices of the hidden units, then of the output */
        for (normed = 0; (item = take(job)) < parts;) {
            if (!normed++) layer_norm(job->x, n, c, p[L_MLP_LN_W], p[L_MLP_LN_B], h);
            slice(4 * c, parts, item, &j0, &j1);
            linear_cols(h, n, c, W(L_FC1_W), p[L_FC1_B], 4 * c, job->mlp, 0, j0, j1, tmp);
            for (int i = 0; i < n; i++) wm_gelu(job->mlp + (size_t)i * 4 * c + j0, j1 - j0);
        }
        barrier(job, &sense);
        while ((item = take(job)) < parts) {
            slice(c, parts, item, &j0, &j1);
            linear_cols(job->mlp, n, 4 * c, W(L_FC2_W), p[L_FC2_B], c, job->x, 1, j0, j1, tmp);
        }
        barrier(job, &sense);
    }
    /* final norm of the wanted rows, then their logits over slices of the vocabulary */
    dot_job logits = {h, (const uint16_t *)dp[D_EMB16], job->logits, NULL, job->batch * job->n_rows, c, job->n_vocab, 0};
    for (normed = 0; (item = take(job)) < 2 * parts;) {
        if (!normed++)
            for (int b = 0; b < job->batch; b++)
                for (int r = 0; r < job->n_rows; r++)
                    layer_norm(job->x + ((size_t)b * t + job->rows[r]) * c, 1, c, dp[D_LN_W], dp[D_LN_B],
                               h + ((size_t)b * job->n_rows + r) * c);
        slice(job->n_vocab, 2 * parts, item, &j0, &j1);
        dots(&logits, j0, j1);
    }
}

/* Start threads 1..n-1 on fn, thread i with args[i] = {job, i}; stops at the first that cannot
 * start. Returns how many started (the caller runs share 0 and joins threads[0..started)). */
static int start_workers(void *(*fn)(void *), void *job, int n, pthread_t *threads, void *(*args)[2]) {
    int started = 0;
    for (int i = 1; i < n; i++) {
        args[i][0] = job, args[i][1] = (void *)(intptr_t)i;
        if (pthread_create(&threads[started], NULL, fn, args[i]) != 0) break;
        started++;
    }
    return started;
}

static void *step_worker(void *arg) {
    step_job *job = ((step_job **)arg)[0];
    wait_for(&job->go, 1, &job->sleepers);
    step_thread(job, (int)(intptr_t)((void **)arg)[1]);
    return NULL;
}

/* Decode `t` new tokens for each of `batch` sequences at positions offset..offset+t-1: token
 * embedding, every decoder layer (self-attention appending to the kv_cache, cross-attention over
 * the window cross_index[b] of sequence b, MLP), final norm and logits for the rows listed in
 * `rows` (indices into the t new tokens), written to logits (batch, n_rows, n_vocab). Threads
 * take slices of every product's output columns and the attention's (row, head) pairs as they go
 * (a thread slowed down by another process takes fewer), meeting at a barrier between dependent
 * phases; the BLAS runs on one thread meanwhile. Returns 0, -1 out of memory, -2 past
 * n_ctx. */
int wm_decode_tokens(const float *const *params, float *const *caches, int n_layer, int n_state, int n_head,
                     int n_ctx, int n_audio_ctx, long cross_stride, int cross_f16, const int32_t *cross_index, int n_vocab,
                     const int32_t *tokens, int batch, int t, int offset, const int32_t *rows, int n_rows, float *logits,
                     int n_threads) {
    if (offset + t > n_ctx) return -2;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    int n = batch * t, end = offset + t, s_max = n_audio_ctx > end ? n_audio_ctx : end, c = n_state;
    step_job job = {.params = params, .caches = caches, .n_layer = n_layer, .c = c, .n_head = n_head,
                    .d = c / n_head, .n_ctx = n_ctx, .s_a = n_audio_ctx, .cross_stride = cross_stride, .cross_f16 = cross_f16, .n_vocab = n_vocab, .batch = batch,
                    .t = t, .offset = offset, .end = end, .n = n, .n_rows = n_rows, .n_threads = n_threads,
                    .alpha = 1.4426950408889634f / sqrtf((float)(c / n_head)), .tokens = tokens, .rows = rows,
                    .logits = logits, .cross_index = cross_index, .hrows = n > batch * n_rows ? n : batch * n_rows};
    /* per thread: attention weights and sums, normed rows, and for many rows a float32 weight slice */
    size_t tmp = n > WM_DOT_ROWS ? (size_t)(4 * c / n_threads + 16) * 4 * c : 0;
    job.scratch_floats = ((size_t)t * s_max + t + (size_t)job.hrows * c + tmp + 15) & ~(size_t)15;
    float *buf = malloc(sizeof(float) * ((size_t)n * c * 7 + job.scratch_floats * n_threads));
    if (!buf) return -1;
    job.x = buf;
    job.q = job.x + (size_t)n * c;
    job.o = job.q + (size_t)n * c;
    job.mlp = job.o + (size_t)n * c;
    job.scratch = job.mlp + (size_t)n * 4 * c;
    int blas_threads = n_threads > 1 && blas_get_threads && blas_set_threads ? blas_get_threads() : 0;
    if (blas_threads > 1) blas_set_threads(1);
    pthread_t threads[64];
    void *args[64][2];
    int started = start_workers(step_worker, &job, n_threads, threads, args);
    job.n_threads = started + 1;
    publish(&job.go, 1, &job.sleepers);
    step_thread(&job, 0);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    if (blas_threads > 1) blas_set_threads(blas_threads);
    free(buf);
    return 0;
}

/* ---- the encoder's transformer blocks --------------------------------------------------- */

/* An encoder layer's parameters, in the order of whisper_mlx.cpu_kernels.ENCODER_PARAMS. */
enum { E_LN1_W, E_LN1_B, E_Q_W, E_Q_B, E_K_W, E_V_W, E_V_B, E_O_W, E_O_B, E_LN2_W, E_LN2_B, E_FC1_W, E_FC1_B,
       E_FC2_W, E_FC2_B, E_PARAMS };

typedef struct {
    float *y;
    const float *b;
    int rows, cols, n_threads;
} bias_gelu_job;

static void bias_gelu_rows(float *y, const float *b, int cols, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        float *row = y + (size_t)r * cols;
        for (int j = 0; j < cols; j++) row[j] += b[j];
        wm_gelu(row, cols);
    }
}

static void *bias_gelu_worker(void *arg) {
    bias_gelu_job *job = ((bias_gelu_job **)arg)[0];
    int k = (int)(intptr_t)((void **)arg)[1], r0 = (int)((long)job->rows * k / job->n_threads),
        r1 = (int)((long)job->rows * (k + 1) / job->n_threads);
    bias_gelu_rows(job->y, job->b, job->cols, r0, r1);
    return NULL;
}

/* y (rows x cols) <- GELU(y + b), rows split over n_threads threads. */
static void bias_gelu(float *y, const float *b, int rows, int cols, int n_threads) {
    bias_gelu_job job = {y, b, rows, cols, n_threads};
    pthread_t threads[64];
    void *args[64][2];
    int started = start_workers(bias_gelu_worker, &job, n_threads, threads, args);
    int r_main = (int)((long)rows / n_threads); /* thread 0's share: rows [0, rows / n_threads) */
    bias_gelu_rows(y, b, cols, 0, r_main);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    if (started < n_threads - 1) /* a thread could not start: its rows, here */
        for (int i = started + 1; i < n_threads; i++)
            bias_gelu_rows(y, b, cols, (int)((long)rows * i / n_threads), (int)((long)rows * (i + 1) / n_threads));
}

/* y (n x out, row stride ldy) = x (n x in) W^T + b, W (out x in) float32: the bias written
 * first (zeros without one), so the product accumulates onto it. */
static void linear_f32(const float *x, int n, int in, const float *w, const float *b, int out, float *y, int ldy) {
    for (int r = 0; r < n; r++) {
        float *row = y + (size_t)r * ldy;
        for (int j = 0; j < out; j++) row[j] = b ? b[j] : 0.0f;
    }
    cblas_sgemm(RowMajor, NoTrans, Trans, n, out, in, 1.0f, x, in, w, in, 1.0f, y, ldy);
}

static void add_rows(float *x, int rows, int cols, const float *b) {
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) x[(size_t)r * cols + j] += b[j];
}

/* The encoder's n_layer blocks in place on x (t x c), then its final norm into out:
 * x += out(attention(LN1 x)); x += fc2(GELU(fc1(LN2 x))). Products go to the BLAS (its own
 * threads), attention to wm_attention, everything else is one pass over rows; one scratch for
 * all layers. params: E_PARAMS per layer, then ln_post's weight and bias. Returns 0 or -1. */
int wm_encode(float *x, int t, int c, int n_head, int n_mlp, int n_layer, const float *const *params, float *out,
              int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    int big = n_mlp > 3 * c ? n_mlp : 3 * c;
    float *h = malloc(sizeof(float) * (size_t)t * (c + big));
    if (!h) return -1;
    /* q, k and v, each (t x c) and contiguous (attention re-reads k for every block of queries:
     * interleaved rows would spread it over 3x the memory), later the MLP's (t x n_mlp) */
    float *wide = h + (size_t)t * c, *q = wide, *k = q + (size_t)t * c, *v = k + (size_t)t * c;
    float scale = 1.0f / sqrtf((float)(c / n_head));
    for (int l = 0; l < n_layer; l++) {
        const float *const *p = params + (size_t)l * E_PARAMS;
        layer_norm(x, t, c, p[E_LN1_W], p[E_LN1_B], h);
        linear_f32(h, t, c, p[E_Q_W], p[E_Q_B], c, q, c);
        linear_f32(h, t, c, p[E_K_W], NULL, c, k, c);
        linear_f32(h, t, c, p[E_V_W], p[E_V_B], c, v, c);
        if (wm_attention(q, c, k, c, v, c, h, c, t, t, n_head, c / n_head, scale, n_threads) != 0) {
            free(h);
            return -1;
        }
        cblas_sgemm(RowMajor, NoTrans, Trans, t, c, c, 1.0f, h, c, p[E_O_W], c, 1.0f, x, c);
        add_rows(x, t, c, p[E_O_B]);
        layer_norm(x, t, c, p[E_LN2_W], p[E_LN2_B], h);
        cblas_sgemm(RowMajor, NoTrans, Trans, t, n_mlp, c, 1.0f, h, c, p[E_FC1_W], c, 0.0f, wide, n_mlp);
        bias_gelu(wide, p[E_FC1_B], t, n_mlp, n_threads);
        cblas_sgemm(RowMajor, NoTrans, Trans, t, c, n_mlp, 1.0f, wide, n_mlp, p[E_FC2_W], n_mlp, 1.0f, x, c);
        add_rows(x, t, c, p[E_FC2_B]);
    }
    const float *const *post = params + (size_t)n_layer * E_PARAMS;
    layer_norm(x, t, c, post[0], post[1], out);
    free(h);
    return 0;
}

/* ---- cross-attention keys/values, and the pick ----------------------------------------- */

/* Every decoder layer's cross-attention keys and values for one window's audio features
 * xa (s x c), computed once per window, transposed: layer l's keys at out + 2 l c s and values at
 * out + (2 l + 1) c s, each (c x s) = W xa^T (+ bias), so each head's (d x s) block is contiguous
 * for the step to stream. params per layer: key weight, value weight, value bias (float32; keys
 * have no bias). */
void wm_cross_kv(const float *xa, int s, int c, int n_layer, const float *const *params, float *out) {
    for (int l = 0; l < n_layer; l++) {
        const float *const *p = params + 3 * (size_t)l;
        float *k_t = out + (size_t)2 * l * c * s, *v_t = k_t + (size_t)c * s;
        cblas_sgemm(RowMajor, NoTrans, Trans, c, s, c, 1.0f, p[0], c, xa, c, 0.0f, k_t, s);
        for (int r = 0; r < c; r++)
            for (int j = 0; j < s; j++) v_t[(size_t)r * s + j] = p[2][r];
        cblas_sgemm(RowMajor, NoTrans, Trans, c, s, c, 1.0f, p[1], c, xa, c, 1.0f, v_t, s);
    }
}

/* wm_cross_kv stored as float16 (rounded to nearest even), for a step with cross_f16: the bytes a
 * step streams for many windows' rows are mostly these. tmp: one layer's float32 keys and values
 * (2 c s floats) on the way. */
void wm_cross_kv_f16(const float *xa, int s, int c, int n_layer, const float *const *params, float *tmp,
                     uint16_t *out) {
    for (int l = 0; l < n_layer; l++) {
        wm_cross_kv(xa, s, c, 1, params + 3 * (size_t)l, tmp);
        to_halves(out + (size_t)2 * l * c * s, tmp, (size_t)2 * c * s);
    }
}

#define WM_FORBID (-1e30f) /* a forbidden token's logit (finite: built with -ffast-math) */

static void forbid(float *x, int lo, int hi) {
    for (int j = lo; j < hi; j++) x[j] = WM_FORBID;
}

WM_SIMD static float max_of(const float *x, int lo, int hi) {
    float m = WM_FORBID;
    for (int j = lo; j < hi; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* The first index of the largest value in x[lo, hi) (hi > lo): the maximum of each block of 256
 * (vectorized), then a scan of the first block that holds the largest. */
WM_SIMD static int argmax(const float *x, int lo, int hi) {
    float m = x[lo];
    int at = lo;
    for (int b = lo; b < hi; b += 256) {
        float bm = max_of(x, b, b + 256 < hi ? b + 256 : hi);
        if (bm > m || b == lo) m = bm, at = b;
    }
    while (x[at] != m) at++;
    return at;
}

/* log(sum(exp(x - m))) + m over x[lo, hi) given their maximum m: float sums over blocks of 512
 * values, added in double, so the many tiny terms are not lost behind a near-1 one (a running
 * float sum drops them; NumPy's pairwise sum keeps them). */
WM_SIMD static float log_sum_exp(const float *x, int lo, int hi, float m) {
    double sum = 0.0;
    for (int b = lo; b < hi; b += 512) {
        int e = b + 512 < hi ? b + 512 : hi;
        float part = 0.0f;
        for (int j = b; j < e; j++) part += exp2_neg((x[j] - m) * 1.4426950408889634f);
        sum += part;
    }
    return m + (float)log(sum);
}

/* openai-whisper's logit filters on one row x (n_vocab, edited in place), as logit_rules.apply_numpy
 * applies them: forbidden entries become WM_FORBID (and so do entries already below it, an
 * input's -inf). state: tokens sampled so far, the last, the one before it, the last timestamp
 * (-1: none); suppress: n_vocab flags (1: never); blank: n_blank ids forbidden at the first
 * position; rules: logit_rules.LogitRules.packed. Returns the first index of the row's largest
 * value where the timestamp rule already found it, else -1. */
WM_SIMD static int filter_row(float *x, int n_vocab, const int32_t *state, const uint8_t *suppress,
                              const int32_t *blank, int n_blank, const int32_t *rules) {
    int n = state[0], last = state[1], penult = state[2], last_ts = state[3], first = n == 0;
    for (int j = 0; j < n_vocab; j++) x[j] = suppress[j] || !(x[j] > WM_FORBID) ? WM_FORBID : x[j];
    if (first)
        for (int i = 0; i < n_blank; i++) x[blank[i]] = WM_FORBID;
    if (!rules[0]) return -1;
    int ts_begin = rules[1], eot = rules[2], no_ts = rules[3], max_ts = rules[4];
    x[no_ts] = WM_FORBID;
    int last_was_ts = n >= 1 && last >= ts_begin, penult_was_ts = n < 2 || penult >= ts_begin;
    if (last_was_ts) {
        if (penult_was_ts)
            forbid(x, ts_begin, n_vocab);
        else
            forbid(x, 0, eot);
    }
    if (last_ts >= 0) { /* timestamps do not decrease */
        int bound = last_was_ts && !penult_was_ts ? last_ts : last_ts + 1;
        forbid(x, ts_begin, bound < n_vocab ? bound : n_vocab);
    }
    if (first) {
        forbid(x, 0, ts_begin);
        if (max_ts >= 0 && ts_begin + max_ts + 1 < n_vocab) forbid(x, ts_begin + max_ts + 1, n_vocab);
    }
    /* a timestamp when the timestamps' total probability beats every single text token */
    int text = argmax(x, 0, ts_begin), ts = argmax(x, ts_begin, n_vocab);
    if (log_sum_exp(x, ts_begin, n_vocab, x[ts]) > x[text]) {
        forbid(x, 0, ts_begin);
        text = ts;
    }
    return x[ts] > x[text] ? ts : text; /* the first of equal maxima, as argmax */
}

/* The k largest values of x[0, n) into val/idx (k entries, largest first, equal values by lower
 * index): one pass, a block skipped when its maximum cannot enter the list. */
WM_SIMD static void top_k(const float *x, int n, int k, float *val, int64_t *idx) {
    int count = 0;
    for (int b = 0; b < n; b += 64) {
        int e = b + 64 < n ? b + 64 : n;
        if (count == k && max_of(x, b, e) <= val[k - 1]) continue;
        for (int j = b; j < e; j++) {
            float v = x[j];
            if (count == k && v <= val[k - 1]) continue;
            int i = count < k ? count++ : k - 1;
            for (; i > 0 && val[i - 1] < v; i--) val[i] = val[i - 1], idx[i] = idx[i - 1];
            val[i] = v, idx[i] = j;
        }
    }
}

#define WM_FORBID_BITS 0xf149f2caU /* WM_FORBID's bit pattern */
#define WM_NEG_INF_BITS 0xff800000U

/* Forbidden entries (WM_FORBID) become -inf, by bit pattern: the library is built with
 * -ffast-math, under which the compiler may assume no float is infinite. */
WM_SIMD static void forbidden_to_inf(float *x, long n) {
    uint32_t *u = (uint32_t *)x;
    for (long j = 0; j < n; j++) u[j] = u[j] == WM_FORBID_BITS ? WM_NEG_INF_BITS : u[j];
}

/* One row: filters, the k best tokens by log probability (best first, ties by lower id) and their
 * log probabilities x[token] - log(sum(exp(x))) over the filtered row. */
static void pick_row(float *x, int n_vocab, const int32_t *state, const uint8_t *suppress, const int32_t *blank,
                     int n_blank, const int32_t *rules, int k, int64_t *tokens, float *logprobs) {
    int best = filter_row(x, n_vocab, state, suppress, blank, n_blank, rules);
    if (k == 1) {
        tokens[0] = best >= 0 ? best : argmax(x, 0, n_vocab);
        logprobs[0] = x[tokens[0]];
    } else {
        top_k(x, n_vocab, k, logprobs, tokens);
    }
    float lse = log_sum_exp(x, 0, n_vocab, logprobs[0]);
    for (int i = 0; i < k; i++) {
        union { uint32_t u; float f; } lp = {WM_NEG_INF_BITS};
        if (logprobs[i] > WM_FORBID) lp.f = logprobs[i] - lse;
        logprobs[i] = lp.f;
    }
    forbidden_to_inf(x, n_vocab);
}

typedef struct {
    float *x;
    int batch, n_vocab, n_blank, k;
    const int32_t *state, *blank, *rules;
    const uint8_t *suppress;
    int64_t *tokens;
    float *logprobs;
    int next; /* the next row, taken atomically */
} pick_job;

static void *pick_worker(void *arg) {
    pick_job *job = ((pick_job **)arg)[0];
    for (;;) {
        int b = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (b >= job->batch) break;
        pick_row(job->x + (size_t)b * job->n_vocab, job->n_vocab, job->state + 4 * (size_t)b, job->suppress,
                 job->blank, job->n_blank, job->rules, job->k, job->tokens + (size_t)b * job->k,
                 job->logprobs + (size_t)b * job->k);
    }
    return NULL;
}

static int start_workers(void *(*fn)(void *), void *job, int n, pthread_t *threads, void *(*args)[2]);

/* openai-whisper's logit filters and the k best tokens for each of `batch` rows of logits x
 * (batch, n_vocab), edited in place: forbidden entries come out as -inf. Row b has its own state
 * (4 int32 at state + 4 b, see filter_row); suppress, blank and rules are shared. tokens (batch, k)
 * and logprobs (batch, k) receive each row's k best tokens by log probability after the filters,
 * best first, ties by lower id (k = 1: greedy; beam search takes beam_size + 1), and their log
 * probabilities (-inf for a forbidden one, where fewer than k are allowed). Rows are shared by up
 * to n_threads threads. */
void wm_pick(float *x, int batch, int n_vocab, const int32_t *state, const uint8_t *suppress, const int32_t *blank,
             int n_blank, const int32_t *rules, int k, int64_t *tokens, float *logprobs, int n_threads) {
    pick_job job = {x, batch, n_vocab, n_blank, k, state, blank, rules, suppress, tokens, logprobs, 0};
    n_threads = n_threads > batch ? batch : n_threads;
    n_threads = n_threads < 1 ? 1 : (n_threads > 64 ? 64 : n_threads);
    pthread_t threads[64];
    void *args[64][2];
    int started = start_workers(pick_worker, &job, n_threads, threads, args);
    args[0][0] = &job;
    pick_worker(args[0]);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
}
