// SPDX-License-Identifier: Apache-2.0
/*
 * test_spatial.c - the culling's cell test (csrc/gf_spatial.h) against brute force:
 *
 *  1. it never drops a pair that the per-pair test keeps: for Gaussians of every shape
 *     (isotropic, needles and discs up to 1000:1, randomly rotated, tiny and huge beside
 *     the cells, means inside and outside the grid) and points inside their ellipsoids,
 *     on its boundary and on cell faces, every point whose pair gf_pair_keep keeps, in
 *     float32 and in float64, lies in a cell that gf_cull_row gives the Gaussian;
 *  2. it is exact: a cell of the box is kept if and only if the ellipsoid of radius
 *     (1 + GF_CULL_MARGIN) k meets it (its minimum of q over the cell, found by
 *     enumerating the 27 active sets of the box-constrained minimisation), up to the
 *     row test's slack of 1e-6 of a cell.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "gaussfield.h"
#include "gf_math.h"
#include "gf_spatial.h"

static int failures = 0;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            if (failures < 20) {                                                \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                     \
                printf(__VA_ARGS__);                                            \
                printf("\n");                                                   \
            }                                                                   \
            ++failures;                                                         \
        }                                                                       \
    } while (0)

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double uniform(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (double)((rng * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static double normal(void) {
    const double u = uniform() + 1e-300, v = uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* A = Sigma'^-1 = M'^T M' (full 3x3) from the record's M'. */
static void precision_of(const double m[6], double a[3][3]) {
    const double mm[3][3] = {{m[GF_L00], 0, 0}, {m[GF_L10], m[GF_L11], 0},
                             {m[GF_L20], m[GF_L21], m[GF_L22]}};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            a[i][j] = 0.0;
            for (int k = 0; k < 3; ++k) a[i][j] += mm[k][i] * mm[k][j];
        }
}

static double quad(double a[3][3], const double d[3]) {
    double q = 0.0;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) q += d[i] * a[i][j] * d[j];
    return q;
}

/* Solve the n x n system s x = r (n <= 3) by Gaussian elimination with pivoting. */
static void solve(int n, double s[3][3], double r[3], double x[3]) {
    for (int c = 0; c < n; ++c) {
        int piv = c;
        for (int i = c + 1; i < n; ++i)
            if (fabs(s[i][c]) > fabs(s[piv][c])) piv = i;
        for (int j = 0; j < n; ++j) {
            const double t = s[c][j];
            s[c][j] = s[piv][j];
            s[piv][j] = t;
        }
        const double t = r[c];
        r[c] = r[piv];
        r[piv] = t;
        for (int i = c + 1; i < n; ++i) {
            const double f = s[i][c] / s[c][c];
            for (int j = c; j < n; ++j) s[i][j] -= f * s[c][j];
            r[i] -= f * r[c];
        }
    }
    for (int i = n - 1; i >= 0; --i) {
        double v = r[i];
        for (int j = i + 1; j < n; ++j) v -= s[i][j] * x[j];
        x[i] = v / s[i][i];
    }
}

/* min over the box [lo, hi] (d units) of d^T A d: each coordinate free or at a bound;
 * the free ones minimise given the bound ones (a KKT point is one of the 27). */
static double min_q_box(double a[3][3], const double lo[3], const double hi[3]) {
    double best = INFINITY;
    for (int pat = 0; pat < 27; ++pat) {
        int kind[3] = {pat % 3, (pat / 3) % 3, pat / 9}; /* 0 free, 1 lo, 2 hi */
        double d[3] = {0, 0, 0};
        int fr[3], nf = 0;
        for (int i = 0; i < 3; ++i) {
            if (kind[i] == 0) fr[nf++] = i;
            else d[i] = kind[i] == 1 ? lo[i] : hi[i];
        }
        if (nf > 0) {
            double s[3][3], r[3], x[3] = {0, 0, 0};
            for (int p = 0; p < nf; ++p) {
                r[p] = 0.0;
                for (int q = 0; q < nf; ++q) s[p][q] = a[fr[p]][fr[q]];
                for (int b = 0; b < 3; ++b)
                    if (kind[b]) r[p] -= a[fr[p]][b] * d[b];
            }
            solve(nf, s, r, x);
            int feasible = 1;
            for (int p = 0; p < nf; ++p) {
                d[fr[p]] = x[p];
                feasible = feasible && x[p] >= lo[fr[p]] - 1e-12 * (1 + fabs(lo[fr[p]])) &&
                           x[p] <= hi[fr[p]] + 1e-12 * (1 + fabs(hi[fr[p]]));
            }
            if (!feasible) continue;
        }
        const double q = quad(a, d);
        if (q < best) best = q;
    }
    return best;
}

/* Whether cell (ix, iy, iz) is among the cells the Gaussian of box b reaches. */
static int reached(const gf_cull_plan *g, const gf_cull_box *b, int64_t ix, int64_t iy,
                   int64_t iz) {
    if (b->lo[0] > b->hi[0]) return 0;
    if (ix < b->lo[0] || ix > b->hi[0] || iy < b->lo[1] || iy > b->hi[1] || iz < b->lo[2] ||
        iz > b->hi[2])
        return 0;
    int64_t x0, x1;
    gf_cull_row(g, b, iy, iz, &x0, &x1);
    return ix >= x0 && ix <= x1;
}

typedef struct shape {
    double cov[7]; /* quaternion and log-scales */
    double mean[3];
    const char *kind;
} shape;

/* A random Gaussian of kind t relative to the cell size h. */
static shape random_shape(int t, double h, const gf_cull_plan *g, const double glo[3],
                          const double ghi[3]) {
    shape s;
    static const char *kinds[6] = {"iso", "needle", "disc", "mild", "tiny", "huge"};
    s.kind = kinds[t % 6];
    double scale = h * exp(1.5 * normal()), ratio[3] = {1, 1, 1};
    switch (t % 6) {
    case 1: ratio[1] = ratio[2] = 1e-3 * exp(normal()); break;   /* 1000:1 needles */
    case 2: ratio[2] = 1e-3 * exp(normal()); break;              /* discs */
    case 3: ratio[1] = 0.3 + 0.7 * uniform(), ratio[2] = 0.1 + 0.2 * uniform(); break;
    case 4: scale = 1e-3 * h; break;
    case 5: scale = 30 * h * g->dims[0]; break;
    default: break;
    }
    for (int i = 0; i < 4; ++i) s.cov[i] = normal();
    for (int i = 0; i < 3; ++i) s.cov[4 + i] = log(scale * ratio[i]);
    /* mostly inside the points' box, some beyond it */
    for (int i = 0; i < 3; ++i) s.mean[i] = glo[i] + (uniform() * 1.2 - 0.1) * (ghi[i] - glo[i]);
    return s;
}

/* A point of the k-ellipsoid at Mahalanobis radius t * k in a random direction. */
static void point_at(const double m[6], const double mean[3], double rad, double p[3]) {
    double u[3], n = 0.0;
    for (int i = 0; i < 3; ++i) u[i] = normal(), n += u[i] * u[i];
    n = sqrt(n);
    for (int i = 0; i < 3; ++i) u[i] *= rad / n;
    /* d = M'^-1 u' (lower triangular solve), u' = u in folded units */
    double d[3];
    d[0] = u[0] / m[GF_L00];
    d[1] = (u[1] - m[GF_L10] * d[0]) / m[GF_L11];
    d[2] = (u[2] - m[GF_L20] * d[0] - m[GF_L21] * d[1]) / m[GF_L22];
    for (int i = 0; i < 3; ++i) p[i] = mean[i] + d[i];
}

static int64_t dropped = 0, checked = 0, kept_cells = 0, exact_cells = 0, loose_cells = 0;

/* Property 1 for one Gaussian in one dtype. */
static void check_never_drops(const gf_cull_plan *g, const double glo[3], const double ghi[3],
                              const shape *s, double k, int dtype) {
    double m[6], mean[3], nkq;
    gf_record_f32 r32;
    gf_record_f64 r64;
    float mean32[3] = {(float)s->mean[0], (float)s->mean[1], (float)s->mean[2]};
    float cov32[7];
    for (int i = 0; i < 7; ++i) cov32[i] = (float)s->cov[i];
    if (dtype == GF_FLOAT32) {
        gf_record_init_f32(&r32, mean32, 1, cov32, 1, 1.0f, GF_COV_QUAT, 0.0, k);
        const float mv[6] = {r32.m00, r32.m10, r32.m11, r32.m20, r32.m21, r32.m22};
        for (int i = 0; i < 6; ++i) m[i] = mv[i];
        mean[0] = r32.mx, mean[1] = r32.my, mean[2] = r32.mz, nkq = r32.nkq;
    } else {
        gf_record_init_f64(&r64, s->mean, 1, s->cov, 1, 1.0, GF_COV_QUAT, 0.0, k);
        const double mv[6] = {r64.m00, r64.m10, r64.m11, r64.m20, r64.m21, r64.m22};
        for (int i = 0; i < 6; ++i) m[i] = mv[i];
        mean[0] = r64.mx, mean[1] = r64.my, mean[2] = r64.mz, nkq = r64.nkq;
    }
    gf_cull_box box;
    gf_cull_box_init(g, mean, m, nkq, 0, &box);
    const double ak = sqrt(-nkq);
    for (int t = 0; t < 1000; ++t) {
        double p[3];
        /* inside, on the boundary, just outside, then snapped to a cell face */
        const double rad = t % 4 == 0 ? ak * uniform() : ak * (1.0 + 1e-6 * normal());
        point_at(m, mean, rad, p);
        if (t % 3 == 0) {
            const int ax = t % 9 / 3;
            const double c = floor((p[ax] - g->lo[ax]) / g->cell_size + 0.5);
            p[ax] = g->lo[ax] + c * g->cell_size;
        }
        int keep;
        double pc[3];
        if (dtype == GF_FLOAT32) {
            const float x = (float)p[0], y = (float)p[1], z = (float)p[2];
            const gf_pair_f32 pr = gf_pair_whiten_f32(&r32, x, y, z);
            keep = gf_pair_keep_f32(&r32, pr.e);
            pc[0] = x, pc[1] = y, pc[2] = z;
        } else {
            const gf_pair_f64 pr = gf_pair_whiten_f64(&r64, p[0], p[1], p[2]);
            keep = gf_pair_keep_f64(&r64, pr.e);
            pc[0] = p[0], pc[1] = p[1], pc[2] = p[2];
        }
        /* the grid covers the points it was made for (their bounding box) */
        if (!keep || pc[0] < glo[0] || pc[0] > ghi[0] || pc[1] < glo[1] || pc[1] > ghi[1] ||
            pc[2] < glo[2] || pc[2] > ghi[2])
            continue;
        ++checked;
        const int64_t c = gf_grid_cell(g, pc[0], pc[1], pc[2]);
        const int64_t ix = c % g->dims[0], iy = c / g->dims[0] % g->dims[1],
                      iz = c / (g->dims[0] * g->dims[1]);
        if (!reached(g, &box, ix, iy, iz)) {
            ++dropped;
            CHECK(0, "%s Gaussian (%s) drops a kept pair: point (%.9g, %.9g, %.9g), cell (%lld, %lld, %lld)",
                  s->kind, dtype == GF_FLOAT32 ? "float32" : "float64", pc[0], pc[1], pc[2],
                  (long long)ix, (long long)iy, (long long)iz);
        }
    }
}

/* Property 2 (float64 records): kept iff the inflated ellipsoid meets the cell. */
static void check_exact(const gf_cull_plan *g, const shape *s, double k) {
    gf_record_f64 r;
    gf_record_init_f64(&r, s->mean, 1, s->cov, 1, 1.0, GF_COV_QUAT, 0.0, k);
    const double m[6] = {r.m00, r.m10, r.m11, r.m20, r.m21, r.m22};
    const double mean[3] = {r.mx, r.my, r.mz};
    gf_cull_box box;
    gf_cull_box_init(g, mean, m, r.nkq, 0, &box);
    if (box.lo[0] > box.hi[0] || !box.test) return;
    double a[3][3];
    precision_of(m, a);
    const double r2 = -r.nkq * (1.0 + GF_CULL_MARGIN) * (1.0 + GF_CULL_MARGIN);
    const double h = g->cell_size, slack = 2e-6 * h;
    for (int64_t iz = box.lo[2]; iz <= box.hi[2]; ++iz)
        for (int64_t iy = box.lo[1]; iy <= box.hi[1]; ++iy)
            for (int64_t ix = box.lo[0]; ix <= box.hi[0]; ++ix) {
                const int64_t ic[3] = {ix, iy, iz};
                double lo[3], hi[3], lo_s[3], hi_s[3];
                for (int i = 0; i < 3; ++i) {
                    lo[i] = g->lo[i] + (double)ic[i] * h - mean[i];
                    hi[i] = lo[i] + h;
                    /* the grid's edge cells reach to infinity */
                    if (ic[i] == 0) lo[i] = -1e300;
                    if (ic[i] == g->dims[i] - 1) hi[i] = 1e300;
                    lo_s[i] = lo[i] - slack, hi_s[i] = hi[i] + slack;
                }
                const double q_in = min_q_box(a, lo, hi), q_out = min_q_box(a, lo_s, hi_s);
                const int kept = reached(g, &box, ix, iy, iz);
                kept_cells += kept;
                exact_cells += q_in <= r2;
                if (q_in <= r2 * (1.0 - 1e-9))
                    CHECK(kept, "%s: a cell the ellipsoid meets is dropped (min q %g, r2 %g)",
                          s->kind, q_in, r2);
                if (kept && q_out > r2 * (1.0 + 1e-9)) {
                    ++loose_cells;
                    CHECK(0, "%s: a cell the ellipsoid misses is kept (min q %g, r2 %g)",
                          s->kind, q_out, r2);
                }
            }
}

/* gf_grid_choose keeps its promises over any extents (subnormal, tiny, huge, mixed, one
 * axis only): num_cells <= gf_grid_max_cells, dims in [1, MAX_DIM], and every point of the
 * box has a cell index inside the grid before clamping (the fuzz target found 2x2x2 cells
 * for 3 points at 0.5 per cell over a subnormal extent, where 1.001 emax == emax). */
static void check_grid_choice(void) {
    static const double scales[] = {4.9406564584124654e-324, 1e-320, 2.2250738585072014e-308,
                                    1e-300, 1e-12, 1.0, 1e12, 1e300, 1.7e308};
    const int ns = (int)(sizeof scales / sizeof scales[0]);
    int64_t grids = 0;
    for (int t = 0; t < 20000; ++t) {
        double lo[3], hi[3];
        for (int i = 0; i < 3; ++i) {
            const double e = (t >> i) % 5 == 0 ? 0.0 : scales[(int)(uniform() * ns) % ns] * uniform();
            lo[i] = (t % 3 == 0 ? 0.0 : 1e-3 * normal());
            hi[i] = lo[i] + (t % 2 ? e : scales[t % ns]);
            if (!(hi[i] >= lo[i]) || !isfinite(hi[i])) hi[i] = lo[i];
        }
        const int64_t pts = 1 + (int64_t)(uniform() * (t % 4 == 0 ? 10.0 : 1e7));
        const double ppc = (t % 5 == 0 ? 0.5 : 1.0 + 300.0 * uniform());
        gf_cull_plan g;
        memset(&g, 0, sizeof g);
        gf_grid_choose(lo, hi, pts, ppc, &g);
        const int64_t cap = gf_grid_max_cells(pts, ppc);
        CHECK(g.num_cells >= 1 && g.num_cells <= cap,
              "grid of %lld cells for capacity %lld (points %lld, per cell %g, extents %g %g %g)",
              (long long)g.num_cells, (long long)cap, (long long)pts, ppc, hi[0] - lo[0],
              hi[1] - lo[1], hi[2] - lo[2]);
        for (int i = 0; i < 3; ++i) {
            CHECK(g.dims[i] >= 1 && g.dims[i] <= GF_CULL_MAX_DIM, "dims %lld", (long long)g.dims[i]);
            const double top = gf_grid_axis_raw(&g, i, hi[i]);
            CHECK(top >= 0.0 && top <= (double)(g.dims[i] - 1) + 1.0,
                  "the box's top corner is cell %g of %lld along %d (extent %g, side %g)", top,
                  (long long)g.dims[i], i, hi[i] - lo[i], g.cell_size);
        }
        ++grids;
    }
    printf("grid choice: %lld grids checked\n", (long long)grids);
}

int main(void) {
    check_grid_choice();
    for (int t = 0; t < 600; ++t) {
        /* a grid as gf_grid_choose makes it, over a random box */
        gf_cull_plan g;
        double lo[3], hi[3];
        for (int i = 0; i < 3; ++i) {
            lo[i] = 20.0 * normal();
            hi[i] = lo[i] + (t % 7 == 0 ? 1e-3 : 10.0) * exp(normal());
        }
        gf_grid_choose(lo, hi, 1000 + (int64_t)(uniform() * 3e5), 8.0 + 200.0 * uniform(), &g);
        const double k = t % 3 == 0 ? 3.0 : t % 3 == 1 ? 6.0 : 0.5 + 4.0 * uniform();
        const shape s = random_shape(t, g.cell_size, &g, lo, hi);
        check_never_drops(&g, lo, hi, &s, k, GF_FLOAT32);
        check_never_drops(&g, lo, hi, &s, k, GF_FLOAT64);
        if (t % 6 != 5) check_exact(&g, &s, k); /* huge boxes: too many cells */
    }
    printf("never drops: %lld kept pairs checked, %lld dropped\n", (long long)checked,
           (long long)dropped);
    printf("exact: %lld cells kept, %lld met by the ellipsoid, %lld kept beyond the slack\n",
           (long long)kept_cells, (long long)exact_cells, (long long)loose_cells);
    CHECK(checked > 100000, "too few kept pairs checked (%lld)", (long long)checked);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
