// SPDX-License-Identifier: Apache-2.0
/*
 * gf_math_template.h - per-type pair maths of gaussfield.  No include guard: gf_math.h
 * includes it once per data type with GF_T (the type), GF_TYPE(name) (a type name with
 * the dtype suffix) and GF_FN(name) (a function name) defined.  Include gf_math.h, not
 * this file.
 *
 * Every function here is branch-free on its data, so that the CPU loops vectorise
 * across points and the CUDA warps never diverge.
 */
#ifndef GF_T
#error "include gf_math.h, not gf_math_template.h"
#endif

/*
 * One Gaussian, ready for the pair loops: its mean, weight (channel 0; the loops of
 * several channels read the weights themselves), the folded whitening factor
 * M' = a M (lower triangular, see gf_math.h) and the negated cutoff threshold
 * nkq = -a^2 k^2 (-inf without a cutoff), so that the pair's value is 2^e with
 * e = -|M' d|^2 where e >= nkq, and 0 beyond.  16 values: 64 bytes (float) or 128 (double), loaded as
 * aligned 16-byte vectors by the CUDA kernels; what the forward reads comes first
 * (3 vectors in float).
 */
typedef struct GF_TYPE(gf_record) {
    GF_T mx, my, mz, w;
    GF_T m00, m10, m11, m20;
    GF_T m21, m22, nkq, pad0;
    GF_T pad1, pad2, pad3, pad4;
} GF_TYPE(gf_record);

/* a * b + c with one rounding wherever the target has a fused multiply-add (CUDA,
 * x86 with FMA, AArch64), else with two: written out so that the compiler's contraction
 * choices (-ffp-contract) cannot make two copies of one expression round differently.
 * Where there is no FMA instruction the compiler has nothing to contract into. */
GF_HD GF_T GF_FN(gf_fma)(GF_T a, GF_T b, GF_T c) {
#if defined(__CUDA_ARCH__)
#if GF_T_IS_FLOAT
    return __fmaf_rn(a, b, c);
#else
    return __fma_rn(a, b, c);
#endif
#elif defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__FP_FAST_FMA)
#if GF_T_IS_FLOAT
    return __builtin_fmaf(a, b, c);
#else
    return __builtin_fma(a, b, c);
#endif
#else
    return a * b + c;
#endif
}

/*
 * 2^q.  On the GPU, float uses the hardware's ex2.approx.ftz (relative error about
 * 2^-22, results below 2^-126 flushed to 0) and double the CUDA maths library.  On the
 * CPU, a branch-free version that vectorises: round q to the nearest integer k with the
 * 1.5 * 2^m trick, a Taylor polynomial of 2^f on |f| <= 1/2 (degree 7 for float: error
 * 5e-9; degree 13 for double: 4e-18), and 2^k built in the exponent bits.  q is clamped
 * so that the exponent field stays in range; below the smallest normal the result is 0,
 * as on the GPU.  NaN propagates.
 */
#if !defined(__CUDA_ARCH__)
/* The host's 2^q for q already clamped to the exponent field's range (see gf_exp2). */
GF_HD GF_T GF_FN(gf_exp2_in_range)(GF_T q) {
#if GF_T_IS_FLOAT
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    const float t = q + magic;
    const float f = q - (t - magic);
    float p = 1.5252733804059840e-05f;
    p = p * f + 1.5403530393381609e-04f;
    p = p * f + 1.3333558146428443e-03f;
    p = p * f + 9.6181291076284772e-03f;
    p = p * f + 5.5504108664821580e-02f;
    p = p * f + 2.4022650695910071e-01f;
    p = p * f + 6.9314718055994531e-01f;
    p = p * f + 1.0f;
    int32_t tb;
    memcpy(&tb, &t, sizeof tb);
    /* the low mantissa bits of t hold k; k = -127 gives an exponent field of 0: 0.0f */
    const int32_t sb = (int32_t)((uint32_t)(tb - 0x4B400000 + 127) << 23);
    float s;
    memcpy(&s, &sb, sizeof s);
    return p * s;
#else
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    const double t = q + magic;
    const double f = q - (t - magic);
    double p = 1.3691488853904124e-12;
    p = p * f + 2.5678435993488202e-11;
    p = p * f + 4.4455382718708114e-10;
    p = p * f + 7.0549116208011233e-09;
    p = p * f + 1.0178086009239699e-07;
    p = p * f + 1.3215486790144307e-06;
    p = p * f + 1.5252733804059840e-05;
    p = p * f + 1.5403530393381609e-04;
    p = p * f + 1.3333558146428443e-03;
    p = p * f + 9.6181291076284772e-03;
    p = p * f + 5.5504108664821580e-02;
    p = p * f + 2.4022650695910071e-01;
    p = p * f + 6.9314718055994531e-01;
    p = p * f + 1.0;
    int64_t tb;
    memcpy(&tb, &t, sizeof tb);
    const int64_t sb = (int64_t)((uint64_t)(tb - INT64_C(0x4338000000000000) + 1023) << 52);
    double s;
    memcpy(&s, &sb, sizeof s);
    return p * s;
#endif
}
#endif

/* The exponent field's range: below it the result is 0, above it the clamp saturates. */
#if GF_T_IS_FLOAT
#define GF_EXP2_MAX 127.0f
#else
#define GF_EXP2_MAX 1023.0
#endif

GF_HD GF_T GF_FN(gf_exp2)(GF_T q) {
#if defined(__CUDA_ARCH__)
#if GF_T_IS_FLOAT
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(q));
    return r;
#else
    return exp2(q);
#endif
#else
    q = q < -GF_EXP2_MAX ? -GF_EXP2_MAX : q;
    q = q > GF_EXP2_MAX ? GF_EXP2_MAX : q;
    return GF_FN(gf_exp2_in_range)(q);
#endif
}

/* 2^e for e <= 0 (or NaN), the exponent of every pair: on the host only the lower
 * clamp of gf_exp2 is needed, one instruction less in the pair loops. */
GF_HD GF_T GF_FN(gf_exp2_nonpos)(GF_T e) {
#if defined(__CUDA_ARCH__)
    return GF_FN(gf_exp2)(e);
#else
    e = e < -GF_EXP2_MAX ? -GF_EXP2_MAX : e;
    return GF_FN(gf_exp2_in_range)(e);
#endif
}
#undef GF_EXP2_MAX

/* v rounded to GF_T, saturating at the largest finite value: a whitening-factor entry
 * (or cutoff threshold) that is finite in double stays finite in float (a Gaussian far narrower than
 * float's range then still gives its weight at its mean and 0 elsewhere, as the double
 * maths does).  Infinities and NaN pass through.  (Named with GF_TYPE: it differs
 * between the types only in its return type, so C++ cannot overload it.) */
GF_HD GF_T GF_TYPE(gf_narrow)(double v) {
#if GF_T_IS_FLOAT
    if (v > (double)FLT_MAX && v <= DBL_MAX) return FLT_MAX;
    if (v < -(double)FLT_MAX && v >= -DBL_MAX) return -FLT_MAX;
#endif
    return (GF_T)v;
}

/* The front-end's parameters of one Gaussian (gf_frontend_params of them, the rest 0):
 * its cov row's values `stride` apart, at the places gf_frontend_param_at gives. */
GF_HD void GF_FN(gf_cov_load)(gf_cov_mode mode, const GF_T *cov, int64_t stride,
                              double c[GF_COV_MAX_PARAMS]) {
    for (int k = 0; k < GF_COV_MAX_PARAMS; ++k) c[k] = 0.0;
    for (int k = 0; k < gf_frontend_params(mode); ++k)
        c[k] = (double)cov[gf_frontend_param_at(mode, k) * stride];
}

/* Fill record r for one Gaussian.  mean: 3 values `mean_stride` apart; cov: its row of
 * gf_cov_params(mode) values `cov_stride` apart; weight: channel 0.  Runs once per Gaussian per call; M is
 * computed in double and rounded once, to the record's type. */
GF_HD void GF_FN(gf_record_init)(GF_TYPE(gf_record) *r,
                                 const GF_T *mean, int64_t mean_stride, /* [3] */
                                 const GF_T *cov, int64_t cov_stride,   /* [gf_cov_params] */
                                 GF_T weight, gf_cov_mode mode, double eps, double cutoff) {
    double c[GF_COV_MAX_PARAMS];
    GF_FN(gf_cov_load)(mode, cov, cov_stride, c);
    double m[6];
    gf_frontend_whitening(mode, c, eps, m);
    const double a = GF_SQRT_HALF_LOG2E;
    r->mx = mean[0];
    r->my = mean[mean_stride];
    r->mz = mean[2 * mean_stride];
    r->w = weight;
    r->m00 = GF_TYPE(gf_narrow)(a * m[GF_L00]);
    r->m10 = GF_TYPE(gf_narrow)(a * m[GF_L10]);
    r->m11 = GF_TYPE(gf_narrow)(a * m[GF_L11]);
    r->m20 = GF_TYPE(gf_narrow)(a * m[GF_L20]);
    r->m21 = GF_TYPE(gf_narrow)(a * m[GF_L21]);
    r->m22 = GF_TYPE(gf_narrow)(a * m[GF_L22]);
    r->nkq = GF_TYPE(gf_narrow)(-gf_cutoff_threshold(cutoff)); /* -inf stays -inf */
    r->pad0 = r->pad1 = r->pad2 = r->pad3 = r->pad4 = (GF_T)0;
}

/* ---- the pair: whitening and the cutoff test -----------------------------------
 * forward inputs: r (one Gaussian), x y z (one point)
 * returns:        d = x - mu, u' = M' d and the exponent e = -|u'|^2 (folded units,
 *                 <= 0), in 3 subtractions, 3 multiplies and 5 fused multiply-adds,
 *                 each rounding pinned by gf_fma: every kernel that whitens a pair gets
 *                 the same bits, so they all decide the cutoff alike. */
typedef struct GF_TYPE(gf_pair) {
    GF_T dx, dy, dz;
    GF_T ux, uy, uz;
    GF_T e;
} GF_TYPE(gf_pair);

GF_HD GF_TYPE(gf_pair) GF_FN(gf_pair_whiten)(const GF_TYPE(gf_record) *r, GF_T x, GF_T y,
                                             GF_T z) {
    GF_TYPE(gf_pair) p;
    p.dx = x - r->mx;
    p.dy = y - r->my;
    p.dz = z - r->mz;
    p.ux = r->m00 * p.dx;
    p.uy = GF_FN(gf_fma)(r->m11, p.dy, r->m10 * p.dx);
    p.uz = GF_FN(gf_fma)(r->m22, p.dz, GF_FN(gf_fma)(r->m21, p.dy, r->m20 * p.dx));
    p.e = GF_FN(gf_fma)(-p.ux, p.ux, GF_FN(gf_fma)(-p.uy, p.uy, -(p.uz * p.uz)));
    return p;
}

/* Whether the pair counts: q <= k^2, i.e. e >= nkq.  Written as !(e < nkq) so that a
 * NaN exponent is kept and propagates, as the op's NaN semantics ask. */
GF_HD int GF_FN(gf_pair_keep)(const GF_TYPE(gf_record) *r, GF_T e) { return !(e < r->nkq); }

/* The Gaussian's value at the pair, exp(-q/2), or 0 beyond the cutoff (branch-free).
 * kCutoff = 0 when the caller knows there is none (nkq = -inf keeps every pair): the
 * same bits without the test. */
GF_HD GF_T GF_FN(gf_pair_gauss)(const GF_TYPE(gf_record) *r, GF_T e, int kCutoff) {
    const GF_T g = GF_FN(gf_exp2_nonpos)(e);
    return (!kCutoff || GF_FN(gf_pair_keep)(r, e)) ? g : (GF_T)0;
}

/* ---- forward ------------------------------------------------------------------
 * forward inputs: r, x y z, kCutoff (see gf_pair_gauss)
 * returns:        exp(-q/2) masked by the cutoff; times the weight, this pair's term
 *                 of f(x) (the caller multiplies, once per channel). */
GF_HD GF_T GF_FN(gf_pair_value)(const GF_TYPE(gf_record) *r, GF_T x, GF_T y, GF_T z,
                                int kCutoff) {
    const GF_TYPE(gf_pair) p = GF_FN(gf_pair_whiten)(r, x, y, z);
    return GF_FN(gf_pair_gauss)(r, p.e, kCutoff);
}

/* ---- VJP toward the point -----------------------------------------------------
 * forward inputs:  r, x y z, kCutoff
 * returns:         v = M'^T u' and g (masked by the cutoff).  The point's gradient is
 * grad_x = -2 ln2 * sum_n t_n g_n v_n, t_n = sum_c G_c w_nc (grad_out times weight),
 * because d/dx exp(-|M d|^2/2) = -g M^T M d = -2 ln2 g M'^T u'; the caller multiplies
 * t g into v (one multiply, then 3 fused multiply-adds into its sums). */
typedef struct GF_TYPE(gf_point_terms) {
    GF_T vx, vy, vz, g;
} GF_TYPE(gf_point_terms);

GF_HD GF_TYPE(gf_point_terms) GF_FN(gf_pair_vjp_point)(const GF_TYPE(gf_record) *r, GF_T x,
                                                       GF_T y, GF_T z, int kCutoff) {
    const GF_TYPE(gf_pair) p = GF_FN(gf_pair_whiten)(r, x, y, z);
    GF_TYPE(gf_point_terms) v;
    v.g = GF_FN(gf_pair_gauss)(r, p.e, kCutoff);
    v.vx = r->m00 * p.ux + r->m10 * p.uy + r->m20 * p.uz;
    v.vy = r->m11 * p.uy + r->m21 * p.uz;
    v.vz = r->m22 * p.uz;
    return v;
}

/* ---- VJP toward the Gaussian --------------------------------------------------
 * The terms one pair adds to its Gaussian's sums; returned by value so that vectorised
 * callers keep them in registers. */
typedef struct GF_TYPE(gf_pair_terms) {
    GF_T gg;                 /* G g: the weight's gradient term (g itself for G = 1) */
    GF_T tux, tuy, tuz;      /* t g u' */
    GF_T txx, tyy, tzz;      /* t g u' u'^T, diagonal */
    GF_T txy, txz, tyz;      /* t g u' u'^T, off-diagonal */
} GF_TYPE(gf_pair_terms);

/* The terms of a pair already whitened (p) whose masked value is g (see
 * gf_pair_vjp_gaussian for grad and t). */
GF_HD GF_TYPE(gf_pair_terms) GF_FN(gf_pair_terms_of)(const GF_TYPE(gf_pair) *pp, GF_T g,
                                                     GF_T grad, GF_T t) {
    const GF_TYPE(gf_pair) p = *pp;
    GF_TYPE(gf_pair_terms) c;
    const GF_T tg = t * g;
    c.gg = grad * g;
    c.tux = tg * p.ux;
    c.tuy = tg * p.uy;
    c.tuz = tg * p.uz;
    c.txx = c.tux * p.ux;
    c.tyy = c.tuy * p.uy;
    c.tzz = c.tuz * p.uz;
    c.txy = c.tux * p.uy;
    c.txz = c.tux * p.uz;
    c.tyz = c.tuy * p.uz;
    return c;
}

/* forward inputs:      r, x y z, kCutoff
 * gradient of output:  grad (G, grad_out at this point; 1 to get g itself), t (the
 *                      factor of the geometric terms: G times the weight summed over
 *                      channels, or G alone with one channel, the weight then applied
 *                      to the Gaussian's sums in double)
 * returns:             the pair's terms (GF_NUM_SUMS order after gg); gf_gaussian_vjp
 *                      turns a Gaussian's sums into its gradients. */
GF_HD GF_TYPE(gf_pair_terms) GF_FN(gf_pair_vjp_gaussian)(const GF_TYPE(gf_record) *r, GF_T x,
                                                         GF_T y, GF_T z, GF_T grad, GF_T t,
                                                         int kCutoff) {
    const GF_TYPE(gf_pair) p = GF_FN(gf_pair_whiten)(r, x, y, z);
    return GF_FN(gf_pair_terms_of)(&p, GF_FN(gf_pair_gauss)(r, p.e, kCutoff), grad, t);
}

/* sums to accumulate: s[0..8] += c (GF_NUM_SUMS order; gg is summed by the caller). */
GF_HD void GF_FN(gf_pair_terms_add)(GF_T *s, const GF_TYPE(gf_pair_terms) *c) {
    s[0] += c->tux;
    s[1] += c->tuy;
    s[2] += c->tuz;
    s[3 + GF_XX] += c->txx;
    s[3 + GF_YY] += c->tyy;
    s[3 + GF_ZZ] += c->tzz;
    s[3 + GF_XY] += c->txy;
    s[3 + GF_XZ] += c->txz;
    s[3 + GF_YZ] += c->tyz;
}

/* A gradient of the front-end's parameters written as the Gaussian's cov row (at the
 * places gf_frontend_param_at gives; a whitening factor's upper entries 0). */
GF_HD void GF_FN(gf_cov_store)(gf_cov_mode mode, const double g[GF_COV_MAX_PARAMS], GF_T *row) {
    for (int k = 0; k < gf_cov_params(mode); ++k) row[k] = (GF_T)0;
    for (int k = 0; k < gf_frontend_params(mode); ++k)
        row[gf_frontend_param_at(mode, k)] = (GF_T)g[k];
}

/* Chain rule of one Gaussian from its summed pair terms (double, any order of
 * summation), multiplied by `scale` (the weight where the pairs' t was G alone, else 1),
 * to the gradients of its mean and covariance parameters, written as GF_T.  Reads the
 * parameters strided like gf_record_init; each output row pointer may be NULL. */
GF_HD void GF_FN(gf_gaussian_vjp_store)(const double sums[GF_NUM_SUMS], double scale,
                                        const GF_T *cov, int64_t cov_stride, /* [gf_cov_params] */
                                        gf_cov_mode mode, double eps,
                                        GF_T *grad_mean,    /* [3] or NULL */
                                        GF_T *grad_cov)     /* [gf_cov_params] or NULL */ {
    if (!grad_mean && !grad_cov) return;
    double c[GF_COV_MAX_PARAMS];
    GF_FN(gf_cov_load)(mode, cov, cov_stride, c);
    double sc[GF_NUM_SUMS];
    for (int k = 0; k < GF_NUM_SUMS; ++k) sc[k] = scale * sums[k];
    double gm[3], gc[GF_COV_MAX_PARAMS];
    gf_gaussian_vjp(mode, c, eps, sc, grad_mean ? gm : 0, grad_cov ? gc : 0);
    if (grad_mean)
        for (int k = 0; k < 3; ++k) grad_mean[k] = (GF_T)gm[k];
    if (grad_cov) GF_FN(gf_cov_store)(mode, gc, grad_cov);
}

/* ---- second order: the double backward and forward mode ---------------------------
 * See gaussfield.h, "Second order".  Folded units as above: u' = M' d = a u, and the
 * direction of M folded alike, A' = a A, so v' = M' (a_x - a_mu) + A' d = a v and
 * h = -u . v = -2 ln2 (u' . v').  With rho' = -g ((t h + s) u' + t v') = a rho and
 * sigma' = -t g u' = a sigma, the point's gradient is 2 ln2 (M'^T rho' + A'^T sigma'). */

/* One Gaussian's share of the direction: A' = a A (lower triangular, GF_L00.. order) and
 * the mean's direction.  48 bytes (float), 96 (double). */
typedef struct GF_TYPE(gf_dir_record) {
    GF_T a00, a10, a11, a20, a21, a22;
    GF_T dmx, dmy, dmz, pad0, pad1, pad2;
} GF_TYPE(gf_dir_record);

/* dmean: 3 values dmean_stride apart, or NULL (zero); dcov: a whitening factor's
 * direction, 9 values (row-major 3x3, lower triangle read), or NULL. */
GF_HD void GF_FN(gf_dir_record_init)(GF_TYPE(gf_dir_record) *r,
                                     const GF_T *dmean, int64_t dmean_stride, /* [3] */
                                     const GF_T *dcov, int64_t dcov_stride) { /* [9] */
    GF_T a[6];
    for (int k = 0; k < 6; ++k)
        a[k] = dcov ? GF_TYPE(gf_narrow)(GF_SQRT_HALF_LOG2E *
                                         (double)dcov[gf_frontend_param_at(GF_COV_WHITENED, k) *
                                                      dcov_stride])
                    : (GF_T)0;
    r->a00 = a[GF_L00];
    r->a10 = a[GF_L10];
    r->a11 = a[GF_L11];
    r->a20 = a[GF_L20];
    r->a21 = a[GF_L21];
    r->a22 = a[GF_L22];
    r->dmx = dmean ? dmean[0] : (GF_T)0;
    r->dmy = dmean ? dmean[dmean_stride] : (GF_T)0;
    r->dmz = dmean ? dmean[2 * dmean_stride] : (GF_T)0;
    r->pad0 = r->pad1 = r->pad2 = (GF_T)0;
}

/* A pair along a direction:
 * forward inputs:  r, x y z, kCutoff
 * direction:       a (the Gaussian's share), ax ay az (the point's, a_x)
 * returns:         g (masked), h = -u . v, and d, u', v' for the gradients below. */
typedef struct GF_TYPE(gf_pair_dir) {
    GF_T g, h;
    GF_T dx, dy, dz;
    GF_T ux, uy, uz;
    GF_T vx, vy, vz;
} GF_TYPE(gf_pair_dir);

GF_HD GF_TYPE(gf_pair_dir) GF_FN(gf_pair_along)(const GF_TYPE(gf_record) *r,
                                                const GF_TYPE(gf_dir_record) *a, GF_T x,
                                                GF_T y, GF_T z, GF_T ax, GF_T ay, GF_T az,
                                                int kCutoff) {
    const GF_TYPE(gf_pair) p = GF_FN(gf_pair_whiten)(r, x, y, z);
    GF_TYPE(gf_pair_dir) q;
    q.g = GF_FN(gf_pair_gauss)(r, p.e, kCutoff);
    q.dx = p.dx, q.dy = p.dy, q.dz = p.dz;
    q.ux = p.ux, q.uy = p.uy, q.uz = p.uz;
    const GF_T ex = ax - a->dmx, ey = ay - a->dmy, ez = az - a->dmz;
    q.vx = r->m00 * ex + a->a00 * p.dx;
    q.vy = r->m10 * ex + r->m11 * ey + a->a10 * p.dx + a->a11 * p.dy;
    q.vz = r->m20 * ex + r->m21 * ey + r->m22 * ez + a->a20 * p.dx + a->a21 * p.dy +
           a->a22 * p.dz;
    q.h = (GF_T)(-GF_TWO_LN2) * (p.ux * q.vx + p.uy * q.vy + p.uz * q.vz);
    return q;
}

/* rho' and sigma' of a pair (t = G . w_n, s = G . a_w,n). */
typedef struct GF_TYPE(gf_pair_rho) {
    GF_T rx, ry, rz; /* rho' */
    GF_T sx, sy, sz; /* sigma' */
} GF_TYPE(gf_pair_rho);

GF_HD GF_TYPE(gf_pair_rho) GF_FN(gf_pair_rho_of)(const GF_TYPE(gf_pair_dir) *q, GF_T t, GF_T s) {
    GF_TYPE(gf_pair_rho) o;
    const GF_T c = -q->g * (t * q->h + s), tg = -t * q->g;
    o.rx = c * q->ux + tg * q->vx;
    o.ry = c * q->uy + tg * q->vy;
    o.rz = c * q->uz + tg * q->vz;
    o.sx = tg * q->ux;
    o.sy = tg * q->uy;
    o.sz = tg * q->uz;
    return o;
}

/* The pair's term of the point's gradient before the factor 2 ln2: M'^T rho' + A'^T
 * sigma' (added into s[0..2]). */
GF_HD void GF_FN(gf_pair_second_point_add)(const GF_TYPE(gf_record) *r,
                                           const GF_TYPE(gf_dir_record) *a,
                                           const GF_TYPE(gf_pair_rho) *o, GF_T *s) {
    s[0] += r->m00 * o->rx + r->m10 * o->ry + r->m20 * o->rz + a->a00 * o->sx +
            a->a10 * o->sy + a->a20 * o->sz;
    s[1] += r->m11 * o->ry + r->m21 * o->rz + a->a11 * o->sy + a->a21 * o->sz;
    s[2] += r->m22 * o->rz + a->a22 * o->sz;
}

/* The Gaussian's sums of the double backward, GF_NUM_SUMS2 of them:
 *   [0..2] sum rho',  [3..8] sum tril(rho' d^T),  [9..11] sum sigma',
 *   [12..17] sum tril(sigma' a_x^T)   (tril entries in GF_L00.. order);
 * the weights' sums sum G_c g h are kept beside them. */
GF_HD void GF_FN(gf_pair_second_sums_add)(const GF_TYPE(gf_pair_dir) *q,
                                          const GF_TYPE(gf_pair_rho) *o, GF_T ax, GF_T ay,
                                          GF_T az, GF_T *s) {
    s[0] += o->rx;
    s[1] += o->ry;
    s[2] += o->rz;
    s[3 + GF_L00] += o->rx * q->dx;
    s[3 + GF_L10] += o->ry * q->dx;
    s[3 + GF_L11] += o->ry * q->dy;
    s[3 + GF_L20] += o->rz * q->dx;
    s[3 + GF_L21] += o->rz * q->dy;
    s[3 + GF_L22] += o->rz * q->dz;
    s[9] += o->sx;
    s[10] += o->sy;
    s[11] += o->sz;
    s[12 + GF_L00] += o->sx * ax;
    s[12 + GF_L10] += o->sy * ax;
    s[12 + GF_L11] += o->sy * ay;
    s[12 + GF_L20] += o->sz * ax;
    s[12 + GF_L21] += o->sz * ay;
    s[12 + GF_L22] += o->sz * az;
}

/* From one Gaussian's second-order sums (double) to its gradients (GF_T; either row may
 * be NULL): grad_mean = -2 ln2 (M'^T S_rho + A'^T S_sigma), grad_M = tril(S_rho d +
 * S_sigma a_x - S_sigma a_mu^T) / a (9 entries), with M', A', a_mu from the records. */
GF_HD void GF_FN(gf_second_gaussian_store)(const double sums[GF_NUM_SUMS2],
                                           const GF_TYPE(gf_record) *r,
                                           const GF_TYPE(gf_dir_record) *a,
                                           GF_T *grad_mean, /* [3] or NULL */
                                           GF_T *grad_cov) { /* [9] or NULL */
    const double *sr = sums, *ss = sums + 9;
    if (grad_mean) {
        const double m[6] = {r->m00, r->m10, r->m11, r->m20, r->m21, r->m22};
        const double am[6] = {a->a00, a->a10, a->a11, a->a20, a->a21, a->a22};
        double y[3], z[3];
        gf_lower_t_mul_vec(m, sr, y);
        gf_lower_t_mul_vec(am, ss, z);
        for (int k = 0; k < 3; ++k) grad_mean[k] = (GF_T)(-GF_TWO_LN2 * (y[k] + z[k]));
    }
    if (grad_cov) {
        const double dm[3] = {a->dmx, a->dmy, a->dmz};
        double g[GF_COV_MAX_PARAMS] = {0.0};
        int e = 0;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j <= i; ++j, ++e)
                g[e] = (sums[3 + e] + sums[12 + e] - ss[i] * dm[j]) / GF_SQRT_HALF_LOG2E;
        GF_FN(gf_cov_store)(GF_COV_WHITENED, g, grad_cov);
    }
}

