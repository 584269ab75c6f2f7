// SPDX-License-Identifier: Apache-2.0
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
 * precision.  The box and the row test below are computed in double from the same M'
 * for the ellipsoid of radius (1 + GF_CULL_MARGIN) k, which covers the rounding of e
 * unless M' is conditioned beyond ~1e4 in float32 (e's error is about 10 eps cond(M')
 * relative); a pair missed there has q within rounding of k^2 and a value below
 * |w| e^{-k^2/2}, the cutoff's own bound.
 */
#ifndef GF_SPATIAL_H
#define GF_SPATIAL_H

#include "gf_math.h"

#define GF_CULL_MARGIN (1.0 / 256.0)
/* A Gaussian whose box spans more cells than this takes all of them without the row
 * test, so that counting its cells is O(1); such a Gaussian culls poorly anyway. */
#define GF_CULL_TEST_MAX_CELLS 65536
/* Cells per axis at most, and in all. */
#define GF_CULL_MAX_DIM 1024
#define GF_CULL_MAX_CELLS ((int64_t)1 << 22)

/* fmax and fmin with their rule for one NaN (the other operand), inline: libm's are
 * calls on x86 (maxsd does not follow that rule), and the row test runs them per row. */
GF_HD double gf_max(double a, double b) { return (a > b || b != b) ? a : b; }
GF_HD double gf_min(double a, double b) { return (a < b || b != b) ? a : b; }

/* The most cells gf_grid_choose gives num_points points at points_per_cell (at least 1):
 * the capacity of a structure's cell arrays. */
GF_HD int64_t gf_grid_max_cells(int64_t num_points, double points_per_cell) {
    double target = (double)num_points / points_per_cell;
    if (target > (double)GF_CULL_MAX_CELLS) target = (double)GF_CULL_MAX_CELLS;
    if (!(target >= 1.0)) return 1;
    return (int64_t)target;
}

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
    /* A side that gives one cell: 1.001 emax, or emax + DBL_MIN where emax is subnormal
     * (there 1.001 emax rounds back to emax, and floor(emax / emax) + 1 is 2 cells). */
    const double one_cell = gf_max(emax * 1.001, emax + DBL_MIN);
    double h;
    if (!(emax > 0.0) || target < 2.0) {
        /* one cell (all points in one spot, or few points): its side covers everything */
        h = emax > 0.0 ? one_cell : 1.0;
    } else {
        /* cells(h) falls as h grows: bisect on a log scale between a side that gives
         * too many cells (emax / MAX_DIM / 2) and one that gives one cell */
        double a = emax / (2.0 * GF_CULL_MAX_DIM), b = one_cell;
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

/*
 * The cells a Gaussian reaches: the inclusive ranges lo..hi per axis of its box (empty
 * when lo[0] > hi[0]), and, in each row (iy, iz) of the box, the x-interval of cells that
 * its ellipsoid E = {d : d^T Sigma'^-1 d <= r2} meets (gf_cull_row), exactly: the row's
 * cells form a slab {y in [y0, y1], z in [z0, z1]}, E is convex, so the slab's part of E
 * spans one interval of x, whose ends are the smallest and largest x of E in the slab.
 * Those are attained (KKT of minimising x over E and the slab's bounds) at one of
 *   - E's own x-tips, where their (y, z) lies in the slab;
 *   - the x-tips of E's section by one of the slab's four faces (y = y0, y1 or
 *     z = z0, z1), where the tip's other coordinate lies in the face;
 *   - the ends of E's chord along one of the slab's four edges (y, z both fixed);
 * so the interval is the min and max over those of them that exist (no candidate: the
 * row misses E).  The constants below are E's, computed once per Gaussian in double;
 * d = point - mean; Sigma' = (M'^T M')^-1, the covariance in the record's folded units,
 * so that a pair with q' = |M' d|^2 <= r2 lies in E.
 */
typedef struct gf_cull_box {
    int64_t lo[3], hi[3];
    int test;         /* apply the row test (else: every cell of the box) */
    double mean[3];
    double ext[3];    /* E's half-extent along each axis, r sqrt(Sigma'_ii) */
    double tip[3];    /* E's +x tip, d = tip (and -tip the -x one) */
    /* faces y = const: d_x, d_z of the section's +x tip = (ay, by) y + rho (cyx, cyz),
     * rho^2 = r2 - y^2 iyy; faces z = const likewise with (az, bz), (czx, czy), izz */
    double ay, by, cyx, cyz, iyy;
    double az, bz, czx, czy, izz;
    /* edges (y, z): rho^2 = r2 - (pyy y^2 + 2 pyz y z + pzz z^2), the chord's x ends
     * gy y + gz z -+ rho sx */
    double pyy, pyz, pzz, gy, gz, sx;
    double r2;
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
    int finite = isfinite(ak) && !reach_all;
    for (int i = 0; i < 6; ++i) finite = finite && isfinite(m[i]);
    for (int i = 0; i < 3; ++i) {
        b->mean[i] = mean[i];
        b->ext[i] = ext[i];
        finite = finite && isfinite(mean[i]) && isfinite(ext[i]);
    }
    b->test = 0;
    if (!finite) {
        for (int i = 0; i < 3; ++i) {
            b->lo[i] = 0;
            b->hi[i] = g->dims[i] - 1;
        }
        return;
    }
    int64_t cells = 1;
    for (int i = 0; i < 3; ++i) {
        const double t0 = gf_grid_axis_raw(g, i, mean[i] - ext[i]);
        const double t1 = gf_grid_axis_raw(g, i, mean[i] + ext[i]);
        if (t1 < 0.0 || t0 > (double)(g->dims[i] - 1)) {
            b->lo[0] = 1;
            b->hi[0] = 0;
            return;
        }
        b->lo[i] = gf_grid_clamp(g, i, t0);
        b->hi[i] = gf_grid_clamp(g, i, t1);
        cells *= b->hi[i] - b->lo[i] + 1;
    }
    const double sxx = l00 * l00, syy = l10 * l10 + l11 * l11;
    const double szz = l20 * l20 + l21 * l21 + l22 * l22;
    const double sxy = l00 * l10, sxz = l00 * l20, syz = l10 * l20 + l11 * l21;
    const double r2 = ak * ak;
    b->r2 = r2;
    b->tip[0] = ext[0];
    b->tip[1] = ak * sxy / sqrt(sxx);
    b->tip[2] = ak * sxz / sqrt(sxx);
    b->iyy = 1.0 / syy;
    b->ay = sxy * b->iyy;
    b->by = syz * b->iyy;
    b->cyx = sqrt(gf_max(sxx - sxy * b->ay, 0.0));
    b->cyz = b->cyx > 0.0 ? (sxz - sxy * b->by) / b->cyx : 0.0;
    b->izz = 1.0 / szz;
    b->az = sxz * b->izz;
    b->bz = syz * b->izz;
    b->czx = sqrt(gf_max(sxx - sxz * b->az, 0.0));
    b->czy = b->czx > 0.0 ? (sxy - sxz * b->bz) / b->czx : 0.0;
    const double det = syy * szz - syz * syz;
    b->pyy = szz / det;
    b->pzz = syy / det;
    b->pyz = -syz / det;
    b->gy = (sxy * szz - sxz * syz) / det;
    b->gz = (sxz * syy - sxy * syz) / det;
    b->sx = sqrt(gf_max(sxx - (sxy * b->gy + sxz * b->gz), 0.0));
    int sane = isfinite(b->cyz) && isfinite(b->czy) && isfinite(b->pyy) && isfinite(b->pzz) &&
               isfinite(b->pyz) && isfinite(b->gy) && isfinite(b->gz) && det > 0.0;
    b->test = sane && cells <= GF_CULL_TEST_MAX_CELLS;
}

/* The x-interval [*x0, *x1] (d units) of E in the slab y in [y0, y1], z in [z0, z1] (d
 * units); 0 when E misses the slab (or it is empty). */
GF_HD int gf_cull_slab(const gf_cull_box *b, double y0, double y1, double z0, double z1,
                       double *x0, double *x1) {
    double lo = (double)INFINITY, hi = -(double)INFINITY;
    if (!(y0 <= y1 && z0 <= z1)) return 0; /* an empty slab (rounding at E's box) */
    /* E's tips */
    if (b->tip[1] >= y0 && b->tip[1] <= y1 && b->tip[2] >= z0 && b->tip[2] <= z1)
        hi = b->tip[0];
    if (-b->tip[1] >= y0 && -b->tip[1] <= y1 && -b->tip[2] >= z0 && -b->tip[2] <= z1)
        lo = -b->tip[0];
    /* the faces' sections' tips */
    for (int f = 0; f < 2; ++f) {
        const double y = f ? y1 : y0;
        const double rho2 = b->r2 - y * y * b->iyy;
        if (rho2 >= 0.0) {
            const double rho = sqrt(rho2);
            const double cx = b->ay * y, cz = b->by * y;
            const double zp = cz + rho * b->cyz, zm = cz - rho * b->cyz;
            if (zp >= z0 && zp <= z1) hi = gf_max(hi, cx + rho * b->cyx);
            if (zm >= z0 && zm <= z1) lo = gf_min(lo, cx - rho * b->cyx);
        }
        const double z = f ? z1 : z0;
        const double sig2 = b->r2 - z * z * b->izz;
        if (sig2 >= 0.0) {
            const double rho = sqrt(sig2);
            const double cx = b->az * z, cy = b->bz * z;
            const double yp = cy + rho * b->czy, ym = cy - rho * b->czy;
            if (yp >= y0 && yp <= y1) hi = gf_max(hi, cx + rho * b->czx);
            if (ym >= y0 && ym <= y1) lo = gf_min(lo, cx - rho * b->czx);
        }
    }
    /* the edges' chords */
    for (int e = 0; e < 4; ++e) {
        const double y = e & 1 ? y1 : y0, z = e & 2 ? z1 : z0;
        const double rho2 = b->r2 - (b->pyy * y * y + 2.0 * b->pyz * y * z + b->pzz * z * z);
        if (rho2 >= 0.0) {
            const double c = b->gy * y + b->gz * z, w = sqrt(rho2) * b->sx;
            lo = gf_min(lo, c - w);
            hi = gf_max(hi, c + w);
        }
    }
    *x0 = lo;
    *x1 = hi;
    return lo <= hi;
}

/* The cells of row (iy, iz) of its box that the Gaussian of box b reaches: ix in
 * [*x0, *x1] (empty when *x0 > *x1): the slab of the row's cells, widened by 1e-6 of a
 * cell against the rounding of the cell assignment and of this solution, and open to
 * infinity at the grid's edges (points beyond are clamped into the edge cells), cut to
 * E's box; then gf_cull_slab's interval, widened alike.  O(1) per row. */
GF_HD void gf_cull_row(const gf_cull_plan *g, const gf_cull_box *b, int64_t iy, int64_t iz,
                       int64_t *x0, int64_t *x1) {
    *x0 = b->lo[0];
    *x1 = b->hi[0];
    if (!b->test) return;
    const double h = g->cell_size, slack = 1e-6 * h;
    const double y0 = iy == 0 ? -b->ext[1] : g->lo[1] + (double)iy * h - b->mean[1] - slack;
    const double y1 = iy == g->dims[1] - 1 ? b->ext[1]
                                            : g->lo[1] + (double)(iy + 1) * h - b->mean[1] + slack;
    const double z0 = iz == 0 ? -b->ext[2] : g->lo[2] + (double)iz * h - b->mean[2] - slack;
    const double z1 = iz == g->dims[2] - 1 ? b->ext[2]
                                            : g->lo[2] + (double)(iz + 1) * h - b->mean[2] + slack;
    double lo, hi;
    if (!gf_cull_slab(b, gf_max(y0, -b->ext[1]), gf_min(y1, b->ext[1]), gf_max(z0, -b->ext[2]),
                      gf_min(z1, b->ext[2]), &lo, &hi)) {
        *x0 = 1;
        *x1 = 0;
        return;
    }
    /* clamped as points are: those beyond the grid's edges are in its edge cells */
    const int64_t c0 = gf_grid_clamp(g, 0, gf_grid_axis_raw(g, 0, b->mean[0] + gf_max(lo, -b->ext[0]) - slack));
    const int64_t c1 = gf_grid_clamp(g, 0, gf_grid_axis_raw(g, 0, b->mean[0] + gf_min(hi, b->ext[0]) + slack));
    if (c0 > *x0) *x0 = c0;
    if (c1 < *x1) *x1 = c1;
}

/* Whether the Gaussian of box b reaches cell c (linear index; num_cells, the non-finite
 * points' cell, is reached by every Gaussian). */
GF_HD int gf_cull_box_reaches_cell(const gf_cull_plan *g, const gf_cull_box *b, int64_t c) {
    if (c >= g->num_cells) return 1;
    const int64_t ix = c % g->dims[0], iy = c / g->dims[0] % g->dims[1],
                  iz = c / (g->dims[0] * g->dims[1]);
    if (b->lo[0] > b->hi[0] || ix < b->lo[0] || ix > b->hi[0] || iy < b->lo[1] ||
        iy > b->hi[1] || iz < b->lo[2] || iz > b->hi[2])
        return 0;
    int64_t x0, x1;
    gf_cull_row(g, b, iy, iz, &x0, &x1);
    return ix >= x0 && ix <= x1;
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
