/* The rANS byte-plane decoder of gsformat.lattice-rans (layout: rans.py, SPEC.md § 5.6).
 *
 * rans_decode_planes() fills `out` [P, N] from the bytes after the lattice header, or returns 0
 * (writing nothing it promises) for anything malformed; the caller then runs the NumPy twin
 * `rans.decode`, which raises the error that names the fault. Tested bit for bit against it.
 *
 * A plane's slot table packs, per slot, symbol << 24 | (slot − C_s) << 12 | (f_s − 1). Per
 * symbol: one lookup, a multiply, and a branch-free conditional 16-bit read (the branch would be
 * taken at random). Where the CPU has AVX2, the 32 lanes go as four vectors of eight, one per
 * word stream (so no vector waits on another's read position): a gather, a multiply, and the
 * lanes that need a word take their stream's next ones in lane order (a permutation from a table
 * indexed by the lanes' mask) — the same reads as the scalar loop.
 */
#include "_rans.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RANS_X86 1
#endif

#define LANES 32
#define STREAMS 4 /* lanes 8j … 8j + 7 read stream j */
#define STATE_LOW 0x10000u
#define RAW_MODE 0x80
#define MAX_T 48

int rans_use_avx2 = 0;

typedef struct {
    int raw;             /* 1: the plane is stored as it is, at `bytes` */
    const uint8_t *bytes;
    int scale_bits;      /* rANS: M = 2^scale_bits */
    int max_sym;
    uint16_t freq[256];  /* rANS: f_s (0: absent), s ≤ max_sym */
} plane_table;

static const uint32_t T_Q8[4] = {256, 304, 362, 431};

/* 64 bits of the table from byte `at` on (zeros past `size`) */
static inline uint64_t bits_at(const uint8_t *p, size_t size, size_t at) {
    uint64_t v = 0;
    if (at + 8 <= size) {
        memcpy(&v, p + at, 8);
    } else {
        for (size_t i = 0; at + i < size; i++)
            v |= (uint64_t)p[at + i] << (8 * i);
    }
    return v;
}

/* One plane's mode and table at data[*pos]; 0 when malformed */
static int parse_table(const uint8_t *data, size_t size, size_t *pos, uint32_t n,
                       plane_table *t) {
    if (*pos >= size)
        return 0;
    unsigned mode = data[*pos];
    if (mode == RAW_MODE) {
        if (size - *pos - 1 < n)
            return 0;
        t->raw = 1;
        t->bytes = data + *pos + 1;
        *pos += 1 + (size_t)n;
        return 1;
    }
    unsigned k = mode & 3, st = ((mode >> 2) & 3) + 2, b = ((mode >> 4) & 3) + 10;
    if ((mode & 0xC0) || st > 4 || b > 12 || size - *pos < 2)
        return 0;
    t->raw = 0;
    t->scale_bits = (int)b;
    t->max_sym = data[*pos + 1];
    const uint8_t *bits = data + *pos + 2;
    const size_t nbytes = size - *pos - 2, nbits = 8 * nbytes;
    const unsigned q_max = 1 + MAX_T / st;
    size_t at = 0;      /* bits read */
    uint64_t win = 0;   /* the next bits, least significant first; `avail` of them are real */
    unsigned avail = 0; /* (refilled below 54: a code has at most 2·25 + 1 + 3 bits) */
    int q = 0;
    uint64_t weight[256], total = 0;
    for (int s = 0; s <= t->max_sym; s++) {
        if (avail < 54) {
            win = bits_at(bits, nbytes, at >> 3) >> (at & 7);
            avail = 64 - (unsigned)(at & 7);
        }
        unsigned unary = win == ~0ull ? 64 : (unsigned)__builtin_ctzll(~win);
        if (unary > 2 * q_max || at + unary + 1 + k > nbits)
            return 0;
        const unsigned len = unary + 1 + k;
        uint32_t v = (unary << k) | (uint32_t)((win >> (unary + 1)) & ((1u << k) - 1));
        win >>= len;
        avail -= len;
        at += len;
        q += (v & 1) ? -(int)((v + 1) >> 1) : (int)(v >> 1);
        if (q < 0 || q > (int)q_max)
            return 0;
        /* branch-free (present and absent symbols alternate at random in a sparse tail) */
        const unsigned tq = (unsigned)(q - (q > 0)) * st;
        weight[s] = (((uint64_t)T_Q8[tq & 3] << (tq >> 2)) >> 8) & (0 - (uint64_t)(q > 0));
        total += weight[s];
    }
    size_t used = (at + 7) / 8;
    if (at % 8 && (bits[at / 8] >> (at % 8)))  /* padding bits are zero */
        return 0;
    if (weight[t->max_sym] == 0)
        return 0;
    /* frequencies: max(1, ⌊w·M / Σw⌋), then the first largest takes the rest */
    const int64_t m = (int64_t)1 << b;
    int64_t sum = 0, f[256];
    int top = 0;
    const double inv_total = 1.0 / (double)total;
    for (int s = 0; s <= t->max_sym; s++) {
        /* ⌊w·M / Σw⌋: a float estimate (off by at most one: the operands are < 2^35), made exact
         * by one integer step each way; then at least 1 for a present symbol, 0 for an absent */
        const int64_t x = (int64_t)(weight[s] * (uint64_t)m);
        int64_t q_s = (int64_t)((double)x * inv_total);
        const int64_t r = x - q_s * (int64_t)total;
        q_s += (r >= (int64_t)total) - (r < 0);
        q_s += q_s < 1;
        f[s] = weight[s] ? q_s : 0;
        sum += f[s];
        top = f[s] > f[top] ? s : top;
    }
    f[top] += m - sum;
    if (f[top] < 1)
        return 0;
    for (int s = 0; s <= t->max_sym; s++)
        t->freq[s] = (uint16_t)f[s];
    *pos += 2 + used;
    return 1;
}

/* slot → symbol << 24 | (slot − C_s) << 12 | (f_s − 1), four at a time (an overshoot lands on
 * later symbols' slots, which overwrite it, or on the 8 entries of padding) */
static void fill_slots(const plane_table *t, uint32_t *slots) {
    uint32_t c = 0;
    for (int s = 0; s <= t->max_sym; s++) {
        const uint32_t f = t->freq[s], base = (uint32_t)s << 24 | (f - 1);
#if defined(__SSE2__)
        __m128i v = _mm_add_epi32(_mm_set1_epi32((int)base), _mm_setr_epi32(0, 1 << 12, 2 << 12,
                                                                             3 << 12));
        for (uint32_t j = 0; j < f; j += 4) {
            _mm_storeu_si128((__m128i *)(slots + c + j), v);
            v = _mm_add_epi32(v, _mm_set1_epi32(4 << 12));
        }
#else
        for (uint32_t j = 0; j < f; j++)
            slots[c + j] = base + (j << 12);
#endif
        c += f;
    }
}

static inline uint32_t read16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* symbol i of the plane on lane state *x; 0 if a needed word is missing */
static inline int step_checked(uint32_t *x, const uint32_t *slots, uint32_t b, uint8_t *dst,
                               const uint8_t **w, const uint8_t *end) {
    uint32_t e = slots[*x & ((1u << b) - 1)];
    *dst = (uint8_t)(e >> 24);
    uint32_t v = ((e & 0xFFFu) + 1u) * (*x >> b) + ((e >> 12) & 0xFFFu);
    uint32_t need = v < STATE_LOW; /* arithmetic, not a branch: it is taken at random */
    if (end - *w < 2) {
        if (need)
            return 0;
        *x = v;
        return 1;
    }
    *x = (v << (need << 4)) | (read16(*w) & (0u - need));
    *w += 2 * need;
    return 1;
}

#ifdef RANS_X86
static int32_t perm_lut[256][8] __attribute__((aligned(32))); /* mask of lanes needing a word → each lane's word index */

void rans_init(int avx2) {
    for (int m = 0; m < 256; m++) {
        int c = 0;
        for (int k = 0; k < 8; k++)
            perm_lut[m][k] = (m >> k) & 1 ? c++ : 0;
    }
    rans_use_avx2 = avx2;
}

/* One vector of 8 lanes: decode a symbol each, refill from stream pointer wp, store 8 bytes */
#define VECTOR_STEP(X, wp, out8)                                                              \
    do {                                                                                      \
        __m256i e = _mm256_i32gather_epi32((const int *)slots, _mm256_and_si256(X, mask), 4); \
        __m256i f = _mm256_add_epi32(_mm256_and_si256(e, low12), one);                        \
        __m256i bias = _mm256_and_si256(_mm256_srli_epi32(e, 12), low12);                     \
        __m256i xv = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(X, shift)), bias); \
        __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(xv, 16), zero);                   \
        unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));                 \
        __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(wp)));       \
        words = _mm256_permutevar8x32_epi32(words,                                            \
                                            _mm256_load_si256((const __m256i *)perm_lut[m])); \
        X = _mm256_blendv_epi8(xv, _mm256_or_si256(_mm256_slli_epi32(xv, 16), words), need);  \
        (wp) += 2 * __builtin_popcount(m);                                                    \
        __m256i s = _mm256_srli_epi32(e, 24); /* symbols: each entry's top byte → 8 bytes */  \
        s = _mm256_packus_epi16(_mm256_packus_epi32(s, s), zero);                             \
        _mm_storel_epi64((__m128i *)(out8), _mm_unpacklo_epi32(_mm256_castsi256_si128(s),     \
                                                               _mm256_extracti128_si256(s, 1))); \
    } while (0)

/* Whole rounds of 32 symbols (lanes 0–31; vector v reads stream v) while every stream has
 * ≥ 16 bytes left (a vector reads at most 8 words, and its 16-byte load stays in bounds);
 * returns the rounds done */
__attribute__((target("avx2,popcnt")))
static uint32_t rounds_avx2(uint32_t *x, const uint32_t *slots, uint32_t b, uint8_t *dst,
                            uint32_t rounds, const uint8_t **w, const uint8_t *const *end) {
    __m256i X0 = _mm256_loadu_si256((const __m256i *)x),
            X1 = _mm256_loadu_si256((const __m256i *)(x + 8)),
            X2 = _mm256_loadu_si256((const __m256i *)(x + 16)),
            X3 = _mm256_loadu_si256((const __m256i *)(x + 24));
    const __m256i mask = _mm256_set1_epi32((int)((1u << b) - 1));
    const __m256i low12 = _mm256_set1_epi32(0xFFF), one = _mm256_set1_epi32(1);
    const __m256i zero = _mm256_setzero_si256();
    const __m128i shift = _mm_cvtsi32_si128((int)b);
    const uint8_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
    const uint8_t *e0 = end[0] - 16, *e1 = end[1] - 16, *e2 = end[2] - 16, *e3 = end[3] - 16;
    uint32_t r = 0;
    for (; r < rounds && w0 <= e0 && w1 <= e1 && w2 <= e2 && w3 <= e3; r++) {
        uint8_t *o = dst + 32 * (size_t)r;
        VECTOR_STEP(X0, w0, o);
        VECTOR_STEP(X1, w1, o + 8);
        VECTOR_STEP(X2, w2, o + 16);
        VECTOR_STEP(X3, w3, o + 24);
    }
    _mm256_storeu_si256((__m256i *)x, X0);
    _mm256_storeu_si256((__m256i *)(x + 8), X1);
    _mm256_storeu_si256((__m256i *)(x + 16), X2);
    _mm256_storeu_si256((__m256i *)(x + 24), X3);
    w[0] = w0, w[1] = w1, w[2] = w2, w[3] = w3;
    return r;
}
#else
void rans_init(int avx2) { rans_use_avx2 = 0; }
#endif

int rans_decode_planes(const uint8_t *data, size_t size, int n_planes, uint32_t n,
                       uint8_t *out) {
    static plane_table tables[32]; /* one call at a time: the caller holds the GIL */
    static uint32_t slots[4096 + 8];
    if (n_planes < 1 || n_planes > 32 || n == 0)
        return 0;
    size_t pos = 0;
    for (int p = 0; p < n_planes; p++)
        if (!parse_table(data, size, &pos, n, &tables[p]))
            return 0;
    const size_t head = 4 * LANES + 4 * (STREAMS - 1);
    if (size - pos < head)
        return 0;
    uint32_t x[LANES];
    for (int l = 0; l < LANES; l++) {
        memcpy(&x[l], data + pos + 4 * l, 4);
        if (x[l] < STATE_LOW)
            return 0;
    }
    const uint8_t *w[STREAMS], *end[STREAMS];
    uint64_t at = pos + head;
    for (int j = 0; j < STREAMS; j++) {
        uint32_t words;
        if (j < STREAMS - 1)
            memcpy(&words, data + pos + 4 * LANES + 4 * j, 4);
        else if ((size - at) % 2)
            return 0;
        else
            words = (uint32_t)((size - at) / 2);
        if (at + 2 * (uint64_t)words > size)
            return 0;
        w[j] = data + at;
        end[j] = data + at + 2 * (uint64_t)words;
        at += 2 * (uint64_t)words;
    }
    uint64_t g = 0; /* symbols decoded so far: symbol g uses lane g mod 32 */
    for (int p = 0; p < n_planes; p++) {
        uint8_t *dst = out + (size_t)p * n;
        const plane_table *t = &tables[p];
        if (t->raw) {
            memcpy(dst, t->bytes, n);
            continue;
        }
        fill_slots(t, slots);
        const uint32_t b = (uint32_t)t->scale_bits;
        uint32_t i = 0;
        for (; i < n && (g + i) % LANES; i++) { /* up to lane 0 */
            const int l = (int)((g + i) % LANES), j = l / (LANES / STREAMS);
            if (!step_checked(&x[l], slots, b, dst + i, &w[j], end[j]))
                return 0;
        }
#ifdef RANS_X86
        if (rans_use_avx2)
            i += LANES * rounds_avx2(x, slots, b, dst + i, (n - i) / LANES, w, end);
#endif
        for (; i < n; i++) {
            const int l = (int)((g + i) % LANES), j = l / (LANES / STREAMS);
            if (!step_checked(&x[l], slots, b, dst + i, &w[j], end[j]))
                return 0;
        }
        g += n;
    }
    for (int j = 0; j < STREAMS; j++)
        if (w[j] != end[j])
            return 0;
    for (int l = 0; l < LANES; l++)
        if (x[l] != STATE_LOW)
            return 0;
    return 1;
}
