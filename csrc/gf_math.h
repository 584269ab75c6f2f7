// SPDX-License-Identifier: Apache-2.0
/*
 * gf_math.h - the maths of gaussfield, shared by the CPU loops (C11) and the CUDA
 * kernels (nvcc).  Nothing else computes a Gaussian, so the two paths cannot drift.
 *
 * Two levels:
 *
 *  - Per Gaussian, in double whatever the data type (it runs N times per call, not
 *    B x N times): the covariance front-ends (gf_frontends.h, included below: one pair
 *    of functions per parameterisation, parameters -> the whitening factor M and the
 *    gradient of the parameters from the pair sums) and the chain rule from the pair
 *    sums back to the mean (gf_gaussian_vjp).  M is lower triangular, Sigma^{-1} =
 *    M^T M, M = chol(Sigma)^{-1}.  The pair maths never sees the parameterisation.
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

#include "gf_frontends.h"

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
 *     d g / d mu = g M^T u   -> grad_mu = M^T S_u' / a,
 * and the front-end's VJP (gf_frontend_vjp) turns S_u'u' into the parameters' gradient.
 * The pair sums already carry t = G w.  Either output may be NULL (not wanted).
 */
GF_HD void gf_gaussian_vjp(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS], double eps,
                           const double sums[GF_NUM_SUMS], double grad_mean[3],
                           double grad_c[GF_COV_MAX_PARAMS]) {
    if (!grad_mean && !grad_c) return;
    double m[6];
    gf_frontend_whitening(mode, c, eps, m);
    if (grad_mean) {
        gf_lower_t_mul_vec(m, sums, grad_mean);
        for (int k = 0; k < 3; ++k) grad_mean[k] *= 1.0 / GF_SQRT_HALF_LOG2E;
    }
    if (grad_c) gf_frontend_vjp(mode, c, eps, m, sums + 3, grad_c);
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
