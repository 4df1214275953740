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
 *
 * Plain C, no Python API: whisper_mlx/cpu_kernels.py loads it with ctypes. Functions marked
 * WM_SIMD are compiled for AVX2+FMA and for the baseline, chosen at load time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WM_SIMD __attribute__((target_clones("arch=haswell", "default")))
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

#define WM_ROWS 128 /* query rows per work item: 128 x 1500 scores stay in L2 */

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
 * (max error 4e-7), the same function whisper_mlx.model.gelu evaluates. */
WM_SIMD void wm_gelu(float *x, long n) {
    for (long i = 0; i < n; i++) {
        float xi = x[i];
        float z = xi * 0.7071067811865476f;
        z = z < -4.0f ? -4.0f : (z > 4.0f ? 4.0f : z);
        float z2 = z * z;
        float p = -2.72614225801306e-10f;
        p = p * z2 + 2.77068142495902e-08f;
        p = p * z2 + -2.10102402082508e-06f;
        p = p * z2 + -5.69250639462346e-05f;
        p = p * z2 + -7.34990630326855e-04f;
        p = p * z2 + -2.95459980854025e-03f;
        p = p * z2 + -1.60960333262415e-02f;
        float qq = -1.45660718464996e-05f;
        qq = qq * z2 + -2.13374055278905e-04f;
        qq = qq * z2 + -1.68282697438203e-03f;
        qq = qq * z2 + -7.37332916720468e-03f;
        qq = qq * z2 + -1.42647390514189e-02f;
        x[i] = 0.5f * xi * (1.0f + z * p / qq);
    }
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

typedef struct {
    const float *x;
    const uint16_t *w;
    float *out;
    int m, k, n, n_threads;
    int next; /* the next block of WM_VOCAB_ROWS rows, taken atomically */
} logits_job;

#define WM_VOCAB_ROWS 2048

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* Rows j0..j1 of w, each a contiguous float16 vector of length k, dotted with every row of x. */
__attribute__((target("avx2,fma,f16c"))) static void logits_rows_f16c(const logits_job *job, int j0, int j1) {
    const int m = job->m, k = job->k, n = job->n, k8 = k & ~7;
    for (int j = j0; j < j1; j++) {
        const uint16_t *row = job->w + (size_t)j * k;
        for (int i = 0; i < m; i++) {
            const float *x = job->x + (size_t)i * k;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int kk = 0;
            for (; kk + 16 <= k8; kk += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk))), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk + 8),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk + 8))), a1);
            }
            for (; kk < k8; kk += 8)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk))), a0);
            a0 = _mm256_add_ps(a0, a1);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            float acc = _mm_cvtss_f32(h);
            for (; kk < k; kk++) acc += x[kk] * _cvtsh_ss(row[kk]);
            job->out[(size_t)i * n + j] = acc;
        }
    }
}
static int have_f16c(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
static void logits_rows_f16c(const logits_job *job, int j0, int j1) { (void)job, (void)j0, (void)j1; }
static int have_f16c(void) { return 0; }
#endif

static void logits_rows_generic(const logits_job *job, int j0, int j1) {
    const int m = job->m, k = job->k, n = job->n;
    for (int j = j0; j < j1; j++) {
        const uint16_t *row = job->w + (size_t)j * k;
        for (int i = 0; i < m; i++) {
            const float *x = job->x + (size_t)i * k;
            float acc = 0.0f;
            for (int kk = 0; kk < k; kk++) acc += x[kk] * half_to_float(row[kk]);
            job->out[(size_t)i * n + j] = acc;
        }
    }
}

static void *logits_worker(void *arg) {
    logits_job *job = arg;
    void (*rows)(const logits_job *, int, int) = have_f16c() ? logits_rows_f16c : logits_rows_generic;
    for (;;) {
        int j0 = __atomic_fetch_add(&job->next, WM_VOCAB_ROWS, __ATOMIC_RELAXED);
        if (j0 >= job->n) break;
        rows(job, j0, j0 + WM_VOCAB_ROWS < job->n ? j0 + WM_VOCAB_ROWS : job->n);
    }
    return NULL;
}

/* out (m x n) = x (m x k, float32) @ w^T, w (n x k) IEEE float16 bits, accumulated in float32.
 * The decoder's logits: w is the token embedding (n_vocab x n_state), kept in float16 where
 * that is exact (checkpoints are float16), so each token streams half the bytes. */
void wm_logits_f16(const float *x, int m, int k, const uint16_t *w, int n, float *out, int n_threads) {
    logits_job job = {x, w, out, m, k, n, n_threads < 1 ? 1 : (n_threads > 64 ? 64 : n_threads), 0};
    pthread_t threads[64];
    int started = 0;
    for (int i = 1; i < job.n_threads; i++)
        if (pthread_create(&threads[started], NULL, logits_worker, &job) == 0) started++;
    logits_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
}
