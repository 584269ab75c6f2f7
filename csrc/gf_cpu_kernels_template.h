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
 *  - backward-gaussians: for each Gaussian, a vector loop with a `simd reduction` over a
 *    tile of GF_BTILE points gives the tile's 10 sums in GF_T; tile sums are added in
 *    double in point order, so the result does not depend on the split either.
 */

typedef GF_TYPE(gf_record) GF_KERNEL(rec_t);

/* Points per tile in the forward and backward-points loops: the inner vectorised loop
 * runs over a tile with the Gaussian's record broadcast, its accumulators in L1. */
#define GF_TILE 64
/* Points per tile in backward-gaussians: one horizontal reduction per tile. */
#define GF_BTILE 512

/* Copy points [b0, b0 + n) of x (and grad_out) into SoA arrays; pad to `padded` with
 * zeros so that vector loops can run over whole tiles (padded lanes are dropped). */
static void GF_KERNEL(load_points)(const gf_params *p, int64_t b0, int64_t n, int64_t padded,
                                   GF_T *px, GF_T *py, GF_T *pz, GF_T *pg) {
    const GF_T *x = (const GF_T *)p->x;
    const int64_t s0 = p->x_stride[0], s1 = p->x_stride[1];
    for (int64_t i = 0; i < n; ++i) {
        const GF_T *row = x + (b0 + i) * s0;
        px[i] = row[0];
        py[i] = row[s1];
        pz[i] = row[2 * s1];
    }
    for (int64_t i = n; i < padded; ++i) px[i] = py[i] = pz[i] = 0;
    if (pg) {
        const GF_T *g = (const GF_T *)p->grad_out;
        for (int64_t i = 0; i < n; ++i) pg[i] = g[(b0 + i) * p->grad_out_stride];
        for (int64_t i = n; i < padded; ++i) pg[i] = 0;
    }
}

void GF_KERNEL(gf_forward)(const gf_params *p, int64_t begin, int64_t end) {
    const GF_KERNEL(rec_t) *rec = (const GF_KERNEL(rec_t) *)p->records;
    const int64_t num_gaussians = p->num_gaussians;
    GF_T *out = (GF_T *)p->out;
    GF_T px[GF_TILE], py[GF_TILE], pz[GF_TILE], acc[GF_TILE];
    for (int64_t b0 = begin; b0 < end; b0 += GF_TILE) {
        const int64_t n = end - b0 < GF_TILE ? end - b0 : GF_TILE;
        GF_KERNEL(load_points)(p, b0, n, GF_TILE, px, py, pz, 0);
        for (int i = 0; i < GF_TILE; ++i) acc[i] = 0;
        for (int64_t g = 0; g < num_gaussians; ++g) {
            const GF_KERNEL(rec_t) r = rec[g];
#pragma omp simd
            for (int i = 0; i < GF_TILE; ++i) acc[i] += GF_FN(gf_pair_value)(&r, px[i], py[i], pz[i]);
        }
        for (int64_t i = 0; i < n; ++i) out[b0 + i] = acc[i];
    }
}

void GF_KERNEL(gf_backward_points)(const gf_params *p, int64_t begin, int64_t end) {
    const GF_KERNEL(rec_t) *rec = (const GF_KERNEL(rec_t) *)p->records;
    const int64_t num_gaussians = p->num_gaussians;
    GF_T *grad_x = (GF_T *)p->grad_x;
    GF_T px[GF_TILE], py[GF_TILE], pz[GF_TILE], pg[GF_TILE];
    GF_T vx[GF_TILE], vy[GF_TILE], vz[GF_TILE];
    const GF_T two_ln2 = (GF_T)(2.0 * GF_LN2);
    for (int64_t b0 = begin; b0 < end; b0 += GF_TILE) {
        const int64_t n = end - b0 < GF_TILE ? end - b0 : GF_TILE;
        GF_KERNEL(load_points)(p, b0, n, GF_TILE, px, py, pz, pg);
        for (int i = 0; i < GF_TILE; ++i) vx[i] = vy[i] = vz[i] = 0;
        for (int64_t g = 0; g < num_gaussians; ++g) {
            const GF_KERNEL(rec_t) r = rec[g];
#pragma omp simd
            for (int i = 0; i < GF_TILE; ++i) {
                const GF_TYPE(gf_vec3) v = GF_FN(gf_pair_vjp_point)(&r, px[i], py[i], pz[i]);
                vx[i] += v.x;
                vy[i] += v.y;
                vz[i] += v.z;
            }
        }
        for (int64_t i = 0; i < n; ++i) {
            const GF_T scale = two_ln2 * pg[i];
            grad_x[3 * (b0 + i) + 0] = scale * vx[i];
            grad_x[3 * (b0 + i) + 1] = scale * vy[i];
            grad_x[3 * (b0 + i) + 2] = scale * vz[i];
        }
    }
}

void GF_KERNEL(gf_backward_gaussians)(const gf_params *p, int64_t begin, int64_t end) {
    const GF_KERNEL(rec_t) *rec = (const GF_KERNEL(rec_t) *)p->records;
    const int64_t num_points = p->num_points;
    const GF_T *cov = (const GF_T *)p->cov;
    const GF_T *weights = (const GF_T *)p->weights;
    GF_T *grad_means = (GF_T *)p->grad_means;
    GF_T *grad_cov = (GF_T *)p->grad_cov;
    GF_T *grad_weights = (GF_T *)p->grad_weights;
    const int ncov = (int)p->cov_mode;
    /* Gaussians per pass over the points: the point tile is loaded once per block. */
    enum { BLOCK = GF_CPU_GAUSSIAN_BLOCK };
    GF_T px[GF_BTILE], py[GF_BTILE], pz[GF_BTILE], pg[GF_BTILE];
    double sums[BLOCK][GF_NUM_SUMS];

    for (int64_t g0 = begin; g0 < end; g0 += BLOCK) {
        const int64_t ng = end - g0 < BLOCK ? end - g0 : BLOCK;
        for (int64_t j = 0; j < ng; ++j)
            for (int k = 0; k < GF_NUM_SUMS; ++k) sums[j][k] = 0.0;
        for (int64_t b0 = 0; b0 < num_points; b0 += GF_BTILE) {
            const int64_t n = num_points - b0 < GF_BTILE ? num_points - b0 : GF_BTILE;
            /* padded points have grad 0, so they add exactly 0 to every sum */
            const int64_t padded = (n + 15) & ~(int64_t)15;
            GF_KERNEL(load_points)(p, b0, n, padded, px, py, pz, pg);
            for (int64_t j = 0; j < ng; ++j) {
                const GF_KERNEL(rec_t) r = rec[g0 + j];
                /* one scalar per sum: `omp simd` keeps each in a vector register
                 * (an array here would live in memory, a copy per lane) */
                GF_T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0,
                     s9 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8, s9)
                for (int64_t i = 0; i < padded; ++i) {
                    const GF_TYPE(gf_pair_terms) c =
                        GF_FN(gf_pair_vjp_gaussian)(&r, px[i], py[i], pz[i], pg[i]);
                    s0 += c.t;
                    s1 += c.tdx;
                    s2 += c.tdy;
                    s3 += c.tdz;
                    s4 += c.txx;
                    s5 += c.tyy;
                    s6 += c.tzz;
                    s7 += c.txy;
                    s8 += c.txz;
                    s9 += c.tyz;
                }
                double *acc = sums[j];
                acc[0] += s0;
                acc[1] += s1;
                acc[2] += s2;
                acc[3] += s3;
                acc[4] += s4;
                acc[5] += s5;
                acc[6] += s6;
                acc[7] += s7;
                acc[8] += s8;
                acc[9] += s9;
            }
        }
        for (int64_t j = 0; j < ng; ++j) {
            const int64_t g = g0 + j;
            GF_FN(gf_gaussian_vjp_store)(
                sums[j], cov + g * p->cov_stride[0], p->cov_stride[1],
                weights[g * p->weights_stride], p->cov_mode, p->eps,
                grad_means ? grad_means + 3 * g : 0, grad_cov ? grad_cov + ncov * g : 0,
                grad_weights ? grad_weights + g : 0);
        }
    }
}

#undef GF_TILE
#undef GF_BTILE
