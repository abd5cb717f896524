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
 * (`footprint`, Python's `tiles.footprint` is the same), bins splats into tiles; per row only
 * the 8-lane chunks that the ellipse reaches are evaluated (`row_spans`).
 *
 * Per call (`loss_grad`):
 *   1. per image: each splat's box → the tiles it touches → (tile, splat) entries in CSR order,
 *      splats in index order within a tile (binning; serial per image, O(N · tiles per splat));
 *   2. per tile, any thread (a shared counter hands out tiles of every image of the batch):
 *      forward: render = Σ G·c over the tile's entries; residual r = render − target, the
 *      tile's Σ r² and ∂L/∂I = scale · r; backward: for each entry the colour gradient Σ G·∂L/∂I
 *      and, with A = G · Σ_c c_c ∂L/∂I_c, the five moments Σ A z₁, Σ A z₂, Σ A z₁², Σ A z₁z₂,
 *      Σ A z₂² → the geometry gradient, written to the entry's own slot (no atomics);
 *   3. per image: entries' gradients summed into their splats in entry order, tiles' Σ r² in
 *      tile order — so the result does not depend on the number of threads.
 * Rows of a tile are evaluated 8 lanes at a time (lanes outside the ellipse give 0): a fixed
 * trip count the compiler vectorises (selects, not branches: with -fno-trapping-math GCC
 * if-converts them for AVX2 as well as AVX-512). This is the structure of a CUDA tile kernel
 * (gsplat's): one block per tile, one thread per pixel, `fitting/cuda_tiles.py` translates it.
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
#define CHUNK 8   /* lanes evaluated together: a tile row is two chunks */
#define MAX_THREADS 256

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(NO_CLONES)
/* AVX2+FMA and AVX-512 versions besides the baseline, chosen at load by the CPU */
#define KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL
#endif

typedef struct {
    float x, y, il11, l21, il22, r, g, b;  /* centre, 1/l11, l21, 1/l22, colour */
    float l11, l22, k2;                    /* and k² of the footprint */
    float k2a, al22, ia;                   /* k²·(l21² + l22²), |l22|, 1 / (l21² + l22²) */
} Splat;

typedef struct { int32_t x0, x1, y0, y1; } Box;  /* pixel ranges [x0, x1) × [y0, y1); empty ok */

/* A thread's store of what the forward pass computes for each entry of a tile — its row spans,
 * then G, z₁, z₂ of every chunk — read back in the same order by the backward pass. */
typedef struct { float *values; size_t chunks; } Cache;

/* exp(x) for x ≤ 0 without branches (vectorisable): x = n·ln2 + r, |r| ≤ ln2/2, a degree-6
 * polynomial for eʳ (relative error < 2·10⁻⁷), 2ⁿ by the exponent bits; below −87 it is 0. */
static inline float exp_nonpos(float x) {
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
static Box footprint(const float *p, int height, int width, float k_sigma) {
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

/* One batch's binning and buffers. Entry e of image b: splat `entry_splat[e]`, tiles in order. */
typedef struct {
    int batch, n, height, width, tiles_x, tiles_y, tiles;  /* tiles per image */
    float k_sigma, grad_scale;
    const float *params;   /* [B, N, 8] */
    const float *target;   /* [B, H, W, 3] or NULL (render only) */
    float *render;         /* [B, H, W, 3] or NULL */
    float *grad;           /* [B, N, 8] or NULL */
    Splat *splats;         /* [B, N] */
    Box *boxes;            /* [B, N] */
    int64_t *tile_start;   /* [B·T + 1] entries of tile t: tile_start[t] … tile_start[t + 1] */
    int32_t *entry_splat;  /* [E] */
    float *entry_grad;     /* [E, 8] */
    double *tile_sse;      /* [B·T] */
#ifdef HAVE_THREADS
    atomic_long next_tile;
#else
    long next_tile;
#endif
    volatile int failed;   /* a thread could not allocate its cache */
} Batch;

/* Boxes and binning for every image: fills splats, boxes, tile_start, entry_splat. */
static int bin_batch(Batch *w) {
    const int64_t bn = (int64_t)w->batch * w->n, bt = (int64_t)w->batch * w->tiles;
    int64_t *count = calloc((size_t)bt + 1, sizeof(int64_t));
    if (count == NULL)
        return 0;
    for (int64_t s = 0; s < bn; s++) {
        const float *p = w->params + 8 * s;
        Box box = footprint(p, w->height, w->width, w->k_sigma);
        w->boxes[s] = box;
        Splat sp = {p[0], p[1], 0, p[3], 0, p[5], p[6], p[7], p[2], p[4],
                    w->k_sigma * w->k_sigma, 0, 0, 0};
        if (box.x1 > box.x0) {
            const float a = p[3] * p[3] + p[4] * p[4];
            sp.il11 = 1.0f / p[2];
            sp.il22 = 1.0f / p[4];
            sp.k2a = sp.k2 * a;
            sp.al22 = fabsf(p[4]);
            sp.ia = 1.0f / a;
        }
        w->splats[s] = sp;
        if (box.x1 <= box.x0)
            continue;
        const int64_t base = (s / w->n) * w->tiles;
        for (int ty = box.y0 / TILE; ty <= (box.y1 - 1) / TILE; ty++)
            for (int tx = box.x0 / TILE; tx <= (box.x1 - 1) / TILE; tx++)
                count[base + (int64_t)ty * w->tiles_x + tx + 1]++;
    }
    for (int64_t t = 0; t < bt; t++)
        count[t + 1] += count[t];
    const int64_t entries = count[bt];
    w->tile_start = count;
    w->entry_splat = malloc((size_t)(entries ? entries : 1) * sizeof(int32_t));
    w->entry_grad = malloc((size_t)(entries ? entries : 1) * 8 * sizeof(float));
    int64_t *fill = malloc((size_t)(bt ? bt : 1) * sizeof(int64_t));
    if (w->entry_splat == NULL || w->entry_grad == NULL || fill == NULL) {
        free(fill);
        return 0;
    }
    memcpy(fill, count, (size_t)bt * sizeof(int64_t));
    for (int64_t s = 0; s < bn; s++) {  /* in splat order: entries of a tile stay sorted */
        Box box = w->boxes[s];
        if (box.x1 <= box.x0)
            continue;
        const int64_t base = (s / w->n) * w->tiles;
        for (int ty = box.y0 / TILE; ty <= (box.y1 - 1) / TILE; ty++)
            for (int tx = box.x0 / TILE; tx <= (box.x1 - 1) / TILE; tx++)
                w->entry_splat[fill[base + (int64_t)ty * w->tiles_x + tx]++] = (int32_t)(s % w->n);
    }
    free(fill);
    return 1;
}

/* The lanes of each tile row inside the ellipse, [lo[ly], hi[ly]] (empty: hi < lo), all rows
 * at once (vectorised): for fixed dy, z₁² + z₂² ≤ k² is a quadratic in u = dx / l11 whose
 * roots are u = (dy·l21 ± |l22|·√(k²(l21² + l22²) − dy²)) / (l21² + l22²). Conservative by
 * 0.01 px: the mask q ≤ k² in `chunk_gaussian` decides, spans only skip lanes surely outside. */
static inline void row_spans(const Splat *sp, int tx0, int ty0, int cols,
                             int32_t *restrict lo, int32_t *restrict hi) {
    const float y0 = (float)ty0 + 0.5f - sp->y, x = sp->x - (float)tx0, k2a = sp->k2a;
    const float al22 = sp->al22, l21 = sp->l21, scale = sp->l11 * sp->ia, last = (float)(cols - 1);
    float first[TILE], final[TILE];
    for (int ly = 0; ly < TILE; ly++) {
        const float dy = y0 + (float)ly;
        const float disc = k2a - dy * dy;
        const float root = al22 * sqrtf(disc > 0.0f ? disc : 0.0f), mid = dy * l21;
        const float u0 = scale * (mid - root), u1 = scale * (mid + root);
        const float start = ceilf(x + (u0 < u1 ? u0 : u1) - 0.51f);
        const float end = floorf(x + (u0 < u1 ? u1 : u0) - 0.49f);
        first[ly] = start > 0.0f ? start : 0.0f;
        final[ly] = disc < 0.0f ? -1.0f : end < last ? end : last;
    }
    for (int ly = 0; ly < TILE; ly++) {
        lo[ly] = (int32_t)first[ly];
        hi[ly] = (int32_t)final[ly];
    }
}

/* G on 8 lanes of a row, 0 outside the ellipse z₁² + z₂² ≤ k²; z₁, z₂ kept for backward */
static inline void chunk_gaussian(const Splat *sp, float dy, const float *restrict dx,
                                  float *restrict g, float *restrict z1, float *restrict z2) {
    const float il11 = sp->il11, l21 = sp->l21, il22 = sp->il22, k2 = sp->k2;
    for (int l = 0; l < CHUNK; l++) {
        const float a = dx[l] * il11;
        const float b = (dy - l21 * a) * il22;
        const float q = a * a + b * b;
        const float value = exp_nonpos(-0.5f * q);
        g[l] = q <= k2 ? value : 0.0f;
        z1[l] = a;
        z2[l] = b;
    }
}

/* The rows of the tile the splat's box covers, [*ly0, *ly1) (tile-local). */
static inline void box_rows(Box box, int ty0, int rows, int *ly0, int *ly1) {
    *ly0 = box.y0 > ty0 ? box.y0 - ty0 : 0;
    *ly1 = box.y1 - ty0 < rows ? box.y1 - ty0 : rows;
}

KERNEL static void do_tile(Batch *w, int64_t tile, float *cache) {
    const int image = (int)(tile / w->tiles), t = (int)(tile % w->tiles);
    const int tx0 = (t % w->tiles_x) * TILE, ty0 = (t / w->tiles_x) * TILE;
    const int rows = w->height - ty0 < TILE ? w->height - ty0 : TILE;
    const int cols = w->width - tx0 < TILE ? w->width - tx0 : TILE;
    const Splat *splats = w->splats + (int64_t)image * w->n;
    const Box *boxes = w->boxes + (int64_t)image * w->n;
    const int64_t first = w->tile_start[tile], last = w->tile_start[tile + 1];
    float acc[3][TILE * TILE];  /* the tile's render, then ∂L/∂I, per channel */
    float scratch[3 * CHUNK], dx[TILE];
    float *cached = cache != NULL ? cache : scratch;  /* forward: where G, z₁, z₂ go */
    int ly0, ly1;
    int32_t lo[TILE], hi[TILE];
    memset(acc, 0, sizeof acc);

    /* forward: Σ G·c over the tile's entries */
    for (int64_t e = first; e < last; e++) {
        const Splat *sp = splats + w->entry_splat[e];
        box_rows(boxes[w->entry_splat[e]], ty0, rows, &ly0, &ly1);
        for (int l = 0; l < TILE; l++)
            dx[l] = (float)(tx0 + l) + 0.5f - sp->x;
        row_spans(sp, tx0, ty0, cols, lo, hi);
        if (cache != NULL) {  /* the spans too: the backward pass reads them back */
            memcpy(cached, lo, sizeof lo);
            memcpy(cached + TILE, hi, sizeof hi);
            cached += 2 * TILE;
        }
        for (int ly = ly0; ly < ly1; ly++) {
            const float dy = (float)(ty0 + ly) + 0.5f - sp->y;
            if (hi[ly] < lo[ly])
                continue;
            for (int c = lo[ly] / CHUNK; c <= hi[ly] / CHUNK; c++) {
                float *g = cached, *z1 = cached + CHUNK, *z2 = cached + 2 * CHUNK;
                if (cache != NULL)
                    cached += 3 * CHUNK;
                chunk_gaussian(sp, dy, dx + c * CHUNK, g, z1, z2);
                const int at = ly * TILE + c * CHUNK;
                for (int l = 0; l < CHUNK; l++) {
                    acc[0][at + l] += g[l] * sp->r;
                    acc[1][at + l] += g[l] * sp->g;
                    acc[2][at + l] += g[l] * sp->b;
                }
            }
        }
    }
    const int64_t pixel0 = ((int64_t)image * w->height + ty0) * w->width + tx0;
    if (w->render != NULL)
        for (int ly = 0; ly < rows; ly++)
            for (int lx = 0; lx < cols; lx++)
                for (int c = 0; c < 3; c++)
                    w->render[3 * (pixel0 + (int64_t)ly * w->width + lx) + c] = acc[c][ly * TILE + lx];
    if (w->target == NULL)
        return;

    /* loss and ∂L/∂I = scale · (render − target); lanes off the canvas stay 0 */
    double sse = 0.0;
    for (int ly = 0; ly < TILE; ly++)
        for (int lx = 0; lx < TILE; lx++) {
            const int inside = ly < rows && lx < cols;
            for (int c = 0; c < 3; c++) {
                float residual = inside ? acc[c][ly * TILE + lx]
                                          - w->target[3 * (pixel0 + (int64_t)ly * w->width + lx) + c]
                                        : 0.0f;
                sse += (double)residual * residual;
                acc[c][ly * TILE + lx] = w->grad_scale * residual;
            }
        }
    w->tile_sse[tile] = sse;

    /* backward: each entry's gradient into its own slot, G, z₁, z₂ from the cache */
    cached = cache;
    for (int64_t e = first; e < last; e++) {
        const Splat *sp = splats + w->entry_splat[e];
        box_rows(boxes[w->entry_splat[e]], ty0, rows, &ly0, &ly1);
        float s[8][CHUNK];  /* per lane: Σ A z₁, A z₂, A z₁², A z₁z₂, A z₂², G·∂L/∂I (r, g, b) */
        memset(s, 0, sizeof s);
        memcpy(lo, cached, sizeof lo);  /* the spans the forward pass cached, then its chunks */
        memcpy(hi, cached + TILE, sizeof hi);
        cached += 2 * TILE;
        for (int ly = ly0; ly < ly1; ly++) {
            if (hi[ly] < lo[ly])
                continue;
            for (int c = lo[ly] / CHUNK; c <= hi[ly] / CHUNK; c++) {
                const float *g = cached, *z1 = cached + CHUNK, *z2 = cached + 2 * CHUNK;
                cached += 3 * CHUNK;
                const int at = ly * TILE + c * CHUNK;
                for (int l = 0; l < CHUNK; l++) {
                    const float dr = acc[0][at + l], dg = acc[1][at + l], db = acc[2][at + l];
                    const float a = g[l] * (sp->r * dr + sp->g * dg + sp->b * db);
                    const float az1 = a * z1[l], az2 = a * z2[l];
                    s[0][l] += az1;
                    s[1][l] += az2;
                    s[2][l] += az1 * z1[l];
                    s[3][l] += az1 * z2[l];
                    s[4][l] += az2 * z2[l];
                    s[5][l] += g[l] * dr;
                    s[6][l] += g[l] * dg;
                    s[7][l] += g[l] * db;
                }
            }
        }
        float sum[8] = {0};
        for (int k = 0; k < 8; k++)
            for (int l = 0; l < CHUNK; l++)
                sum[k] += s[k][l];
        const float shear = sp->l21 * sp->il22;
        float *out = w->entry_grad + 8 * e;
        out[0] = (sum[0] - shear * sum[1]) * sp->il11;   /* ∂L/∂x  */
        out[1] = sum[1] * sp->il22;                      /* ∂L/∂y  */
        out[2] = (sum[2] - shear * sum[3]) * sp->il11;   /* ∂L/∂l11 */
        out[3] = sum[3] * sp->il22;                      /* ∂L/∂l21 */
        out[4] = sum[4] * sp->il22;                      /* ∂L/∂l22 */
        out[5] = sum[5], out[6] = sum[6], out[7] = sum[7];
    }
}

static void *worker(void *arg) {
    Batch *w = arg;
    const long total = (long)w->batch * w->tiles;
    Cache cache = {NULL, 0};
    for (;;) {
#ifdef HAVE_THREADS
        long tile = atomic_fetch_add(&w->next_tile, 1);
#else
        long tile = w->next_tile++;
#endif
        if (tile >= total)
            break;
        /* per entry its row spans (two chunks' room) and at most two chunks per row */
        const size_t need = (size_t)(w->tile_start[tile + 1] - w->tile_start[tile]) *
                            (TILE * 2 + 2);
        if (w->target != NULL && need > cache.chunks) {
            free(cache.values);
            cache.chunks = need + need / 2;
            cache.values = malloc(cache.chunks * 3 * CHUNK * sizeof(float));
            if (cache.values == NULL) {
                cache.chunks = 0;
                w->failed = 1;
                break;
            }
        }
        do_tile(w, tile, cache.values);
    }
    free(cache.values);
    return NULL;
}

static void run_tiles(Batch *w, int threads) {
#ifdef HAVE_THREADS
    pthread_t ids[MAX_THREADS];
    int started = 0;
    atomic_store(&w->next_tile, 0);
    for (int i = 1; i < threads && i < MAX_THREADS; i++)
        if (pthread_create(&ids[started], NULL, worker, w) == 0)
            started++;
    worker(w);
    for (int i = 0; i < started; i++)
        pthread_join(ids[i], NULL);
#else
    (void)threads;
    w->next_tile = 0;
    worker(w);
#endif
}

/* Entries' gradients into their splats and tiles' Σ r² into their images, in a fixed order. */
static void reduce(Batch *w, double *sse) {
    if (w->grad != NULL)
        memset(w->grad, 0, (size_t)w->batch * w->n * 8 * sizeof(float));
    for (int b = 0; b < w->batch; b++) {
        double total = 0.0;
        for (int t = 0; t < w->tiles; t++) {
            const int64_t tile = (int64_t)b * w->tiles + t;
            total += w->tile_sse[tile];
            if (w->grad == NULL)
                continue;
            for (int64_t e = w->tile_start[tile]; e < w->tile_start[tile + 1]; e++) {
                float *dst = w->grad + 8 * ((int64_t)b * w->n + w->entry_splat[e]);
                const float *src = w->entry_grad + 8 * e;
                for (int c = 0; c < 8; c++)
                    dst[c] += src[c];
            }
        }
        if (sse != NULL)
            sse[b] = total;
    }
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
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    w.splats = malloc((size_t)batch * n * sizeof(Splat));
    w.boxes = malloc((size_t)batch * n * sizeof(Box));
    w.tile_sse = calloc((size_t)batch * w.tiles, sizeof(double));
    ok = w.splats != NULL && w.boxes != NULL && w.tile_sse != NULL && bin_batch(&w);
    if (ok) {
        run_tiles(&w, threads);
        ok = !w.failed;
    }
    if (ok)
        reduce(&w, sse.buf);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    free(w.splats), free(w.boxes), free(w.tile_sse), free(w.tile_start);
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
