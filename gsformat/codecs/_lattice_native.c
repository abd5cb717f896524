/* gsformat.codecs._lattice_native — the C decoder of gsformat.lattice and gsformat.lattice-rans.
 *
 * decode(payload, out, position_step, scale_step, shear_step, colour_step, max_splats,
 *        coder=0) -> bool   (coder 0: gsformat.lattice, 1: gsformat.lattice-rans)
 * decode_planes(payload, out, n, n_planes, coder) -> bool   (the entropy stage alone)
 *
 * Reads the layouts documented in lattice.py and rans.py (SPEC.md § 5.5, § 5.6) and writes the
 * FP16 rows [N, 8] into `out` (a writable buffer of exactly 16·N bytes). It returns False,
 * writing nothing it promises, for anything it does not decode: every malformed payload (the
 * caller then runs the checked Python decoder, which raises the FormatError that names the
 * fault), an empty record, or a value outside FP16's finite range (where the rounding of inf/NaN
 * is left to NumPy). So the fast path is never less strict than the Python one, and its results
 * are tested bit for bit against the Python decoders.
 *
 * Entropy stage: zstd frames, each checked to be exactly one frame claiming N bytes (the block
 * walk of gsformat/core/zstd_frame.py) and then decompressed by python-zstd's `decompress`,
 * the library the NumPy decoder uses, so that both agree on every frame, corrupt ones included
 * (two zstd releases do not); or the rANS planes of _rans.c. `decode_planes` gives the Python
 * decoder the planes when `decode` declines a payload for its arithmetic (codes beyond the fast
 * path, values beyond FP16): declining never sends a payload to the slow NumPy rANS loop.
 *
 * Arithmetic (values_to_rows, a block of splats at a time) matches the Python decoder: codes
 * exactly as integers (int64 for the key, int32 for slots 2–7 within the fast path's limit
 * below), values in float64 (l21 = (k·shear_step) · l22), rounded to float32, then to FP16
 * round-to-nearest-even (F16C when the CPU has it, else the portable routine below;
 * `f32_to_f16` exposes that routine to the tests, `use_simd` switches the SIMD paths off).
 * One call at a time: the scratch buffers and the exp table are static (the GIL is held).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_rans.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

#define HEADER_BYTES 48
#define CODER_ZSTD 0 /* gsformat.lattice: one zstd frame per plane */
#define CODER_RANS 1 /* gsformat.lattice-rans: one rANS stream (_rans.c) */
#define SLOTS 8
static const int MAX_PLANES[SLOTS] = {4, 0, 4, 4, 4, 4, 4, 4};

static PyObject *zstd_decompress = NULL; /* python-zstd's decompress (module init) */

/* One zstd frame of exactly `size` bytes claiming exactly `want` bytes: zstd_frame.frame_extent's
 * walk (RFC 8878 § 3.1.1: header, 3-byte block headers, optional checksum). */
static int zstd_one_frame(const uint8_t *f, size_t size, uint64_t want) {
    static const uint8_t magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
    if (size < 5 || memcmp(f, magic, 4) != 0)
        return 0;
    const uint8_t d = f[4];
    const int fcs = d >> 6, single = (d >> 5) & 1, checksum = (d >> 2) & 1;
    if ((d & 0x08) || (d & 3))
        return 0; /* reserved bit, dictionary */
    size_t pos = 5 + (single ? 0 : 1);
    const int len = fcs == 0 ? (single ? 1 : 0) : fcs == 1 ? 2 : fcs == 2 ? 4 : 8;
    if (len == 0 || pos + len > size)
        return 0;
    uint64_t claimed = 0;
    for (int i = 0; i < len; i++)
        claimed |= (uint64_t)f[pos + i] << (8 * i);
    if (len == 2)
        claimed += 256;
    if (claimed != want)
        return 0;
    pos += len;
    uint64_t raw_total = 0;
    for (;;) {
        if (pos + 3 > size)
            return 0;
        const uint32_t word = f[pos] | (uint32_t)f[pos + 1] << 8 | (uint32_t)f[pos + 2] << 16;
        const uint32_t kind = (word >> 1) & 3, block = word >> 3;
        if (kind == 3 || block > (128u << 10))
            return 0;
        if (kind < 2 && (raw_total += block) > claimed)
            return 0;
        pos += 3 + (kind == 1 ? 1 : block);
        if (word & 1)
            break;
    }
    return pos + (checksum ? 4 : 0) == size;
}

/* The frame's n bytes into dst through python-zstd; 0 where it fails (the error is cleared:
 * the caller declines, and the Python decoder raises the FormatError). */
static int zstd_frame_into(const uint8_t *frame, size_t size, uint8_t *dst, uint32_t n) {
    if (!zstd_one_frame(frame, size, n))
        return 0;
    PyObject *arg = PyBytes_FromStringAndSize((const char *)frame, (Py_ssize_t)size);
    PyObject *raw = arg ? PyObject_CallOneArg(zstd_decompress, arg) : NULL;
    Py_XDECREF(arg);
    int ok = raw != NULL && PyBytes_Check(raw) && PyBytes_GET_SIZE(raw) == (Py_ssize_t)n;
    if (ok)
        memcpy(dst, PyBytes_AS_STRING(raw), n);
    Py_XDECREF(raw);
    if (!ok)
        PyErr_Clear();
    return ok;
}

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
static void transpose_rows(const uint16_t *planes, uint16_t *rows, uint32_t n, size_t stride) {
    uint32_t i = 0;
#if defined(__SSE2__)
    for (; i + 8 <= n; i += 8) {
        __m128i a[8], b[8], c[8];
        for (int s = 0; s < 8; s++)
            a[s] = _mm_loadu_si128((const __m128i *)(planes + (size_t)s * stride + i));
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
            rows[8 * (size_t)i + s] = planes[(size_t)s * stride + i];
}

#ifdef HAVE_X86
/* [8, N] float planes → [N, 8] FP16 rows in one pass: an AVX 8 × 8 transpose of 8 splats, then
 * F16C on each row */
__attribute__((target("avx,f16c")))
static void rows_f16c(const float *planes, uint16_t *rows, uint32_t n, size_t stride) {
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 r[8], t[8], u[8];
        for (int s = 0; s < 8; s++)
            r[s] = _mm256_loadu_ps(planes + (size_t)s * stride + i);
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
            rows[8 * (size_t)i + s] = f16_portable(planes[(size_t)s * stride + i]);
}
#endif

/* [8, n] float planes (row stride `stride`) → [n, 8] FP16 rows; `half` is [8, stride] scratch
 * for the portable path */
static void to_f16_rows(const float *planes, size_t stride, uint16_t *half, uint16_t *rows,
                        uint32_t n) {
#ifdef HAVE_X86
    if (use_f16c) {
        rows_f16c(planes, rows, n, stride);
        return;
    }
#endif
    for (int s = 0; s < SLOTS; s++)
        f16_portable_block(planes + (size_t)s * stride, half + (size_t)s * stride, n);
    transpose_rows(half, rows, n, stride);
}

/* ---- codes → values ---------------------------------------------------------------------- */
/* exp(code · scale_step) for ln-scale codes in [−EXP_HALF, EXP_HALF), kept across records for
 * one step at a time (the GIL is held): the values exp gives each time, without its cost */
#define EXP_HALF 4096
static double exp_cache[2 * EXP_HALF]; /* 0: not computed yet (exp > 0 here) */
static double exp_cache_step = 0.0;

static int in_exp_table(int32_t low) { return low >= -EXP_HALF && low + 255 < EXP_HALF; }

/* the table from code `low` on, with entries low … low + top filled */
static const double *exp_table(int32_t low, int top, double step) {
    if (exp_cache_step != step) {
        memset(exp_cache, 0, sizeof exp_cache);
        exp_cache_step = step;
    }
    double *t = exp_cache + EXP_HALF + low;
    for (int o = 0; o <= top; o++)
        if (t[o] == 0.0)
            t[o] = exp((double)(low + o) * step);
    return t;
}

#define BLOCK 256 /* splats per pass: the block's codes and values stay in L1 */

/* Byte planes raw [P, N] → FP16 rows out [N, 8], a block of splats at a time; 0 where a value
 * may leave FP16's finite range (the caller then declines). Compiled twice, for AVX2 and for
 * the baseline (the loader picks one per CPU): apart from the key's prefix sum no loop carries
 * state, so they vectorise. */
__attribute__((target_clones("avx2", "default")))
static int values_to_rows(const uint8_t *raw, const uint8_t *counts, const int32_t *code_min,
                          uint32_t n, uint32_t width, const double steps[4], uint16_t *out) {
    const uint8_t *plane[SLOTS]; /* each slot's first (most significant) plane */
    for (int s = 0, at = 0; s < SLOTS; at += counts[s], s++)
        plane[s] = raw + (size_t)at * n;
    /* the largest key, Σ gaps (for the bounds and the int32 path) */
    int64_t key_last = 0;
    for (int k = 0; k < counts[0]; k++) {
        const uint8_t *p = plane[0] + (size_t)k * n;
        uint32_t part = 0; /* < 2^8 · 2^20 */
        for (uint32_t i = 0; i < n; i++)
            part += p[i];
        key_last += (int64_t)part << (8 * (counts[0] - 1 - k));
    }
    /* scales: exp of the ln-scale code, from a table kept across records (a one-plane stream
     * has at most 256 codes, [min, min + its largest byte]; the table computes each once) */
    const int by_table = counts[2] == 1 && counts[4] == 1
                         && in_exp_table(code_min[2]) && in_exp_table(code_min[4]);
    const double *t11 = NULL, *t22 = NULL;
    double l11max = 0.0, l22max = 0.0;
    if (by_table) {
        const uint8_t *p11 = plane[2], *p22 = plane[4];
        uint8_t top11 = 0, top22 = 0;
        for (uint32_t i = 0; i < n; i++)
            top11 = p11[i] > top11 ? p11[i] : top11;
        for (uint32_t i = 0; i < n; i++)
            top22 = p22[i] > top22 ? p22[i] : top22;
        t11 = exp_table(code_min[2], top11, steps[1]);
        t22 = exp_table(code_min[4], top22, steps[1]);
        l11max = t11[top11]; /* exp grows with the code */
        l22max = t22[top22];
    }
    /* FP16's finite range, bounded per attribute from the header where it can be (the codes of
     * a slot lie in [min, min + 256^planes)), else value by value */
    const double limit = 65000.0; /* below 65504 with room for the roundings */
    const double x_low = code_min[0], y_low = code_min[1];
    double bound[4], span[SLOTS];
    bound[0] = fmax(fabs(x_low), fabs(x_low + width - 1)) * steps[0];
    bound[1] = fmax(fabs(y_low), fabs(y_low + (double)(key_last / (int64_t)width))) * steps[0];
    for (int s = 2; s < SLOTS; s++)
        span[s] = fmax(fabs((double)code_min[s]),
                       fabs((double)code_min[s] + (double)(1u << (8 * counts[s])) - 1));
    bound[2] = fmax(fmax(l11max, l22max), span[3] * steps[2] * l22max);
    bound[3] = (span[5] + span[6] + span[7]) * steps[3];
    int check = !by_table; /* 1: bound every value one by one */
    for (int k = 0; k < 4; k++)
        check |= !(bound[k] <= limit);

    const double inv_width = 1.0 / (double)width, cstep = steps[3], kstep = steps[2];
    const int small = key_last + width < ((int64_t)1 << 31); /* int32 keys: see below */
    float value[SLOTS][BLOCK];
    uint16_t half[SLOTS][BLOCK];
    int32_t code[SLOTS][BLOCK]; /* rows 2–7, by slot */
    int64_t key[BLOCK], sum = 0;
    for (uint32_t i0 = 0; i0 < n; i0 += BLOCK) {
        const uint32_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        /* key gaps (1–4 planes, most significant first) → keys, their prefix sum, in one
         * scalar pass (a separate vectorised gap pass would stall the sum's narrow loads on its
         * wide stores) */
        const uint8_t *g0 = plane[0] + i0, *g1 = g0 + n, *g2 = g1 + n, *g3 = g2 + n;
        switch (counts[0]) {
        case 1:
            for (uint32_t j = 0; j < m; j++)
                key[j] = sum += g0[j];
            break;
        case 2:
            for (uint32_t j = 0; j < m; j++)
                key[j] = sum += (uint32_t)g0[j] << 8 | g1[j];
            break;
        case 3:
            for (uint32_t j = 0; j < m; j++)
                key[j] = sum += (uint32_t)g0[j] << 16 | (uint32_t)g1[j] << 8 | g2[j];
            break;
        default:
            for (uint32_t j = 0; j < m; j++)
                key[j] = sum += (uint32_t)g0[j] << 24 | (uint32_t)g1[j] << 16
                                | (uint32_t)g2[j] << 8 | g3[j];
        }
        /* cx = key mod Wc, cy = ⌊key / Wc⌋: a float estimate, then exact */
        if (small) { /* off by at most one: one step each way, in int32 */
            const int32_t w = (int32_t)width;
            for (uint32_t j = 0; j < m; j++) {
                int32_t k = (int32_t)key[j];
                int32_t cy = (int32_t)((double)k * inv_width);
                int32_t cx = k - cy * w;
                int32_t under = cx < 0, over = cx >= w;
                cy += over - under;
                cx += (under - over) * w;
                value[0][j] = (float)(((double)cx + x_low) * steps[0]);
                value[1][j] = (float)(((double)cy + y_low) * steps[0]);
            }
        } else { /* key < 2^52: off by at most a few */
            for (uint32_t j = 0; j < m; j++) {
                int64_t cy = (int64_t)((double)key[j] * inv_width);
                int64_t cx = key[j] - cy * (int64_t)width;
                while (cx < 0) { cy -= 1; cx += width; }
                while (cx >= (int64_t)width) { cy += 1; cx -= width; }
                value[0][j] = (float)(((double)cx + x_low) * steps[0]);
                value[1][j] = (float)(((double)cy + y_low) * steps[0]);
            }
        }
        /* slots 2–7: one or two planes → int32 codes */
        for (int s = 2; s < SLOTS; s++) {
            const uint8_t *hi = plane[s] + i0, *lo = plane[s] + n + i0;
            const int32_t low = code_min[s];
            if (counts[s] == 1)
                for (uint32_t j = 0; j < m; j++)
                    code[s][j] = (int32_t)hi[j] + low;
            else
                for (uint32_t j = 0; j < m; j++)
                    code[s][j] = (((int32_t)hi[j] << 8) | lo[j]) + low;
        }
        /* YCoCg-R inverse in int32 (>> on a negative int is arithmetic in GCC and Clang, as
         * NumPy's), then each channel times the colour step in float64, rounded to float32 */
        for (uint32_t j = 0; j < m; j++) {
            int32_t t = code[5][j] - (code[7][j] >> 1);
            int32_t g = code[7][j] + t;
            int32_t b = t - (code[6][j] >> 1);
            value[5][j] = (float)((double)(b + code[6][j]) * cstep);
            value[6][j] = (float)((double)g * cstep);
            value[7][j] = (float)((double)b * cstep);
        }
        /* l11, l22 and l21 = (k·shear_step)·l22 */
        if (by_table) {
            const uint8_t *o11 = plane[2] + i0, *o22 = plane[4] + i0;
            for (uint32_t j = 0; j < m; j++) {
                double l11 = t11[o11[j]];
                double l22 = t22[o22[j]];
                value[2][j] = (float)l11;
                value[3][j] = (float)(((double)code[3][j] * kstep) * l22);
                value[4][j] = (float)l22;
            }
        } else {
            for (uint32_t j = 0; j < m; j++) {
                double l11 = exp((double)code[2][j] * steps[1]);
                double l22 = exp((double)code[4][j] * steps[1]);
                value[2][j] = (float)l11;
                value[3][j] = (float)(((double)code[3][j] * kstep) * l22);
                value[4][j] = (float)l22;
            }
        }
        if (check) {
            int finite = 1; /* NaN fails the test */
            for (int s = 0; s < SLOTS; s++)
                for (uint32_t j = 0; j < m; j++)
                    finite &= fabsf(value[s][j]) <= 65504.0f;
            if (!finite)
                return 0; /* overflow, NaN (0 × inf): left to the Python decoder */
        }
        to_f16_rows(&value[0][0], BLOCK, &half[0][0], out + 8 * (size_t)i0, m);
    }
    return 1;
}

/* ---- the decoder ------------------------------------------------------------------------ */
/* Header fields and plane counts, checked as the Python decoder checks them; 0 otherwise. */
static int read_lattice_header(const uint8_t *data, Py_ssize_t size, uint32_t max_splats,
                               uint32_t *n, uint32_t *width, int32_t code_min[SLOTS],
                               int *planes) {
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    return 0; /* the header is read with memcpy: little-endian hosts only */
#endif
    if (size < HEADER_BYTES)
        return 0;
    memcpy(n, data, 4);
    memcpy(width, data + 4, 4);
    memcpy(code_min, data + 8, 32);
    const uint8_t *counts = data + 40;
    if (*n == 0 || *n > max_splats || *width == 0)
        return 0;
    *planes = 0;
    for (int s = 0; s < SLOTS; s++) {
        if (MAX_PLANES[s] == 0 ? counts[s] != 0 : (counts[s] < 1 || counts[s] > MAX_PLANES[s]))
            return 0;
        *planes += counts[s];
    }
    return 1;
}

/* The entropy stage: the payload after the header → byte planes raw [P, N]. */
static int planes_into(const uint8_t *data, Py_ssize_t size, uint32_t n, int planes, int coder,
                       uint8_t *raw) {
    if (coder == CODER_RANS)
        return rans_decode_planes(data + HEADER_BYTES, (size_t)(size - HEADER_BYTES), planes, n,
                                  raw);
    const Py_ssize_t start = HEADER_BYTES + 4 * (Py_ssize_t)planes;
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
    const uint8_t *frame = data + start;
    for (int p = 0; p < planes; p++) {
        if (!zstd_frame_into(frame, frame_size[p], raw + (size_t)p * n, n))
            return 0;
        frame += frame_size[p];
    }
    return 1;
}

static int decode_into(const uint8_t *data, Py_ssize_t size, uint16_t *out, Py_ssize_t out_bytes,
                       const double steps[4], uint32_t max_splats, int coder) {
    uint32_t n, width;
    int32_t code_min[SLOTS];
    int planes;
    if (!read_lattice_header(data, size, max_splats, &n, &width, code_min, &planes)
        || (Py_ssize_t)n * 16 != out_bytes)
        return 0;
    const uint8_t *counts = data + 40;
    /* the fast path's own limit (else the Python decoder, from `decode_planes`): codes of slots
     * 2–7 in ≤ 2 planes with |code_min| ≤ 2²⁸, so every code and the YCoCg-R lifting fit int32 */
    for (int s = 2; s < SLOTS; s++)
        if (counts[s] > 2 || code_min[s] > (1 << 28) || code_min[s] < -(1 << 28))
            return 0;

    /* the byte planes [P, N], in a buffer kept between calls (the GIL is held): no allocation
     * per record once it is large enough */
    static uint8_t *raw = NULL;
    static size_t raw_size = 0;
    if (raw_size < (size_t)planes * n) {
        free(raw);
        raw_size = 0;
        raw = malloc((size_t)planes * n);
        if (raw != NULL)
            raw_size = (size_t)planes * n;
    }
    return raw != NULL && planes_into(data, size, n, planes, coder, raw)
           && values_to_rows(raw, counts, code_min, n, width, steps, out);
}

static PyObject *py_decode_planes(PyObject *self, PyObject *args) {
    Py_buffer payload, out;
    unsigned int n, max_splats;
    int n_planes, coder;
    if (!PyArg_ParseTuple(args, "y*w*Iii", &payload, &out, &n, &n_planes, &coder))
        return NULL;
    max_splats = n;
    uint32_t n_read, width;
    int32_t code_min[SLOTS];
    int planes = 0;
    int ok = PyBuffer_IsContiguous(&payload, 'C') && PyBuffer_IsContiguous(&out, 'C')
             && (coder == CODER_ZSTD || coder == CODER_RANS)
             && read_lattice_header(payload.buf, payload.len, max_splats, &n_read, &width,
                                    code_min, &planes)
             && n_read == n && planes == n_planes && out.len == (Py_ssize_t)planes * n
             && planes_into(payload.buf, payload.len, n, planes, coder, out.buf);
    PyBuffer_Release(&payload);
    PyBuffer_Release(&out);
    return PyBool_FromLong(ok);
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer payload, out;
    double steps[4];
    unsigned int max_splats;
    int coder = CODER_ZSTD;
    if (!PyArg_ParseTuple(args, "y*w*ddddI|i", &payload, &out, &steps[0], &steps[1], &steps[2],
                          &steps[3], &max_splats, &coder))
        return NULL;
    int ok = 0;
    if (PyBuffer_IsContiguous(&payload, 'C') && PyBuffer_IsContiguous(&out, 'C')) {
        /* the GIL stays held: the scratch buffers are shared (a record is ~40 µs) */
        ok = (coder == CODER_ZSTD || coder == CODER_RANS)
             && decode_into(payload.buf, payload.len, out.buf, out.len, steps, max_splats, coder);
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&out);
    return PyBool_FromLong(ok);
}

/* SPEC.md § 2 on FP16 rows [N, 8]: every value finite, l11 > 0 and l22 > 0 (as uint16: a finite
 * value has an exponent field below 0x1f; a positive one is 1 … 0x7bff). One pass, no branch. */
static PyObject *py_rows_valid(PyObject *self, PyObject *arg) {
    Py_buffer rows;
    if (PyObject_GetBuffer(arg, &rows, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const uint16_t *u = rows.buf;
    const size_t n = (size_t)rows.len / 16;
    uint32_t bad = (size_t)rows.len % 16 != 0;
    for (size_t i = 0; i < 8 * n; i++)
        bad |= (u[i] & 0x7c00u) == 0x7c00u;
    for (size_t i = 0; i < n; i++)
        bad |= ((uint16_t)(u[8 * i + 2] - 1u) >= 0x7bffu) | ((uint16_t)(u[8 * i + 4] - 1u) >= 0x7bffu);
    PyBuffer_Release(&rows);
    return PyBool_FromLong(!bad);
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
    rans_use_avx2 = flag && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
    previous = 0;
#endif
    return PyBool_FromLong(previous);
}

static PyMethodDef methods[] = {
    {"use_simd", py_use_simd, METH_VARARGS,
     "use_simd(flag) -> bool: F16C/AVX and AVX2 paths on (where the CPU has them) or off; the "
     "old F16C setting"},
    {"decode", py_decode, METH_VARARGS,
     "decode(payload, out, position_step, scale_step, shear_step, colour_step, max_splats, "
     "coder=0) -> "
     "bool: a gsformat.lattice payload into out (16·N bytes); False: not decoded here"},
    {"decode_planes", py_decode_planes, METH_VARARGS,
     "decode_planes(payload, out, n, n_planes, coder) -> bool: the entropy stage alone, the "
     "byte planes [P, N] into out; False: malformed"},
    {"rows_valid", py_rows_valid, METH_O,
     "rows_valid(rows) -> bool: FP16 rows [N, 8] all finite with l11 > 0 and l22 > 0"},
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
    rans_init(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"));
#else
    rans_init(0);
#endif
    PyObject *zstd_module = PyImport_ImportModule("zstd");
    if (zstd_module == NULL)
        return NULL;
    zstd_decompress = PyObject_GetAttrString(zstd_module, "decompress");
    Py_DECREF(zstd_module);
    if (zstd_decompress == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL)
        PyModule_AddIntConstant(m, "HAS_F16C", use_f16c);
    if (m != NULL)
        PyModule_AddIntConstant(m, "HAS_AVX2", rans_use_avx2);
    return m;
}
