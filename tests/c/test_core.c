/*
 * test_core.c - unit tests of the C core: the per-pair maths (gf_math.h) and the C API
 * (gaussfield.h).  The reference is written here, independently: the covariance from its
 * parameters, Sigma^{-1} by Gauss-Jordan elimination, exp() from libm, gradients by
 * central differences.  Exit status 0 when every check passes.
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

/* f(x) for one point, straight from the definition. */
static double ref_field(const double *x, int n, const double *mu, const double *cov, int mode,
                        const double *w, double eps) {
    double f = 0.0;
    for (int g = 0; g < n; ++g) {
        double s[3][3], p[3][3], d[3], q = 0.0;
        ref_sigma(mode, cov + g * mode, eps, s);
        ref_inverse(s, p);
        for (int i = 0; i < 3; ++i) d[i] = x[i] - mu[3 * g + i];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) q += d[i] * p[i][j] * d[j];
        f += w[g] * exp(-0.5 * q);
    }
    return f;
}

/* ---- a problem, in double, with its buffers ---------------------------------------- */
typedef struct {
    int b, n, mode;
    double eps;
    double *x, *mu, *cov, *w, *g;
} problem;

static problem make_problem(int b, int n, int mode) {
    problem pr = {b, n, mode, 1e-6, 0, 0, 0, 0, 0};
    pr.x = malloc(sizeof(double) * 3 * (b > 0 ? b : 1));
    pr.g = malloc(sizeof(double) * (b > 0 ? b : 1));
    pr.mu = malloc(sizeof(double) * 3 * (n > 0 ? n : 1));
    pr.cov = malloc(sizeof(double) * mode * (n > 0 ? n : 1));
    pr.w = malloc(sizeof(double) * (n > 0 ? n : 1));
    const double scale = 4.0 / cbrt(n > 0 ? n : 1);
    for (int i = 0; i < 3 * b; ++i) pr.x[i] = 4.0 * uniform();
    for (int i = 0; i < b; ++i) pr.g[i] = normal();
    for (int i = 0; i < 3 * n; ++i) pr.mu[i] = 4.0 * uniform();
    for (int g = 0; g < n; ++g) {
        for (int k = 0; k < mode; ++k) {
            const int diag = mode == 3 || k == 0 || k == 2 || k == 5;
            pr.cov[g * mode + k] = diag ? log(scale) + 0.3 * normal() : 0.4 * scale * normal();
        }
        pr.w[g] = normal();
    }
    return pr;
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
    p.num_points = pr->b;
    p.num_gaussians = pr->n;
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
    p.weights_stride = 1;
    p.grad_out = g;
    p.grad_out_stride = 1;
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
    for (int s = 0; s <= GF_ERR_CUDA; ++s) {
        const char *t = gf_status_string((gf_status)s);
        CHECK(t && *t, "status %d has no string", s);
        for (int u = 0; u < s; ++u)
            CHECK(strcmp(t, gf_status_string((gf_status)u)) != 0, "statuses %d, %d share", s, u);
    }
    CHECK(strstr(gf_status_string((gf_status)999), "unknown") != 0, "unknown status");
}

static void test_records_bytes(void) {
    CHECK(gf_records_bytes(GF_FLOAT32, 10) == 640, "float records");
    CHECK(gf_records_bytes(GF_FLOAT64, 10) == 1280, "double records");
    CHECK(gf_records_bytes(GF_FLOAT32, -1) == 0, "negative N");
    CHECK(gf_records_bytes((gf_dtype)7, 10) == 0, "unknown dtype");
}

static void test_argument_checks(void) {
    problem pr = make_problem(5, 4, 6);
    double out[5];
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
    q = p;
    q.num_points = -1;
    CHECK(gf_cpu_forward(&q, 0, 0) == GF_ERR_BAD_SIZE, "negative B");
    q = p;
    q.x_stride[1] = -1;
    CHECK(gf_cpu_forward(&q, 0, 1) == GF_ERR_BAD_SIZE, "negative stride");
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

static void test_inverse_covariance(void) {
    for (int t = 0; t < 200; ++t) {
        const int mode = t % 2 ? 6 : 3;
        problem pr = make_problem(0, 1, mode);
        double s[3][3], p6[6], c[6] = {0};
        memcpy(c, pr.cov, sizeof(double) * mode);
        ref_sigma(mode, c, 1e-6, s);
        gf_inverse_covariance((gf_cov_mode)mode, c, 1e-6, p6);
        const double p[3][3] = {{p6[GF_XX], p6[GF_XY], p6[GF_XZ]},
                                {p6[GF_XY], p6[GF_YY], p6[GF_YZ]},
                                {p6[GF_XZ], p6[GF_YZ], p6[GF_ZZ]}};
        double worst = 0.0;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                double v = 0.0;
                for (int k = 0; k < 3; ++k) v += p[i][k] * s[k][j];
                worst = fmax(worst, fabs(v - (i == j)));
            }
        CHECK(worst < 1e-11, "P Sigma - I = %g (mode %d)", worst, mode);
        free_problem(&pr);
    }
}

/* Forward of both dtypes, strided x, against the reference. */
static void test_forward(int mode) {
    problem pr = make_problem(70, 23, mode);
    /* x inside a wider buffer: rows 7 apart, coordinates 2 apart */
    double *xs = calloc(7 * 70, sizeof(double));
    float *xs32 = calloc(7 * 70, sizeof(float));
    float *mu32 = malloc(sizeof(float) * 3 * 23), *cov32 = malloc(sizeof(float) * mode * 23),
          *w32 = malloc(sizeof(float) * 23);
    for (int b = 0; b < 70; ++b)
        for (int k = 0; k < 3; ++k) xs32[7 * b + 2 * k] = (float)(xs[7 * b + 2 * k] = pr.x[3 * b + k]);
    for (int i = 0; i < 3 * 23; ++i) mu32[i] = (float)pr.mu[i];
    for (int i = 0; i < mode * 23; ++i) cov32[i] = (float)pr.cov[i];
    for (int i = 0; i < 23; ++i) w32[i] = (float)pr.w[i];

    double out[70], ref_norm = 0.0, err64 = 0.0, err32 = 0.0;
    float out32[70];
    gf_params p = params_of(&pr, GF_FLOAT64, xs, pr.mu, pr.cov, pr.w, NULL);
    p.x_stride[0] = 7;
    p.x_stride[1] = 2;
    api_forward(p, out);
    gf_params p32 = params_of(&pr, GF_FLOAT32, xs32, mu32, cov32, w32, NULL);
    p32.x_stride[0] = 7;
    p32.x_stride[1] = 2;
    {
        void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT32, 23) + 64);
        p32.records = rec;
        p32.out = out32;
        CHECK(gf_cpu_precompute(&p32, 0, 23) == GF_OK && gf_cpu_forward(&p32, 0, 70) == GF_OK,
              "float forward");
        free(rec);
    }
    for (int b = 0; b < 70; ++b) {
        const double r = ref_field(pr.x + 3 * b, 23, pr.mu, pr.cov, mode, pr.w, pr.eps);
        ref_norm += r * r;
        err64 += (out[b] - r) * (out[b] - r);
        err32 += (out32[b] - r) * (out32[b] - r);
    }
    CHECK(sqrt(err64 / ref_norm) < 1e-13, "double forward error %g", sqrt(err64 / ref_norm));
    CHECK(sqrt(err32 / ref_norm) < 1e-6, "float forward error %g", sqrt(err32 / ref_norm));
    free(xs);
    free(xs32);
    free(mu32);
    free(cov32);
    free(w32);
    free_problem(&pr);
}

/* sum_b g_b f(x_b) through the API, in double. */
static double api_objective(const problem *pr) {
    double *out = malloc(sizeof(double) * pr->b), s = 0.0;
    api_forward(params_of(pr, GF_FLOAT64, pr->x, pr->mu, pr->cov, pr->w, NULL), out);
    for (int b = 0; b < pr->b; ++b) s += pr->g[b] * out[b];
    free(out);
    return s;
}

/* Every gradient against central differences of the forward. */
static void test_backward(int mode) {
    problem pr = make_problem(40, 9, mode);
    double gx[40 * 3], gm[9 * 3], gc[9 * 6], gw[9];
    gf_params p = params_of(&pr, GF_FLOAT64, pr.x, pr.mu, pr.cov, pr.w, pr.g);
    void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT64, 9) + 64);
    p.records = rec;
    p.grad_x = gx;
    p.grad_means = gm;
    p.grad_cov = gc;
    p.grad_weights = gw;
    CHECK(gf_cpu_precompute(&p, 0, 9) == GF_OK, "precompute");
    CHECK(gf_cpu_backward_points(&p, 0, 40) == GF_OK, "backward points");
    CHECK(gf_cpu_backward_gaussians(&p, 0, 9) == GF_OK, "backward gaussians");
    free(rec);

    struct { double *param, *grad; int count; const char *name; } sets[4] = {
        {pr.x, gx, 3 * 40, "x"}, {pr.mu, gm, 3 * 9, "means"},
        {pr.cov, gc, mode * 9, "cov"}, {pr.w, gw, 9, "weights"}};
    for (int s = 0; s < 4; ++s) {
        double worst = 0.0, scale = 0.0;
        for (int i = 0; i < sets[s].count; ++i) {
            const double keep = sets[s].param[i], h = 1e-5 * fmax(1.0, fabs(keep));
            sets[s].param[i] = keep + h;
            const double up = api_objective(&pr);
            sets[s].param[i] = keep - h;
            const double down = api_objective(&pr);
            sets[s].param[i] = keep;
            const double numeric = (up - down) / (2 * h);
            worst = fmax(worst, fabs(numeric - sets[s].grad[i]));
            scale = fmax(scale, fabs(numeric));
        }
        CHECK(worst <= 1e-6 * fmax(scale, 1.0), "grad %s (mode %d): error %g of %g",
              sets[s].name, mode, worst, scale);
    }
    free_problem(&pr);
}

/* Split ranges give the same bits as one range (what makes threading deterministic). */
static void test_range_split(int mode) {
    problem pr = make_problem(301, 77, mode);
    const int B = 301, N = 77;
    double *a = calloc(B * 3 + N * 10 + B, sizeof(double)), *b = calloc(B * 3 + N * 10 + B, sizeof(double));
    double *outs[2] = {a, b};
    for (int pass = 0; pass < 2; ++pass) {
        double *o = outs[pass];
        gf_params p = params_of(&pr, GF_FLOAT64, pr.x, pr.mu, pr.cov, pr.w, pr.g);
        void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT64, N) + 64);
        p.records = rec;
        p.out = o;
        p.grad_x = o + B;
        p.grad_means = o + 4 * B;
        p.grad_cov = o + 4 * B + 3 * N;
        p.grad_weights = o + 4 * B + 9 * N;
        const int cuts_b[2][4] = {{0, B, B, B}, {0, 5, 200, B}};
        const int cuts_n[2][4] = {{0, N, N, N}, {0, 17, 18, N}};
        for (int k = 0; k < 3; ++k) {
            gf_cpu_precompute(&p, cuts_n[pass][k], cuts_n[pass][k + 1]);
        }
        for (int k = 0; k < 3; ++k) {
            gf_cpu_forward(&p, cuts_b[pass][k], cuts_b[pass][k + 1]);
            gf_cpu_backward_points(&p, cuts_b[pass][k], cuts_b[pass][k + 1]);
            gf_cpu_backward_gaussians(&p, cuts_n[pass][k], cuts_n[pass][k + 1]);
        }
        free(rec);
    }
    CHECK(memcmp(a, b, sizeof(double) * (B * 4 + N * 10)) == 0, "split ranges differ (mode %d)", mode);
    free(a);
    free(b);
    free_problem(&pr);
}

/* All four stages in float with every input's row stride above 2^31 elements, against
 * the same problem laid out densely: bit for bit.  The strided inputs live in one
 * 17 GB mapping with MAP_NORESERVE, of which only the pages touched take memory. */
static void run_all_f32(gf_params p, float *out /* [B + 3B + N(3 + mode + 1)] */) {
    const int64_t B = p.num_points, N = p.num_gaussians;
    void *rec = aligned_alloc(64, gf_records_bytes(GF_FLOAT32, N) + 64);
    p.records = rec;
    p.out = out;
    p.grad_x = out + B;
    p.grad_means = out + 4 * B;
    p.grad_cov = out + 4 * B + 3 * N;
    p.grad_weights = out + 4 * B + (3 + p.cov_mode) * N;
    CHECK(gf_cpu_precompute(&p, 0, N) == GF_OK, "precompute");
    CHECK(gf_cpu_forward(&p, 0, B) == GF_OK, "forward");
    CHECK(gf_cpu_backward_points(&p, 0, B) == GF_OK, "backward points");
    CHECK(gf_cpu_backward_gaussians(&p, 0, N) == GF_OK, "backward gaussians");
    free(rec);
}

static void test_strides_beyond_int32(int mode) {
    if (sizeof(void *) < 8) return;
    const int64_t B = 5, N = 4, big = (INT64_C(1) << 31) + 5;
    const size_t bytes = sizeof(float) * (size_t)(4 * big + 64);
    float *map = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        printf("strides beyond 2^31: skipped (no 17 GB mapping here)\n");
        return;
    }
    problem pr = make_problem((int)B, (int)N, mode);
    float dense[5 * 3 + 4 * 3 + 4 * 6 + 4 + 5];
    float *x = dense, *mu = x + 15, *cov = mu + 12, *w = cov + 24, *g = w + 4;
    /* strided layout: x rows `big` apart; means columns `big` apart; cov rows `big`
     * apart; weights and grad_out `big` apart, each array at its own offset */
    float *sx = map, *smu = map + 16, *scov = map + 32, *sw = map + 48, *sg = map + 56;
    for (int64_t i = 0; i < B; ++i) {
        for (int k = 0; k < 3; ++k) sx[i * big + k] = x[i * 3 + k] = (float)pr.x[i * 3 + k];
        sg[i * big] = g[i] = (float)pr.g[i];
    }
    for (int64_t n = 0; n < N; ++n) {
        for (int k = 0; k < 3; ++k) smu[k * big + n] = mu[n * 3 + k] = (float)pr.mu[n * 3 + k];
        for (int k = 0; k < mode; ++k) scov[n * big + k] = cov[n * mode + k] = (float)pr.cov[n * mode + k];
        sw[n * big] = w[n] = (float)pr.w[n];
    }
    gf_params p = params_of(&pr, GF_FLOAT32, x, mu, cov, w, g);
    float expect[5 * 4 + 4 * 10], got[5 * 4 + 4 * 10];
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
    p.weights_stride = big;
    p.grad_out = sg;
    p.grad_out_stride = big;
    run_all_f32(p, got);
    CHECK(memcmp(expect, got, sizeof(float) * (size_t)(4 * B + (4 + mode) * N)) == 0,
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
    test_inverse_covariance();
    for (int mode = 3; mode <= 6; mode += 3) {
        test_forward(mode);
        test_backward(mode);
        test_range_split(mode);
        test_strides_beyond_int32(mode);
    }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
