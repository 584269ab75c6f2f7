/*
 * gf_math.h - the maths of gaussfield, shared by the CPU loops (C11) and the CUDA
 * kernels (nvcc).  Nothing else computes a Gaussian, so the two paths cannot drift.
 *
 * Two levels:
 *
 *  - Per Gaussian, in double whatever the data type (it runs N times per call, not
 *    B x N times): the inverse covariance from the cov_tril / log_scales parameters,
 *    and the chain rule from the pair sums back to mean, parameters and weight.
 *
 *  - Per (point, Gaussian) pair, in the data type T: gf_math_template.h, included
 *    below once for float (suffix _f32) and once for double (suffix _f64).
 *
 * The pair maths works on a "record" per Gaussian that folds the constants in:
 *
 *     A = -(log2 e) / 2 * Sigma^{-1},   so   exp(-0.5 d^T Sigma^{-1} d) = 2^(d^T A d)
 *
 * which turns the exponential into a bare exp2 (one MUFU.EX2 on the GPU).
 */
#ifndef GF_MATH_H
#define GF_MATH_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gaussfield.h"

#if defined(__CUDACC__)
#define GF_HD static __host__ __device__ __forceinline__
#else
#define GF_HD static inline
#endif

/* log2(e) / 2 and ln(2), to double precision. */
#define GF_HALF_LOG2E 0.72134752044448170368
#define GF_LN2 0.69314718055994530942

/* Symmetric 3x3 matrices are stored as their 6 unique entries in this order. */
enum { GF_XX = 0, GF_YY = 1, GF_ZZ = 2, GF_XY = 3, GF_XZ = 4, GF_YZ = 5 };

/* The 10 per-Gaussian pair sums that the backward accumulates over points, for
 * g = exp(-0.5 d^T P d), d = x - mu, G = grad_out at the point:
 *     [0] sum G g,   [1..3] sum G g d,   [4..9] sum G g d d^T (GF_XX..GF_YZ order) */
#define GF_NUM_SUMS 10

/* The lower-triangular factor L of a GF_COV_FULL Gaussian from its 6 parameters,
 * as (l00, l10, l11, l20, l21, l22). */
GF_HD void gf_cholesky_factor(const double c[6], double l[6]) {
    l[0] = exp(c[0]);
    l[1] = c[1];
    l[2] = exp(c[2]);
    l[3] = c[3];
    l[4] = c[4];
    l[5] = exp(c[5]);
}

/* Sigma^{-1} (6 unique entries) of one Gaussian from its covariance parameters c
 * (cov_mode of them).  Full: Sigma = L L^T + eps I, inverted through its adjugate in
 * double, which is exact to rounding for any Sigma this parameterisation produces.
 * Diagonal: Sigma^{-1} = diag(e^{-2 s}) exactly, without eps. */
GF_HD void gf_inverse_covariance(gf_cov_mode mode, const double c[6], double eps,
                                 double p[6]) {
    if (mode == GF_COV_DIAG) {
        p[GF_XX] = exp(-2.0 * c[0]);
        p[GF_YY] = exp(-2.0 * c[1]);
        p[GF_ZZ] = exp(-2.0 * c[2]);
        p[GF_XY] = p[GF_XZ] = p[GF_YZ] = 0.0;
        return;
    }
    double l[6];
    gf_cholesky_factor(c, l);
    const double s00 = l[0] * l[0] + eps;
    const double s01 = l[0] * l[1];
    const double s02 = l[0] * l[3];
    const double s11 = l[1] * l[1] + l[2] * l[2] + eps;
    const double s12 = l[1] * l[3] + l[2] * l[4];
    const double s22 = l[3] * l[3] + l[4] * l[4] + l[5] * l[5] + eps;
    const double a00 = s11 * s22 - s12 * s12;
    const double a01 = s02 * s12 - s01 * s22;
    const double a02 = s01 * s12 - s02 * s11;
    const double a11 = s00 * s22 - s02 * s02;
    const double a12 = s01 * s02 - s00 * s12;
    const double a22 = s00 * s11 - s01 * s01;
    const double inv_det = 1.0 / (s00 * a00 + s01 * a01 + s02 * a02);
    p[GF_XX] = a00 * inv_det;
    p[GF_YY] = a11 * inv_det;
    p[GF_ZZ] = a22 * inv_det;
    p[GF_XY] = a01 * inv_det;
    p[GF_XZ] = a02 * inv_det;
    p[GF_YZ] = a12 * inv_det;
}

/* y = S x for a symmetric S in 6-entry form. */
GF_HD void gf_sym_mul_vec(const double s[6], const double x[3], double y[3]) {
    y[0] = s[GF_XX] * x[0] + s[GF_XY] * x[1] + s[GF_XZ] * x[2];
    y[1] = s[GF_XY] * x[0] + s[GF_YY] * x[1] + s[GF_YZ] * x[2];
    y[2] = s[GF_XZ] * x[0] + s[GF_YZ] * x[1] + s[GF_ZZ] * x[2];
}

/*
 * Chain rule of one Gaussian, from its pair sums (GF_NUM_SUMS, see above) back to its
 * parameters.  With P = Sigma^{-1}:
 *     grad_w     = S0
 *     grad_mu    = w P S1
 *     grad_P     = -w/2 S2                    (P's 9 entries taken as independent)
 *     grad_Sigma = -P grad_P P = w/2 P S2 P
 *     full: grad_L = 2 grad_Sigma L, then d L_ii / d c = L_ii on the diagonal
 *     diag: grad_s_i = w S2_ii P_ii
 * Any output pointer may be NULL (not wanted).
 */
GF_HD void gf_gaussian_vjp(gf_cov_mode mode, const double c[6], double eps, double w,
                           const double sums[GF_NUM_SUMS], double grad_mean[3],
                           double grad_c[6], double *grad_w) {
    if (grad_w) *grad_w = sums[0];
    if (!grad_mean && !grad_c) return;
    double p[6];
    gf_inverse_covariance(mode, c, eps, p);
    if (grad_mean) {
        gf_sym_mul_vec(p, sums + 1, grad_mean);
        grad_mean[0] *= w;
        grad_mean[1] *= w;
        grad_mean[2] *= w;
    }
    if (!grad_c) return;
    const double *s2 = sums + 4;
    if (mode == GF_COV_DIAG) {
        grad_c[0] = w * s2[GF_XX] * p[GF_XX];
        grad_c[1] = w * s2[GF_YY] * p[GF_YY];
        grad_c[2] = w * s2[GF_ZZ] * p[GF_ZZ];
        return;
    }
    /* M = P S2 (a general 3x3), then G = w/2 M P, symmetric up to rounding. */
    double m[3][3];
    for (int j = 0; j < 3; ++j) {
        const double col[3] = {
            j == 0 ? s2[GF_XX] : j == 1 ? s2[GF_XY] : s2[GF_XZ],
            j == 0 ? s2[GF_XY] : j == 1 ? s2[GF_YY] : s2[GF_YZ],
            j == 0 ? s2[GF_XZ] : j == 1 ? s2[GF_YZ] : s2[GF_ZZ]};
        double out[3];
        gf_sym_mul_vec(p, col, out);
        m[0][j] = out[0];
        m[1][j] = out[1];
        m[2][j] = out[2];
    }
    double g[3][3];
    for (int i = 0; i < 3; ++i) {
        double out[3];
        /* row i of M P = P (row i of M) since P is symmetric */
        gf_sym_mul_vec(p, m[i], out);
        g[i][0] = 0.5 * w * out[0];
        g[i][1] = 0.5 * w * out[1];
        g[i][2] = 0.5 * w * out[2];
    }
    double l[6];
    gf_cholesky_factor(c, l);
    /* grad_L = (G + G^T) L, lower triangle only. */
    const double gs00 = 2.0 * g[0][0], gs11 = 2.0 * g[1][1], gs22 = 2.0 * g[2][2];
    const double gs01 = g[0][1] + g[1][0], gs02 = g[0][2] + g[2][0], gs12 = g[1][2] + g[2][1];
    const double gl00 = gs00 * l[0] + gs01 * l[1] + gs02 * l[3];
    const double gl10 = gs01 * l[0] + gs11 * l[1] + gs12 * l[3];
    const double gl11 = gs11 * l[2] + gs12 * l[4];
    const double gl20 = gs02 * l[0] + gs12 * l[1] + gs22 * l[3];
    const double gl21 = gs12 * l[2] + gs22 * l[4];
    const double gl22 = gs22 * l[5];
    grad_c[0] = gl00 * l[0];
    grad_c[1] = gl10;
    grad_c[2] = gl11 * l[2];
    grad_c[3] = gl20;
    grad_c[4] = gl21;
    grad_c[5] = gl22 * l[5];
}

/* Per-type pair maths.  GF_TYPE names a type, GF_FN a function; in C both carry the
 * dtype suffix, in C++ (the CUDA kernels) functions are overloads without it. */
#define GF_T float
#define GF_T_IS_FLOAT 1
#define GF_TYPE(name) name##_f32
#ifdef __cplusplus
#define GF_FN(name) name
#else
#define GF_FN(name) name##_f32
#endif
#include "gf_math_template.h"
#undef GF_T
#undef GF_T_IS_FLOAT
#undef GF_TYPE
#undef GF_FN

#define GF_T double
#define GF_T_IS_FLOAT 0
#define GF_TYPE(name) name##_f64
#ifdef __cplusplus
#define GF_FN(name) name
#else
#define GF_FN(name) name##_f64
#endif
#include "gf_math_template.h"
#undef GF_T
#undef GF_T_IS_FLOAT
#undef GF_TYPE
#undef GF_FN

#endif /* GF_MATH_H */
