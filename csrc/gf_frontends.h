// SPDX-License-Identifier: Apache-2.0
/*
 * gf_frontends.h - the covariance parameterisations ("front-ends"), host and device,
 * included by gf_math.h (use that).  Per Gaussian, in double, once per call.
 *
 * Each parameterisation is a pair of functions:
 *
 *   gf_<name>_whitening(c, eps, m)       its parameters c -> the whitening factor M
 *                                         (lower triangular, Sigma^{-1} = M^T M,
 *                                         M = chol(Sigma)^{-1}; 6 entries, GF_L00..)
 *   gf_<name>_vjp(c, eps, m, suu, grad_c) the gradient of its parameters from the pair
 *                                         sums S_u'u' (folded units, GF_XX.. order; see
 *                                         gf_math.h) and its M
 *
 * and one switch of each (gf_frontend_whitening, gf_frontend_vjp) picks them by cov_mode.
 * The pair maths and the kernels see only M: a new parameterisation is its pair here,
 * its case in the switches and in the tables at the end, and its validation
 * (torch_ext/ops.cpp, the fakes of python/gaussfield/autograd.py).
 *
 *   cov_tril   GF_COV_FULL [N, 6]  L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]],
 *                                  Sigma = L L^T + eps I
 *   log_scales GF_COV_DIAG [N, 3]  Sigma = diag(e^{2 s})            (no eps)
 *   quaternion GF_COV_QUAT [N, 7]  (w, x, y, z, s0, s1, s2), Sigma = R(n) diag(e^{2 s})
 *                                  R(n)^T, n = q / max(|q|, floor)  (no eps)
 *   sigma      GF_COV_SIGMA [N, 9] Sigma = (S + S^T) / 2 of the row-major 3x3 S (no eps);
 *                                  one that is not positive definite gives a NaN M
 *   whitened   GF_COV_WHITENED [N, 9]  M itself, its lower triangle read from the
 *                                  row-major 3x3 (no eps)
 */
#ifndef GF_FRONTENDS_H
#define GF_FRONTENDS_H

#ifndef GF_MATH_H
#error "include gf_math.h, not gf_frontends.h"
#endif

/* The front-ends' parameter arrays (c, grad_c) hold this many values. */
#define GF_COV_MAX_PARAMS 9

/* Below this |q| a quaternion is not normalised but divided by it (3DGS normalises with
 * a floor too): q = 0 gives the identity rotation and finite gradients, never NaN. */
#define GF_QUAT_FLOOR 1e-12

/* ---- what several front-ends share --------------------------------------------- */

/* K = M^{-1} for a lower-triangular M (6 entries each, GF_L00.. order). */
GF_HD void gf_lower_inverse(const double m[6], double k[6]) {
    k[GF_L00] = 1.0 / m[GF_L00];
    k[GF_L11] = 1.0 / m[GF_L11];
    k[GF_L22] = 1.0 / m[GF_L22];
    k[GF_L10] = -m[GF_L10] * k[GF_L00] * k[GF_L11];
    k[GF_L21] = -m[GF_L21] * k[GF_L11] * k[GF_L22];
    k[GF_L20] = -(m[GF_L20] * k[GF_L00] + m[GF_L21] * k[GF_L10]) * k[GF_L22];
}

/* M = chol(Sigma)^{-1} from Sigma (6 unique entries): the Cholesky factor in double,
 * then its inverse.  Returns whether every pivot (the radicand of each diagonal entry of
 * the factor) is > 0, i.e. Sigma is positive definite in double; where one is not (or is
 * NaN), the entries of M are whatever the arithmetic gives (NaN for a negative pivot). */
GF_HD int gf_whitening_of_covariance(const double s[6], double m[6]) {
    double k[6];
    const double p0 = s[GF_XX];
    k[GF_L00] = sqrt(p0);
    k[GF_L10] = s[GF_XY] / k[GF_L00];
    k[GF_L20] = s[GF_XZ] / k[GF_L00];
    const double p1 = s[GF_YY] - k[GF_L10] * k[GF_L10];
    k[GF_L11] = sqrt(p1);
    k[GF_L21] = (s[GF_YZ] - k[GF_L20] * k[GF_L10]) / k[GF_L11];
    const double p2 = s[GF_ZZ] - k[GF_L20] * k[GF_L20] - k[GF_L21] * k[GF_L21];
    k[GF_L22] = sqrt(p2);
    gf_lower_inverse(k, m);
    return p0 > 0.0 && p1 > 0.0 && p2 > 0.0;
}

/* grad_Sigma (6 unique entries; the derivative with respect to each of a symmetric
 * matrix's 9 entries, symmetric) of the front-ends that go through Sigma, from the pair
 * sums: d g / d Sigma = g/2 M^T u u^T M, so grad_Sigma = M^T S_u'u' M / (2 a^2). */
GF_HD void gf_covariance_gradient(const double m[6], const double s[6], double gs[6]) {
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
    gs[GF_XX] = g[0][0];
    gs[GF_YY] = g[1][1];
    gs[GF_ZZ] = g[2][2];
    gs[GF_XY] = 0.5 * (g[0][1] + g[1][0]);
    gs[GF_XZ] = 0.5 * (g[0][2] + g[2][0]);
    gs[GF_YZ] = 0.5 * (g[1][2] + g[2][1]);
}

/* ---- cov_tril (GF_COV_FULL) ------------------------------------------------------ */

/* The lower-triangular factor L from the 6 parameters. */
GF_HD void gf_full_factor(const double c[GF_COV_MAX_PARAMS], double l[6]) {
    l[GF_L00] = exp(c[0]);
    l[GF_L10] = c[1];
    l[GF_L11] = exp(c[2]);
    l[GF_L20] = c[3];
    l[GF_L21] = c[4];
    l[GF_L22] = exp(c[5]);
}

/* Sigma = L L^T + eps I. */
GF_HD void gf_full_covariance(const double c[GF_COV_MAX_PARAMS], double eps, double s[6]) {
    double l[6];
    gf_full_factor(c, l);
    s[GF_XX] = l[0] * l[0] + eps;
    s[GF_XY] = l[0] * l[1];
    s[GF_XZ] = l[0] * l[3];
    s[GF_YY] = l[1] * l[1] + l[2] * l[2] + eps;
    s[GF_YZ] = l[1] * l[3] + l[2] * l[4];
    s[GF_ZZ] = l[3] * l[3] + l[4] * l[4] + l[5] * l[5] + eps;
}

/* Without eps chol(Sigma) = L, so M = L^{-1} straight from the parameters; with eps, the
 * Cholesky factor of Sigma in double (positive definite for finite parameters: L's
 * diagonal is > 0). */
GF_HD void gf_full_whitening(const double c[GF_COV_MAX_PARAMS], double eps, double m[6]) {
    if (eps == 0.0) {
        double l[6];
        gf_full_factor(c, l);
        gf_lower_inverse(l, m);
        return;
    }
    double s[6];
    gf_full_covariance(c, eps, s);
    gf_whitening_of_covariance(s, m);
}

/* grad_L = 2 grad_Sigma L, then d L_ii / d c = L_ii on the diagonal. */
GF_HD void gf_full_vjp(const double c[GF_COV_MAX_PARAMS], double eps, const double m[6],
                       const double suu[6], double grad_c[GF_COV_MAX_PARAMS]) {
    (void)eps;
    double gs[6];
    gf_covariance_gradient(m, suu, gs);
    double l[6];
    gf_full_factor(c, l);
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

/* ---- log_scales (GF_COV_DIAG) ---------------------------------------------------- */

/* Sigma = diag(e^{2 s}). */
GF_HD void gf_diag_covariance(const double c[GF_COV_MAX_PARAMS], double s[6]) {
    s[GF_XX] = exp(2.0 * c[0]);
    s[GF_YY] = exp(2.0 * c[1]);
    s[GF_ZZ] = exp(2.0 * c[2]);
    s[GF_XY] = s[GF_XZ] = s[GF_YZ] = 0.0;
}

/* M = diag(e^{-s}) exactly. */
GF_HD void gf_diag_whitening(const double c[GF_COV_MAX_PARAMS], double eps, double m[6]) {
    (void)eps;
    m[GF_L00] = exp(-c[0]);
    m[GF_L11] = exp(-c[1]);
    m[GF_L22] = exp(-c[2]);
    m[GF_L10] = m[GF_L20] = m[GF_L21] = 0.0;
}

/* grad_s_i = 2 grad_Sigma_ii Sigma_ii. */
GF_HD void gf_diag_vjp(const double c[GF_COV_MAX_PARAMS], double eps, const double m[6],
                       const double suu[6], double grad_c[GF_COV_MAX_PARAMS]) {
    (void)eps;
    double gs[6];
    gf_covariance_gradient(m, suu, gs);
    grad_c[0] = 2.0 * gs[GF_XX] * exp(2.0 * c[0]);
    grad_c[1] = 2.0 * gs[GF_YY] * exp(2.0 * c[1]);
    grad_c[2] = 2.0 * gs[GF_ZZ] * exp(2.0 * c[2]);
}

/* ---- quaternion and log-scales (GF_COV_QUAT, 3D Gaussian Splatting) ------------- */

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

/* Sigma = R diag(e^{2 s}) R^T. */
GF_HD void gf_quat_covariance(const double c[GF_COV_MAX_PARAMS], double s[6]) {
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
}

GF_HD void gf_quat_whitening(const double c[GF_COV_MAX_PARAMS], double eps, double m[6]) {
    (void)eps;
    double s[6];
    gf_quat_covariance(c, s);
    gf_whitening_of_covariance(s, m);
}

/* Sigma = R D R^T: grad_R = 2 G R D, grad_s_i = 2 D_ii (R^T G R)_ii; then through R(n)
 * (quadratic in n) and n = q / max(|q|, floor). */
GF_HD void gf_quat_vjp(const double c[GF_COV_MAX_PARAMS], double eps, const double m[6],
                       const double suu[6], double grad_c[GF_COV_MAX_PARAMS]) {
    (void)eps;
    double gs[6];
    gf_covariance_gradient(m, suu, gs);
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
}

/* ---- a covariance matrix (GF_COV_SIGMA) ------------------------------------------- */

/* Sigma = (S + S^T) / 2 of the row-major 3x3 S (c[0..8]): the symmetric part, so that the
 * value is a function of the symmetric part alone and its gradient is symmetric. */
GF_HD void gf_sigma_covariance(const double c[GF_COV_MAX_PARAMS], double s[6]) {
    s[GF_XX] = c[0];
    s[GF_YY] = c[4];
    s[GF_ZZ] = c[8];
    s[GF_XY] = 0.5 * (c[1] + c[3]);
    s[GF_XZ] = 0.5 * (c[2] + c[6]);
    s[GF_YZ] = 0.5 * (c[5] + c[7]);
}

/* M = chol(Sigma)^{-1}, all NaN where Sigma is not positive definite in double (a pivot
 * <= 0 or NaN): such a Gaussian gives NaN wherever it is evaluated, never a finite value
 * of another Gaussian.  (The torch layer refuses those eagerly; torch_ext/ops.cpp.) */
GF_HD void gf_sigma_whitening(const double c[GF_COV_MAX_PARAMS], double eps, double m[6]) {
    (void)eps;
    double s[6];
    gf_sigma_covariance(c, s);
    if (!gf_whitening_of_covariance(s, m))
        for (int k = 0; k < 6; ++k) m[k] = (double)NAN;
}

/* d f / d S_ij = (G_ij + G_ji) / 2 = G_ij for f(S) = F((S + S^T) / 2), G = d F / d Sigma
 * (symmetric, gf_covariance_gradient): every entry of the 3x3, symmetric. */
GF_HD void gf_sigma_vjp(const double c[GF_COV_MAX_PARAMS], double eps, const double m[6],
                        const double suu[6], double grad_c[GF_COV_MAX_PARAMS]) {
    (void)c, (void)eps;
    double gs[6];
    gf_covariance_gradient(m, suu, gs);
    grad_c[0] = gs[GF_XX];
    grad_c[4] = gs[GF_YY];
    grad_c[8] = gs[GF_ZZ];
    grad_c[1] = grad_c[3] = gs[GF_XY];
    grad_c[2] = grad_c[6] = gs[GF_XZ];
    grad_c[5] = grad_c[7] = gs[GF_YZ];
}

/* ---- the whitening factor itself (GF_COV_WHITENED) ------------------------------- */

GF_HD void gf_whitened_whitening(const double c[GF_COV_MAX_PARAMS], double eps, double m[6]) {
    (void)eps;
    for (int k = 0; k < 6; ++k) m[k] = c[k];
}

/* d/dM of -|M d|^2 / 2 is -u d^T = -u u^T K^T (d = K u, K = M^{-1}): grad_M is the lower
 * triangle of -S_uu K^T, S_uu = S_u'u' / a^2. */
GF_HD void gf_whitened_vjp(const double c[GF_COV_MAX_PARAMS], double eps, const double m[6],
                           const double suu[6], double grad_c[GF_COV_MAX_PARAMS]) {
    (void)c, (void)eps;
    double k[6];
    gf_lower_inverse(m, k);
    const double su[3][3] = {{suu[GF_XX], suu[GF_XY], suu[GF_XZ]},
                             {suu[GF_XY], suu[GF_YY], suu[GF_YZ]},
                             {suu[GF_XZ], suu[GF_YZ], suu[GF_ZZ]}};
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
}

/* ---- the switches ------------------------------------------------------------------ */

/* Values per Gaussian of a cov_mode in the cov array (its last dimension; a 3x3
 * matrix's 9 entries), 0 for an unknown mode (gf_cov_num_params). */
GF_HD int gf_cov_params(gf_cov_mode mode) {
    return mode == GF_COV_DIAG       ? 3
           : mode == GF_COV_FULL     ? 6
           : mode == GF_COV_QUAT     ? 7
           : mode == GF_COV_SIGMA    ? 9
           : mode == GF_COV_WHITENED ? 9
                                     : 0;
}

/* Parameters the front-end reads (c, grad_c): those values, less the whitening factor's
 * upper triangle (a covariance matrix's 9 are all read: its symmetric part). */
GF_HD int gf_frontend_params(gf_cov_mode mode) {
    return mode == GF_COV_WHITENED ? 6 : gf_cov_params(mode);
}

/* Where parameter k lies in a Gaussian's cov row: k itself, or for the whitening factor
 * the row-major place of its k-th lower entry (GF_L00.. order). */
GF_HD int gf_frontend_param_at(gf_cov_mode mode, int k) {
    if (mode != GF_COV_WHITENED) return k;
    return k == 0 ? 0 : k == 1 ? 3 : k == 2 ? 4 : k == 3 ? 6 : k == 4 ? 7 : 8;
}

GF_HD void gf_frontend_whitening(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS],
                                 double eps, double m[6]) {
    switch (mode) {
    case GF_COV_FULL: gf_full_whitening(c, eps, m); return;
    case GF_COV_DIAG: gf_diag_whitening(c, eps, m); return;
    case GF_COV_QUAT: gf_quat_whitening(c, eps, m); return;
    case GF_COV_SIGMA: gf_sigma_whitening(c, eps, m); return;
    case GF_COV_WHITENED: gf_whitened_whitening(c, eps, m); return;
    }
}

GF_HD void gf_frontend_vjp(gf_cov_mode mode, const double c[GF_COV_MAX_PARAMS], double eps,
                           const double m[6], const double suu[6],
                           double grad_c[GF_COV_MAX_PARAMS]) {
    switch (mode) {
    case GF_COV_FULL: gf_full_vjp(c, eps, m, suu, grad_c); return;
    case GF_COV_DIAG: gf_diag_vjp(c, eps, m, suu, grad_c); return;
    case GF_COV_QUAT: gf_quat_vjp(c, eps, m, suu, grad_c); return;
    case GF_COV_SIGMA: gf_sigma_vjp(c, eps, m, suu, grad_c); return;
    case GF_COV_WHITENED: gf_whitened_vjp(c, eps, m, suu, grad_c); return;
    }
}

#endif /* GF_FRONTENDS_H */
