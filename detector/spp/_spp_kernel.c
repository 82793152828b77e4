/* Window spatial pyramid pooling on the CPU, compiled: the native path of WindowPooler
 * (sppdet.detector.spp.pooler).
 *
 * Python (native.py) does the geometry: window cells, the Appendix A bins of every level
 * computed from the map, and which coarser levels are reduced from a finer one (bins._plan).
 * This file only moves and compares numbers:
 *
 *   to_keys  conv maps [C, H*W] (float16/bfloat16/float32 bits) -> channels-last [H*W, C]
 *            integers whose order is the floats' order (keys._to_ordered_, same constants);
 *   pool     per window, per level: bin maxima over the keys, then the keys back to float bits
 *            (converted to float32 where asked) written channel-major into the output row.
 *
 * Max pooling selects stored values, so the result is bit-exact with the torch path. Work is
 * split over POSIX threads with dynamic scheduling (big windows cost more than small ones), and
 * the GIL is released while they run. Both entry points take raw addresses (tensor.data_ptr())
 * of contiguous tensors that the caller keeps alive and has checked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 256

/* ------------------------------------------------------------------------------ threads */

typedef void (*range_fn)(const void *task, int64_t begin, int64_t end, void *scratch);

struct parallel {
    range_fn fn;
    const void *task;
    int64_t items, grain;
    int64_t next; /* first item not yet claimed (atomic) */
    size_t scratch_bytes;
    int failed; /* a thread could not get its scratch memory (atomic) */
};

static void *run_worker(void *arg) {
    struct parallel *p = arg;
    void *scratch = NULL;
    if (p->scratch_bytes && !(scratch = malloc(p->scratch_bytes))) {
        __atomic_store_n(&p->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        int64_t begin = __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED);
        if (begin >= p->items) break;
        int64_t end = begin + p->grain < p->items ? begin + p->grain : p->items;
        p->fn(p->task, begin, end, scratch);
    }
    free(scratch);
    return NULL;
}

/* Run fn over [0, items) in grains on up to THREADS threads, each with its own scratch.
 * Returns 0, or -1 when a thread's scratch could not be allocated (some items may be undone). */
static int parallel_for(range_fn fn, const void *task, int64_t items, int64_t grain,
                        size_t scratch_bytes, int threads) {
    struct parallel p = {fn, task, items, grain, 0, scratch_bytes, 0};
    pthread_t ids[MAX_THREADS];
    int64_t grains = (items + grain - 1) / grain;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > grains) threads = (int)grains;
    int started = 0;
    for (int t = 1; t < threads; t++)
        if (pthread_create(&ids[started], NULL, run_worker, &p) == 0) started++;
    run_worker(&p);
    for (int t = 0; t < started; t++) pthread_join(ids[t], NULL);
    return p.failed ? -1 : 0;
}

/* ------------------------------------------------------------------------ float bits */

/* float16 bits -> float32 bits, as torch's (F16C) conversion: exact; a NaN keeps its sign and
 * payload and comes out quiet. */
static inline uint32_t half_to_float_bits(uint16_t h) {
    /* Masks, not branches (conv5 maps mix zeros and normals unpredictably): loops vectorise. */
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, magnitude = h & 0x7fffu;
    const uint32_t payload = (magnitude & 0x3ffu) << 13;
    const uint32_t quiet = (uint32_t)(payload != 0) << 22;
    const uint32_t special = 0x7f800000u | payload | quiet;           /* inf, NaN */
    const uint32_t normal = (magnitude << 13) + ((127u - 15u) << 23); /* rebias */
    union { float f; uint32_t u; } tiny = {(float)(int32_t)magnitude * 5.9604644775390625e-8f};
    const uint32_t is_normal = 0u - (uint32_t)(magnitude >= 0x0400u);
    const uint32_t is_special = 0u - (uint32_t)(magnitude >= 0x7c00u);
    const uint32_t finite = (normal & is_normal) | (tiny.u & ~is_normal); /* m 2^-24: exact */
    return sign | (special & is_special) | (finite & ~is_special);
}

/* F16C converts 8 halves in one instruction, exactly as torch does on such machines; whether
 * this CPU has it is asked once, when the module loads. */
static int use_f16c = 0;

static void halves_to_floats_portable(const uint16_t *restrict h, uint32_t *restrict f,
                                      int64_t count) {
    for (int64_t q = 0; q < count; q++) f[q] = half_to_float_bits(h[q]);
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_F16C 1
__attribute__((target("avx,f16c"))) static void halves_to_floats_f16c(const uint16_t *restrict h,
                                                                       uint32_t *restrict f,
                                                                       int64_t count) {
    int64_t q = 0;
    for (; q + 8 <= count; q += 8)
        _mm256_storeu_ps((float *)(f + q),
                         _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + q))));
    halves_to_floats_portable(h + q, f + q, count - q);
}
#endif

static void halves_to_floats(const uint16_t *h, uint32_t *f, int64_t count) {
#ifdef HAVE_F16C
    if (use_f16c) {
        halves_to_floats_f16c(h, f, count);
        return;
    }
#endif
    halves_to_floats_portable(h, f, count);
}

enum out_kind {
    OUT_SAME = 0,      /* the maps' own dtype: the key bits, flipped back */
    OUT_HALF_F32 = 1,  /* float16 maps, float32 output */
    OUT_BF16_F32 = 2,  /* bfloat16 maps, float32 output */
};

/* --------------------------------------------------------------------------- tasks */

struct keys_task {
    const void *src; /* [C, cells] float bits */
    void *dst;       /* [cells, C] ordered keys */
    int64_t channels, cells;
    int64_t lowest, nan; /* keys below LOWEST (negative NaNs) become NAN (keys._to_ordered_) */
};

struct pool_task {
    const void *keys;          /* every map's keys, channels last, one after another */
    int64_t channels;
    const int64_t *base;       /* [N] first cell of the window's map in KEYS */
    const int64_t *map_width;  /* [N] that map's width in cells */
    const int64_t *cells;      /* [N, 4] x1 y1 x2 y2, inclusive */
    const int64_t *xbins;      /* [N, S, 2] column start, end (exclusive) of computed bins */
    const int64_t *ybins;      /* [N, S, 2] row start, end */
    int64_t computed_bins;     /* S: sum of n over the computed levels */
    int64_t levels;
    const int64_t *level_n;         /* [L] bins per side */
    const int64_t *level_source;    /* [L] -1: computed from the map; else the finer level */
    const int64_t *level_bin_first; /* [L] a computed level's first bin in S */
    const int64_t *level_row_first; /* [L] first pooled row (sum of n^2 of earlier levels) */
    const int64_t *level_out_first; /* [L] first output column */
    const int64_t *order;           /* [L] levels, each after its source */
    int64_t pooled_rows;            /* sum of n^2 */
    int64_t max_width;              /* widest window, in cells */
    void *out;
    int64_t out_row; /* elements between output rows */
    int out_kind;
};

/* ---------------------------------------------------------------------------- transposes
 *
 * dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols. Both layouts move
 * through these: conv maps [C, cells] -> keys [cells, C], and pooled bins [n*n, C] -> output
 * [C, n*n]. On x86-64 whole blocks go through SSE2 registers (8x8 and 4x8 for 16-bit values,
 * 4x4 for 32-bit); the edges, and other machines, take the scalar loop. */

#define SCALAR_TRANSPOSE(TYPE)                                                                \
    for (int64_t r = r0; r < rows; r++)                                                       \
        for (int64_t c = 0; c < cols; c++) dst[c * dst_stride + r] = src[r * src_stride + c]; \
    for (int64_t r = 0; r < r0; r++)                                                          \
        for (int64_t c = c0; c < cols; c++) dst[c * dst_stride + r] = src[r * src_stride + c];

#if defined(__SSE2__)
#include <emmintrin.h>
#define LOAD(p) _mm_loadu_si128((const __m128i *)(p))
#define STORE(p, v) _mm_storeu_si128((__m128i *)(p), (v))
#define STORE_LOW(p, v) _mm_storel_epi64((__m128i *)(p), (v))
#define STORE_HIGH(p, v) _mm_storel_epi64((__m128i *)(p), _mm_unpackhi_epi64((v), (v)))
#endif

static void transpose_u16(const uint16_t *restrict src, int64_t src_stride,
                          uint16_t *restrict dst, int64_t dst_stride, int64_t rows,
                          int64_t cols) {
    int64_t r0 = 0, c0 = cols - cols % 8;
#if defined(__SSE2__)
    for (; r0 + 4 <= rows; r0 += r0 + 8 <= rows ? 8 : 4) {
        const int eight = r0 + 8 <= rows;
        for (int64_t c = 0; c < c0; c += 8) {
            const uint16_t *s = src + r0 * src_stride + c;
            uint16_t *d = dst + c * dst_stride + r0;
            __m128i b0 = _mm_unpacklo_epi16(LOAD(s), LOAD(s + src_stride));
            __m128i b1 = _mm_unpackhi_epi16(LOAD(s), LOAD(s + src_stride));
            __m128i b2 = _mm_unpacklo_epi16(LOAD(s + 2 * src_stride), LOAD(s + 3 * src_stride));
            __m128i b3 = _mm_unpackhi_epi16(LOAD(s + 2 * src_stride), LOAD(s + 3 * src_stride));
            /* columns (0,1) (2,3) (4,5) (6,7) of rows r0..r0+3, four values each */
            __m128i c01 = _mm_unpacklo_epi32(b0, b2), c23 = _mm_unpackhi_epi32(b0, b2);
            __m128i c45 = _mm_unpacklo_epi32(b1, b3), c67 = _mm_unpackhi_epi32(b1, b3);
            if (!eight) {
                STORE_LOW(d, c01);
                STORE_HIGH(d + dst_stride, c01);
                STORE_LOW(d + 2 * dst_stride, c23);
                STORE_HIGH(d + 3 * dst_stride, c23);
                STORE_LOW(d + 4 * dst_stride, c45);
                STORE_HIGH(d + 5 * dst_stride, c45);
                STORE_LOW(d + 6 * dst_stride, c67);
                STORE_HIGH(d + 7 * dst_stride, c67);
                continue;
            }
            s += 4 * src_stride;
            __m128i b4 = _mm_unpacklo_epi16(LOAD(s), LOAD(s + src_stride));
            __m128i b5 = _mm_unpackhi_epi16(LOAD(s), LOAD(s + src_stride));
            __m128i b6 = _mm_unpacklo_epi16(LOAD(s + 2 * src_stride), LOAD(s + 3 * src_stride));
            __m128i b7 = _mm_unpackhi_epi16(LOAD(s + 2 * src_stride), LOAD(s + 3 * src_stride));
            __m128i e01 = _mm_unpacklo_epi32(b4, b6), e23 = _mm_unpackhi_epi32(b4, b6);
            __m128i e45 = _mm_unpacklo_epi32(b5, b7), e67 = _mm_unpackhi_epi32(b5, b7);
            STORE(d, _mm_unpacklo_epi64(c01, e01));
            STORE(d + dst_stride, _mm_unpackhi_epi64(c01, e01));
            STORE(d + 2 * dst_stride, _mm_unpacklo_epi64(c23, e23));
            STORE(d + 3 * dst_stride, _mm_unpackhi_epi64(c23, e23));
            STORE(d + 4 * dst_stride, _mm_unpacklo_epi64(c45, e45));
            STORE(d + 5 * dst_stride, _mm_unpackhi_epi64(c45, e45));
            STORE(d + 6 * dst_stride, _mm_unpacklo_epi64(c67, e67));
            STORE(d + 7 * dst_stride, _mm_unpackhi_epi64(c67, e67));
        }
    }
#else
    c0 = 0;
#endif
    SCALAR_TRANSPOSE(uint16_t)
}

static void transpose_u32(const uint32_t *restrict src, int64_t src_stride,
                          uint32_t *restrict dst, int64_t dst_stride, int64_t rows,
                          int64_t cols) {
    int64_t r0 = 0, c0 = cols - cols % 4;
#if defined(__SSE2__)
    const int64_t full_rows = rows - rows % 4;
    for (int64_t c = 0; c < c0; c += 4) /* channel-major: the writes go out in order */
        for (r0 = 0; r0 < full_rows; r0 += 4) {
            const uint32_t *s = src + r0 * src_stride + c;
            uint32_t *d = dst + c * dst_stride + r0;
            __m128i b0 = _mm_unpacklo_epi32(LOAD(s), LOAD(s + src_stride));
            __m128i b1 = _mm_unpackhi_epi32(LOAD(s), LOAD(s + src_stride));
            __m128i b2 = _mm_unpacklo_epi32(LOAD(s + 2 * src_stride), LOAD(s + 3 * src_stride));
            __m128i b3 = _mm_unpackhi_epi32(LOAD(s + 2 * src_stride), LOAD(s + 3 * src_stride));
            STORE(d, _mm_unpacklo_epi64(b0, b2));
            STORE(d + dst_stride, _mm_unpackhi_epi64(b0, b2));
            STORE(d + 2 * dst_stride, _mm_unpacklo_epi64(b1, b3));
            STORE(d + 3 * dst_stride, _mm_unpackhi_epi64(b1, b3));
        }
#else
    c0 = 0;
#endif
    SCALAR_TRANSPOSE(uint32_t)
}

static inline void *align_up(void *p) { return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* The hot loops are compiled for AVX-512 and AVX2 as well as the baseline, and the loader picks
 * the best this CPU runs (GCC's target_clones); their helpers are inlined into each copy. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif
#define INLINE __attribute__((always_inline)) inline

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SUFFIX)

#define KEY int16_t
#define UKEY uint16_t
#define SUFFIX 16
#include "_spp_kernel_body.h"
#undef KEY
#undef UKEY
#undef SUFFIX

#define KEY int32_t
#define UKEY uint32_t
#define SUFFIX 32
#include "_spp_kernel_body.h"
#undef KEY
#undef UKEY
#undef SUFFIX

/* ----------------------------------------------------------------------- Python API */

static PyObject *py_to_keys(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long src, dst;
    long long channels, cells, lowest, nan;
    int key_bytes, threads;
    if (!PyArg_ParseTuple(args, "KKLLiLLi", &src, &dst, &channels, &cells, &key_bytes, &lowest,
                          &nan, &threads))
        return NULL;
    if (key_bytes != 2 && key_bytes != 4) {
        PyErr_SetString(PyExc_ValueError, "keys are 2 or 4 bytes wide");
        return NULL;
    }
    struct keys_task task = {(const void *)(uintptr_t)src, (void *)(uintptr_t)dst, channels,
                             cells, lowest, nan};
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = parallel_for(key_bytes == 2 ? to_keys_16 : to_keys_32, &task, cells, 256, 0,
                          threads);
    Py_END_ALLOW_THREADS;
    if (status) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_pool(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long keys, base, map_width, cells, xbins, ybins, level_n, level_source,
        level_bin_first, level_row_first, level_out_first, order, out;
    long long channels, windows, computed_bins, levels, pooled_rows, max_width, out_row;
    int key_bytes, out_kind, threads;
    if (!PyArg_ParseTuple(args, "KLiKKKLKKLLKKKKKKLLKLii", &keys, &channels, &key_bytes, &base,
                          &map_width, &cells, &windows, &xbins, &ybins, &computed_bins, &levels,
                          &level_n, &level_source, &level_bin_first, &level_row_first,
                          &level_out_first, &order, &pooled_rows, &max_width, &out, &out_row,
                          &out_kind, &threads))
        return NULL;
    if (key_bytes != 2 && key_bytes != 4) {
        PyErr_SetString(PyExc_ValueError, "keys are 2 or 4 bytes wide");
        return NULL;
    }
    if (out_kind != OUT_SAME && key_bytes != 2) {
        PyErr_SetString(PyExc_ValueError, "only 16-bit maps convert to float32 here");
        return NULL;
    }
    struct pool_task task = {
        (const void *)(uintptr_t)keys,
        channels,
        (const int64_t *)(uintptr_t)base,
        (const int64_t *)(uintptr_t)map_width,
        (const int64_t *)(uintptr_t)cells,
        (const int64_t *)(uintptr_t)xbins,
        (const int64_t *)(uintptr_t)ybins,
        computed_bins,
        levels,
        (const int64_t *)(uintptr_t)level_n,
        (const int64_t *)(uintptr_t)level_source,
        (const int64_t *)(uintptr_t)level_bin_first,
        (const int64_t *)(uintptr_t)level_row_first,
        (const int64_t *)(uintptr_t)level_out_first,
        (const int64_t *)(uintptr_t)order,
        pooled_rows,
        max_width,
        (void *)(uintptr_t)out,
        out_row,
        out_kind,
    };
    /* Per thread: the row maxima of one bin row of a window, every level's pooled keys, and
     * one level's output values before they are transposed. */
    size_t scratch = (size_t)key_bytes * (size_t)channels * (size_t)(max_width + pooled_rows) +
                     sizeof(uint32_t) * (size_t)channels * (size_t)pooled_rows + 64;
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = parallel_for(key_bytes == 2 ? pool_windows_16 : pool_windows_32, &task, windows, 4,
                          scratch, threads);
    Py_END_ALLOW_THREADS;
    if (status) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_halves_to_floats(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long src, dst;
    long long count;
    int portable;
    if (!PyArg_ParseTuple(args, "KKLp", &src, &dst, &count, &portable)) return NULL;
    const uint16_t *h = (const uint16_t *)(uintptr_t)src;
    uint32_t *f = (uint32_t *)(uintptr_t)dst;
    if (portable)
        halves_to_floats_portable(h, f, count);
    else
        halves_to_floats(h, f, count);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"to_keys", py_to_keys, METH_VARARGS,
     "to_keys(src, dst, channels, cells, key_bytes, lowest, nan, threads): float bits [C, cells] "
     "-> ordered keys [cells, C]"},
    {"pool", py_pool, METH_VARARGS, "pool(...): window SPP over ordered keys (see native.py)"},
    {"halves_to_floats", py_halves_to_floats, METH_VARARGS,
     "halves_to_floats(src, dst, count, portable): float16 bits -> float32 bits, through F16C "
     "where the CPU has it unless PORTABLE (for tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spp_kernel", "Compiled window SPP (see native.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spp_kernel(void) {
#ifdef HAVE_F16C
    __builtin_cpu_init();
    use_f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#endif
    return PyModule_Create(&module);
}
