/*
 * gf_spatial.h - the spatial helpers of culling, host and device (GF_HD), shared by the
 * CPU stages (gf_cpu_cull.c, gf_cpu_kernels_template.h) and the CUDA ones (cuda/cull_*,
 * cuda/culled_*), so that both choose the same grid and give each Gaussian the same
 * cells.
 *
 * Which pairs count is never decided here: that is gf_pair_keep in gf_math.h, in every
 * path.  These helpers only choose a superset of the kept pairs to evaluate, so they
 * may be generous but never tight: a cell is dropped for a Gaussian only when no point
 * of the cell can pass the per-pair test.
 *
 * Why the margin.  The per-pair test compares e = -|M' d|^2 computed in the working
 * precision.  The box and the sphere test below are computed in double from the same
 * M' and widened by GF_CULL_MARGIN (relative), which covers the rounding of e unless M'
 * is conditioned beyond ~1e4 in float32; a pair missed there has q within rounding of
 * k^2 and a value below |w| e^{-k^2/2}, the cutoff's own bound.
 */
#ifndef GF_SPATIAL_H
#define GF_SPATIAL_H

#include "gf_math.h"

#define GF_CULL_MARGIN (1.0 / 256.0)
/* A Gaussian whose box spans more cells than this takes all of them without the sphere
 * test, so that counting its cells is O(1); such a Gaussian culls poorly anyway. */
#define GF_CULL_TEST_MAX_CELLS 65536
/* Cells per axis at most, and in all. */
#define GF_CULL_MAX_DIM 1024
#define GF_CULL_MAX_CELLS ((int64_t)1 << 22)

/* Cells of side h along an extent e >= 0: floor(e / h) + 1, so that the cells cover
 * [lo, lo + e] with room to spare.  An extent that overflowed (points near +-DBL_MAX:
 * e = h = inf, e / h NaN) is one cell. */
GF_HD int64_t gf_grid_cells_along(double e, double h) {
    const double n = floor(e / h) + 1.0;
    if (!(n >= 1.0)) return 1;
    return n > (double)GF_CULL_MAX_DIM ? (int64_t)GF_CULL_MAX_DIM + 1 : (int64_t)n;
}

/*
 * Choose the grid over [lo, hi] (the finite points' bounding box; lo > hi when there
 * are none): the smallest cubic cell side h (to 1e-3 relative) whose cells number at
 * most num_points / points_per_cell (at least 1, at most GF_CULL_MAX_CELLS), each axis
 * at most GF_CULL_MAX_DIM cells.  Writes lo, cell_size, dims, num_cells of the plan.
 */
GF_HD void gf_grid_choose(const double lo[3], const double hi[3], int64_t num_points,
                          double points_per_cell, gf_cull_plan *plan) {
    double e[3], emax = 0.0;
    const int any = lo[0] <= hi[0];
    for (int i = 0; i < 3; ++i) {
        plan->lo[i] = any ? lo[i] : 0.0;
        e[i] = any ? hi[i] - lo[i] : 0.0;
        if (!(e[i] >= 0.0)) e[i] = 0.0;
        if (e[i] > emax) emax = e[i];
    }
    double target = (double)num_points / points_per_cell;
    if (target > (double)GF_CULL_MAX_CELLS) target = (double)GF_CULL_MAX_CELLS;
    if (!(target >= 1.0)) target = 1.0;
    double h;
    if (!(emax > 0.0) || target < 2.0) {
        /* one cell (all points in one spot, or few points): its side covers everything */
        h = emax > 0.0 ? emax * 1.001 : 1.0;
    } else {
        /* cells(h) falls as h grows: bisect on a log scale between a side that gives
         * too many cells (emax / MAX_DIM / 2) and one that gives one cell (1.001 emax) */
        double a = emax / (2.0 * GF_CULL_MAX_DIM), b = emax * 1.001;
        for (int it = 0; it < 60 && b > a * 1.001; ++it) {
            const double m = sqrt(a * b);
            const int64_t nx = gf_grid_cells_along(e[0], m), ny = gf_grid_cells_along(e[1], m),
                          nz = gf_grid_cells_along(e[2], m);
            const int fits = nx <= GF_CULL_MAX_DIM && ny <= GF_CULL_MAX_DIM &&
                             nz <= GF_CULL_MAX_DIM && (double)nx * ny * nz <= target;
            if (fits) b = m;
            else a = m;
        }
        h = b;
    }
    plan->cell_size = h;
    plan->num_cells = 1;
    for (int i = 0; i < 3; ++i) {
        int64_t n = gf_grid_cells_along(e[i], h);
        if (n > GF_CULL_MAX_DIM) n = GF_CULL_MAX_DIM;
        plan->dims[i] = n;
        plan->num_cells *= n;
    }
}

/* The cell index along one axis of coordinate v, before clamping (a double, so that
 * far-away values cannot overflow an integer). */
GF_HD double gf_grid_axis_raw(const gf_cull_plan *g, int axis, double v) {
    return floor((v - g->lo[axis]) / g->cell_size);
}

GF_HD int64_t gf_grid_clamp(const gf_cull_plan *g, int axis, double t) {
    if (!(t >= 0.0)) return 0;
    if (t >= (double)(g->dims[axis] - 1)) return g->dims[axis] - 1;
    return (int64_t)t;
}

/* Whether row i of an [rows, C] array of the given dtype (strides in elements) holds only
 * finite values. */
GF_HD int gf_row_finite(gf_dtype dtype, const void *a, const int64_t stride[2], int64_t i,
                        int64_t num_channels) {
    for (int64_t c = 0; c < num_channels; ++c) {
        const int64_t at = i * stride[0] + c * stride[1];
        const double v = dtype == GF_FLOAT32 ? (double)((const float *)a)[at]
                                             : ((const double *)a)[at];
        if (!isfinite(v)) return 0;
    }
    return 1;
}

/* Whether Gaussian n's terms reach every point whatever its distance: a NaN or infinite
 * weight (any channel) makes w * 0 NaN at every pair of the dense stages, so the culled
 * ones give such a Gaussian every cell. */
GF_HD int gf_cull_reaches_all(const gf_params *p, int64_t n) {
    return !gf_row_finite(p->dtype, p->weights, p->weights_stride, n, p->num_channels);
}

/* Whether point b belongs to the non-finite cell whatever its coordinates: in a backward
 * (grad_out given), a NaN or infinite grad_out row makes every Gaussian's sums NaN in the
 * dense stages, so such a point is seen by every Gaussian, as a non-finite point is. */
GF_HD int gf_cull_point_seen_by_all(const gf_params *p, int64_t b) {
    return p->grad_out &&
           !gf_row_finite(p->dtype, p->grad_out, p->grad_out_stride, b, p->num_channels);
}

/* The cell of a point: x + dims0 (y + dims1 z) for finite coordinates, num_cells for a
 * point with a NaN or infinite coordinate.  Monotone in each coordinate, and computed
 * with the same arithmetic as the Gaussians' boxes, so a point inside a box is in one of
 * its cells. */
GF_HD int64_t gf_grid_cell(const gf_cull_plan *g, double x, double y, double z) {
    if (!(isfinite(x) && isfinite(y) && isfinite(z))) return g->num_cells;
    const int64_t ix = gf_grid_clamp(g, 0, gf_grid_axis_raw(g, 0, x));
    const int64_t iy = gf_grid_clamp(g, 1, gf_grid_axis_raw(g, 1, y));
    const int64_t iz = gf_grid_clamp(g, 2, gf_grid_axis_raw(g, 2, z));
    return ix + g->dims[0] * (iy + g->dims[1] * iz);
}

/* The cells a Gaussian may reach: the inclusive ranges lo..hi per axis (empty when
 * lo[0] > hi[0]), and the sphere test's data. */
typedef struct gf_cull_box {
    int64_t lo[3], hi[3];
    int test;         /* apply the sphere test to each cell of the box */
    double mean[3];
    double m[6];      /* M', lower triangular (GF_L00..GF_L22) */
    double reach;     /* a cell is reached when |M' (centre - mean)| <= reach */
} gf_cull_box;

/* The box of one Gaussian from its record's values (mean, M', nkq = -a^2 k^2, finite
 * with a cutoff).  Non-finite values, or reach_all (gf_cull_reaches_all): every cell, no
 * test. */
GF_HD void gf_cull_box_init(const gf_cull_plan *g, const double mean[3], const double m[6],
                            double nkq, int reach_all, gf_cull_box *b) {
    const double ak = sqrt(-nkq) * (1.0 + GF_CULL_MARGIN);
    /* L' = M'^{-1} (lower); Sigma' = L' L'^T, whose diagonal gives the box */
    const double l00 = 1.0 / m[GF_L00], l11 = 1.0 / m[GF_L11], l22 = 1.0 / m[GF_L22];
    const double l10 = -m[GF_L10] * l00 / m[GF_L11];
    const double l21 = -m[GF_L21] * l11 / m[GF_L22];
    const double l20 = -(m[GF_L20] * l00 + m[GF_L21] * l10) / m[GF_L22];
    const double ext[3] = {ak * sqrt(l00 * l00), ak * sqrt(l10 * l10 + l11 * l11),
                           ak * sqrt(l20 * l20 + l21 * l21 + l22 * l22)};
    double norm2 = 0.0;
    int finite = isfinite(ak) && !reach_all;
    for (int i = 0; i < 6; ++i) {
        b->m[i] = m[i];
        norm2 += m[i] * m[i];
        finite = finite && isfinite(m[i]);
    }
    for (int i = 0; i < 3; ++i) {
        b->mean[i] = mean[i];
        finite = finite && isfinite(mean[i]) && isfinite(ext[i]);
    }
    if (!finite) {
        for (int i = 0; i < 3; ++i) {
            b->lo[i] = 0;
            b->hi[i] = g->dims[i] - 1;
        }
        b->test = 0;
        b->reach = (double)INFINITY;
        return;
    }
    int64_t cells = 1;
    for (int i = 0; i < 3; ++i) {
        const double t0 = gf_grid_axis_raw(g, i, mean[i] - ext[i]);
        const double t1 = gf_grid_axis_raw(g, i, mean[i] + ext[i]);
        if (t1 < 0.0 || t0 > (double)(g->dims[i] - 1)) {
            b->lo[0] = 1;
            b->hi[0] = 0;
            b->test = 0;
            return;
        }
        b->lo[i] = gf_grid_clamp(g, i, t0);
        b->hi[i] = gf_grid_clamp(g, i, t1);
        cells *= b->hi[i] - b->lo[i] + 1;
    }
    /* any point x of a cell with centre c: |M'(x - mean)| >= |M'(c - mean)| - |M'|_F r,
     * r the cell's half-diagonal; the cell is dropped when that exceeds a k */
    const double r = 0.8660254037844387 * g->cell_size * (1.0 + 1e-6);
    b->reach = ak + sqrt(norm2) * r;
    b->test = cells <= GF_CULL_TEST_MAX_CELLS;
}

/* The cells of row (iy, iz) of its box that the Gaussian of box b reaches: ix in
 * [*x0, *x1] (empty when *x0 > *x1).  The sphere test's set of cell centres is an
 * ellipsoid, so a row meets it in one interval: |u0 + t v| <= reach along the row's
 * centres, u0 = M'(centre of cell (0, iy, iz) - mean), v = M' (h, 0, 0), solved in closed
 * form and widened by 1e-6 cell against the rounding of the solution.  O(1) per row. */
GF_HD void gf_cull_row(const gf_cull_plan *g, const gf_cull_box *b, int64_t iy, int64_t iz,
                       int64_t *x0, int64_t *x1) {
    *x0 = b->lo[0];
    *x1 = b->hi[0];
    if (!b->test) return;
    const double h = g->cell_size;
    const double dx = g->lo[0] + 0.5 * h - b->mean[0];
    const double dy = g->lo[1] + ((double)iy + 0.5) * h - b->mean[1];
    const double dz = g->lo[2] + ((double)iz + 0.5) * h - b->mean[2];
    const double ux = b->m[GF_L00] * dx;
    const double uy = b->m[GF_L10] * dx + b->m[GF_L11] * dy;
    const double uz = b->m[GF_L20] * dx + b->m[GF_L21] * dy + b->m[GF_L22] * dz;
    const double vx = b->m[GF_L00] * h, vy = b->m[GF_L10] * h, vz = b->m[GF_L20] * h;
    const double a = vx * vx + vy * vy + vz * vz;              /* > 0: M' is invertible */
    const double bh = ux * vx + uy * vy + uz * vz;
    const double c = ux * ux + uy * uy + uz * uz - b->reach * b->reach;
    const double disc = bh * bh - a * c;
    if (!(disc >= 0.0)) {
        *x0 = 1;
        *x1 = 0;
        return;
    }
    const double sq = sqrt(disc);
    double t0 = (-bh - sq) / a, t1 = (-bh + sq) / a;
    t0 -= 1e-6 * (1.0 + fabs(t0));
    t1 += 1e-6 * (1.0 + fabs(t1));
    const double c0 = ceil(t0), c1 = floor(t1);
    if (c0 > (double)*x0) *x0 = c0 > (double)*x1 ? *x1 + 1 : (int64_t)c0;
    if (c1 < (double)*x1) *x1 = c1 < (double)*x0 ? *x0 - 1 : (int64_t)c1;
}

/* The walk over a Gaussian's reached cells, which every user makes in this order: the
 * rows (iy, iz) of its box, z then y, each row's interval of gf_cull_row as one run of
 * consecutive cells [first, last] (linear indices).
 *
 *     gf_cull_rows it;
 *     gf_cull_rows_begin(&box, &it);
 *     for (int64_t first, last; gf_cull_rows_next(plan, &box, &it, &first, &last);) ...
 */
typedef struct gf_cull_rows {
    int64_t iy, iz; /* the next row to solve */
} gf_cull_rows;

GF_HD void gf_cull_rows_begin(const gf_cull_box *b, gf_cull_rows *it) {
    it->iy = b->lo[1];
    it->iz = b->lo[0] <= b->hi[0] ? b->lo[2] : b->hi[2] + 1; /* an empty box: no rows */
}

/* The next row with reached cells: its run in *first..*last, and 1; 0 past the last. */
GF_HD int gf_cull_rows_next(const gf_cull_plan *g, const gf_cull_box *b, gf_cull_rows *it,
                            int64_t *first, int64_t *last) {
    while (it->iz <= b->hi[2]) {
        const int64_t iy = it->iy, iz = it->iz;
        if (++it->iy > b->hi[1]) {
            it->iy = b->lo[1];
            ++it->iz;
        }
        int64_t x0, x1;
        gf_cull_row(g, b, iy, iz, &x0, &x1);
        if (x0 > x1) continue;
        const int64_t row = g->dims[0] * (iy + g->dims[1] * iz);
        *first = row + x0;
        *last = row + x1;
        return 1;
    }
    return 0;
}

/* The number of cells the Gaussian of box b reaches (the length of its share of the
 * lists): the cells of gf_cull_rows' walk, or of the whole box without the test (O(1),
 * however large the box). */
GF_HD int64_t gf_cull_box_count(const gf_cull_plan *g, const gf_cull_box *b) {
    if (b->lo[0] > b->hi[0]) return 0;
    if (!b->test)
        return (b->hi[0] - b->lo[0] + 1) * (b->hi[1] - b->lo[1] + 1) *
               (b->hi[2] - b->lo[2] + 1);
    int64_t n = 0;
    gf_cull_rows it;
    gf_cull_rows_begin(b, &it);
    for (int64_t first, last; gf_cull_rows_next(g, b, &it, &first, &last);) n += last - first + 1;
    return n;
}

#endif /* GF_SPATIAL_H */
