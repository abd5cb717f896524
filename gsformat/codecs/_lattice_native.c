/* gsformat.codecs._lattice_native — the gsformat.lattice decoder in one pass (the fast path).
 *
 * decode(payload, out, position_step, scale_step, shear_step, colour_step, max_splats) -> bool
 *
 * Reads the layout documented in lattice.py (SPEC.md § 5.5) and writes the FP16 rows [N, 8] into
 * `out` (a writable buffer of exactly 16·N bytes). It returns False, writing nothing it promises,
 * for anything it does not decode: every malformed payload (the caller then runs the checked
 * Python decoder, which raises the FormatError that names the fault), an empty record, or a
 * value outside FP16's finite range (where the rounding of inf/NaN is left to NumPy). So the fast
 * path is never less strict than the Python one, and its results are tested bit for bit against
 * `Lattice._decode_reference`.
 *
 * zstd: the frames are decompressed by the system's libzstd (linked at build time, stable API
 * only; declared here because the machines carry the library but not its header) with one
 * reused decompression context. Its cost is per output byte (README: decode cost), not per frame.
 *
 * Arithmetic matches the Python decoder: codes exactly as integers (int64 for the key, int32 for
 * slots 2–7 within the fast path's limit below), values in float64 (l21 = (k·shear_step) · l22),
 * rounded to float32, then to FP16 round-to-nearest-even (F16C when the CPU has it, else the
 * portable routine below; `f32_to_f16` exposes that routine to the tests, `use_simd` switches
 * the F16C path off).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* ---- libzstd (stable API, zstd.h ≥ 1.4) ------------------------------------------------ */
typedef struct ZSTD_DCtx_s ZSTD_DCtx;
extern ZSTD_DCtx *ZSTD_createDCtx(void);
extern size_t ZSTD_decompressDCtx(ZSTD_DCtx *dctx, void *dst, size_t dst_capacity,
                                  const void *src, size_t src_size);
extern unsigned long long ZSTD_getFrameContentSize(const void *src, size_t src_size);
extern size_t ZSTD_findFrameCompressedSize(const void *src, size_t src_size);

#define HEADER_BYTES 48
#define SLOTS 8
static const int MAX_PLANES[SLOTS] = {4, 0, 4, 4, 4, 4, 4, 4};

static ZSTD_DCtx *dctx = NULL; /* one per process, used with the GIL held */

/* ---- float32 → float16, round to nearest even ------------------------------------------ */
static uint16_t f16_portable(float value) {
    uint32_t x;
    memcpy(&x, &value, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) /* inf, NaN (the decoder never passes these) */
        return sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u);
    if (abs >= 0x477ff000u) /* ≥ 65520: rounds to inf */
        return sign | 0x7c00u;
    if (abs < 0x38800000u) { /* below 2⁻¹⁴: an FP16 subnormal (or zero) */
        if (abs < 0x33000000u) /* below 2⁻²⁵: rounds to zero (2⁻²⁵ itself ties to even 0) */
            return sign;
        uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(abs >> 23); /* 14 … 24 more bits to drop than a normal */
        uint32_t kept = mant >> shift;
        uint32_t rest = mant & ((1u << shift) - 1u);
        uint32_t midpoint = 1u << (shift - 1);
        if (rest > midpoint || (rest == midpoint && (kept & 1u)))
            kept += 1;
        return sign | (uint16_t)kept;
    }
    /* normal: rebias the exponent, keep 10 mantissa bits, round on the 13 dropped */
    uint32_t h = ((abs >> 13) - ((127u - 15u) << 10));
    uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h += 1; /* a carry into the exponent is the right result (up to 0x7c00 = inf) */
    return sign | (uint16_t)h;
}

static void f16_portable_block(const float *in, uint16_t *out, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        out[i] = f16_portable(in[i]);
}

static int use_f16c = 0; /* the AVX/F16C path below, where the CPU has it */

/* [8, N] attribute planes → [N, 8] rows (uint16); SSE2 transposes 8 splats at a time */
static void transpose_rows(const uint16_t *planes, uint16_t *rows, uint32_t n) {
    uint32_t i = 0;
#if defined(__SSE2__)
    for (; i + 8 <= n; i += 8) {
        __m128i a[8], b[8], c[8];
        for (int s = 0; s < 8; s++)
            a[s] = _mm_loadu_si128((const __m128i *)(planes + (size_t)s * n + i));
        for (int s = 0; s < 4; s++) { /* interleave 16-bit, then 32-bit, then 64-bit lanes */
            b[2 * s] = _mm_unpacklo_epi16(a[2 * s], a[2 * s + 1]);
            b[2 * s + 1] = _mm_unpackhi_epi16(a[2 * s], a[2 * s + 1]);
        }
        for (int s = 0; s < 2; s++) {
            c[4 * s] = _mm_unpacklo_epi32(b[4 * s], b[4 * s + 2]);
            c[4 * s + 1] = _mm_unpackhi_epi32(b[4 * s], b[4 * s + 2]);
            c[4 * s + 2] = _mm_unpacklo_epi32(b[4 * s + 1], b[4 * s + 3]);
            c[4 * s + 3] = _mm_unpackhi_epi32(b[4 * s + 1], b[4 * s + 3]);
        }
        for (int s = 0; s < 4; s++) {
            _mm_storeu_si128((__m128i *)(rows + 8 * (size_t)(i + 2 * s)),
                             _mm_unpacklo_epi64(c[s], c[4 + s]));
            _mm_storeu_si128((__m128i *)(rows + 8 * (size_t)(i + 2 * s + 1)),
                             _mm_unpackhi_epi64(c[s], c[4 + s]));
        }
    }
#endif
    for (; i < n; i++)
        for (int s = 0; s < 8; s++)
            rows[8 * (size_t)i + s] = planes[(size_t)s * n + i];
}

#ifdef HAVE_X86
/* [8, N] float planes → [N, 8] FP16 rows in one pass: an AVX 8 × 8 transpose of 8 splats, then
 * F16C on each row */
__attribute__((target("avx,f16c")))
static void rows_f16c(const float *planes, uint16_t *rows, uint32_t n) {
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 r[8], t[8], u[8];
        for (int s = 0; s < 8; s++)
            r[s] = _mm256_loadu_ps(planes + (size_t)s * n + i);
        for (int s = 0; s < 8; s += 2) {
            t[s] = _mm256_unpacklo_ps(r[s], r[s + 1]);
            t[s + 1] = _mm256_unpackhi_ps(r[s], r[s + 1]);
        }
        for (int s = 0; s < 8; s += 4) {
            u[s] = _mm256_shuffle_ps(t[s], t[s + 2], _MM_SHUFFLE(1, 0, 1, 0));
            u[s + 1] = _mm256_shuffle_ps(t[s], t[s + 2], _MM_SHUFFLE(3, 2, 3, 2));
            u[s + 2] = _mm256_shuffle_ps(t[s + 1], t[s + 3], _MM_SHUFFLE(1, 0, 1, 0));
            u[s + 3] = _mm256_shuffle_ps(t[s + 1], t[s + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        for (int k = 0; k < 4; k++) {
            __m256 low = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);  /* splat i + k */
            __m256 high = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31); /* splat i + k + 4 */
            _mm_storeu_si128((__m128i *)(rows + 8 * (size_t)(i + k)),
                             _mm256_cvtps_ph(low, _MM_FROUND_TO_NEAREST_INT));
            _mm_storeu_si128((__m128i *)(rows + 8 * (size_t)(i + k + 4)),
                             _mm256_cvtps_ph(high, _MM_FROUND_TO_NEAREST_INT));
        }
    }
    for (; i < n; i++)
        for (int s = 0; s < 8; s++)
            rows[8 * (size_t)i + s] = f16_portable(planes[(size_t)s * n + i]);
}
#endif

/* [8, N] float planes → [N, 8] FP16 rows; `half` is [8, N] scratch for the portable path */
static void to_f16_rows(const float *planes, uint16_t *half, uint16_t *rows, uint32_t n) {
#ifdef HAVE_X86
    if (use_f16c) {
        rows_f16c(planes, rows, n);
        return;
    }
#endif
    f16_portable_block(planes, half, SLOTS * (Py_ssize_t)n);
    transpose_rows(half, rows, n);
}

/* ---- the decoder ------------------------------------------------------------------------ */
static int decode_into(const uint8_t *data, Py_ssize_t size, uint16_t *out, Py_ssize_t out_bytes,
                       const double steps[4], uint32_t max_splats) {
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    return 0; /* the header is read with memcpy: little-endian hosts only */
#endif
    if (size < HEADER_BYTES)
        return 0;
    uint32_t n, width;
    int32_t code_min[SLOTS];
    memcpy(&n, data, 4);
    memcpy(&width, data + 4, 4);
    memcpy(code_min, data + 8, 32);
    const uint8_t *counts = data + 40;
    if (n == 0 || n > max_splats || width == 0 || (Py_ssize_t)n * 16 != out_bytes)
        return 0;
    int planes = 0;
    for (int s = 0; s < SLOTS; s++) {
        if (MAX_PLANES[s] == 0 ? counts[s] != 0 : (counts[s] < 1 || counts[s] > MAX_PLANES[s]))
            return 0;
        planes += counts[s];
    }
    Py_ssize_t start = HEADER_BYTES + 4 * (Py_ssize_t)planes;
    if (size < start)
        return 0;
    uint32_t frame_size[32];
    uint64_t total = 0;
    for (int p = 0; p < planes; p++) {
        memcpy(&frame_size[p], data + HEADER_BYTES + 4 * p, 4);
        total += frame_size[p];
    }
    if (total != (uint64_t)(size - start))
        return 0;

    /* the fast path's own limit (else the Python decoder): codes of slots 2–7 in ≤ 2 planes
     * with |code_min| ≤ 2²⁸, so every code and the YCoCg-R lifting fit int32 */
    for (int s = 2; s < SLOTS; s++)
        if (counts[s] > 2 || code_min[s] > (1 << 28) || code_min[s] < -(1 << 28))
            return 0;

    uint8_t *raw = malloc((size_t)planes * n);                  /* [P, N] byte planes */
    int32_t *code = malloc(sizeof(int32_t) * 6 * (size_t)n);     /* [6, N] slots 2–7 */
    float *single = malloc(sizeof(float) * SLOTS * (size_t)n);   /* [8, N] attribute planes */
    uint16_t *half = malloc(sizeof(uint16_t) * SLOTS * (size_t)n); /* [8, N] as FP16 */
    int ok = raw && code && single && half;
    if (ok && dctx == NULL)
        ok = (dctx = ZSTD_createDCtx()) != NULL;
    const uint8_t *frame = data + start;
    for (int p = 0; ok && p < planes; p++) { /* exactly one frame, claiming exactly n bytes */
        size_t fs = frame_size[p];
        ok = ZSTD_getFrameContentSize(frame, fs) == (unsigned long long)n
             && ZSTD_findFrameCompressedSize(frame, fs) == fs
             && ZSTD_decompressDCtx(dctx, raw + (size_t)p * n, n, frame, fs) == n;
        frame += fs;
    }
    if (ok) {
        float *px = single, *py = single + n, *pl11 = single + 2 * (size_t)n,
              *pl21 = single + 3 * (size_t)n, *pl22 = single + 4 * (size_t)n,
              *pr = single + 5 * (size_t)n, *pg = single + 6 * (size_t)n,
              *pb = single + 7 * (size_t)n;
        /* key gaps (1–4 planes, most significant first), assembled plane by plane (these
         * loops vectorise), then cx, cy from their prefix sum */
        uint32_t *gap = (uint32_t *)half; /* scratch: 16·N bytes ≥ 4·N */
        for (uint32_t i = 0; i < n; i++)
            gap[i] = raw[i];
        for (int k = 1; k < counts[0]; k++)
            for (uint32_t i = 0; i < n; i++)
                gap[i] = (gap[i] << 8) | raw[(size_t)k * n + i];
        const uint8_t *plane = raw + (size_t)counts[0] * n;
        int64_t key;
        {
            const double inv_width = 1.0 / (double)width;
            key = 0;
            for (uint32_t i = 0; i < n; i++) {
                key += gap[i];
                /* key / width: a float estimate (off by at most a few, key < 2⁵³), then exact */
                int64_t cy = (int64_t)((double)key * inv_width);
                int64_t cx = key - cy * (int64_t)width;
                while (cx < 0) { cy -= 1; cx += width; }
                while (cx >= (int64_t)width) { cy += 1; cx -= width; }
                px[i] = (float)((double)(cx + code_min[0]) * steps[0]);
                py[i] = (float)((double)(cy + code_min[1]) * steps[0]);
            }
        }
        const int64_t key_last = key; /* the largest key: keys only grow */
        /* slots 2–7: one or two planes → int32 codes */
        for (int s = 2; s < SLOTS; s++) {
            int32_t *dst = code + (size_t)(s - 2) * n;
            const int32_t low = code_min[s];
            if (counts[s] == 1)
                for (uint32_t i = 0; i < n; i++)
                    dst[i] = (int32_t)plane[i] + low;
            else
                for (uint32_t i = 0; i < n; i++)
                    dst[i] = (((int32_t)plane[i] << 8) | plane[n + i]) + low;
            plane += (size_t)counts[s] * n;
        }
        const int32_t *s1 = code, *shear = code + n, *s2 = code + 2 * (size_t)n,
                      *cy_ = code + 3 * (size_t)n, *cco = code + 4 * (size_t)n,
                      *ccg = code + 5 * (size_t)n;
        /* YCoCg-R inverse in int32 (>> on a negative int is arithmetic in GCC and Clang, as
         * NumPy's), then each channel times the colour step in float64, rounded to float32 */
        const double cstep = steps[3];
        for (uint32_t i = 0; i < n; i++) {
            int32_t t = cy_[i] - (ccg[i] >> 1);
            int32_t g = ccg[i] + t;
            int32_t b = t - (cco[i] >> 1);
            pr[i] = (float)((double)(b + cco[i]) * cstep);
            pg[i] = (float)((double)g * cstep);
            pb[i] = (float)((double)b * cstep);
        }
        /* scales: exp of the ln-scale code. A one-plane stream has at most 256 codes, so each
         * exp is computed once, on first use (the same value as computing it every time) */
        double table[2][256] = {{0}};
        double l11max = 0.0, l22max = 0.0;
        int check = counts[2] != 1 || counts[4] != 1; /* 1: bound every value one by one */
        for (uint32_t i = 0; i < n; i++) {
            double l11, l22;
            if (counts[2] == 1) {
                uint32_t o = (uint32_t)(s1[i] - code_min[2]);
                l11 = table[0][o];
                if (l11 == 0.0) { /* exp > 0: zero marks an entry not yet computed */
                    l11 = table[0][o] = exp((double)s1[i] * steps[1]);
                    l11max = l11 > l11max ? l11 : l11max;
                }
            } else {
                l11 = exp((double)s1[i] * steps[1]);
            }
            if (counts[4] == 1) {
                uint32_t o = (uint32_t)(s2[i] - code_min[4]);
                l22 = table[1][o];
                if (l22 == 0.0) {
                    l22 = table[1][o] = exp((double)s2[i] * steps[1]);
                    l22max = l22 > l22max ? l22 : l22max;
                }
            } else {
                l22 = exp((double)s2[i] * steps[1]);
            }
            pl11[i] = (float)l11;
            pl21[i] = (float)(((double)shear[i] * steps[2]) * l22);
            pl22[i] = (float)l22;
        }
        /* FP16's finite range, bounded per attribute from the header where it can be (the codes
         * of a slot lie in [min, min + 256^planes)), else value by value */
        const double limit = 65000.0; /* below 65504 with room for the roundings */
        double bound[4];
        bound[0] = fmax(fabs((double)code_min[0]), fabs((double)code_min[0] + width - 1))
                   * steps[0];
        int64_t cy_last = key_last / (int64_t)width;
        bound[1] = fmax(fabs((double)code_min[1]), fabs((double)code_min[1] + cy_last))
                   * steps[0];
        double span[SLOTS];
        for (int s = 2; s < SLOTS; s++)
            span[s] = fmax(fabs((double)code_min[s]),
                           fabs((double)code_min[s] + (double)(1u << (8 * counts[s])) - 1));
        bound[2] = fmax(fmax(l11max, l22max), span[3] * steps[2] * l22max);
        bound[3] = (span[5] + span[6] + span[7]) * steps[3];
        for (int k = 0; k < 4; k++)
            check |= !(bound[k] <= limit);
        if (check) {
            int finite = 1; /* NaN fails the test */
            for (size_t j = 0; j < SLOTS * (size_t)n; j++)
                finite &= fabsf(single[j]) <= 65504.0f;
            ok = finite; /* overflow, NaN (0 × inf): left to the Python decoder */
        }
        if (ok)
            to_f16_rows(single, half, out, n);
    }
    free(raw);
    free(code);
    free(single);
    free(half);
    return ok;
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer payload, out;
    double steps[4];
    unsigned int max_splats;
    if (!PyArg_ParseTuple(args, "y*w*ddddI", &payload, &out, &steps[0], &steps[1], &steps[2],
                          &steps[3], &max_splats))
        return NULL;
    int ok = 0;
    if (PyBuffer_IsContiguous(&payload, 'C') && PyBuffer_IsContiguous(&out, 'C')) {
        /* the GIL stays held: the one decompression context is shared (a record is ~40 µs) */
        ok = decode_into(payload.buf, payload.len, out.buf, out.len, steps, max_splats);
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&out);
    return PyBool_FromLong(ok);
}

static PyObject *py_f32_to_f16(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    if (!PyArg_ParseTuple(args, "y*w*", &in, &out))
        return NULL;
    if (out.len * 2 != in.len) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "out must hold one float16 per float32 of in");
        return NULL;
    }
    f16_portable_block(in.buf, out.buf, in.len / 4);
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *py_use_simd(PyObject *self, PyObject *args) {
    int flag, previous;
    if (!PyArg_ParseTuple(args, "p", &flag))
        return NULL;
#ifdef HAVE_X86
    previous = use_f16c;
    use_f16c = flag && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#else
    previous = 0;
#endif
    return PyBool_FromLong(previous);
}

static PyMethodDef methods[] = {
    {"use_simd", py_use_simd, METH_VARARGS,
     "use_simd(flag) -> bool: F16C/AVX paths on (where the CPU has them) or off; the old setting"},
    {"decode", py_decode, METH_VARARGS,
     "decode(payload, out, position_step, scale_step, shear_step, colour_step, max_splats) -> "
     "bool: a gsformat.lattice payload into out (16·N bytes); False: not decoded here"},
    {"f32_to_f16", py_f32_to_f16, METH_VARARGS,
     "f32_to_f16(in, out): float32 → float16 by the portable routine (round to nearest even)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lattice_native",
                                    "The gsformat.lattice decoder in C (see lattice.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__lattice_native(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    use_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL)
        PyModule_AddIntConstant(m, "HAS_F16C", use_f16c);
    return m;
}
