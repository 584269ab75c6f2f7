// SPDX-License-Identifier: Apache-2.0
/*
 * test_core.c - unit tests of the C core: the per-Gaussian and per-pair maths (gf_math.h)
 * and the C API (gaussfield.h), with feature channels and a cutoff.  The reference is
 * written here, independently: the covariance from its parameters, Sigma^{-1} by
 * Gauss-Jordan elimination, q = d^T Sigma^{-1} d, exp() from libm, the mask
 * [q <= k^2], gradients by central differences.  Exit status 0 when every check passes.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE */
#include <math.h>
#include <sys/mman.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gaussfield.h"
#include "gf_math.h"

static int failures = 0;
#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) {                                            \
            ++failures;                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                         \
            fprintf(stderr, "\n");                                \
        }                                                         \
    } while (0)

/* ---- deterministic random numbers (xorshift64*) ---------------------------------- */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}
static double normal(void) {
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* ---- the reference ----------------------------------------------------------------- */
static void ref_sigma(int mode, const double *c, double eps, double s[3][3]) {
    memset(s, 0, 9 * sizeof(double));
    if (mode == 3) {
        for (int i = 0; i < 3; ++i) s[i][i] = exp(2.0 * c[i]);
        return;
    }
    double l[3][3] = {{exp(c[0]), 0, 0}, {c[1], exp(c[2]), 0}, {c[3], c[4], exp(c[5])}};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            for (int k = 0; k < 3; ++k) s[i][j] += l[i][k] * l[j][k];
            if (i == j) s[i][j] += eps;
        }
}

static void ref_inverse(double a[3][3], double inv[3][3]) { /* Gauss-Jordan, pivoting */
    double m[3][6];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 6; ++j) m[i][j] = j < 3 ? a[i][j] : (j - 3 == i);
    for (int col = 0; col < 3; ++col) {
        int piv = col;
        for (int r = col + 1; r < 3; ++r)
            if (fabs(m[r][col]) > fabs(m[piv][col])) piv = r;
        for (int j = 0; j < 6; ++j) {
            double t = m[col][j];
            m[col][j] = m[piv][j];
            m[piv][j] = t;
        }
        double d = m[col][col];
        for (int j = 0; j < 6; ++j) m[col][j] /= d;
        for (int r = 0; r < 3; ++r) {
            if (r == col) continue;
            double f = m[r][col];
            for (int j = 0; j < 6; ++j) m[r][j] -= f * m[col][j];
        }
    }
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) inv[i][j] = m[i][j + 3];
}

/* q = d^T Sigma^{-1} d of one pair, straight from the definition. */
static double ref_q(const double *x, const double *mu, const double *cov, int mode, double eps) {
    double s[3][3], p[3][3], d[3], q = 0.0;
    ref_sigma(mode, cov, eps, s);
    ref_inverse(s, p);
    for (int i = 0; i < 3; ++i) d[i] = x[i] - mu[i];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) q += d[i] * p[i][j] * d[j];
    return q;
}

/* Whether a pair counts: no cutoff (0 or +inf), or q <= k^2. */
static int ref_keep(double q, double k) { return k == 0.0 || isinf(k) || q <= k * k; }

/* f(x)_c for one point, c < C (weights [n, C] dense). */
static void ref_field(const double *x, int n, const double *mu, const double *cov, int mode,
                      const double *w, int C, double eps, double k, double *f) {
    for (int c = 0; c < C; ++c) f[c] = 0.0;
    for (int g = 0; g < n; ++g) {
        const double q = ref_q(x, mu + 3 * g, cov + g * mode, mode, eps);
        if (!ref_keep(q, k)) continue;
        for (int c = 0; c < C; ++c) f[c] += w[g * C + c] * exp(-0.5 * q);
    }
}

/* ---- a problem, in double, with its buffers ---------------------------------------- */
typedef struct {
    int b, n, mode, c; /* points, Gaussians, cov_mode, channels */
    double eps, k;     /* k: the cutoff (0: none) */
    double *x, *mu, *cov, *w, *g; /* [b, 3], [n, 3], [n, mode], [n, c], [b, c] */
} problem;

/* Smallest |q - k^2| / k^2 over the pairs of point b (+inf without a cutoff). */
static double boundary_gap(const problem *pr, int b) {
    double gap = INFINITY;
    if (pr->k == 0.0) return gap;
    for (int g = 0; g < pr->n; ++g) {
        const double q = ref_q(pr->x + 3 * b, pr->mu + 3 * g, pr->cov + g * pr->mode, pr->mode, pr->eps);
        gap = fmin(gap, fabs(q - pr->k * pr->k) / (pr->k * pr->k));
    }
    return gap;
}

/* Points, Gaussians and channels at random; with a cutoff k, every point is redrawn
 * until none of its pairs lies within 1e-2 k^2 of the boundary, so that rounding and
 * the steps of central differences never cross it. */
static problem make_problem_ck(int b, int n, int mode, int c, double k) {
    problem pr = {b, n, mode, c, 1e-6, k, 0, 0, 0, 0, 0};
    pr.x = malloc(sizeof(double) * 3 * (b > 0 ? b : 1));
    pr.g = malloc(sizeof(double) * c * (b > 0 ? b : 1));
    pr.mu = malloc(sizeof(double) * 3 * (n > 0 ? n : 1));
    pr.cov = malloc(sizeof(double) * mode * (n > 0 ? n : 1));
    pr.w = malloc(sizeof(double) * c * (n > 0 ? n : 1));
    const double scale = 4.0 / cbrt(n > 0 ? n : 1);
    for (int i = 0; i < c * b; ++i) pr.g[i] = normal();
    for (int i = 0; i < 3 * n; ++i) pr.mu[i] = 4.0 * uniform();
    for (int g = 0; g < n; ++g) {
        for (int j = 0; j < mode; ++j) {
            const int diag = mode == 3 || j == 0 || j == 2 || j == 5;
            pr.cov[g * mode + j] = diag ? log(scale) + 0.3 * normal() : 0.4 * scale * normal();
        }
        for (int j = 0; j < c; ++j) pr.w[g * c + j] = normal();
    }
    for (int i = 0; i < b; ++i) {
        do {
            for (int j = 0; j < 3; ++j) pr.x[3 * i + j] = 4.0 * uniform();
        } while (boundary_gap(&pr, i) < 1e-2);
    }
    return pr;
}

static problem make_problem(int b, int n, int mode) { return make_problem_ck(b, n, mode, 1, 0.0); }

/* Pairs kept and cut by the reference's mask. */
static void count_pairs(const problem *pr, int *kept, int *cut) {
    *kept = *cut = 0;
    for (int b = 0; b < pr->b; ++b)
        for (int g = 0; g < pr->n; ++g) {
            const double q = ref_q(pr->x + 3 * b, pr->mu + 3 * g, pr->cov + g * pr->mode, pr->mode, pr->eps);
            if (ref_keep(q, pr->k)) ++*kept; else ++*cut;
        }
}

static void free_problem(problem *pr) {
    free(pr->x);
    free(pr->g);
    free(pr->mu);
    free(pr->cov);
    free(pr->w);
}

static gf_params params_of(const problem *pr, gf_dtype dtype, const void *x, const void *mu,
                           const void *cov, const void *w, const void *g) {
    gf_params p;
    memset(&p, 0, sizeof p);
    p.dtype = dtype;
    p.cov_mode = (gf_cov_mode)pr->mode;
    p.eps = pr->eps;
    p.cutoff = pr->k;
    p.num_points = pr->b;
    p.num_gaussians = pr->n;
    p.num_channels = pr->c;
    p.x = x;
    p.x_stride[0] = 3;
    p.x_stride[1] = 1;
    p.means = mu;
    p.means_stride[0] = 3;
    p.means_stride[1] = 1;
    p.cov = cov;
    p.cov_stride[0] = pr->mode;
    p.cov_stride[1] = 1;
    p.weights = w;
    p.weights_stride[0] = pr->c;
    p.weights_stride[1] = 1;
    p.grad_out = g;
    p.grad_out_stride[0] = pr->c;
    p.grad_out_stride[1] = 1;
    return p;
}

/* Forward through the C API in double (records allocated here). */
static void api_forward(gf_params p, double *out) {
    void *rec = aligned_alloc(64, gf_records_bytes(p.dtype, p.num_gaussians) + 64);
    p.records = rec;
    p.out = out;
    CHECK(gf_cpu_precompute(&p, 0, p.num_gaussians) == GF_OK, "precompute");
    CHECK(gf_cpu_forward(&p, 0, p.num_points) == GF_OK, "forward");
    free(rec);
}

/* ---- tests --------------------------------------------------------------------------- */
static void test_status_strings(void) {
    for (int s = 0; s <= GF_ERR_BAD_CUTOFF; ++s) {
        const char *t = gf_status_string((gf_status)s);
        CHECK(t && *t, "status %d has no string", s);
        for (int u = 0; u < s; ++u)
            CHECK(strcmp(t, gf_status_string((gf_status)u)) != 0, "statuses %d, %d share", s, u);
    }
    CHECK(strstr(gf_status_string(GF_ERR_BAD_CUTOFF), "cutoff") != 0, "cutoff status names it");
    CHECK(strstr(gf_status_string((gf_status)999), "unknown") != 0, "unknown status");
}

static void test_records_bytes(void) {
    CHECK(gf_records_bytes(GF_FLOAT32, 10) == 640, "float records");
    CHECK(gf_records_bytes(GF_FLOAT64, 10) == 1280, "double records");
    CHECK(gf_records_bytes(GF_FLOAT32, -1) == 0, "negative N");
    CHECK(gf_records_bytes((gf_dtype)7, 10) == 0, "unknown dtype");
}

static void test_argument_checks(void) {
    problem pr = make_problem_ck(5, 4, 6, 3, 0.0);
    double out[5 * 3];
    char rec[4 * 128];
    gf_params p = params_of(&pr, GF_FLOAT64, pr.x, pr.mu, pr.cov, pr.w, pr.g);
    p.records = rec;
    p.out = out;
    CHECK(gf_cpu_forward(NULL, 0, 1) == GF_ERR_NULL_POINTER, "NULL params");
    gf_params q = p;
    q.dtype = (gf_dtype)5;
    CHECK(gf_cpu_precompute(&q, 0, 4) == GF_ERR_BAD_DTYPE, "dtype");
    q = p;
    q.cov_mode = (gf_cov_mode)4;
    CHECK(gf_cpu_precompute(&q, 0, 4) == GF_ERR_BAD_COV_MODE, "cov_mode");
    const double bad_eps[3] = {-1e-3, NAN, INFINITY};
    for (int i = 0; i < 3; ++i) {
        q = p;
        q.eps = bad_eps[i];
        CHECK(gf_cpu_precompute(&q, 0, 4) == GF_ERR_BAD_EPS, "eps %g", bad_eps[i]);
    }
    /* the cutoff: negative or NaN is an error in every stage; 0 and +inf mean none */
    const double bad_cutoff[4] = {-1.0, -INFINITY, NAN, -1e-300};
    for (int i = 0; i < 4; ++i) {
        q = p;
        q.cutoff = bad_cutoff[i];
        CHECK(gf_cpu_precompute(&q, 0, 4) == GF_ERR_BAD_CUTOFF, "cutoff %g (precompute)", bad_cutoff[i]);
        CHECK(gf_cpu_forward(&q, 0, 5) == GF_ERR_BAD_CUTOFF, "cutoff %g (forward)", bad_cutoff[i]);
        CHECK(gf_cpu_backward_gaussians(&q, 0, 4) == GF_ERR_BAD_CUTOFF, "cutoff %g (backward)",
              bad_cutoff[i]);
    }
    const double no_cutoff[3] = {0.0, INFINITY, 1e300};
    for (int i = 0; i < 3; ++i) {
        q = p;
        q.cutoff = no_cutoff[i];
        CHECK(gf_cpu_precompute(&q, 0, 4) == GF_OK, "cutoff %g", no_cutoff[i]);
    }
    /* channels: at least one */
    const int64_t bad_channels[2] = {0, -3};
    for (int i = 0; i < 2; ++i) {
        q = p;
        q.num_channels = bad_channels[i];
        CHECK(gf_cpu_forward(&q, 0, 5) == GF_ERR_BAD_SIZE, "num_channels %d", (int)bad_channels[i]);
        CHECK(gf_cpu_precompute(&q, 0, 4) == GF_ERR_BAD_SIZE, "num_channels %d", (int)bad_channels[i]);
    }
    q = p;
    q.num_points = -1;
    CHECK(gf_cpu_forward(&q, 0, 0) == GF_ERR_BAD_SIZE, "negative B");
    q = p;
    q.x_stride[1] = -1;
    CHECK(gf_cpu_forward(&q, 0, 1) == GF_ERR_BAD_SIZE, "negative stride");
    q = p;
    q.weights_stride[1] = -1;
    CHECK(gf_cpu_forward(&q, 0, 1) == GF_ERR_BAD_SIZE, "negative channel stride of weights");
    q = p;
    q.grad_out_stride[1] = -1;
    CHECK(gf_cpu_forward(&q, 0, 1) == GF_ERR_BAD_SIZE, "negative channel stride of grad_out");
    CHECK(gf_cpu_forward(&p, 2, 1) == GF_ERR_BAD_SIZE, "begin > end");
    CHECK(gf_cpu_forward(&p, 0, 6) == GF_ERR_BAD_SIZE, "end > B");
    CHECK(gf_cpu_precompute(&p, -1, 2) == GF_ERR_BAD_SIZE, "begin < 0");
    q = p;
    q.records = NULL;
    CHECK(gf_cpu_forward(&q, 0, 5) == GF_ERR_NULL_POINTER, "no records");
    q = p;
    q.means = NULL;
    CHECK(gf_cpu_precompute(&q, 0, 4) == GF_ERR_NULL_POINTER, "no means");
    q = p;
    q.grad_out = NULL;
    q.grad_weights = out; /* any non-NULL output */
    CHECK(gf_cpu_backward_gaussians(&q, 0, 4) == GF_ERR_NULL_POINTER, "no grad_out");
    /* empty ranges and unwanted outputs need nothing */
    q = p;
    q.x = q.records = q.out = NULL;
    CHECK(gf_cpu_forward(&q, 3, 3) == GF_OK, "empty range");
    CHECK(gf_cpu_backward_points(&p, 0, 5) == GF_OK, "grad_x not wanted");
    free_problem(&pr);
}

static void test_exp2(void) {
    double worst32 = 0.0, worst64 = 0.0;
    for (int i = 0; i <= 200000; ++i) {
        const double q = -126.0 + 127.0 * i / 200000.0; /* [-126, 1] */
        const double want = exp2(q);
        const double e32 = fabs((double)gf_exp2_f32((float)q) - exp2((double)(float)q)) /
                           exp2((double)(float)q);
        const double e64 = fabs(gf_exp2_f64(q) - want) / want;
        worst32 = e32 > worst32 ? e32 : worst32;
        worst64 = e64 > worst64 ? e64 : worst64;
    }
    CHECK(worst32 < 2.5e-7, "float exp2 relative error %g", worst32);
    CHECK(worst64 < 1e-15, "double exp2 relative error %g", worst64);
    CHECK(gf_exp2_f32(-127.5f) == 0.0f && gf_exp2_f32(-1e30f) == 0.0f, "float underflow to 0");
    CHECK(gf_exp2_f64(-1023.5) == 0.0 && gf_exp2_f64(-1e300) == 0.0, "double underflow to 0");
    CHECK(isnan(gf_exp2_f32(NAN)) && isnan(gf_exp2_f64(NAN)), "NaN propagates");
    CHECK(gf_exp2_f32(0.0f) == 1.0f && gf_exp2_f64(0.0) == 1.0, "2^0");
}

/* The covariance front-ends: gf_full_covariance / gf_diag_covariance is Sigma, and
 * gf_frontend_whitening's M (lower triangular) whitens it, M Sigma M^T = I, so that
 * M^T M = Sigma^{-1}; with eps = 0 and with eps > 0 (full), and for elongated,
 * correlated Gaussians. */
static void test_whitening(void) {
    const double eps_list[3] = {0.0, 1e-6, 1e-2};
    for (int t = 0; t < 300; ++t) {
        const int mode = t % 2 ? 6 : 3;
        const double eps = eps_list[(t / 2) % 3];
        problem pr = make_problem(0, 1, mode);
        double c[GF_COV_MAX_PARAMS] = {0}, s[3][3], s6[6], m6[6], p[3][3];
        memcpy(c, pr.cov, sizeof(double) * mode);
        if (t % 5 == 0 && mode == 6) { /* a needle: diagonal of L (2, 0.02, 0.02), strong L10, L20 */
            c[0] = log(2.0), c[2] = c[5] = log(0.02), c[1] = 1.5 * normal(), c[3] = normal();
        }
        ref_sigma(mode, c, eps, s);
        ref_inverse(s, p);
        if (mode == 6) gf_full_covariance(c, eps, s6);
        else gf_diag_covariance(c, s6);
        const double sg[3][3] = {{s6[GF_XX], s6[GF_XY], s6[GF_XZ]},
                                 {s6[GF_XY], s6[GF_YY], s6[GF_YZ]},
                                 {s6[GF_XZ], s6[GF_YZ], s6[GF_ZZ]}};
        double worst_s = 0.0, scale_s = 0.0;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                worst_s = fmax(worst_s, fabs(sg[i][j] - s[i][j]));
                scale_s = fmax(scale_s, fabs(s[i][j]));
            }
        CHECK(worst_s <= 1e-14 * scale_s, "Sigma off by %g (mode %d)", worst_s, mode);
        gf_frontend_whitening((gf_cov_mode)mode, c, eps, m6);
        const double m[3][3] = {{m6[GF_L00], 0, 0},
                                {m6[GF_L10], m6[GF_L11], 0},
                                {m6[GF_L20], m6[GF_L21], m6[GF_L22]}};
        double worst = 0.0, worst_p = 0.0, scale_p = 0.0;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                double v = 0.0, mtm = 0.0;
                for (int a = 0; a < 3; ++a)
                    for (int b = 0; b < 3; ++b) v += m[i][a] * s[a][b] * m[j][b];
                for (int a = 0; a < 3; ++a) mtm += m[a][i] * m[a][j];
                worst = fmax(worst, fabs(v - (i == j)));
                worst_p = fmax(worst_p, fabs(mtm - p[i][j]));
                scale_p = fmax(scale_p, fabs(p[i][j]));
            }
        /* rounding grows with the condition number (the reference's too) */
        const double kappa = 9.0 * scale_s * scale_p;
        CHECK(worst < 1e-14 * kappa, "M Sigma M^T - I = %g (mode %d, eps %g, cond %g)", worst, mode, eps, kappa);
        CHECK(worst_p <= 1e-14 * kappa * scale_p, "M^T M - Sigma^-1 = %g of %g (mode %d, cond %g)", worst_p,
              scale_p, mode, kappa);
        CHECK(m6[GF_L00] > 0 && m6[GF_L11] > 0 && m6[GF_L22] > 0, "diagonal of M positive");
        free_problem(&pr);
    }
}

/* exp(-q(c)/2) of one pair as a function of the covariance parameters (for differences). */
static double ref_gauss(const double *x, const double *mu, const double *c, int mode, double eps) {
    return exp(-0.5 * ref_q(x, mu, c, mode, eps));
}

/* The pair functions of gf_math.h in double, each wrapped once here (their calling
 * conventions are the header's business; what they compute is checked below):
 *   record_of:   the record of one Gaussian (mean, covariance parameters, cutoff);
 *   pair_value:  exp(-q/2) [q <= k^2], without the weight;
 *   pair_point:  the point's direction, times 2 ln 2 equal to g Sigma^{-1} d (minus the
 *                gradient of g by x), and g;
 *   pair_sums:   the Gaussian's terms of one pair (G g, and the sums that
 *                gf_gaussian_vjp_store turns into t times the gradients of g by the mean
 *                and the covariance parameters). */
static void record_of(gf_record_f64 *r, const double *mu, const double *c, int mode, double eps,
                      double k) {
    gf_record_init_f64(r, mu, 1, c, 1, 0.7 /* a weight */, (gf_cov_mode)mode, eps, k);
}
static double pair_value(const gf_record_f64 *r, const double *x, int cutoff_test) {
    return gf_pair_value_f64(r, x[0], x[1], x[2], cutoff_test);
}
static double pair_point(const gf_record_f64 *r, const double *x, double v[3]) {
    const gf_point_terms_f64 t = gf_pair_vjp_point_f64(r, x[0], x[1], x[2], 1);
    v[0] = t.g * t.vx, v[1] = t.g * t.vy, v[2] = t.g * t.vz;
    return t.g;
}
static double pair_sums(const gf_record_f64 *r, const double *x, double grad, double t,
                        double sums[GF_NUM_SUMS]) {
    const gf_pair_terms_f64 c = gf_pair_vjp_gaussian_f64(r, x[0], x[1], x[2], grad, t, 1);
    for (int i = 0; i < GF_NUM_SUMS; ++i) sums[i] = 0.0;
    gf_pair_terms_add_f64(sums, &c);
    return c.gg;
}
static void vjp_store(const double sums[GF_NUM_SUMS], const double *c, int mode, double eps,
                      double *grad_mean, double *grad_cov) {
    gf_gaussian_vjp_store_f64(sums, 1.0, c, 1, (gf_cov_mode)mode, eps, grad_mean, grad_cov);
}

/* A covariance matrix (GF_COV_SIGMA, 9 row-major entries): its symmetric part is read,
 * M whitens it, the gradient is that of exp(-q/2) with respect to all 9 entries of the
 * function S -> f((S + S^T) / 2) (central differences; exactly symmetric), eps is not
 * used, and a Sigma that is not positive definite (indefinite, semidefinite, a NaN
 * entry) gives a NaN factor, all 6 entries. */
static double sigma_gauss(const double *x, const double *mu, const double c[9]) {
    double s[3][3], p[3][3], d[3];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) s[i][j] = 0.5 * (c[3 * i + j] + c[3 * j + i]);
    ref_inverse(s, p);
    for (int i = 0; i < 3; ++i) d[i] = x[i] - mu[i];
    double q = 0.0;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) q += d[i] * p[i][j] * d[j];
    return exp(-0.5 * q);
}

static void test_sigma_frontend(void) {
    CHECK(gf_cov_num_params(GF_COV_SIGMA) == 9, "Sigma: 9 values per Gaussian");
    for (int t = 0; t < 200; ++t) {
        double a[3][3], c[GF_COV_MAX_PARAMS] = {0}, s[3][3], m6[6], m6e[6];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) a[i][j] = normal();
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                double v = 0.1 * (i == j);
                for (int k = 0; k < 3; ++k) v += a[i][k] * a[j][k];
                s[i][j] = v;
            }
        for (int i = 0; i < 3; ++i) /* plus an antisymmetric part, which is not read */
            for (int j = 0; j < 3; ++j) c[3 * i + j] = s[i][j] + (i < j ? 0.3 : i > j ? -0.3 : 0.0);
        gf_frontend_whitening(GF_COV_SIGMA, c, 0.0, m6);
        gf_frontend_whitening(GF_COV_SIGMA, c, 0.5, m6e);
        CHECK(memcmp(m6, m6e, sizeof m6) == 0, "Sigma: eps changes M");
        const double m[3][3] = {{m6[GF_L00], 0, 0},
                                {m6[GF_L10], m6[GF_L11], 0},
                                {m6[GF_L20], m6[GF_L21], m6[GF_L22]}};
        double worst = 0.0, scale = 0.0;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                double v = 0.0;
                for (int p = 0; p < 3; ++p)
                    for (int q = 0; q < 3; ++q) v += m[i][p] * s[p][q] * m[j][q];
                worst = fmax(worst, fabs(v - (i == j)));
                scale = fmax(scale, fabs(s[i][j]));
            }
        CHECK(worst < 1e-12 * (1.0 + 100.0 * scale), "Sigma: M Sigma M^T - I = %g", worst);

        /* the gradient of one pair's Gaussian, by the pair maths and the front-end's VJP */
        double mu[3], x[3];
        for (int i = 0; i < 3; ++i) mu[i] = normal(), x[i] = mu[i] + 0.8 * sqrt(s[i][i]) * normal();
        gf_record_f64 r;
        record_of(&r, mu, c, GF_COV_SIGMA, 0.0, 0.0);
        const double tw = 0.7;
        double sums[GF_NUM_SUMS], gm[3], gc[GF_COV_MAX_PARAMS];
        pair_sums(&r, x, 1.0, tw, sums);
        vjp_store(sums, c, GF_COV_SIGMA, 0.0, gm, gc);
        const double g = sigma_gauss(x, mu, c);
        for (int j = 0; j < 9; ++j) {
            double cp[9], cm[9];
            memcpy(cp, c, sizeof cp);
            memcpy(cm, c, sizeof cm);
            const double h = 1e-6;
            cp[j] += h;
            cm[j] -= h;
            const double num = tw * (sigma_gauss(x, mu, cp) - sigma_gauss(x, mu, cm)) / (2 * h);
            CHECK(fabs(gc[j] - num) <= 1e-6 * fabs(tw) * (g + 1e-3) * (1.0 + 10.0 * scale),
                  "Sigma: grad cov[%d] %g, want %g", j, gc[j], num);
        }
        CHECK(gc[1] == gc[3] && gc[2] == gc[6] && gc[5] == gc[7], "Sigma: gradient not symmetric");
    }
    const double not_pd[3][9] = {{1, 0, 0, 0, -1, 0, 0, 0, 1},     /* indefinite */
                                 {1, 0, 0, 0, 0, 0, 0, 0, 1},      /* semidefinite */
                                 {1, 0, 0, 0, NAN, 0, 0, 0, 1}};   /* a NaN entry */
    for (int t = 0; t < 3; ++t) {
        double c[GF_COV_MAX_PARAMS] = {0}, m6[6];
        memcpy(c, not_pd[t], sizeof not_pd[t]);
        gf_frontend_whitening(GF_COV_SIGMA, c, 0.0, m6);
        for (int k = 0; k < 6; ++k) CHECK(isnan(m6[k]), "Sigma %d: M[%d] = %g, not NaN", t, k, m6[k]);
    }
}

/* The pair maths against the reference, with no cutoff (0, +inf) and with k = 1.5, 3:
 * values, the point's and the Gaussian's VJPs, all exactly 0 beyond the cutoff; and
 * the value of a record without a cutoff is the same with and without the test. */
static void test_pair_maths(void) {
    const double cutoffs[4] = {0.0, INFINITY, 1.5, 3.0};
    const double two_ln2 = 2.0 * log(2.0);
    int seen_kept = 0, seen_cut = 0;
    for (int t = 0; t < 400; ++t) {
        const int mode = t % 2 ? 6 : 3;
        const double k = cutoffs[(t / 2) % 4];
        const double eps = mode == 6 ? 1e-6 : 0.0;
        problem pr = make_problem(0, 1, mode);
        double c[GF_COV_MAX_PARAMS] = {0}, mu[3], x[3], d[3], s[3][3], p[3][3], pd[3];
        memcpy(c, pr.cov, sizeof(double) * mode);
        memcpy(mu, pr.mu, sizeof mu);
        ref_sigma(mode, c, eps, s);
        for (int i = 0; i < 3; ++i) x[i] = mu[i] + 1.5 * sqrt(s[i][i]) * normal();
        const double q = ref_q(x, mu, c, mode, eps);
        free_problem(&pr);
        if (k > 0 && !isinf(k) && fabs(q - k * k) < 1e-6 * k * k) continue;
        const int kept = ref_keep(q, k);
        seen_kept += kept;
        seen_cut += !kept;
        const double g = kept ? exp(-0.5 * q) : 0.0;
        ref_inverse(s, p);
        for (int i = 0; i < 3; ++i) d[i] = x[i] - mu[i];
        for (int i = 0; i < 3; ++i) pd[i] = p[i][0] * d[0] + p[i][1] * d[1] + p[i][2] * d[2];
        const double scale = exp(-0.5 * q) * sqrt(pd[0] * pd[0] + pd[1] * pd[1] + pd[2] * pd[2]);

        gf_record_f64 r;
        record_of(&r, mu, c, mode, eps, k);
        const double v = pair_value(&r, x, 1);
        CHECK(fabs(v - g) <= 1e-13 * g, "pair value %.17g, want %.17g (q %g, k %g)", v, g, q, k);
        if (!gf_has_cutoff(k))
            CHECK(v == pair_value(&r, x, 0), "no cutoff: the test changes the bits");

        double dir[3];
        const double gp = pair_point(&r, x, dir);
        CHECK(gp == v, "vjp_point's g %g differs from the value %g", gp, v);
        for (int i = 0; i < 3; ++i)
            CHECK(fabs(two_ln2 * dir[i] - g * pd[i]) <= 1e-12 * scale,
                  "vjp_point[%d] %g, want %g", i, two_ln2 * dir[i], g * pd[i]);

        const double grad = -1.3, tw = 0.4; /* G and t = sum_c G_c w_c */
        double sums[GF_NUM_SUMS], gm[3], gc[6];
        const double gg = pair_sums(&r, x, grad, tw, sums);
        CHECK(fabs(gg - grad * g) <= 1e-13 * fabs(grad * g), "G g %g, want %g", gg, grad * g);
        if (!kept) {
            int zero = gg == 0.0 && dir[0] == 0.0 && dir[1] == 0.0 && dir[2] == 0.0;
            for (int i = 0; i < GF_NUM_SUMS; ++i) zero &= sums[i] == 0.0;
            CHECK(zero, "pair terms beyond the cutoff are not all 0 (q %g, k %g)", q, k);
        }
        vjp_store(sums, c, mode, eps, gm, gc);
        /* d g / d mu = g Sigma^{-1} d */
        for (int i = 0; i < 3; ++i)
            CHECK(fabs(gm[i] - tw * g * pd[i]) <= 1e-11 * fabs(tw) * scale,
                  "grad mean[%d] %g, want %g", i, gm[i], tw * g * pd[i]);
        /* d g / d c by central differences (0 beyond the cutoff, far from the boundary) */
        for (int j = 0; j < mode; ++j) {
            double cp[6], cm[6];
            memcpy(cp, c, sizeof cp);
            memcpy(cm, c, sizeof cm);
            const double h = 1e-6;
            cp[j] += h;
            cm[j] -= h;
            const double num =
                kept ? tw * (ref_gauss(x, mu, cp, mode, eps) - ref_gauss(x, mu, cm, mode, eps)) / (2 * h)
                     : 0.0;
            CHECK(fabs(gc[j] - num) <= 1e-6 * fabs(tw) * exp(-0.5 * q) * (1.0 + q) + 1e-12 * kept,
                  "grad cov[%d] %g, want %g (mode %d, kept %d)", j, gc[j], num, mode, kept);
        }
        /* each output alone: the same numbers */
        double gm_alone[3] = {7, 7, 7};
        vjp_store(sums, c, mode, eps, gm_alone, NULL);
        CHECK(memcmp(gm_alone, gm, sizeof gm) == 0, "grad mean alone differs");
    }
    CHECK(seen_kept > 50 && seen_cut > 50, "pair tests: %d kept, %d cut", seen_kept, seen_cut);
}

/* Forward of both dtypes, strided x, channels, with and without a cutoff, against the
 * reference. */
static void test_forward(int mode, int C, double k) {
    const int B = 70, N = 23;
    problem pr = make_problem_ck(B, N, mode, C, k);
    /* x inside a wider buffer: rows 7 apart, coordinates 2 apart */
    double *xs = calloc(7 * B, sizeof(double));
    float *xs32 = calloc(7 * B, sizeof(float));
    float *mu32 = malloc(sizeof(float) * 3 * N), *cov32 = malloc(sizeof(float) * mode * N),
          *w32 = malloc(sizeof(float) * N * C);
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < 3; ++j) xs32[7 * b + 2 * j] = (float)(xs[7 * b + 2 * j] = pr.x[3 * b + j]);
    for (int i = 0; i < 3 * N; ++i) mu32[i] = (float)pr.mu[i];
    for (int i = 0; i < mode * N; ++i) cov32[i] = (float)pr.cov[i];
    for (int i = 0; i < N * C; ++i) w32[i] = (float)pr.w[i];

    double *out = malloc(sizeof(double) * B * C), ref_norm = 0.0, err64 = 0.0, err32 = 0.0;
    float *out32 = malloc(sizeof(float) * B * C);
    gf_params p = params_of(&pr, GF_FLOAT64, xs, pr.mu, pr.cov, pr.w, NULL);
    p.x_stride[0] = 7;
    p.x_stride[1] = 2;
    api_forward(p, out);
    gf_params p32 = params_of(&pr, GF_FLOAT32, xs32, mu32, cov32, w32, NULL);
    p32.x_stride[0] = 7;
    p32.x_stride[1] = 2;
    {
        void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT32, N) + 64);
        p32.records = rec;
        p32.out = out32;
        CHECK(gf_cpu_precompute(&p32, 0, N) == GF_OK && gf_cpu_forward(&p32, 0, B) == GF_OK,
              "float forward");
        free(rec);
    }
    double r[64];
    for (int b = 0; b < B; ++b) {
        ref_field(pr.x + 3 * b, N, pr.mu, pr.cov, mode, pr.w, C, pr.eps, k, r);
        for (int c = 0; c < C; ++c) {
            ref_norm += r[c] * r[c];
            err64 += (out[b * C + c] - r[c]) * (out[b * C + c] - r[c]);
            err32 += (out32[b * C + c] - r[c]) * (out32[b * C + c] - r[c]);
        }
    }
    CHECK(sqrt(err64 / ref_norm) < 1e-13, "double forward error %g (mode %d, C %d, k %g)",
          sqrt(err64 / ref_norm), mode, C, k);
    CHECK(sqrt(err32 / ref_norm) < 1e-6, "float forward error %g (mode %d, C %d, k %g)",
          sqrt(err32 / ref_norm), mode, C, k);
    if (k > 0 && !isinf(k)) { /* the cutoff decides here: the dense field differs */
        int kept, cut;
        count_pairs(&pr, &kept, &cut);
        CHECK(kept > 100 && cut > 100, "cutoff %g: %d pairs kept, %d cut", k, kept, cut);
        double dense_err = 0.0;
        for (int b = 0; b < B; ++b) {
            ref_field(pr.x + 3 * b, N, pr.mu, pr.cov, mode, pr.w, C, pr.eps, 0.0, r);
            for (int c = 0; c < C; ++c) dense_err += (out[b * C + c] - r[c]) * (out[b * C + c] - r[c]);
        }
        CHECK(sqrt(dense_err / ref_norm) > 1e-4, "cutoff %g changes nothing", k);
    }
    free(out);
    free(out32);
    free(xs);
    free(xs32);
    free(mu32);
    free(cov32);
    free(w32);
    free_problem(&pr);
}

/* sum_{b,c} g_bc f(x_b)_c through the API, in double. */
static double api_objective(const problem *pr) {
    double *out = malloc(sizeof(double) * pr->b * pr->c), s = 0.0;
    api_forward(params_of(pr, GF_FLOAT64, pr->x, pr->mu, pr->cov, pr->w, NULL), out);
    for (int i = 0; i < pr->b * pr->c; ++i) s += pr->g[i] * out[i];
    free(out);
    return s;
}

/* The same objective from the reference (the mask decided by ref_q). */
static double ref_objective(const problem *pr) {
    double s = 0.0, r[64];
    for (int b = 0; b < pr->b; ++b) {
        ref_field(pr->x + 3 * b, pr->n, pr->mu, pr->cov, pr->mode, pr->w, pr->c, pr->eps, pr->k, r);
        for (int c = 0; c < pr->c; ++c) s += pr->g[b * pr->c + c] * r[c];
    }
    return s;
}

/* Every gradient against central differences of the reference's objective (and so of
 * the masked field: no pair is within 1e-2 k^2 of the boundary). */
static void test_backward(int mode, int C, double k) {
    enum { B = 40, N = 9 };
    problem pr = make_problem_ck(B, N, mode, C, k);
    double gx[B * 3], gm[N * 3], gc[N * 6], *gw = malloc(sizeof(double) * N * C);
    gf_params p = params_of(&pr, GF_FLOAT64, pr.x, pr.mu, pr.cov, pr.w, pr.g);
    void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT64, N) + 64);
    p.records = rec;
    p.grad_x = gx;
    p.grad_means = gm;
    p.grad_cov = gc;
    p.grad_weights = gw;
    CHECK(gf_cpu_precompute(&p, 0, N) == GF_OK, "precompute");
    CHECK(gf_cpu_backward_points(&p, 0, B) == GF_OK, "backward points");
    CHECK(gf_cpu_backward_gaussians(&p, 0, N) == GF_OK, "backward gaussians");
    free(rec);
    CHECK(fabs(api_objective(&pr) - ref_objective(&pr)) <= 1e-12 * fmax(1.0, fabs(ref_objective(&pr))),
          "objective differs from the reference");

    struct { double *param, *grad; int count; const char *name; } sets[4] = {
        {pr.x, gx, 3 * B, "x"}, {pr.mu, gm, 3 * N, "means"},
        {pr.cov, gc, mode * N, "cov"}, {pr.w, gw, N * C, "weights"}};
    for (int s = 0; s < 4; ++s) {
        double worst = 0.0, scale = 0.0;
        for (int i = 0; i < sets[s].count; ++i) {
            const double keep = sets[s].param[i], h = 1e-5 * fmax(1.0, fabs(keep));
            sets[s].param[i] = keep + h;
            const double up = ref_objective(&pr);
            sets[s].param[i] = keep - h;
            const double down = ref_objective(&pr);
            sets[s].param[i] = keep;
            const double numeric = (up - down) / (2 * h);
            worst = fmax(worst, fabs(numeric - sets[s].grad[i]));
            scale = fmax(scale, fabs(numeric));
        }
        CHECK(worst <= 1e-6 * fmax(scale, 1.0), "grad %s (mode %d, C %d, k %g): error %g of %g",
              sets[s].name, mode, C, k, worst, scale);
    }
    free(gw);
    free_problem(&pr);
}

/* Forward and backward decide the same pairs: one Gaussian (weight 1, grad_out 1) and
 * points whose q is within a few ulps of k^2, one point per call, in float and double:
 * the value is 0 exactly when grad_x, grad_means and grad_cov are 0, and grad_weights
 * (the sum of grad_out times the value over the one point) equals the value. */
static void test_same_pairs_forward_and_backward(int mode) {
    int mismatches = 0, kept = 0, cut = 0;
    const double k = 2.0;
    for (int t = 0; t < 4000; ++t) {
        problem pr = make_problem_ck(0, 1, mode, 1, k);
        pr.w[0] = 1.0;
        double s[3][3], x[3], one = 1.0, dir[3], ds = 0.0;
        ref_sigma(mode, pr.cov, pr.eps, s);
        /* a point at q = k^2 (1 + tiny) along a random direction: x = mu + r L z, |z| = 1 */
        double l[3][3] = {{0}}; /* Cholesky of Sigma */
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j <= i; ++j) {
                double v = s[i][j];
                for (int a = 0; a < j; ++a) v -= l[i][a] * l[j][a];
                l[i][j] = i == j ? sqrt(v) : v / l[j][j];
            }
        for (int i = 0; i < 3; ++i) {
            dir[i] = normal();
            ds += dir[i] * dir[i];
        }
        const double r = k * (1.0 + 3e-7 * (2.0 * uniform() - 1.0)) / sqrt(ds);
        for (int i = 0; i < 3; ++i)
            x[i] = pr.mu[i] + r * (l[i][0] * dir[0] + l[i][1] * dir[1] + l[i][2] * dir[2]);
        for (int dt = 0; dt < 2; ++dt) {
            const gf_dtype dtype = dt ? GF_FLOAT64 : GF_FLOAT32;
            float xf[3], mf[3], cf[6], wf = 1.0f, gf1 = 1.0f, of, gxf[3], gmf[3], gcf[6], gwf;
            double od, gxd[3], gmd[3], gcd[6], gwd;
            for (int i = 0; i < 3; ++i) xf[i] = (float)x[i], mf[i] = (float)pr.mu[i];
            for (int i = 0; i < mode; ++i) cf[i] = (float)pr.cov[i];
            problem one_point = pr;
            one_point.b = 1;
            gf_params p = dt ? params_of(&one_point, dtype, x, pr.mu, pr.cov, pr.w, &one)
                             : params_of(&one_point, dtype, xf, mf, cf, &wf, &gf1);
            char rec[256] __attribute__((aligned(64)));
            p.records = rec;
            p.out = dt ? (void *)&od : (void *)&of;
            p.grad_x = dt ? (void *)gxd : (void *)gxf;
            p.grad_means = dt ? (void *)gmd : (void *)gmf;
            p.grad_cov = dt ? (void *)gcd : (void *)gcf;
            p.grad_weights = dt ? (void *)&gwd : (void *)&gwf;
            CHECK(gf_cpu_precompute(&p, 0, 1) == GF_OK && gf_cpu_forward(&p, 0, 1) == GF_OK &&
                  gf_cpu_backward_points(&p, 0, 1) == GF_OK && gf_cpu_backward_gaussians(&p, 0, 1) == GF_OK,
                  "stages");
            const double v = dt ? od : of, gw = dt ? gwd : gwf;
            int gx_zero = 1, gm_zero = 1, gc_zero = 1;
            for (int i = 0; i < 3; ++i) {
                gx_zero &= (dt ? gxd[i] : gxf[i]) == 0;
                gm_zero &= (dt ? gmd[i] : gmf[i]) == 0;
            }
            for (int i = 0; i < mode; ++i) gc_zero &= (dt ? gcd[i] : gcf[i]) == 0;
            const int v_zero = v == 0;
            if (v_zero != gx_zero || v_zero != gm_zero || v_zero != gc_zero || gw != v) ++mismatches;
            if (v_zero) ++cut; else ++kept;
        }
        free_problem(&pr);
    }
    CHECK(mismatches == 0, "forward and backward disagree on %d boundary pairs (mode %d)", mismatches, mode);
    CHECK(kept > 500 && cut > 500, "boundary pairs: %d kept, %d cut (mode %d)", kept, cut, mode);
}

/* Split ranges give the same bits as one range (what makes threading deterministic),
 * with channels (also more than GF_CPU_CHANNEL_BLOCK of them) and a cutoff. */
static void test_range_split(int mode, int C, double k) {
    problem pr = make_problem_ck(301, 77, mode, C, k);
    const int B = 301, N = 77;
    const size_t total = (size_t)(B * C + 3 * B + N * (3 + mode) + N * C);
    double *a = calloc(total, sizeof(double)), *b = calloc(total, sizeof(double));
    double *outs[2] = {a, b};
    for (int pass = 0; pass < 2; ++pass) {
        double *o = outs[pass];
        gf_params p = params_of(&pr, GF_FLOAT64, pr.x, pr.mu, pr.cov, pr.w, pr.g);
        void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT64, N) + 64);
        p.records = rec;
        p.out = o;
        p.grad_x = o + B * C;
        p.grad_means = o + B * C + 3 * B;
        p.grad_cov = o + B * C + 3 * B + 3 * N;
        p.grad_weights = o + B * C + 3 * B + (3 + mode) * N;
        const int cuts_b[2][4] = {{0, B, B, B}, {0, 5, 200, B}};
        const int cuts_n[2][4] = {{0, N, N, N}, {0, 17, 18, N}};
        for (int j = 0; j < 3; ++j) {
            gf_cpu_precompute(&p, cuts_n[pass][j], cuts_n[pass][j + 1]);
        }
        for (int j = 0; j < 3; ++j) {
            gf_cpu_forward(&p, cuts_b[pass][j], cuts_b[pass][j + 1]);
            gf_cpu_backward_points(&p, cuts_b[pass][j], cuts_b[pass][j + 1]);
            gf_cpu_backward_gaussians(&p, cuts_n[pass][j], cuts_n[pass][j + 1]);
        }
        free(rec);
    }
    CHECK(memcmp(a, b, sizeof(double) * total) == 0, "split ranges differ (mode %d, C %d, k %g)", mode, C, k);
    int nonzero = 0;
    for (size_t i = 0; i < total; ++i) nonzero += a[i] != 0.0;
    CHECK(nonzero > (int)(total / 2), "range split: outputs mostly 0 (mode %d, C %d)", mode, C);
    free(a);
    free(b);
    free_problem(&pr);
}

/* The channels' gradients: grad_weights[n, c] against the reference's
 * sum_b g_bc exp(-q_bn/2) [q_bn <= k^2], with C = 20 (beyond GF_CPU_CHANNEL_BLOCK), in
 * double and float, and the forward in float. */
static void test_many_channels(int mode, double k) {
    enum { B = 50, N = 21, C = 20 };
    problem pr = make_problem_ck(B, N, mode, C, k);
    double *gw = malloc(sizeof(double) * N * C), *want = calloc(N * C, sizeof(double)), num = 0.0, err = 0.0;
    for (int b = 0; b < B; ++b)
        for (int g = 0; g < N; ++g) {
            const double q = ref_q(pr.x + 3 * b, pr.mu + 3 * g, pr.cov + g * mode, mode, pr.eps);
            if (!ref_keep(q, k)) continue;
            for (int c = 0; c < C; ++c) want[g * C + c] += pr.g[b * C + c] * exp(-0.5 * q);
        }
    gf_params p = params_of(&pr, GF_FLOAT64, pr.x, pr.mu, pr.cov, pr.w, pr.g);
    void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT64, N) + 64);
    p.records = rec;
    p.grad_weights = gw;
    CHECK(gf_cpu_precompute(&p, 0, N) == GF_OK && gf_cpu_backward_gaussians(&p, 0, N) == GF_OK, "stages");
    for (int i = 0; i < N * C; ++i) {
        num += want[i] * want[i];
        err += (gw[i] - want[i]) * (gw[i] - want[i]);
    }
    CHECK(sqrt(err / num) < 1e-13, "grad weights, %d channels: error %g (mode %d, k %g)", C, sqrt(err / num), mode, k);
    free(rec);
    free(gw);
    free(want);
    free_problem(&pr);
}

/* All four stages in float with every input's row stride above 2^31 elements, against
 * the same problem laid out densely: bit for bit.  The strided inputs live in one
 * 17 GB mapping with MAP_NORESERVE, of which only the pages touched take memory. */
static void run_all_f32(gf_params p, float *out /* [B C + 3B + N(3 + mode + C)] */) {
    const int64_t B = p.num_points, N = p.num_gaussians, C = p.num_channels;
    void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT32, N) + 64);
    p.records = rec;
    p.out = out;
    p.grad_x = out + B * C;
    p.grad_means = out + B * C + 3 * B;
    p.grad_cov = out + B * C + 3 * B + 3 * N;
    p.grad_weights = out + B * C + 3 * B + (3 + p.cov_mode) * N;
    CHECK(gf_cpu_precompute(&p, 0, N) == GF_OK, "precompute");
    CHECK(gf_cpu_forward(&p, 0, B) == GF_OK, "forward");
    CHECK(gf_cpu_backward_points(&p, 0, B) == GF_OK, "backward points");
    CHECK(gf_cpu_backward_gaussians(&p, 0, N) == GF_OK, "backward gaussians");
    free(rec);
}

static void test_strides_beyond_int32(int mode) {
    if (sizeof(void *) < 8) return;
    enum { B = 5, N = 4, C = 2 };
    const int64_t big = (INT64_C(1) << 31) + 5;
    const size_t bytes = sizeof(float) * (size_t)(4 * big + 64);
    float *map = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        printf("strides beyond 2^31: skipped (no 17 GB mapping here)\n");
        return;
    }
    problem pr = make_problem_ck(B, N, mode, C, 2.5);
    float dense[B * 3 + N * 3 + N * 6 + N * C + B * C];
    float *x = dense, *mu = x + 3 * B, *cov = mu + 3 * N, *w = cov + 6 * N, *g = w + N * C;
    /* strided layout: x rows `big` apart; means columns `big` apart; cov rows `big`
     * apart; weights channels `big` apart (transposed); grad_out rows `big` apart; each
     * array at its own offset */
    float *sx = map, *smu = map + 16, *scov = map + 32, *sw = map + 48, *sg = map + 56;
    for (int64_t i = 0; i < B; ++i) {
        for (int j = 0; j < 3; ++j) sx[i * big + j] = x[i * 3 + j] = (float)pr.x[i * 3 + j];
        for (int c = 0; c < C; ++c) sg[i * big + c] = g[i * C + c] = (float)pr.g[i * C + c];
    }
    for (int64_t n = 0; n < N; ++n) {
        for (int j = 0; j < 3; ++j) smu[j * big + n] = mu[n * 3 + j] = (float)pr.mu[n * 3 + j];
        for (int j = 0; j < mode; ++j) scov[n * big + j] = cov[n * mode + j] = (float)pr.cov[n * mode + j];
        for (int c = 0; c < C; ++c) sw[c * big + n] = w[n * C + c] = (float)pr.w[n * C + c];
    }
    gf_params p = params_of(&pr, GF_FLOAT32, x, mu, cov, w, g);
    enum { TOTAL = B * C + 3 * B + N * (3 + 6 + C) };
    float expect[TOTAL], got[TOTAL];
    memset(expect, 0, sizeof expect);
    memset(got, 0, sizeof got);
    run_all_f32(p, expect);
    p.x = sx;
    p.x_stride[0] = big;
    p.means = smu;
    p.means_stride[0] = 1;
    p.means_stride[1] = big;
    p.cov = scov;
    p.cov_stride[0] = big;
    p.weights = sw;
    p.weights_stride[0] = 1;
    p.weights_stride[1] = big;
    p.grad_out = sg;
    p.grad_out_stride[0] = big;
    p.grad_out_stride[1] = 1;
    run_all_f32(p, got);
    CHECK(memcmp(expect, got, sizeof(float) * (size_t)(B * C + 3 * B + N * (3 + mode + C))) == 0,
          "strides beyond 2^31 change the result (mode %d)", mode);
    munmap(map, bytes);
    free_problem(&pr);
}

int main(void) {
    printf("isa: %s\n", gf_cpu_isa());
    test_status_strings();
    test_records_bytes();
    test_argument_checks();
    test_exp2();
    test_whitening();
    test_pair_maths();
    test_sigma_frontend();
    for (int mode = 3; mode <= 6; mode += 3) {
        const double cutoffs[3] = {0.0, 1.0, 2.0};
        for (int i = 0; i < 3; ++i) {
            test_forward(mode, 1, cutoffs[i]);
            test_forward(mode, 3, cutoffs[i]);
            test_backward(mode, 1, cutoffs[i]);
            test_backward(mode, 3, cutoffs[i]);
            test_range_split(mode, 3, cutoffs[i]);
        }
        test_forward(mode, 1, INFINITY);
        test_range_split(mode, 1, 0.0);
        test_range_split(mode, 20, 1.5);
        test_many_channels(mode, 0.0);
        test_many_channels(mode, 1.5);
        test_same_pairs_forward_and_backward(mode);
        test_strides_beyond_int32(mode);
    }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
