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
 * One Gaussian, ready for the pair loops: its mean, weight, and the folded inverse
 * covariance A = -(log2 e)/2 Sigma^{-1} (see gf_math.h), so that the Gaussian's value at
 * d = x - mu is 2^(d^T A d).  b = 2 a off the diagonal, for the 9-operation form of the
 * exponent.  16 values: 64 bytes (float) or 128 (double), loaded as aligned 16-byte
 * vectors by the CUDA kernels; what the forward reads comes first (3 vectors in float).
 */
typedef struct GF_TYPE(gf_record) {
    GF_T mx, my, mz, w;
    GF_T axx, ayy, azz, bxy;
    GF_T bxz, byz, axy, axz;
    GF_T ayz, pad0, pad1, pad2;
} GF_TYPE(gf_record);

/*
 * 2^q.  On the GPU, float uses the hardware's ex2.approx.ftz (relative error about
 * 2^-22, results below 2^-126 flushed to 0) and double the CUDA maths library.  On the
 * CPU, a branch-free version that vectorises: round q to the nearest integer k with the
 * 1.5 * 2^m trick, a Taylor polynomial of 2^f on |f| <= 1/2 (degree 7 for float: error
 * 5e-9; degree 13 for double: 4e-18), and 2^k built in the exponent bits.  q is clamped
 * so that the exponent field stays in range; below the smallest normal the result is 0,
 * as on the GPU.  NaN propagates.
 */
GF_HD GF_T GF_FN(gf_exp2)(GF_T q) {
#if defined(__CUDA_ARCH__)
#if GF_T_IS_FLOAT
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(q));
    return r;
#else
    return exp2(q);
#endif
#else /* host */
#if GF_T_IS_FLOAT
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    q = q < -127.0f ? -127.0f : q;
    q = q > 127.0f ? 127.0f : q;
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
    q = q < -1023.0 ? -1023.0 : q;
    q = q > 1023.0 ? 1023.0 : q;
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
#endif
}

/* v rounded to GF_T, saturating at the largest finite value: an inverse covariance
 * entry that is finite in double stays finite in float (a Gaussian far narrower than
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

/* Fill record r for one Gaussian.  mean: 3 values `mean_stride` apart; cov: cov_mode
 * values `cov_stride` apart.  Runs once per Gaussian per call; the inverse is taken in
 * double and rounded once, to the record's type. */
GF_HD void GF_FN(gf_record_init)(GF_TYPE(gf_record) *r,
                                 const GF_T *mean, int64_t mean_stride, /* [3] */
                                 const GF_T *cov, int64_t cov_stride,   /* [cov_mode] */
                                 GF_T weight, gf_cov_mode mode, double eps) {
    double c[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int k = 0; k < (int)mode; ++k) c[k] = (double)cov[k * cov_stride];
    double p[6];
    gf_inverse_covariance(mode, c, eps, p);
    const double s = -GF_HALF_LOG2E;
    r->mx = mean[0];
    r->my = mean[mean_stride];
    r->mz = mean[2 * mean_stride];
    r->w = weight;
    r->axx = GF_TYPE(gf_narrow)(s * p[GF_XX]);
    r->ayy = GF_TYPE(gf_narrow)(s * p[GF_YY]);
    r->azz = GF_TYPE(gf_narrow)(s * p[GF_ZZ]);
    r->axy = GF_TYPE(gf_narrow)(s * p[GF_XY]);
    r->axz = GF_TYPE(gf_narrow)(s * p[GF_XZ]);
    r->ayz = GF_TYPE(gf_narrow)(s * p[GF_YZ]);
    r->bxy = GF_TYPE(gf_narrow)(2.0 * s * p[GF_XY]);
    r->bxz = GF_TYPE(gf_narrow)(2.0 * s * p[GF_XZ]);
    r->byz = GF_TYPE(gf_narrow)(2.0 * s * p[GF_YZ]);
    r->pad0 = r->pad1 = r->pad2 = (GF_T)0;
}

/* ---- forward ------------------------------------------------------------------
 * forward inputs: r (one Gaussian), x y z (one point)
 * returns:        the exponent d^T A d (<= 0), so the Gaussian's value is 2^exponent;
 *                 3 subtractions and 9 multiply-adds. */
GF_HD GF_T GF_FN(gf_pair_exponent)(const GF_TYPE(gf_record) *r, GF_T x, GF_T y, GF_T z) {
    const GF_T dx = x - r->mx, dy = y - r->my, dz = z - r->mz;
    const GF_T tx = r->axx * dx + r->bxy * dy + r->bxz * dz;
    const GF_T ty = r->ayy * dy + r->byz * dz;
    const GF_T tz = r->azz * dz;
    return dx * tx + dy * ty + dz * tz;
}

/* forward inputs: r, x y z
 * returns:        w * exp(-0.5 d^T Sigma^{-1} d), this pair's term of f(x). */
GF_HD GF_T GF_FN(gf_pair_value)(const GF_TYPE(gf_record) *r, GF_T x, GF_T y, GF_T z) {
    return r->w * GF_FN(gf_exp2)(GF_FN(gf_pair_exponent)(r, x, y, z));
}

/* ---- VJP toward the point -----------------------------------------------------
 * forward inputs:  r, x y z
 * returns:         w g (A d), this pair's term of the point's gradient direction.
 * The point's gradient is grad_x = 2 ln2 * grad_out * sum_n (w g A d)_n, the factor
 * applied once per point by the caller: d/dx 2^(d^T A d) = ln2 2^(d^T A d) 2 A d. */
typedef struct GF_TYPE(gf_vec3) {
    GF_T x, y, z;
} GF_TYPE(gf_vec3);

GF_HD GF_TYPE(gf_vec3) GF_FN(gf_pair_vjp_point)(const GF_TYPE(gf_record) *r, GF_T x, GF_T y,
                                                GF_T z) {
    const GF_T dx = x - r->mx, dy = y - r->my, dz = z - r->mz;
    const GF_T ax = r->axx * dx + r->axy * dy + r->axz * dz;
    const GF_T ay = r->axy * dx + r->ayy * dy + r->ayz * dz;
    const GF_T az = r->axz * dx + r->ayz * dy + r->azz * dz;
    const GF_T s = r->w * GF_FN(gf_exp2)(dx * ax + dy * ay + dz * az);
    GF_TYPE(gf_vec3) v;
    v.x = s * ax;
    v.y = s * ay;
    v.z = s * az;
    return v;
}

/* ---- VJP toward the Gaussian --------------------------------------------------
 * The terms one pair adds to its Gaussian's sums (GF_NUM_SUMS order, see gf_math.h);
 * returned by value so that vectorised callers keep them in registers. */
typedef struct GF_TYPE(gf_pair_terms) {
    GF_T t;                  /* grad * g */
    GF_T tdx, tdy, tdz;      /* t d */
    GF_T txx, tyy, tzz;      /* t d d^T, diagonal */
    GF_T txy, txz, tyz;      /* t d d^T, off-diagonal */
} GF_TYPE(gf_pair_terms);

/* forward inputs:      r, x y z
 * gradient of output:  grad (grad_out at this point)
 * returns:             the pair's terms; gf_pair_terms_add sums them, and
 *                      gf_gaussian_vjp turns a Gaussian's sums into its gradients. */
GF_HD GF_TYPE(gf_pair_terms) GF_FN(gf_pair_vjp_gaussian)(const GF_TYPE(gf_record) *r, GF_T x,
                                                         GF_T y, GF_T z, GF_T grad) {
    const GF_T dx = x - r->mx, dy = y - r->my, dz = z - r->mz;
    const GF_T tx = r->axx * dx + r->bxy * dy + r->bxz * dz;
    const GF_T ty = r->ayy * dy + r->byz * dz;
    const GF_T tz = r->azz * dz;
    GF_TYPE(gf_pair_terms) c;
    c.t = grad * GF_FN(gf_exp2)(dx * tx + dy * ty + dz * tz);
    c.tdx = c.t * dx;
    c.tdy = c.t * dy;
    c.tdz = c.t * dz;
    c.txx = c.tdx * dx;
    c.tyy = c.tdy * dy;
    c.tzz = c.tdz * dz;
    c.txy = c.tdx * dy;
    c.txz = c.tdx * dz;
    c.tyz = c.tdy * dz;
    return c;
}

/* sums to accumulate: s[0..9] += c, in the order of GF_NUM_SUMS. */
GF_HD void GF_FN(gf_pair_terms_add)(GF_T *s, const GF_TYPE(gf_pair_terms) *c) {
    s[0] += c->t;
    s[1] += c->tdx;
    s[2] += c->tdy;
    s[3] += c->tdz;
    s[4 + GF_XX] += c->txx;
    s[4 + GF_YY] += c->tyy;
    s[4 + GF_ZZ] += c->tzz;
    s[4 + GF_XY] += c->txy;
    s[4 + GF_XZ] += c->txz;
    s[4 + GF_YZ] += c->tyz;
}

/* Chain rule of one Gaussian from its summed pair terms (double, any order of
 * summation) to its gradients, written as GF_T.  Reads the Gaussian's parameters
 * strided like gf_record_init; each output row pointer may be NULL (not wanted). */
GF_HD void GF_FN(gf_gaussian_vjp_store)(const double sums[GF_NUM_SUMS],
                                        const GF_T *cov, int64_t cov_stride, /* [cov_mode] */
                                        GF_T weight, gf_cov_mode mode, double eps,
                                        GF_T *grad_mean,    /* [3] or NULL */
                                        GF_T *grad_cov,     /* [cov_mode] or NULL */
                                        GF_T *grad_weight)  /* [1] or NULL */ {
    double c[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int k = 0; k < (int)mode; ++k) c[k] = (double)cov[k * cov_stride];
    double gm[3], gc[6], gw;
    gf_gaussian_vjp(mode, c, eps, (double)weight, sums, grad_mean ? gm : 0,
                    grad_cov ? gc : 0, &gw);
    if (grad_mean)
        for (int k = 0; k < 3; ++k) grad_mean[k] = (GF_T)gm[k];
    if (grad_cov)
        for (int k = 0; k < (int)mode; ++k) grad_cov[k] = (GF_T)gc[k];
    if (grad_weight) *grad_weight = (GF_T)gw;
}
