/* The fitter's native tile engine: forward render, loss, ∂L/∂I and backward of the sum renderer
 * (SPEC.md § 2.1) in one pass per 16×16 screen tile, threads over the tiles of a whole batch.
 *
 * Everything is in pixel units: a splat is (x, y, l11, l21, l22, r, g, b), pixel (i, j) has its
 * centre at (j + ½, i + ½). With z₁ = dx / l11, z₂ = (dy − l21·z₁) / l22 the Gaussian factor is
 * G = exp(−½ (z₁² + z₂²)).
 *
 * Footprint: a splat covers the pixels whose centres lie inside its ellipse at k σ,
 * z₁² + z₂² = dᵀΣ⁻¹d ≤ k², so G ≥ exp(−k²/2) wherever it is cut (0.2 % of |c| at k = 3.5). The
 * ellipse's bounding box, |dx| ≤ k·√Σxx = k·|l11| and |dy| ≤ k·√Σyy = k·√(l21² + l22²)
 * (`footprint`, Python's `tiles.footprint` is the same), bins splats into tiles; per entry only
 * the tile rows the ellipse reaches over the tile's columns are evaluated (`entry_rows`).
 *
 * Per call (`loss_grad`):
 *   1. binning, in blocks of splats of one image (any thread): each splat's box → the
 *      tiles it touches → (tile, splat) entries in CSR order, splats in index order within a
 *      tile (a block counts its entries per tile; prefix sums, one thread; each block writes
 *      its entries at its own offsets), and each splat's entries listed in tile order;
 *   2. per tile, any thread (a shared counter hands out tiles of every image of the batch):
 *      forward: render = Σ G·c over the tile's entries, G of each row kept in the thread's
 *      cache; residual r = render − target, the tile's Σ r² and ∂L/∂I = scale · r; backward:
 *      for each entry (G from the cache, z₁ and z₂ recomputed) the colour gradient Σ G·∂L/∂I
 *      and, with A = G · Σ_c c_c ∂L/∂I_c, the five moments Σ A z₁, Σ A z₂, Σ A z₁², Σ A z₁z₂,
 *      Σ A z₂² → the geometry gradient, written to the entry's own slot (no atomics);
 *   3. per block (any thread): each splat's gradient, the sum of its entries' in tile order;
 *      per image, tiles' Σ r² in tile order — so the result does not depend on the number of
 *      threads.
 * A tile row is evaluated as one 16-lane vector per entry (lanes outside the ellipse give 0;
 * one AVX-512 register, two AVX2 ones): a fixed trip count the compiler vectorises (selects,
 * not branches: with -fno-trapping-math GCC if-converts them). The helpers are always inlined
 * so that each target clone of `do_tile` vectorises them for its own instruction set. This is
 * the structure of a CUDA tile kernel (gsplat's): one block per tile, one thread per pixel,
 * `fitting/cuda_tiles.py` translates it.
 *
 * Reference twins: `gsformat.fitting.tiles._render_boxes` (values) and `_loss_grad_boxes`
 * (gradients, PyTorch autograd), dense and obvious; tests/test_tiles.py compares them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
#include <pthread.h>
#include <stdatomic.h>
#define HAVE_THREADS 1
#endif

#define TILE 16
#define MAX_THREADS 256

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(NO_CLONES)
/* AVX2+FMA and AVX-512 versions besides the baseline, chosen at load by the CPU */
#define KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL
#endif
#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))  /* into each clone of do_tile */
#else
#define INLINE static inline
#endif

typedef struct {
    float x, y, il11, l21, il22, r, g, b;  /* centre, 1/l11, l21, 1/l22, colour */
    float l11, l22, k2;                    /* and k² of the footprint */
    float k, al22, zy;                     /* k, |l22|, l21·k / √(l21² + l22²) */
} Splat;

typedef struct { int32_t x0, x1, y0, y1; } Box;  /* pixel ranges [x0, x1) × [y0, y1); empty ok */

/* exp(x) for x ≤ 0 without branches (vectorisable): x = n·ln2 + r, |r| ≤ ln2/2, a degree-6
 * polynomial for eʳ (relative error < 2·10⁻⁷), 2ⁿ by the exponent bits; below −87 it is 0. */
INLINE float exp_nonpos(float x) {
    const float lo = -87.0f;
    const float clamped = x > lo ? x : lo;
    const float t = clamped * 1.44269504088896341f;
    const float n = (t + 12582912.0f) - 12582912.0f;  /* round to nearest (1.5·2²³ trick) */
    const float r = clamped - n * 0.693145751953125f - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale;  /* 2ⁿ from its exponent bits */
    scale.i = ((int32_t)n + 127) << 23;
    const float value = p * scale.f;
    return x >= lo ? value : 0.0f;
}

static int finite_splat(const float *p) {
    for (int c = 0; c < 8; c++)
        if (!isfinite(p[c]))
            return 0;
    return p[2] != 0.0f && p[4] != 0.0f;
}

/* The footprint of a pixel-unit splat on an H×W canvas (file comment). Non-finite or degenerate
 * splats cover nothing. */
INLINE Box footprint(const float *p, int height, int width, float k_sigma) {
    Box box = {0, 0, 0, 0};
    if (!finite_splat(p))
        return box;
    double ex = k_sigma * fabs((double)p[2]);
    double ey = k_sigma * sqrt((double)p[3] * p[3] + (double)p[4] * p[4]);
    double x0 = ceil(p[0] - ex - 0.5), x1 = floor(p[0] + ex - 0.5) + 1;
    double y0 = ceil(p[1] - ey - 0.5), y1 = floor(p[1] + ey - 0.5) + 1;
    x0 = x0 < 0 ? 0 : x0;
    y0 = y0 < 0 ? 0 : y0;
    x1 = x1 > width ? width : x1;
    y1 = y1 > height ? height : y1;
    if (x1 <= x0 || y1 <= y0)
        return box;
    box.x0 = (int32_t)x0, box.x1 = (int32_t)x1, box.y0 = (int32_t)y0, box.y1 = (int32_t)y1;
    return box;
}

#define BLOCK 256  /* splats of one image binned and reduced together, at least */

typedef enum { PREPARE, FILL, TILES, REDUCE } Phase;

/* One batch's binning and buffers. Entry e of image b: splat `entry_splat[e]`, tiles in order.
 * Splats are binned in blocks (one image's, in index order) so that threads can bin them: each
 * block counts its entries per tile, then writes them at its own offsets. How many blocks does
 * not change any result (entries stay in splat order, sums in tile order). */
typedef struct {
    int batch, n, height, width, tiles_x, tiles_y, tiles;  /* tiles per image */
    int blocks_per_image, block_size;
    float k_sigma, grad_scale;
    const float *params;   /* [B, N, 8] */
    const float *target;   /* [B, H, W, 3] or NULL (render only) */
    float *render;         /* [B, H, W, 3] or NULL */
    float *grad;           /* [B, N, 8] or NULL */
    Splat *splats;         /* [B, N] */
    Box *boxes;            /* [B, N] */
    int64_t *block_tiles;  /* [B · blocks, T] a block's entries per tile, then its first one */
    int64_t *splat_first;  /* [B·N + 1] a splat's entries in `splat_entry` */
    int64_t *splat_entry;  /* [E] each splat's entries, its tiles in order */
    int64_t *tile_start;   /* [B·T + 1] entries of tile t: tile_start[t] … tile_start[t + 1] */
    int32_t *entry_splat;  /* [E] */
    float *entry_grad;     /* [E, 8] */
    double *tile_sse;      /* [B·T] */
#ifdef HAVE_THREADS
    atomic_long next[4];   /* per phase: the next item (block or tile) a thread takes */
    pthread_mutex_t lock;  /* `meet` */
    pthread_cond_t met;
    int threads, waiting;
    long round;
#else
    long next[4];
#endif
    volatile int failed;   /* out of memory: a thread's cache or the entries */
} Batch;

/* The splats [*first, *end) of block `block` (index in the batch). */
static void block_splats(const Batch *w, int64_t block, int64_t *first, int64_t *end) {
    const int64_t image = block / w->blocks_per_image, part = block % w->blocks_per_image;
    *first = image * w->n + part * w->block_size;
    *end = *first + w->block_size < (image + 1) * w->n ? *first + w->block_size
                                                        : (image + 1) * w->n;
}

/* A block's splats: boxes, the engine's form (`Splat`), tiles per splat (into splat_first[s +
 * 1]) and the block's entries per tile. */
KERNEL static void prepare_block(Batch *w, int64_t block) {
    int64_t first, end;
    block_splats(w, block, &first, &end);
    int64_t *count = w->block_tiles + block * w->tiles;
    for (int64_t s = first; s < end; s++) {
        const float *p = w->params + 8 * s;
        Box box = footprint(p, w->height, w->width, w->k_sigma);
        w->boxes[s] = box;
        Splat sp = {p[0], p[1], 0, p[3], 0, p[5], p[6], p[7], p[2], p[4],
                    w->k_sigma * w->k_sigma, 0, 0, 0};
        int64_t tiles = 0;
        if (box.x1 > box.x0) {
            const float a = p[3] * p[3] + p[4] * p[4];
            sp.il11 = 1.0f / p[2];
            sp.il22 = 1.0f / p[4];
            sp.k = w->k_sigma;
            sp.al22 = fabsf(p[4]);
            sp.zy = p[3] * w->k_sigma / sqrtf(a);
            for (int ty = box.y0 / TILE; ty <= (box.y1 - 1) / TILE; ty++)
                for (int tx = box.x0 / TILE; tx <= (box.x1 - 1) / TILE; tx++, tiles++)
                    count[ty * w->tiles_x + tx]++;
        }
        w->splats[s] = sp;
        w->splat_first[s + 1] = tiles;
    }
}

/* Between PREPARE and FILL, one thread: the prefix sums — each tile's first entry, each block's
 * first entry in each tile (blocks of an image in order), each splat's first in splat_entry. */
static int plan_entries(Batch *w) {
    const int64_t bn = (int64_t)w->batch * w->n, bt = (int64_t)w->batch * w->tiles;
    w->splat_first[0] = 0;
    for (int64_t s = 0; s < bn; s++)
        w->splat_first[s + 1] += w->splat_first[s];
    int64_t at = 0;
    for (int64_t b = 0; b < w->batch; b++)
        for (int t = 0; t < w->tiles; t++) {
            w->tile_start[b * w->tiles + t] = at;
            for (int64_t k = 0; k < w->blocks_per_image; k++) {
                int64_t *count = w->block_tiles + (b * w->blocks_per_image + k) * w->tiles + t;
                const int64_t here = *count;
                *count = at;
                at += here;
            }
        }
    w->tile_start[bt] = at;
    const size_t entries = (size_t)(at ? at : 1);
    w->entry_splat = malloc(entries * sizeof(int32_t));
    w->splat_entry = malloc(entries * sizeof(int64_t));
    w->entry_grad = malloc(entries * 8 * sizeof(float));
    return w->entry_splat != NULL && w->splat_entry != NULL && w->entry_grad != NULL;
}

/* A block's entries into their tiles (splat order within a tile) and into splat_entry. */
static void fill_block(Batch *w, int64_t block) {
    int64_t first, end;
    block_splats(w, block, &first, &end);
    int64_t *next = w->block_tiles + block * w->tiles;
    for (int64_t s = first; s < end; s++) {
        Box box = w->boxes[s];
        int64_t *mine = w->splat_entry + w->splat_first[s];
        if (box.x1 <= box.x0)
            continue;
        for (int ty = box.y0 / TILE; ty <= (box.y1 - 1) / TILE; ty++)
            for (int tx = box.x0 / TILE; tx <= (box.x1 - 1) / TILE; tx++) {
                const int64_t e = next[ty * w->tiles_x + tx]++;
                w->entry_splat[e] = (int32_t)(s % w->n);
                *mine++ = e;
            }
    }
}

/* A block's splats' gradients: the sum of their entries', tiles in order (whatever thread). */
KERNEL static void reduce_block(Batch *w, int64_t block) {
    int64_t first, end;
    block_splats(w, block, &first, &end);
    for (int64_t s = first; s < end; s++) {
        float sum[8] = {0};
        for (int64_t k = w->splat_first[s]; k < w->splat_first[s + 1]; k++) {
            const float *restrict src = w->entry_grad + 8 * w->splat_entry[k];
            for (int c = 0; c < 8; c++)
                sum[c] += src[c];
        }
        memcpy(w->grad + 8 * s, sum, sizeof sum);
    }
}

/* G on the 16 lanes of a tile row, 0 outside the ellipse z₁² + z₂² ≤ k²; z₁, z₂ too. */
INLINE void row_gaussian(const Splat *restrict sp, float dy, const float *restrict dx,
                         float *restrict g, float *restrict z1, float *restrict z2) {
    const float il11 = sp->il11, l21 = sp->l21, il22 = sp->il22, k2 = sp->k2;
    for (int l = 0; l < TILE; l++) {
        const float a = dx[l] * il11;
        const float b = (dy - l21 * a) * il22;
        const float q = a * a + b * b;
        const float value = exp_nonpos(-0.5f * q);
        g[l] = q <= k2 ? value : 0.0f;
        z1[l] = a;
        z2[l] = b;
    }
}

/* min and max as selects (fminf and fmaxf are library calls: their NaN rule is not minss's) */
INLINE float min_of(float a, float b) { return a < b ? a : b; }
INLINE float max_of(float a, float b) { return a > b ? a : b; }

/* The tile rows an entry reaches, [*a, *b): the rows of its box whose centre lies in the
 * ellipse's y-extent over the tile's columns. At z₁ = dx / l11 the ellipse spans
 * dy = l21·z₁ ± |l22|·√(k² − z₁²); over the columns' z₁ interval the lowest dy is at
 * z₁ = −l21·k / √(l21² + l22²) (where its derivative is 0), clamped into the interval, the
 * highest at +l21·k / √(…). Conservative by 0.01 px (and rows between lane centres are kept):
 * the mask q ≤ k² in `row_gaussian` decides, this only skips rows surely outside. */
INLINE void entry_rows(const Splat *sp, Box box, int tx0, int ty0, int rows, int cols,
                       int *a, int *b) {
    const float k = sp->k, il11 = sp->il11, l21 = sp->l21, al22 = sp->al22;
    const float z0 = ((float)tx0 + 0.49f - sp->x) * il11;
    const float z1 = ((float)(tx0 + cols) - 0.49f - sp->x) * il11;
    const float lo = max_of(min_of(z0, z1), -k), hi = min_of(max_of(z0, z1), k);
    *a = *b = 0;
    if (!(lo <= hi))
        return;
    const float up = min_of(max_of(-sp->zy, lo), hi), down = min_of(max_of(sp->zy, lo), hi);
    const float top = l21 * up - al22 * sqrtf(max_of(sp->k2 - up * up, 0.0f));
    const float bottom = l21 * down + al22 * sqrtf(max_of(sp->k2 - down * down, 0.0f));
    const float centre = sp->y - (float)ty0 - 0.5f;  /* row ly's dy: ly − centre */
    const float first = ceilf(centre + top - 0.01f), last = floorf(centre + bottom + 0.01f);
    const int ly0 = box.y0 > ty0 ? box.y0 - ty0 : 0;
    const int ly1 = box.y1 - ty0 < rows ? box.y1 - ty0 : rows;
    const float start = min_of(max_of(first, (float)ly0), (float)ly1);  /* into [ly0, ly1] */
    const float end = min_of(max_of(last + 1.0f, start), (float)ly1);
    *a = (int)start;
    *b = (int)end;
}

/* Forward for one entry: its G·c added to the tile's render `acc`, G of each row it reaches
 * kept in `kept` (TILE floats a row, `stride` apart: 0 overwrites one row). Returns those rows,
 * [a, b) as a | b << 8. */
INLINE uint32_t forward_entry(const Splat *restrict sp, Box box, int tx0, int ty0, int rows,
                              int cols, float (*restrict acc)[TILE * TILE],
                              float *restrict kept, int stride) {
    float dx[TILE], z1[TILE], z2[TILE];
    int a, b;
    entry_rows(sp, box, tx0, ty0, rows, cols, &a, &b);
    const float red = sp->r, green = sp->g, blue = sp->b;
    for (int l = 0; l < TILE; l++)
        dx[l] = (float)(tx0 + l) + 0.5f - sp->x;
    for (int ly = a; ly < b; ly++) {
        const float *g = kept;
        row_gaussian(sp, (float)(ty0 + ly) + 0.5f - sp->y, dx, kept, z1, z2);
        kept += stride;
        float *restrict r = acc[0] + ly * TILE, *restrict gr = acc[1] + ly * TILE,
                        *restrict bl = acc[2] + ly * TILE;
        for (int l = 0; l < TILE; l++) {
            r[l] += g[l] * red;
            gr[l] += g[l] * green;
            bl[l] += g[l] * blue;
        }
    }
    return (uint32_t)a | (uint32_t)(b > a ? b : a) << 8;
}

/* The sums of the 16 lanes of each of 8 rows, pairwise. GCC: by whole-vector shuffles (23
 * operations; lane by lane, the 8 chains of 15 dependent adds cost ~10 % of the engine). */
#if defined(__GNUC__) && !defined(__clang__) && TILE == 16
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

/* a macro, not a function: a function returning a vector would warn about the ABI */
#define pair_sum(a, b, even, odd) (__builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd))

INLINE void lane_sums(const float (*restrict s)[TILE], float *restrict sum) {
    const i16 h0 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
              h1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
              q0 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
              q1 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31},
              p0 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},
              p1 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31},
              e0 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},
              e1 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    v16 v[8];
    memcpy(v, s, sizeof v);
    const v16 w01 = pair_sum(v[0], v[1], h0, h1), w23 = pair_sum(v[2], v[3], h0, h1),
              w45 = pair_sum(v[4], v[5], h0, h1), w67 = pair_sum(v[6], v[7], h0, h1);
    const v16 x0 = pair_sum(w01, w23, q0, q1), x1 = pair_sum(w45, w67, q0, q1);
    const v16 y = pair_sum(x0, x1, p0, p1);        /* lanes 2k, 2k + 1: halves of row k's sum */
    const v16 z = pair_sum(y, y, e0, e1);          /* lane k: row k's sum */
    memcpy(sum, &z, 8 * sizeof(float));
}
#else
INLINE void lane_sums(const float (*restrict s)[TILE], float *restrict sum) {
    for (int k = 0; k < 8; k++) {
        float t[TILE];
        memcpy(t, s[k], sizeof t);
        for (int half = TILE / 2; half >= 1; half /= 2)
            for (int l = 0; l < half; l++)
                t[l] += t[l + half];
        sum[k] = t[0];
    }
}
#endif

/* Backward for one entry, ∂L/∂I in `dl`, G of its rows `live` (as forward_entry returns them)
 * from `kept` (z₁, z₂ recomputed:
 * three operations, against a load each): its gradient into `out` (8 floats). */
INLINE void backward_entry(const Splat *restrict sp, uint32_t live, const float *restrict kept,
                           int tx0, int ty0, const float (*restrict dl)[TILE * TILE],
                           float *restrict out) {
    float dx[TILE];
    float s[8][TILE];  /* per lane: Σ A z₁, A z₂, A z₁², A z₁z₂, A z₂², G·∂L/∂I (r, g, b) */
    const float red = sp->r, green = sp->g, blue = sp->b;
    const float il11 = sp->il11, l21 = sp->l21, il22 = sp->il22;
    for (int k = 0; k < 8; k++)  /* not memset: GCC makes that `rep stos`, slow to start */
        for (int l = 0; l < TILE; l++)
            s[k][l] = 0.0f;
    for (int l = 0; l < TILE; l++)
        dx[l] = ((float)(tx0 + l) + 0.5f - sp->x) * il11;
    for (int ly = (int)(live & 0xff); ly < (int)(live >> 8); ly++) {
        const float dy = (float)(ty0 + ly) + 0.5f - sp->y;
        const float *g = kept;
        kept += TILE;
        const float *dr = dl[0] + ly * TILE, *dg = dl[1] + ly * TILE, *db = dl[2] + ly * TILE;
        for (int l = 0; l < TILE; l++) {
            const float z1 = dx[l], z2 = (dy - l21 * z1) * il22;
            const float a = g[l] * (red * dr[l] + green * dg[l] + blue * db[l]);
            const float az1 = a * z1, az2 = a * z2;
            s[0][l] += az1;
            s[1][l] += az2;
            s[2][l] += az1 * z1;
            s[3][l] += az1 * z2;
            s[4][l] += az2 * z2;
            s[5][l] += g[l] * dr[l];
            s[6][l] += g[l] * dg[l];
            s[7][l] += g[l] * db[l];
        }
    }
    float sum[8];
    lane_sums(s, sum);
    const float shear = l21 * il22;
    out[0] = (sum[0] - shear * sum[1]) * il11;   /* ∂L/∂x  */
    out[1] = sum[1] * il22;                      /* ∂L/∂y  */
    out[2] = (sum[2] - shear * sum[3]) * il11;   /* ∂L/∂l11 */
    out[3] = sum[3] * il22;                      /* ∂L/∂l21 */
    out[4] = sum[4] * il22;                      /* ∂L/∂l22 */
    out[5] = sum[5], out[6] = sum[6], out[7] = sum[7];
}

/* The tile's render into `render`, and with a target its Σ r² (returned) and ∂L/∂I = scale · r
 * in place of the render in `acc`; lanes off the canvas get 0. Σ r² in double, per lane and
 * channel, then summed in a fixed order. */
INLINE double tile_residual(Batch *w, int64_t pixel0, int rows, int cols,
                            float (*restrict acc)[TILE * TILE]) {
    if (w->render != NULL)
        for (int ly = 0; ly < rows; ly++) {
            float *restrict out = w->render + 3 * (pixel0 + (int64_t)ly * w->width);
            for (int lx = 0; lx < cols; lx++)
                for (int c = 0; c < 3; c++)
                    out[3 * lx + c] = acc[c][ly * TILE + lx];
        }
    if (w->target == NULL)
        return 0.0;
    float target[3][TILE * TILE];  /* planar, 0 off the canvas */
    if (rows < TILE || cols < TILE)  /* else every value is set below */
        memset(target, 0, sizeof target);
    for (int ly = 0; ly < rows; ly++) {
        const float *restrict in = w->target + 3 * (pixel0 + (int64_t)ly * w->width);
        for (int lx = 0; lx < cols; lx++)
            for (int c = 0; c < 3; c++)
                target[c][ly * TILE + lx] = in[3 * lx + c];
    }
    double lanes[3][TILE] = {{0}};
    const float scale = w->grad_scale;
    for (int ly = 0; ly < TILE; ly++) {
        const float inside = ly < rows ? 1.0f : 0.0f;
        for (int c = 0; c < 3; c++)
            for (int lx = 0; lx < TILE; lx++) {
                const int at = ly * TILE + lx;
                const float mask = lx < cols ? inside : 0.0f;
                const float residual = (acc[c][at] - target[c][at]) * mask;
                lanes[c][lx] += (double)residual * residual;
                acc[c][at] = scale * residual;
            }
    }
    double sse = 0.0;
    for (int c = 0; c < 3; c++)
        for (int lx = 0; lx < TILE; lx++)
            sse += lanes[c][lx];
    return sse;
}

/* A thread's store of what the forward pass keeps for the backward pass: per entry its rows,
 * and G of each of those rows. */
typedef struct { uint32_t *live; float *g; size_t entries; } Cache;

/* One tile: forward over its entries, loss, then backward, each entry's gradient into its own
 * slot. `cache` (NULL: render only) holds room for the tile's entries. */
KERNEL static void do_tile(Batch *w, int64_t tile, Cache *cache) {
    const int image = (int)(tile / w->tiles), t = (int)(tile % w->tiles);
    const int tx0 = (t % w->tiles_x) * TILE, ty0 = (t / w->tiles_x) * TILE;
    const int rows = w->height - ty0 < TILE ? w->height - ty0 : TILE;
    const int cols = w->width - tx0 < TILE ? w->width - tx0 : TILE;
    const Splat *splats = w->splats + (int64_t)image * w->n;
    const Box *boxes = w->boxes + (int64_t)image * w->n;
    const int32_t *entry_splat = w->entry_splat;
    const int64_t first = w->tile_start[tile], last = w->tile_start[tile + 1];
    float acc[3][TILE * TILE];  /* the tile's render, then ∂L/∂I, per channel */
    float scratch[TILE];
    float *kept = cache != NULL ? cache->g : scratch;
    const int stride = cache != NULL ? TILE : 0;
    memset(acc, 0, sizeof acc);
    for (int64_t e = first; e < last; e++) {
        const int32_t s = entry_splat[e];
        const uint32_t live = forward_entry(splats + s, boxes[s], tx0, ty0, rows, cols, acc,
                                            kept, stride);
        if (cache != NULL) {
            cache->live[e - first] = live;
            kept += stride * (int)((live >> 8) - (live & 0xff));
        }
    }
    const int64_t pixel0 = ((int64_t)image * w->height + ty0) * w->width + tx0;
    w->tile_sse[tile] = tile_residual(w, pixel0, rows, cols, acc);
    if (cache == NULL)
        return;
    kept = cache->g;
    for (int64_t e = first; e < last; e++) {
        const uint32_t live = cache->live[e - first];
        backward_entry(splats + entry_splat[e], live, kept, tx0, ty0,
                       (const float (*)[TILE * TILE])acc, w->entry_grad + 8 * e);
        kept += TILE * (int)((live >> 8) - (live & 0xff));
    }
}

/* Room in `cache` for `entries` entries; 0 where it could not be had. */
static int reserve(Cache *cache, size_t entries) {
    if (entries <= cache->entries)
        return 1;
    free(cache->live), free(cache->g);
    cache->entries = entries + entries / 2;
    cache->live = malloc(cache->entries * sizeof(uint32_t));
    cache->g = malloc(cache->entries * TILE * TILE * sizeof(float));
    if (cache->live == NULL || cache->g == NULL) {
        free(cache->live), free(cache->g);
        cache->live = NULL, cache->g = NULL, cache->entries = 0;
        return 0;
    }
    return 1;
}

/* The item `item` of `phase`; 0 where the thread could not get its cache. */
static int run_item(Batch *w, Phase phase, long item, Cache *cache) {
    if (phase == PREPARE) {
        prepare_block(w, item);
    } else if (phase == FILL) {
        fill_block(w, item);
    } else if (phase == REDUCE) {
        reduce_block(w, item);
    } else {
        const size_t entries = (size_t)(w->tile_start[item + 1] - w->tile_start[item]);
        if (w->target != NULL && !reserve(cache, entries))
            return 0;
        do_tile(w, item, w->target != NULL ? cache : NULL);
    }
    return 1;
}

/* A phase's items, any thread taking the next one. */
static void run_phase(Batch *w, Phase phase, long items, Cache *cache) {
    while (!w->failed) {
#ifdef HAVE_THREADS
        const long item = atomic_fetch_add(&w->next[phase], 1);
#else
        const long item = w->next[phase]++;
#endif
        if (item >= items)
            return;
        if (!run_item(w, phase, item, cache))
            w->failed = 1;
    }
}

/* The threads of a call wait here for each other between phases (one set of threads a call:
 * starting threads per phase cost ~25 µs each); the last to come runs `between` first. */
static void meet(Batch *w, void (*between)(Batch *)) {
#ifdef HAVE_THREADS
    pthread_mutex_lock(&w->lock);
    const long round = w->round;
    if (++w->waiting == w->threads) {
        if (between != NULL)
            between(w);
        w->waiting = 0;
        w->round++;
        pthread_cond_broadcast(&w->met);
    } else {
        while (w->round == round)
            pthread_cond_wait(&w->met, &w->lock);
    }
    pthread_mutex_unlock(&w->lock);
#else
    if (between != NULL)
        between(w);
#endif
}

static void plan(Batch *w) {
    if (!w->failed && !plan_entries(w))
        w->failed = 1;
}

static void *worker(void *arg) {
    Batch *w = arg;
    const long blocks = (long)w->batch * w->blocks_per_image, tiles = (long)w->batch * w->tiles;
    Cache cache = {NULL, NULL, 0};
    run_phase(w, PREPARE, blocks, &cache);
    meet(w, plan);
    run_phase(w, FILL, blocks, &cache);
    meet(w, NULL);
    run_phase(w, TILES, tiles, &cache);
    meet(w, NULL);
    if (w->grad != NULL)
        run_phase(w, REDUCE, blocks, &cache);
    free(cache.live), free(cache.g);
    return NULL;
}

/* Blocks of at least BLOCK splats, a few per thread, and no more per image than splats per
 * tile (each block counts entries for every tile of its image: memory O(splats)). */
static void blocks(Batch *w, int threads) {
    int count = (w->n + BLOCK - 1) / BLOCK;
    count = count < 2 * threads ? count : 2 * threads;
    count = count < w->n / w->tiles ? count : w->n / w->tiles;
    count = count > 1 ? count : 1;
    w->block_size = (w->n + count - 1) / count;
    w->blocks_per_image = (w->n + w->block_size - 1) / w->block_size;
}

/* The threads: this one and up to threads − 1 more (no more than there are tiles). */
static void run_threads(Batch *w, int threads) {
#ifdef HAVE_THREADS
    const long tiles = (long)w->batch * w->tiles;
    pthread_t ids[MAX_THREADS];
    int started = 0;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->met, NULL);
    pthread_mutex_lock(&w->lock);  /* until `threads` is known: none may meet before */
    for (int i = 1; i < threads && i < tiles && i < MAX_THREADS; i++)
        if (pthread_create(&ids[started], NULL, worker, w) == 0)
            started++;
    w->threads = started + 1;
    pthread_mutex_unlock(&w->lock);
    worker(w);
    for (int i = 0; i < started; i++)
        pthread_join(ids[i], NULL);
    pthread_cond_destroy(&w->met);
    pthread_mutex_destroy(&w->lock);
#else
    (void)threads;
    worker(w);
#endif
}

/* The whole call: binning, tiles, gradients per splat; tiles' Σ r² per image in tile order. */
static int run_batch(Batch *w, double *sse, int threads) {
    const int64_t bn = (int64_t)w->batch * w->n, bt = (int64_t)w->batch * w->tiles;
    const long blocks = (long)w->batch * w->blocks_per_image;
    w->splats = malloc((size_t)bn * sizeof(Splat));
    w->boxes = malloc((size_t)bn * sizeof(Box));
    w->tile_sse = calloc((size_t)bt, sizeof(double));
    w->block_tiles = calloc((size_t)blocks * w->tiles, sizeof(int64_t));
    w->splat_first = malloc((size_t)(bn + 1) * sizeof(int64_t));
    w->tile_start = malloc((size_t)(bt + 1) * sizeof(int64_t));
    if (w->splats == NULL || w->boxes == NULL || w->tile_sse == NULL || w->block_tiles == NULL
        || w->splat_first == NULL || w->tile_start == NULL)
        return 0;
    run_threads(w, threads);
    if (w->failed)
        return 0;
    for (int b = 0; sse != NULL && b < w->batch; b++) {
        double total = 0.0;
        for (int t = 0; t < w->tiles; t++)
            total += w->tile_sse[(int64_t)b * w->tiles + t];
        sse[b] = total;
    }
    return 1;
}

static int check_buffer(Py_buffer *view, Py_ssize_t bytes, const char *name) {
    if (view->buf == NULL)
        return 1;
    if (!PyBuffer_IsContiguous(view, 'C') || view->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous buffer of %zd bytes, got %zd",
                     name, bytes, view->len);
        return 0;
    }
    return 1;
}

/* run(params, target|None, render|None, grad|None, sse|None, batch, n, height, width, k_sigma,
 *     grad_scale, threads) */
static PyObject *py_run(PyObject *self, PyObject *args) {
    Py_buffer params = {0}, target = {0}, render = {0}, grad = {0}, sse = {0};
    int batch, n, height, width, threads;
    float k_sigma, grad_scale;
    if (!PyArg_ParseTuple(args, "y*z*z*z*z*iiiiffi", &params, &target, &render, &grad, &sse,
                          &batch, &n, &height, &width, &k_sigma, &grad_scale, &threads))
        return NULL;
    PyObject *result = NULL;
    Batch w;
    memset(&w, 0, sizeof w);
    const Py_ssize_t pixels = (Py_ssize_t)batch * height * width;
    if (batch < 1 || n < 1 || height < 1 || width < 1 || !(k_sigma > 0)) {
        PyErr_SetString(PyExc_ValueError, "batch, n, height, width and k_sigma must be positive");
        goto done;
    }
    if (!check_buffer(&params, (Py_ssize_t)batch * n * 32, "params")
        || !check_buffer(&target, pixels * 12, "target")
        || !check_buffer(&render, pixels * 12, "render")
        || !check_buffer(&grad, (Py_ssize_t)batch * n * 32, "grad")
        || !check_buffer(&sse, (Py_ssize_t)batch * 8, "sse"))
        goto done;
    if (grad.buf != NULL && target.buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "grad needs a target");
        goto done;
    }
    w.batch = batch, w.n = n, w.height = height, w.width = width;
    w.tiles_x = (width + TILE - 1) / TILE, w.tiles_y = (height + TILE - 1) / TILE;
    w.tiles = w.tiles_x * w.tiles_y;
    w.k_sigma = k_sigma, w.grad_scale = grad_scale;
    w.params = params.buf, w.target = target.buf, w.render = render.buf, w.grad = grad.buf;
    threads = threads < 1 ? 1 : threads;
    blocks(&w, threads);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    ok = run_batch(&w, sse.buf, threads);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    free(w.splats), free(w.boxes), free(w.tile_sse), free(w.tile_start);
    free(w.block_tiles), free(w.splat_first), free(w.splat_entry);
    free(w.entry_splat), free(w.entry_grad);
    PyBuffer_Release(&params);
    if (target.buf) PyBuffer_Release(&target);
    if (render.buf) PyBuffer_Release(&render);
    if (grad.buf) PyBuffer_Release(&grad);
    if (sse.buf) PyBuffer_Release(&sse);
    return result;
}

/* footprints(params, out, count, height, width, k_sigma): int32 boxes [count, 4] (x0, x1, y0, y1) */
static PyObject *py_footprints(PyObject *self, PyObject *args) {
    Py_buffer params, out;
    int count, height, width;
    float k_sigma;
    if (!PyArg_ParseTuple(args, "y*w*iiif", &params, &out, &count, &height, &width, &k_sigma))
        return NULL;
    PyObject *result = NULL;
    if (count < 0 || !check_buffer(&params, (Py_ssize_t)count * 32, "params")
        || !check_buffer(&out, (Py_ssize_t)count * 16, "out"))
        goto done;
    for (int s = 0; s < count; s++)
        ((Box *)out.buf)[s] = footprint((const float *)params.buf + 8 * s, height, width, k_sigma);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&params);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"run", py_run, METH_VARARGS,
     "run(params, target, render, grad, sse, batch, n, height, width, k_sigma, grad_scale, "
     "threads): float32 params [B, N, 8] (pixel units) → render [B, H, W, 3], and with target "
     "[B, H, W, 3]: sse [B] (float64 Σ(render − target)²) and grad [B, N, 8] of "
     "grad_scale/2 · sse; None skips an output"},
    {"footprints", py_footprints, METH_VARARGS,
     "footprints(params, out, count, height, width, k_sigma): int32 boxes [count, 4]"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tiles",
                                    "The fitter's tile engine in C (see tiles.py).", -1, methods};

PyMODINIT_FUNC PyInit__tiles(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL)
        PyModule_AddIntConstant(m, "TILE", TILE);
    return m;
}
