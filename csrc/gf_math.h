/*
 * gf_math.h - the maths of gaussfield, shared by the CPU loops (C11) and the CUDA
 * kernels (nvcc).  Nothing else computes a Gaussian, so the two paths cannot drift.
 *
 * Two levels:
 *
 *  - Per Gaussian, in double whatever the data type (it runs N times per call, not
 *    B x N times): the covariance front-ends (cov_tril, log_scales) that give Sigma and
 *    the whitening factor M (lower triangular, Sigma^{-1} = M^T M, M = chol(Sigma)^{-1}),
 *    and the chain rule from the pair sums back to mean and covariance parameters.
 *    A front-end is two functions: parameters -> (Sigma, M), and grad_Sigma -> grad of
 *    the parameters.  The pair maths never sees the parameterisation.
 *
 *  - Per (point, Gaussian) pair, in the data type T: gf_math_template.h, included
 *    below once for float (suffix _f32) and once for double (suffix _f64).  It sees a
 *    record per Gaussian holding (mean, weight, M, cutoff) only.
 *
 * Whitening.  The exponent is q = |M d|^2 with d = x - mu: a sum of three squares,
 * never negative, and without the cancellation of d^T Sigma^{-1} d, whose terms are of
 * size |Sigma^{-1}| |d|^2 (1 / sigma_min^2) where u = M d has terms of size
 * 1 / sigma_min only.  The record holds M' = a M with a = sqrt(log2(e) / 2), so that
 * exp(-q / 2) = 2^(-|M' d|^2): a bare exp2 (one MUFU.EX2 on the GPU).  Primed
 * quantities below (u' = M' d, q' = |u'|^2) are in these folded units.
 *
 * Cutoff.  With a Mahalanobis radius k, a pair counts iff q <= k^2, i.e. the exponent
 * e = -q' >= -a^2 k^2 (the record's nkq; -inf without a cutoff).  gf_pair_keep decides
 * it from e, which gf_pair_whiten computes with its contraction pinned (gf_fma), so the
 * forward and every backward kernel on one device decide the same pair set.
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

/* a^2 = log2(e) / 2, a = sqrt(log2(e) / 2), and 1 / a^2 = 2 ln 2, to double precision. */
#define GF_HALF_LOG2E 0.72134752044448170368
#define GF_SQRT_HALF_LOG2E 0.84932180028801904272
#define GF_TWO_LN2 1.38629436111989061883

/* Symmetric 3x3 matrices are stored as their 6 unique entries in this order. */
enum { GF_XX = 0, GF_YY = 1, GF_ZZ = 2, GF_XY = 3, GF_XZ = 4, GF_YZ = 5 };
/* Lower-triangular 3x3 matrices (L, M) as their 6 entries in row order. */
enum { GF_L00 = 0, GF_L10 = 1, GF_L11 = 2, GF_L20 = 3, GF_L21 = 4, GF_L22 = 5 };

/* The per-Gaussian sums that the backward accumulates over points (folded units), for
 * a pair with value g (0 outside the cutoff), u' = M' d and t = sum_c G_c w_c (grad_out
 * times weight, summed over channels):
 *     [0..2] sum t g u',   [3..8] sum t g u' u'^T (GF_XX..GF_YZ order).
 * The weights' gradient, sum G_c g per channel, is summed beside them. */
#define GF_NUM_SUMS 9
/* The double backward's per-Gaussian sums (gf_pair_second_sums_add). */
#define GF_NUM_SUMS2 18

/* Parameters per Gaussian of a cov_mode, host and device (gf_cov_num_params). */
GF_HD int gf_cov_params(gf_cov_mode mode) {
    return mode == GF_COV_DIAG       ? 3
           : mode == GF_COV_FULL     ? 6
           : mode == GF_COV_QUAT     ? 7
           : mode == GF_COV_WHITENED ? 9
                                     : 0;
}

/* The front-ends' parameter arrays (c, grad_c) hold this many values; a whitening
 * factor's front-end takes its 6 lower entries. */
#define GF_COV_MAX_PARAMS 7

/* Below this |q| a quaternion is not normalised but divided by it (3DGS normalises with
 * a floor too): q = 0 gives the identity rotation and finite gradients, never NaN. */
#define GF_QUAT_FLOOR 1e-12

/* The rotation R(n) of the unit quaternion n = q / max(|q|, floor), q = (w, x, y, z),
 * row-major, and the scale that normalised it. */
GF_HD void gf_quat_rotation(const double q[4], double r[9], double *norm) {
    const double len = sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    *norm = len > GF_QUAT_FLOOR ? len : GF_QUAT_FLOOR;
    const double w = q[0] / *norm, x = q[1] / *norm, y = q[2] / *norm, z = q[3] / *norm;
    r[0] = 1.0 - 2.0 * (y * y + z * z);
    r[1] = 2.0 * (x * y - w * z);
    r[2] = 2.0 * (x * z + w * y);
    r[3] = 2.0 * (x * y + w * z);
    r[4] = 1.0 - 2.0 * (x * x + z * z);
    r[5] = 2.0 * (y * z - w * x);
    r[6] = 2.0 * (x * z - w * y);
    r[7] = 2.0 * (y * z + w * x);
    r[8] = 1.0 - 2.0 * (x * x + y * y);
}

/* Where a whitening factor's lower entries (GF_L00.. order) lie among its 9 (row-major). */
#define GF_WHITENED_AT(e) ((e) == 0 ? 0 : (e) == 1 ? 3 : (e) == 2 ? 4 : (e) == 3 ? 6 : (e) == 4 ? 7 : 8)

/* ---- front-ends: covariance parameters -> Sigma ----------------------------------- */

/* The lower-triangular factor L of a GF_COV_FULL Gaussian from its 6 parameters. */
GF_HD void gf_cholesky_factor(const double c[GF_COV_MAX_PARAMS], double l[6]) {
    l[GF_L00] = exp(c[0]);
    l[GF_L10] = c[1];
    l[GF_L11] = exp(c[2]);
    l[GF_L20] = c[3];
    l[GF_L21] = c[4];
    l[GF_L22] = exp(c[5]);
}

/* K = M^{-1} for a lower-triangular M (6 entries each, GF_L00.. order). */
GF_HD void gf_lower_inverse(const double m[6], double k[6]) {
    k[GF_L00] = 1.0 / m[GF_L00];
    k[GF_L11] = 1.0 / m[GF_L11];
    k[GF_L22] = 1.0 / m[GF_L22];
    k[GF_L10] = -m[GF_L10] * k[GF_L00] * k[GF_L11];
    k[GF_L21] = -m[GF_L21] * k[GF_L11] * k[GF_L22];
    k[GF_L20] = -(m[GF_L20] * k[GF_L00] + m[GF_L21] * k[GF_L10]) * k[GF_L22];
}

/* Sigma (6 unique entries) of one Gaussian from its cov_mode parameters c.
 *   full: Sigma = L L^T + eps I;   diag: Sigma = diag(e^{2 s}) (no eps);
 *   quaternion: Sigma = R diag(e^{2 s}) R^T, R = R(q / |q|) (no eps);
 *   whitened: Sigma = K K^T, K = M^{-1} (no eps). */
GF_HD void gf_covariance(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS], double eps,
                          double s[6]) {
    if (mode == GF_COV_WHITENED) {
        double k[6];
        gf_lower_inverse(c, k);
        s[GF_XX] = k[0] * k[0];
        s[GF_XY] = k[0] * k[1];
        s[GF_XZ] = k[0] * k[3];
        s[GF_YY] = k[1] * k[1] + k[2] * k[2];
        s[GF_YZ] = k[1] * k[3] + k[2] * k[4];
        s[GF_ZZ] = k[3] * k[3] + k[4] * k[4] + k[5] * k[5];
        return;
    }
    if (mode == GF_COV_QUAT) {
        double r[9], norm;
        gf_quat_rotation(c, r, &norm);
        const double d[3] = {exp(2.0 * c[4]), exp(2.0 * c[5]), exp(2.0 * c[6])};
        double full[3][3];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
                full[i][j] = r[3 * i] * d[0] * r[3 * j] + r[3 * i + 1] * d[1] * r[3 * j + 1] +
                             r[3 * i + 2] * d[2] * r[3 * j + 2];
        s[GF_XX] = full[0][0];
        s[GF_YY] = full[1][1];
        s[GF_ZZ] = full[2][2];
        s[GF_XY] = 0.5 * (full[0][1] + full[1][0]);
        s[GF_XZ] = 0.5 * (full[0][2] + full[2][0]);
        s[GF_YZ] = 0.5 * (full[1][2] + full[2][1]);
        return;
    }
    if (mode == GF_COV_DIAG) {
        s[GF_XX] = exp(2.0 * c[0]);
        s[GF_YY] = exp(2.0 * c[1]);
        s[GF_ZZ] = exp(2.0 * c[2]);
        s[GF_XY] = s[GF_XZ] = s[GF_YZ] = 0.0;
        return;
    }
    double l[6];
    gf_cholesky_factor(c, l);
    s[GF_XX] = l[0] * l[0] + eps;
    s[GF_XY] = l[0] * l[1];
    s[GF_XZ] = l[0] * l[3];
    s[GF_YY] = l[1] * l[1] + l[2] * l[2] + eps;
    s[GF_YZ] = l[1] * l[3] + l[2] * l[4];
    s[GF_ZZ] = l[3] * l[3] + l[4] * l[4] + l[5] * l[5] + eps;
}

/* The whitening factor M = chol(Sigma)^{-1} (lower triangular, Sigma^{-1} = M^T M).
 * Diagonal: M = diag(e^{-s}) exactly.  Full without eps: chol(Sigma) = L, so M = L^{-1}
 * straight from the parameters.  Full with eps: Cholesky of Sigma in double.  A Sigma
 * that is not positive definite in double gives NaN entries (never the case for
 * finite parameters: Sigma = L L^T + eps I with L's diagonal > 0). */
GF_HD void gf_whitening(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS], double eps,
                         double m[6]) {
    if (mode == GF_COV_WHITENED) {
        for (int k = 0; k < 6; ++k) m[k] = c[k];
        return;
    }
    if (mode == GF_COV_DIAG) {
        m[GF_L00] = exp(-c[0]);
        m[GF_L11] = exp(-c[1]);
        m[GF_L22] = exp(-c[2]);
        m[GF_L10] = m[GF_L20] = m[GF_L21] = 0.0;
        return;
    }
    double k[6]; /* chol(Sigma) */
    if (mode == GF_COV_FULL && eps == 0.0) {
        gf_cholesky_factor(c, k);
    } else {
        double s[6];
        gf_covariance(mode, c, eps, s);
        k[GF_L00] = sqrt(s[GF_XX]);
        k[GF_L10] = s[GF_XY] / k[GF_L00];
        k[GF_L20] = s[GF_XZ] / k[GF_L00];
        k[GF_L11] = sqrt(s[GF_YY] - k[GF_L10] * k[GF_L10]);
        k[GF_L21] = (s[GF_YZ] - k[GF_L20] * k[GF_L10]) / k[GF_L11];
        k[GF_L22] = sqrt(s[GF_ZZ] - k[GF_L20] * k[GF_L20] - k[GF_L21] * k[GF_L21]);
    }
    gf_lower_inverse(k, m);
}

/* ---- front-ends: grad_Sigma -> gradient of the parameters ------------------------- */

/* grad_c from grad_Sigma (6 unique entries; the gradient of a symmetric matrix given
 * as the derivative with respect to each of its 9 entries, symmetric).
 *   full: grad_L = 2 grad_Sigma L, then d L_ii / d c = L_ii on the diagonal;
 *   diag: grad_s_i = 2 grad_Sigma_ii Sigma_ii. */
GF_HD void gf_covariance_vjp(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS],
                             const double gs[6], double grad_c[GF_COV_MAX_PARAMS]) {
    if (mode == GF_COV_QUAT) {
        /* Sigma = R D R^T: grad_R = 2 G R D, grad_s_i = 2 D_ii (R^T G R)_ii; then through
         * R(n) (quadratic in n) and n = q / max(|q|, floor) */
        double r[9], norm;
        gf_quat_rotation(c, r, &norm);
        const double d[3] = {exp(2.0 * c[4]), exp(2.0 * c[5]), exp(2.0 * c[6])};
        const double g[3][3] = {{gs[GF_XX], gs[GF_XY], gs[GF_XZ]},
                                {gs[GF_XY], gs[GF_YY], gs[GF_YZ]},
                                {gs[GF_XZ], gs[GF_YZ], gs[GF_ZZ]}};
        double gr[9], gtr[3][3]; /* grad_R, and G R */
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                double acc = 0.0;
                for (int k = 0; k < 3; ++k) acc += g[i][k] * r[3 * k + j];
                gtr[i][j] = acc;
                gr[3 * i + j] = 2.0 * acc * d[j];
            }
        for (int j = 0; j < 3; ++j) {
            double acc = 0.0; /* (R^T G R)_jj */
            for (int i = 0; i < 3; ++i) acc += r[3 * i + j] * gtr[i][j];
            grad_c[4 + j] = 2.0 * d[j] * acc;
        }
        const double w = c[0] / norm, x = c[1] / norm, y = c[2] / norm, z = c[3] / norm;
        /* d R / d n, row-major, for n = w, x, y, z */
        const double dw[9] = {0, -2 * z, 2 * y, 2 * z, 0, -2 * x, -2 * y, 2 * x, 0};
        const double dx[9] = {0, 2 * y, 2 * z, 2 * y, -4 * x, -2 * w, 2 * z, 2 * w, -4 * x};
        const double dy[9] = {-4 * y, 2 * x, 2 * w, 2 * x, 0, 2 * z, -2 * w, 2 * z, -4 * y};
        const double dz[9] = {-4 * z, -2 * w, 2 * x, 2 * w, -4 * z, 2 * y, 2 * x, 2 * y, 0};
        double gn[4] = {0.0, 0.0, 0.0, 0.0};
        for (int e = 0; e < 9; ++e) {
            gn[0] += gr[e] * dw[e];
            gn[1] += gr[e] * dx[e];
            gn[2] += gr[e] * dy[e];
            gn[3] += gr[e] * dz[e];
        }
        /* n = q / |q| above the floor: grad_q = (grad_n - n (n . grad_n)) / |q|;
         * below it n = q / floor: grad_q = grad_n / floor */
        const double len2 = c[0] * c[0] + c[1] * c[1] + c[2] * c[2] + c[3] * c[3];
        const double n[4] = {w, x, y, z};
        const double dot = len2 > GF_QUAT_FLOOR * GF_QUAT_FLOOR
                               ? n[0] * gn[0] + n[1] * gn[1] + n[2] * gn[2] + n[3] * gn[3]
                               : 0.0;
        for (int k = 0; k < 4; ++k) grad_c[k] = (gn[k] - n[k] * dot) / norm;
        return;
    }
    if (mode == GF_COV_DIAG) {
        grad_c[0] = 2.0 * gs[GF_XX] * exp(2.0 * c[0]);
        grad_c[1] = 2.0 * gs[GF_YY] * exp(2.0 * c[1]);
        grad_c[2] = 2.0 * gs[GF_ZZ] * exp(2.0 * c[2]);
        return;
    }
    double l[6];
    gf_cholesky_factor(c, l);
    const double g00 = 2.0 * gs[GF_XX], g11 = 2.0 * gs[GF_YY], g22 = 2.0 * gs[GF_ZZ];
    const double g01 = 2.0 * gs[GF_XY], g02 = 2.0 * gs[GF_XZ], g12 = 2.0 * gs[GF_YZ];
    /* grad_L = (2 grad_Sigma) L, lower triangle only */
    const double gl00 = g00 * l[0] + g01 * l[1] + g02 * l[3];
    const double gl10 = g01 * l[0] + g11 * l[1] + g12 * l[3];
    const double gl11 = g11 * l[2] + g12 * l[4];
    const double gl20 = g02 * l[0] + g12 * l[1] + g22 * l[3];
    const double gl21 = g12 * l[2] + g22 * l[4];
    const double gl22 = g22 * l[5];
    grad_c[0] = gl00 * l[0];
    grad_c[1] = gl10;
    grad_c[2] = gl11 * l[2];
    grad_c[3] = gl20;
    grad_c[4] = gl21;
    grad_c[5] = gl22 * l[5];
}

/* ---- chain rule of one Gaussian ---------------------------------------------------- */

/* y = M^T x for a lower-triangular M. */
GF_HD void gf_lower_t_mul_vec(const double m[6], const double x[3], double y[3]) {
    y[0] = m[GF_L00] * x[0] + m[GF_L10] * x[1] + m[GF_L20] * x[2];
    y[1] = m[GF_L11] * x[1] + m[GF_L21] * x[2];
    y[2] = m[GF_L22] * x[2];
}

/*
 * From one Gaussian's pair sums (GF_NUM_SUMS, folded units, see above) to the gradients
 * of its mean and covariance parameters.  With g = exp(-|u|^2 / 2), u = M d:
 *     d g / d mu    = g M^T u                    -> grad_mu    = M^T S_u' / a
 *     d g / d Sigma = g/2 M^T u u^T M            -> grad_Sigma = M^T S_u'u' M / (2 a^2)
 * then the front-end's gf_covariance_vjp.  The pair sums already carry t = G w.
 * Either output may be NULL (not wanted).
 */
GF_HD void gf_gaussian_vjp(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS], double eps,
                           const double sums[GF_NUM_SUMS], double grad_mean[3],
                           double grad_c[GF_COV_MAX_PARAMS]) {
    if (!grad_mean && !grad_c) return;
    double m[6];
    gf_whitening(mode, c, eps, m);
    if (grad_mean) {
        gf_lower_t_mul_vec(m, sums, grad_mean);
        for (int k = 0; k < 3; ++k) grad_mean[k] *= 1.0 / GF_SQRT_HALF_LOG2E;
    }
    if (!grad_c) return;
    const double *s = sums + 3;
    if (mode == GF_COV_WHITENED) {
        /* d/dM of -|M d|^2 / 2 is -u d^T = -u u^T K^T (d = K u, K = M^{-1}): grad_M is
         * the lower triangle of -S_uu K^T, S_uu = S_u'u' / a^2 */
        double k[6];
        gf_lower_inverse(m, k);
        const double su[3][3] = {{s[GF_XX], s[GF_XY], s[GF_XZ]},
                                 {s[GF_XY], s[GF_YY], s[GF_YZ]},
                                 {s[GF_XZ], s[GF_YZ], s[GF_ZZ]}};
        const double kk[3][3] = {{k[GF_L00], 0.0, 0.0},
                                 {k[GF_L10], k[GF_L11], 0.0},
                                 {k[GF_L20], k[GF_L21], k[GF_L22]}};
        /* entry (i, j), i >= j, in GF_L00.. order */
        int e = 0;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j <= i; ++j, ++e) {
                double acc = 0.0;
                for (int q = 0; q < 3; ++q) acc += su[i][q] * kk[j][q];
                grad_c[e] = -acc / GF_HALF_LOG2E;
            }
        return;
    }
    /* W = S M (S symmetric), then grad_Sigma = M^T W / (2 a^2) */
    const double sm[3][3] = {{s[GF_XX], s[GF_XY], s[GF_XZ]},
                             {s[GF_XY], s[GF_YY], s[GF_YZ]},
                             {s[GF_XZ], s[GF_YZ], s[GF_ZZ]}};
    const double mm[3][3] = {{m[GF_L00], 0.0, 0.0},
                             {m[GF_L10], m[GF_L11], 0.0},
                             {m[GF_L20], m[GF_L21], m[GF_L22]}};
    double w[3][3], g[3][3];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            double acc = 0.0;
            for (int k = 0; k < 3; ++k) acc += sm[i][k] * mm[k][j];
            w[i][j] = acc;
        }
    const double scale = 0.5 / GF_HALF_LOG2E;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            double acc = 0.0;
            for (int k = 0; k < 3; ++k) acc += mm[k][i] * w[k][j];
            g[i][j] = scale * acc;
        }
    /* symmetric up to rounding: take the symmetric part */
    const double gs[6] = {g[0][0], g[1][1], g[2][2], 0.5 * (g[0][1] + g[1][0]),
                          0.5 * (g[0][2] + g[2][0]), 0.5 * (g[1][2] + g[2][1])};
    gf_covariance_vjp(mode, c, gs, grad_c);
}

/* Whether a gf_params cutoff value asks for a cutoff (0 and +inf do not). */
GF_HD int gf_has_cutoff(double cutoff) { return cutoff > 0.0 && cutoff <= DBL_MAX; }

/* The cutoff threshold in folded units: a^2 k^2, +inf without a cutoff (cutoff 0 or
 * +inf, see gf_params). */
GF_HD double gf_cutoff_threshold(double cutoff) {
    if (!gf_has_cutoff(cutoff)) return (double)INFINITY;
    return GF_HALF_LOG2E * cutoff * cutoff;
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
