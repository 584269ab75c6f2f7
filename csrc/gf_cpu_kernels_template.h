// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu_kernels_template.h - the CPU loops for one data type and one instruction set.
 * No include guard: gf_cpu_kernels.c includes it once per data type, with GF_T, GF_TYPE,
 * GF_FN (as in gf_math.h) and GF_KERNEL(name) (name + dtype + ISA suffix) defined.
 *
 * Vectorisation is left to the compiler, guided by `omp simd` (-fopenmp-simd: no OpenMP
 * runtime is linked); the pair maths is branch-free so whole loops vectorise.  The
 * vectorised loop is always the innermost one: gcc does not vectorise an outer loop
 * around a scalar inner one, and pair terms come back by value, because a local array
 * inside an `omp simd` body becomes a per-lane array in memory.
 *
 *  - forward and backward-points: for each Gaussian in index order (its record
 *    broadcast), a vector loop over a tile of GF_TILE points (SoA copies) adds into
 *    per-point accumulators.  Each point's sum runs over the Gaussians in index order, so
 *    the result does not depend on how the caller splits the points among threads.
 *    With C > 1 channels the vector loop writes the tile's Gaussian values and a second
 *    loop spreads them over the channels (forward) or the points' t = G . w (backward).
 *  - backward-gaussians: for each Gaussian, a vector loop with a `simd reduction` over a
 *    tile of GF_BTILE points gives the tile's sums in GF_T; tile sums are added in
 *    double in point order, so the result does not depend on the split either.  With
 *    C > 1 channels the weights' gradient is summed GF_CPU_CHANNEL_BLOCK channels per
 *    pass over the points.
 */

typedef GF_TYPE(gf_record) GF_KERNEL(rec_t);

/* The pair loops are written once with a kCutoff argument and called with a literal 0
 * or 1 (GF_WITH_CUTOFF), so that the compiler makes one copy without the cutoff test
 * (the same bits: see gf_pair_gauss) and one with it. */
#ifndef GF_INLINE
#if defined(__GNUC__)
#define GF_INLINE static inline __attribute__((always_inline))
#else
#define GF_INLINE static inline
#endif
#define GF_WITH_CUTOFF(cut, call) \
    do {                          \
        if (cut) {                \
            call(1);              \
        } else {                  \
            call(0);              \
        }                         \
    } while (0)
#endif

/* Points per tile in the forward and backward-points loops: the inner vectorised loop
 * runs over a tile with the Gaussian's record broadcast, its accumulators in L1. */
#define GF_TILE 64
/* Points per tile in backward-gaussians: one horizontal reduction per tile. */
#define GF_BTILE 512

/* The row of a tile's point i: idx[i] (a culled tile, gathered), else b0 + i. */
#define GF_ROW(idx, b0, i) ((idx) ? (idx)[i] : (b0) + (i))

/* Copy points GF_ROW(idx, b0, i), i < n, of x (and channel c of grad_out) into SoA
 * arrays; pad to `padded` with zeros so that vector loops can run over whole tiles
 * (padded lanes are dropped, or add exactly 0 through a zero grad).  Where the points
 * are no rows of x (a grid's voxel centres, formed by load_voxels), `soa` holds their
 * coordinates already (soa[0..2][i], the working type) and the rows are those of out and
 * grad_out alone: the pair loops stay the same for points and voxels. */
static void GF_KERNEL(load_points)(const gf_params *p, const int64_t *idx, int64_t b0, int64_t n,
                                   int64_t padded, GF_T *px, GF_T *py, GF_T *pz, GF_T *pg,
                                   int64_t c, const GF_T *const *soa) {
    if (soa) {
        for (int64_t i = 0; i < n; ++i) {
            px[i] = soa[0][i];
            py[i] = soa[1][i];
            pz[i] = soa[2][i];
        }
    } else {
        const GF_T *x = (const GF_T *)p->x;
        const int64_t s0 = p->x_stride[0], s1 = p->x_stride[1];
        for (int64_t i = 0; i < n; ++i) {
            const GF_T *row = x + GF_ROW(idx, b0, i) * s0;
            px[i] = row[0];
            py[i] = row[s1];
            pz[i] = row[2 * s1];
        }
    }
    for (int64_t i = n; i < padded; ++i) px[i] = py[i] = pz[i] = 0;
    if (pg) {
        const GF_T *g = (const GF_T *)p->grad_out + c * p->grad_out_stride[1];
        for (int64_t i = 0; i < n; ++i) pg[i] = g[GF_ROW(idx, b0, i) * p->grad_out_stride[0]];
        for (int64_t i = n; i < padded; ++i) pg[i] = 0;
    }
}

/* t_i = sum_c G[row i, c] w[n, c] for the n points of a tile (0 for padded lanes). */
static void GF_KERNEL(load_dot)(const gf_params *p, const int64_t *idx, int64_t b0, int64_t n,
                                int64_t padded, int64_t gaussian, GF_T *t) {
    const GF_T *g = (const GF_T *)p->grad_out;
    const GF_T *w = (const GF_T *)p->weights + gaussian * p->weights_stride[0];
    const int64_t gs0 = p->grad_out_stride[0], gs1 = p->grad_out_stride[1];
    const int64_t ws1 = p->weights_stride[1];
    const int64_t nc = p->num_channels;
    for (int64_t i = 0; i < n; ++i) {
        const GF_T *row = g + GF_ROW(idx, b0, i) * gs0;
        GF_T acc = 0;
        for (int64_t c = 0; c < nc; ++c) acc += row[c * gs1] * w[c * ws1];
        t[i] = acc;
    }
    for (int64_t i = n; i < padded; ++i) t[i] = 0;
}

/* acc[i] (+)= w * g_i over the first `lanes` points of a tile (w = 0 and assign: the
 * Gaussian values alone). */
GF_INLINE void GF_KERNEL(tile_values)(const GF_KERNEL(rec_t) *r, int lanes, const GF_T *px,
                                      const GF_T *py, const GF_T *pz, GF_T *acc, int accumulate,
                                      int kCutoff) {
    if (accumulate) {
        const GF_T w = r->w;
#pragma omp simd
        for (int i = 0; i < lanes; ++i)
            acc[i] += w * GF_FN(gf_pair_value)(r, px[i], py[i], pz[i], kCutoff);
    } else {
#pragma omp simd
        for (int i = 0; i < lanes; ++i)
            acc[i] = GF_FN(gf_pair_value)(r, px[i], py[i], pz[i], kCutoff);
    }
}

/* Vector lanes to run for a tile of n points: the whole tile in the dense loops (a
 * constant trip count), n rounded up to 16 in the culled ones, whose cells often leave a
 * short last tile. */
#define GF_LANES(idx, n) ((idx) ? (int)(((n) + 15) & ~(int64_t)15) : GF_TILE)

/* The forward of one tile: n <= GF_TILE points (rows GF_ROW(idx, b0, i)) over ng
 * Gaussians (glist[j], or j when glist is NULL), each point's sum in that order. */
static void GF_KERNEL(forward_tile)(const gf_params *p, const int64_t *idx, int64_t b0,
                                    int64_t n, const int32_t *glist, int64_t ng,
                                    const GF_T *const *soa) {
    const GF_KERNEL(rec_t) *rec = (const GF_KERNEL(rec_t) *)p->records;
    const int64_t nc = p->num_channels;
    const int cut = gf_has_cutoff(p->cutoff);
    GF_T *out = (GF_T *)p->out;
    GF_T px[GF_TILE], py[GF_TILE], pz[GF_TILE], acc[GF_TILE];
    const int lanes = GF_LANES(idx, n);
    GF_KERNEL(load_points)(p, idx, b0, n, GF_TILE, px, py, pz, 0, 0, soa);
    if (nc == 1) {
        for (int i = 0; i < GF_TILE; ++i) acc[i] = 0;
        for (int64_t j = 0; j < ng; ++j) {
            const int64_t g = glist ? glist[j] : j;
#define GF_CALL(k) GF_KERNEL(tile_values)(rec + g, lanes, px, py, pz, acc, 1, k)
            GF_WITH_CUTOFF(cut, GF_CALL);
#undef GF_CALL
        }
        for (int64_t i = 0; i < n; ++i) out[GF_ROW(idx, b0, i)] = acc[i];
        return;
    }
    /* channels: the output rows of the tile are the accumulators */
    for (int64_t i = 0; i < n; ++i) {
        GF_T *row = out + GF_ROW(idx, b0, i) * nc;
        for (int64_t c = 0; c < nc; ++c) row[c] = 0;
    }
    const GF_T *weights = (const GF_T *)p->weights;
    const int64_t ws0 = p->weights_stride[0], ws1 = p->weights_stride[1];
    for (int64_t j = 0; j < ng; ++j) {
        const int64_t g = glist ? glist[j] : j;
#define GF_CALL(k) GF_KERNEL(tile_values)(rec + g, lanes, px, py, pz, acc, 0, k)
        GF_WITH_CUTOFF(cut, GF_CALL);
#undef GF_CALL
        const GF_T *w = weights + g * ws0;
        for (int64_t i = 0; i < n; ++i) {
            const GF_T v = acc[i];
            GF_T *row = out + GF_ROW(idx, b0, i) * nc;
            for (int64_t c = 0; c < nc; ++c) row[c] += v * w[c * ws1];
        }
    }
}

void GF_KERNEL(gf_forward)(const gf_params *p, int64_t begin, int64_t end) {
    for (int64_t b0 = begin; b0 < end; b0 += GF_TILE) {
        const int64_t n = end - b0 < GF_TILE ? end - b0 : GF_TILE;
        GF_KERNEL(forward_tile)(p, 0, b0, n, 0, p->num_gaussians, 0);
    }
}

/* v (+)= t_i g_i M'^T u'_i over the first `lanes` points of a tile, t_i = w (pt NULL)
 * or pt[i]. */
GF_INLINE void GF_KERNEL(tile_point_vjp)(const GF_KERNEL(rec_t) *r, int lanes, const GF_T *px,
                                         const GF_T *py, const GF_T *pz, const GF_T *pt,
                                         GF_T *vx, GF_T *vy, GF_T *vz, int kCutoff) {
    if (!pt) {
        const GF_T w = r->w;
#pragma omp simd
        for (int i = 0; i < lanes; ++i) {
            const GF_TYPE(gf_point_terms) v =
                GF_FN(gf_pair_vjp_point)(r, px[i], py[i], pz[i], kCutoff);
            const GF_T s = w * v.g;
            vx[i] += s * v.vx;
            vy[i] += s * v.vy;
            vz[i] += s * v.vz;
        }
    } else {
#pragma omp simd
        for (int i = 0; i < lanes; ++i) {
            const GF_TYPE(gf_point_terms) v =
                GF_FN(gf_pair_vjp_point)(r, px[i], py[i], pz[i], kCutoff);
            const GF_T s = pt[i] * v.g;
            vx[i] += s * v.vx;
            vy[i] += s * v.vy;
            vz[i] += s * v.vz;
        }
    }
}

/* grad_x of one tile: n <= GF_TILE points (rows GF_ROW(idx, b0, i)) over ng Gaussians
 * (glist[j], or j when glist is NULL), in that order. */
static void GF_KERNEL(points_tile)(const gf_params *p, const int64_t *idx, int64_t b0, int64_t n,
                                   const int32_t *glist, int64_t ng) {
    const GF_KERNEL(rec_t) *rec = (const GF_KERNEL(rec_t) *)p->records;
    const int64_t nc = p->num_channels;
    const int cut = gf_has_cutoff(p->cutoff);
    GF_T *grad_x = (GF_T *)p->grad_x;
    GF_T px[GF_TILE], py[GF_TILE], pz[GF_TILE], pg[GF_TILE], pt[GF_TILE];
    GF_T vx[GF_TILE], vy[GF_TILE], vz[GF_TILE];
    const GF_T minus_two_ln2 = (GF_T)(-GF_TWO_LN2);
    const int lanes = GF_LANES(idx, n);
    GF_KERNEL(load_points)(p, idx, b0, n, GF_TILE, px, py, pz, nc == 1 ? pg : 0, 0, 0);
    for (int i = 0; i < GF_TILE; ++i) vx[i] = vy[i] = vz[i] = 0;
    for (int64_t j = 0; j < ng; ++j) {
        const int64_t g = glist ? glist[j] : j;
        /* t = G . w per point for this Gaussian; with one channel, w here and G at the end */
        if (nc > 1) GF_KERNEL(load_dot)(p, idx, b0, n, GF_TILE, g, pt);
#define GF_CALL(k) \
    GF_KERNEL(tile_point_vjp)(rec + g, lanes, px, py, pz, nc > 1 ? pt : 0, vx, vy, vz, k)
        GF_WITH_CUTOFF(cut, GF_CALL);
#undef GF_CALL
    }
    for (int64_t i = 0; i < n; ++i) {
        const GF_T scale = nc == 1 ? minus_two_ln2 * pg[i] : minus_two_ln2;
        const int64_t b = GF_ROW(idx, b0, i);
        grad_x[3 * b + 0] = scale * vx[i];
        grad_x[3 * b + 1] = scale * vy[i];
        grad_x[3 * b + 2] = scale * vz[i];
    }
}

void GF_KERNEL(gf_backward_points)(const gf_params *p, int64_t begin, int64_t end) {
    for (int64_t b0 = begin; b0 < end; b0 += GF_TILE) {
        const int64_t n = end - b0 < GF_TILE ? end - b0 : GF_TILE;
        GF_KERNEL(points_tile)(p, 0, b0, n, 0, p->num_gaussians);
    }
}

/* One Gaussian over a tile of `padded` points: its geometric sums s[0..8] (GF_T) and,
 * with gv NULL, the sum of G g in *sw; else g per point in gv (for the channels). */
GF_INLINE void GF_KERNEL(tile_gaussian_sums)(const GF_KERNEL(rec_t) *r, int64_t padded,
                                             const GF_T *px, const GF_T *py, const GF_T *pz,
                                             const GF_T *pg, const GF_T *pt, GF_T *gv,
                                             GF_T s[GF_NUM_SUMS], GF_T *sw, int kCutoff) {
    /* one scalar per sum: `omp simd` keeps each in a vector register (an array here
     * would live in memory, a copy per lane) */
    GF_T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0, s9 = 0;
#define GF_ADD_TERMS(c)                                                                   \
    (s0 += (c).tux, s1 += (c).tuy, s2 += (c).tuz, s3 += (c).txx, s4 += (c).tyy,          \
     s5 += (c).tzz, s6 += (c).txy, s7 += (c).txz, s8 += (c).tyz)
    if (!gv) {
        /* one channel: t = G, the weight is applied to the sums in double */
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8, s9)
        for (int64_t i = 0; i < padded; ++i) {
            const GF_TYPE(gf_pair_terms) c =
                GF_FN(gf_pair_vjp_gaussian)(r, px[i], py[i], pz[i], pg[i], pg[i], kCutoff);
            s9 += c.gg;
            GF_ADD_TERMS(c);
        }
    } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
        for (int64_t i = 0; i < padded; ++i) {
            const GF_TYPE(gf_pair_terms) c =
                GF_FN(gf_pair_vjp_gaussian)(r, px[i], py[i], pz[i], (GF_T)1, pt[i], kCutoff);
            gv[i] = c.gg;
            GF_ADD_TERMS(c);
        }
    }
#undef GF_ADD_TERMS
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
    s[4] = s4;
    s[5] = s5;
    s[6] = s6;
    s[7] = s7;
    s[8] = s8;
    *sw = s9;
}

/* Add one tile of n <= GF_BTILE points (rows GF_ROW(idx, b0, i)) to the sums of
 * Gaussians [g0, g0 + ng): with one channel the geometric sums (t = G) and the weight's
 * gradient in wsum[j][0]; with C > 1 channels, the weights' gradient of channels
 * [c0, c0 + ncb) in wsum, and the geometric sums only when `geometry` is set.  Tile sums
 * are formed in GF_T and added in double. */
static void GF_KERNEL(sums_tile)(const gf_params *p, const int64_t *idx, int64_t b0, int64_t n,
                                 const GF_T *const *soa, int64_t g0, int64_t ng, int geometry,
                                 int64_t c0, int64_t ncb,
                                 double sums[GF_CPU_GAUSSIAN_BLOCK][GF_NUM_SUMS],
                                 double wsum[GF_CPU_GAUSSIAN_BLOCK][GF_CPU_CHANNEL_BLOCK]) {
    const GF_KERNEL(rec_t) *rec = (const GF_KERNEL(rec_t) *)p->records;
    const int64_t nc = p->num_channels;
    const int cut = gf_has_cutoff(p->cutoff);
    GF_T px[GF_BTILE], py[GF_BTILE], pz[GF_BTILE], pg[GF_BTILE], pt[GF_BTILE], gv[GF_BTILE];
    GF_T s[GF_NUM_SUMS], sw;
    /* padded points have grad 0, so they add exactly 0 to every sum */
    const int64_t padded = (n + 15) & ~(int64_t)15;
    GF_KERNEL(load_points)(p, idx, b0, n, padded, px, py, pz, nc == 1 ? pg : 0, 0, soa);
    for (int64_t j = 0; j < ng; ++j) {
        if (nc == 1) {
#define GF_CALL(k) GF_KERNEL(tile_gaussian_sums)(rec + g0 + j, padded, px, py, pz, pg, 0, 0, s, &sw, k)
            GF_WITH_CUTOFF(cut, GF_CALL);
#undef GF_CALL
            wsum[j][0] += sw;
        } else {
            if (geometry) GF_KERNEL(load_dot)(p, idx, b0, n, padded, g0 + j, pt);
            else
                for (int64_t i = 0; i < padded; ++i) pt[i] = 0;
#define GF_CALL(k) GF_KERNEL(tile_gaussian_sums)(rec + g0 + j, padded, px, py, pz, 0, pt, gv, s, &sw, k)
            GF_WITH_CUTOFF(cut, GF_CALL);
#undef GF_CALL
            /* the weights' gradient of this block of channels: sum_i G[i, c] g_i */
            const GF_T *grad = (const GF_T *)p->grad_out;
            const int64_t gs0 = p->grad_out_stride[0], gs1 = p->grad_out_stride[1];
            for (int64_t c = 0; c < ncb; ++c) {
                const GF_T *col = grad + (c0 + c) * gs1;
                GF_T acc = 0;
                for (int64_t i = 0; i < n; ++i) acc += gv[i] * col[GF_ROW(idx, b0, i) * gs0];
                wsum[j][c] += acc;
            }
        }
        if (geometry)
            for (int k = 0; k < GF_NUM_SUMS; ++k) sums[j][k] += s[k];
    }
}

/* The sums of Gaussians [g0, g0 + ng) over the points that may reach them (see
 * sums_tile for what is summed): every point, or the points of the cells they reach. */
typedef void (*GF_KERNEL(sums_fn))(const gf_params *p, const void *ctx, int64_t g0, int64_t ng,
                                   int geometry, int64_t c0, int64_t ncb,
                                   double sums[GF_CPU_GAUSSIAN_BLOCK][GF_NUM_SUMS],
                                   double wsum[GF_CPU_GAUSSIAN_BLOCK][GF_CPU_CHANNEL_BLOCK]);

static void GF_KERNEL(dense_sums)(const gf_params *p, const void *ctx, int64_t g0, int64_t ng,
                                  int geometry, int64_t c0, int64_t ncb,
                                  double sums[GF_CPU_GAUSSIAN_BLOCK][GF_NUM_SUMS],
                                  double wsum[GF_CPU_GAUSSIAN_BLOCK][GF_CPU_CHANNEL_BLOCK]) {
    (void)ctx;
    for (int64_t b0 = 0; b0 < p->num_points; b0 += GF_BTILE) {
        const int64_t n = p->num_points - b0 < GF_BTILE ? p->num_points - b0 : GF_BTILE;
        GF_KERNEL(sums_tile)(p, 0, b0, n, 0, g0, ng, geometry, c0, ncb, sums, wsum);
    }
}

/* The gradients of Gaussians [begin, end), ng at a time, from the sums `sums_of` gives:
 * grad_weights straight from the weight sums, grad_means and grad_cov through the
 * front-end's chain rule (gf_gaussian_vjp_store). */
static void GF_KERNEL(backward_gaussians_with)(const gf_params *p, int64_t begin, int64_t end,
                                               int64_t block, GF_KERNEL(sums_fn) sums_of,
                                               const void *ctx) {
    const GF_T *cov = (const GF_T *)p->cov;
    const GF_T *weights = (const GF_T *)p->weights;
    GF_T *grad_means = (GF_T *)p->grad_means;
    GF_T *grad_cov = (GF_T *)p->grad_cov;
    GF_T *grad_weights = (GF_T *)p->grad_weights;
    const int ncov = gf_cov_params(p->cov_mode);
    const int64_t nc = p->num_channels;
    const int geometry = grad_means || grad_cov;
    enum { CBLOCK = GF_CPU_CHANNEL_BLOCK };
    double sums[GF_CPU_GAUSSIAN_BLOCK][GF_NUM_SUMS];
    double wsum[GF_CPU_GAUSSIAN_BLOCK][CBLOCK];

    for (int64_t g0 = begin; g0 < end; g0 += block) {
        const int64_t ng = end - g0 < block ? end - g0 : block;
        for (int64_t j = 0; j < ng; ++j)
            for (int k = 0; k < GF_NUM_SUMS; ++k) sums[j][k] = 0.0;
        /* one pass per block of channels (one pass in all with one channel); the
         * geometric sums ride along the first */
        const int64_t passes = nc == 1 ? 1 : (nc + CBLOCK - 1) / CBLOCK;
        for (int64_t pass = 0; pass < passes; ++pass) {
            const int64_t c0 = pass * CBLOCK;
            const int64_t ncb = nc - c0 < CBLOCK ? nc - c0 : CBLOCK;
            const int first = pass == 0;
            if (!first && !grad_weights) break;
            for (int64_t j = 0; j < ng; ++j)
                for (int k = 0; k < CBLOCK; ++k) wsum[j][k] = 0.0;
            sums_of(p, ctx, g0, ng, first && geometry, c0, ncb, sums, wsum);
            if (grad_weights)
                for (int64_t j = 0; j < ng; ++j)
                    for (int64_t c = 0; c < ncb; ++c)
                        grad_weights[(g0 + j) * nc + c0 + c] = (GF_T)wsum[j][c];
        }
        if (!geometry) continue;
        for (int64_t j = 0; j < ng; ++j) {
            const int64_t g = g0 + j;
            /* with one channel the pairs' t was G alone: the weight comes in here */
            const double scale = nc == 1 ? (double)weights[g * p->weights_stride[0]] : 1.0;
            GF_FN(gf_gaussian_vjp_store)(sums[j], scale, cov + g * p->cov_stride[0],
                                         p->cov_stride[1], p->cov_mode, p->eps,
                                         grad_means ? grad_means + 3 * g : 0,
                                         grad_cov ? grad_cov + ncov * g : 0);
        }
    }
}

void GF_KERNEL(gf_backward_gaussians)(const gf_params *p, int64_t begin, int64_t end) {
    /* GF_CPU_GAUSSIAN_BLOCK Gaussians per pass over the points: each point tile is
     * loaded once per block */
    GF_KERNEL(backward_gaussians_with)(p, begin, end, GF_CPU_GAUSSIAN_BLOCK,
                                       GF_KERNEL(dense_sums), 0);
}

/* ---- culled loops --------------------------------------------------------------
 * The same tiles as the dense loops, gathered: a cell's points (rows from point_order)
 * over the cell's list of Gaussians (ascending), and a Gaussian over the points of the
 * cells it reaches (in the walk order of gf_cull_rows, then the non-finite cell),
 * GF_BTILE gathered points at a time. */

typedef struct GF_KERNEL(cull_ctx) {
    const gf_cull_plan *plan;
    const gf_cull_view *view;
} GF_KERNEL(cull_ctx);

/* The Gaussians of cell c: list[*ng] (NULL with *ng = N for the non-finite cell, i.e.
 * all of them). */
static const int32_t *GF_KERNEL(cell_list)(const gf_params *p, const gf_cull_plan *plan,
                                           const gf_cull_view *view, int64_t c, int64_t *ng) {
    if (c == plan->num_cells) {
        *ng = p->num_gaussians;
        return 0;
    }
    *ng = view->list_start[c + 1] - view->list_start[c];
    return view->list + view->list_start[c];
}

/* The tiles of cells [begin, end) over their lists: the forward (grad_x 0) or the
 * backward to the points. */
static void GF_KERNEL(culled_cells)(const gf_params *p, const gf_cull_plan *plan,
                                    const gf_cull_view *view, int64_t begin, int64_t end,
                                    int grad_x) {
    for (int64_t c = begin; c < end; ++c) {
        int64_t ng;
        const int32_t *glist = GF_KERNEL(cell_list)(p, plan, view, c, &ng);
        const int64_t first = view->cell_start[c], last = view->cell_start[c + 1];
        for (int64_t b0 = first; b0 < last; b0 += GF_TILE) {
            const int64_t n = last - b0 < GF_TILE ? last - b0 : GF_TILE;
            /* an empty list still writes the tile's zeros */
            if (grad_x)
                GF_KERNEL(points_tile)(p, view->point_order + b0, 0, n, glist, ng);
            else
                GF_KERNEL(forward_tile)(p, view->point_order + b0, 0, n, glist, ng, 0);
        }
    }
}

void GF_KERNEL(gf_culled_forward)(const gf_params *p, const gf_cull_plan *plan,
                                  const gf_cull_view *view, int64_t begin, int64_t end) {
    GF_KERNEL(culled_cells)(p, plan, view, begin, end, 0);
}

void GF_KERNEL(gf_culled_backward_points)(const gf_params *p, const gf_cull_plan *plan,
                                          const gf_cull_view *view, int64_t begin,
                                          int64_t end) {
    GF_KERNEL(culled_cells)(p, plan, view, begin, end, 1);
}

/* The sums of one Gaussian (ng == 1) over the points of the cells it reaches: a row's
 * reached cells are consecutive, so their points are one run of the sorted order.  With
 * one channel the runs are read in place from the sorted copies (tiles of at most
 * GF_BTILE, summed in GF_T, added in double); with C > 1 they are gathered as tiles. */
static void GF_KERNEL(culled_sums)(const gf_params *p, const void *ctx, int64_t g0, int64_t ng,
                                   int geometry, int64_t c0, int64_t ncb,
                                   double sums[GF_CPU_GAUSSIAN_BLOCK][GF_NUM_SUMS],
                                   double wsum[GF_CPU_GAUSSIAN_BLOCK][GF_CPU_CHANNEL_BLOCK]) {
    (void)ng;
    const GF_KERNEL(cull_ctx) *cc = (const GF_KERNEL(cull_ctx) *)ctx;
    const gf_cull_plan *plan = cc->plan;
    const gf_cull_view *view = cc->view;
    const GF_KERNEL(rec_t) *r = (const GF_KERNEL(rec_t) *)p->records + g0;
    const int cut = gf_has_cutoff(p->cutoff);
    const int64_t B = p->num_points;
    const GF_T *xs = (const GF_T *)view->sorted, *ys = xs + B, *zs = xs + 2 * B;
    const GF_T *gs = (const GF_T *)view->sorted_g;
    const double mean[3] = {r->mx, r->my, r->mz};
    const double m[6] = {r->m00, r->m10, r->m11, r->m20, r->m21, r->m22};
    gf_cull_box box;
    gf_cull_box_init(plan, mean, m, (double)r->nkq, gf_cull_reaches_all(p, g0), &box);
    int64_t idx[GF_BTILE];
    int64_t n = 0;
    GF_T s[GF_NUM_SUMS], sw;
    /* the sums over points [first, last) of the sorted order */
#define GF_RUN(first_, last_)                                                              \
    do {                                                                                   \
        if (p->num_channels == 1) {                                                        \
            for (int64_t a_ = (first_); a_ < (last_); a_ += GF_BTILE) {                    \
                const int64_t n_ = (last_) - a_ < GF_BTILE ? (last_) - a_ : GF_BTILE;      \
                GF_WITH_CUTOFF(cut, GF_CALL);                                              \
                wsum[0][0] += sw;                                                          \
                if (geometry)                                                              \
                    for (int k_ = 0; k_ < GF_NUM_SUMS; ++k_) sums[0][k_] += s[k_];         \
            }                                                                              \
        } else {                                                                           \
            for (int64_t k_ = (first_); k_ < (last_); ++k_) {                              \
                idx[n++] = view->point_order[k_];                                          \
                if (n == GF_BTILE) {                                                       \
                    GF_KERNEL(sums_tile)(p, idx, 0, n, 0, g0, 1, geometry, c0, ncb, sums, wsum); \
                    n = 0;                                                                 \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    } while (0)
#define GF_CALL(k)                                                                         \
    GF_KERNEL(tile_gaussian_sums)(r, n_, xs + a_, ys + a_, zs + a_, gs + a_, 0, 0, s, &sw, k)
    gf_cull_rows it;
    gf_cull_rows_begin(&box, &it);
    for (int64_t first, last; gf_cull_rows_next(plan, &box, &it, &first, &last);)
        GF_RUN(view->cell_start[first], view->cell_start[last + 1]);
    GF_RUN(view->cell_start[plan->num_cells], view->cell_start[plan->num_cells + 1]);
#undef GF_CALL
#undef GF_RUN
    /* the points every Gaussian sees in a backward (a non-finite grad_out), gathered (after
     * the C > 1 runs' gathered points, in one stream of tiles) */
    for (int64_t e = 0; e < view->num_extra; ++e) {
        /* each point once: not where the Gaussian's cells already hold it */
        if (gf_cull_box_reaches_cell(plan, &box, view->extra_cell[e])) continue;
        idx[n++] = view->point_order[view->extra[e]];
        if (n == GF_BTILE) {
            GF_KERNEL(sums_tile)(p, idx, 0, n, 0, g0, 1, geometry, c0, ncb, sums, wsum);
            n = 0;
        }
    }
    if (n > 0) GF_KERNEL(sums_tile)(p, idx, 0, n, 0, g0, 1, geometry, c0, ncb, sums, wsum);
}

void GF_KERNEL(gf_culled_backward_gaussians)(const gf_params *p, const gf_cull_plan *plan,
                                             const gf_cull_view *view, int64_t begin,
                                             int64_t end) {
    const GF_KERNEL(cull_ctx) ctx = {plan, view};
    GF_KERNEL(backward_gaussians_with)(p, begin, end, 1, GF_KERNEL(culled_sums), &ctx);
}

/* ---- voxel loops -----------------------------------------------------------------
 * The same tiles again, their points a grid's voxel centres (load_voxels): a tile of
 * voxels over its list of Gaussians (or all of them) in GF_TILE chunks, and a Gaussian
 * over the voxels of the tiles it reaches (gf_cull_rows' walk order; every tile without
 * a cutoff, GF_CPU_GAUSSIAN_BLOCK Gaussians per pass), GF_BTILE voxels per chunk, then
 * the unseen voxels (non-finite grad_out) that its tiles do not hold. */

/* The voxels of tile t: its first subvolume index along each axis and its extent. */
static int64_t GF_KERNEL(tile_box)(const gf_voxel_view *v, int64_t t, int64_t first[3],
                                   int64_t count[3]) {
    const int64_t *dims = v->tiles->dims;
    const int64_t at[3] = {t % dims[0], t / dims[0] % dims[1], t / (dims[0] * dims[1])};
    for (int c = 0; c < 3; ++c) {
        first[c] = at[c] * v->side;
        const int64_t left = v->size[c] - first[c];
        count[c] = left < v->side ? left : v->side;
    }
    return count[0] * count[1] * count[2];
}

/* The centre of subvolume voxel (i, j, k), in gf_grid_centre's sum and order, rounded
 * once to GF_T. */
GF_INLINE void GF_KERNEL(voxel_centre)(const gf_voxel_view *v, int64_t i, int64_t j, int64_t k,
                                       GF_T *x, GF_T *y, GF_T *z) {
    const double *t0 = v->terms[0] + 3 * i, *t1 = v->terms[1] + 3 * j, *t2 = v->terms[2] + 3 * k;
    *x = (GF_T)(((v->origin[0] + t0[0]) + t1[0]) + t2[0]);
    *y = (GF_T)(((v->origin[1] + t0[1]) + t1[1]) + t2[1]);
    *z = (GF_T)(((v->origin[2] + t0[2]) + t1[2]) + t2[2]);
}

/* Positions [first, first + n) of tile t's voxels (row-major in the tile, axis 2
 * fastest): their centres in SoA and their rows b = (i S1 + j) S2 + k. */
static void GF_KERNEL(load_voxels)(const gf_voxel_view *v, int64_t t, int64_t first, int64_t n,
                                   GF_T *px, GF_T *py, GF_T *pz, int64_t *rows) {
    int64_t lo[3], cnt[3];
    GF_KERNEL(tile_box)(v, t, lo, cnt);
    const int64_t plane = cnt[1] * cnt[2];
    int64_t a = first / plane, b = first % plane / cnt[2], c = first % cnt[2];
    for (int64_t q = 0; q < n; ++q) {
        const int64_t i = lo[0] + a, j = lo[1] + b, k = lo[2] + c;
        GF_KERNEL(voxel_centre)(v, i, j, k, px + q, py + q, pz + q);
        rows[q] = (i * v->size[1] + j) * v->size[2] + k;
        if (++c == cnt[2]) {
            c = 0;
            if (++b == cnt[1]) b = 0, ++a;
        }
    }
}

/* The tile of subvolume voxel b. */
static int64_t GF_KERNEL(tile_of)(const gf_voxel_view *v, int64_t b) {
    const int64_t k = b % v->size[2], ij = b / v->size[2];
    const int64_t i = ij / v->size[1], j = ij % v->size[1];
    const int64_t *dims = v->tiles->dims;
    return i / v->side + dims[0] * (j / v->side + dims[1] * (k / v->side));
}

void GF_KERNEL(gf_voxel_forward)(const gf_params *p, const gf_voxel_view *v, int64_t begin,
                                 int64_t end) {
    GF_T px[GF_TILE], py[GF_TILE], pz[GF_TILE];
    int64_t rows[GF_TILE];
    const GF_T *const soa[3] = {px, py, pz};
    for (int64_t t = begin; t < end; ++t) {
        int64_t lo[3], cnt[3];
        const int64_t nv = GF_KERNEL(tile_box)(v, t, lo, cnt);
        const int32_t *glist = v->list ? v->list + v->list_start[t] : 0;
        const int64_t ng = v->list ? v->list_start[t + 1] - v->list_start[t] : p->num_gaussians;
        for (int64_t first = 0; first < nv; first += GF_TILE) {
            const int64_t n = nv - first < GF_TILE ? nv - first : GF_TILE;
            GF_KERNEL(load_voxels)(v, t, first, n, px, py, pz, rows);
            /* an empty list still writes the chunk's zeros */
            GF_KERNEL(forward_tile)(p, rows, 0, n, glist, ng, soa);
        }
    }
}

/* The sums of Gaussians [g0, g0 + ng) over their voxels: without a cutoff every tile
 * (ng up to a block), with one the tiles of the Gaussian's box walk (ng == 1), then the
 * unseen voxels outside them, gathered. */
static void GF_KERNEL(voxel_sums)(const gf_params *p, const void *ctx, int64_t g0, int64_t ng,
                                  int geometry, int64_t c0, int64_t ncb,
                                  double sums[GF_CPU_GAUSSIAN_BLOCK][GF_NUM_SUMS],
                                  double wsum[GF_CPU_GAUSSIAN_BLOCK][GF_CPU_CHANNEL_BLOCK]) {
    const gf_voxel_view *v = (const gf_voxel_view *)ctx;
    GF_T px[GF_BTILE], py[GF_BTILE], pz[GF_BTILE];
    int64_t rows[GF_BTILE];
    const GF_T *const soa[3] = {px, py, pz};
    /* the voxels of tiles first..last (linear indices), chunk by chunk */
#define GF_TILES(first_, last_)                                                            \
    for (int64_t t_ = (first_); t_ <= (last_); ++t_) {                                     \
        int64_t lo_[3], cnt_[3];                                                           \
        const int64_t nv_ = GF_KERNEL(tile_box)(v, t_, lo_, cnt_);                         \
        for (int64_t a_ = 0; a_ < nv_; a_ += GF_BTILE) {                                   \
            const int64_t n_ = nv_ - a_ < GF_BTILE ? nv_ - a_ : GF_BTILE;                  \
            GF_KERNEL(load_voxels)(v, t_, a_, n_, px, py, pz, rows);                       \
            GF_KERNEL(sums_tile)(p, rows, 0, n_, soa, g0, ng, geometry, c0, ncb, sums, wsum); \
        }                                                                                  \
    }
    if (!gf_has_cutoff(p->cutoff)) {
        GF_TILES(0, v->tiles->num_cells - 1);
        return;
    }
    const GF_KERNEL(rec_t) *r = (const GF_KERNEL(rec_t) *)p->records + g0;
    const double mean[3] = {r->mx, r->my, r->mz};
    const double m[6] = {r->m00, r->m10, r->m11, r->m20, r->m21, r->m22};
    gf_cull_box box;
    gf_voxel_box_init(v->tiles, v->map, mean, m, (double)r->nkq, gf_cull_reaches_all(p, g0),
                      &box);
    gf_cull_rows it;
    gf_cull_rows_begin(&box, &it);
    for (int64_t first, last; gf_cull_rows_next(v->tiles, &box, &it, &first, &last);) {
        GF_TILES(first, last);
    }
#undef GF_TILES
    int64_t n = 0;
    for (int64_t e = 0; e < v->num_unseen; ++e) {
        const int64_t b = v->unseen[e];
        /* each voxel once: not where the Gaussian's tiles already hold it */
        if (gf_cull_box_reaches_cell(v->tiles, &box, GF_KERNEL(tile_of)(v, b))) continue;
        const int64_t k = b % v->size[2], ij = b / v->size[2];
        GF_KERNEL(voxel_centre)(v, ij / v->size[1], ij % v->size[1], k, px + n, py + n, pz + n);
        rows[n++] = b;
        if (n == GF_BTILE) {
            GF_KERNEL(sums_tile)(p, rows, 0, n, soa, g0, 1, geometry, c0, ncb, sums, wsum);
            n = 0;
        }
    }
    if (n > 0) GF_KERNEL(sums_tile)(p, rows, 0, n, soa, g0, 1, geometry, c0, ncb, sums, wsum);
}

void GF_KERNEL(gf_voxel_backward_gaussians)(const gf_params *p, const gf_voxel_view *v,
                                            int64_t begin, int64_t end) {
    const int64_t block = gf_has_cutoff(p->cutoff) ? 1 : GF_CPU_GAUSSIAN_BLOCK;
    GF_KERNEL(backward_gaussians_with)(p, begin, end, block, GF_KERNEL(voxel_sums), v);
}

#undef GF_TILE
#undef GF_BTILE
#undef GF_ROW
#undef GF_LANES
