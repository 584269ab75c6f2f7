// SPDX-License-Identifier: Apache-2.0
/*
 * gf_voxel.h - the regular grid's helpers, host and device (GF_HD), shared by the CPU
 * voxel stages (gf_cpu_voxel.c) and the CUDA ones (cuda/voxel_*), so that both evaluate
 * the same voxel centres and give each Gaussian the same tiles.
 *
 * Index space.  Voxel (i, j, k) of a gf_grid has its centre at index coordinates
 * v = (i, j, k); the world point is x = o' + A v with A[:, c] = edges[:, c] / shape[c]
 * and o' = origin + A (1/2, 1/2, 1/2).  A tile is a cube of `side` voxels per axis,
 * starting at the subvolume's first voxel; in index space the tiles are the cubic cells
 * of a gf_cull_plan (lo = offset - 1/2, cell_size = side), so gf_spatial.h's exact
 * ellipsoid-row test applies unchanged to the Gaussian carried into index space
 * (mean A^-1 (mu - o'), covariance A^-1 Sigma A^-T).  Voxel centres sit half a voxel
 * from every tile face, so the assignment of a voxel to its tile is exact.
 *
 * Which pairs count is still gf_pair_keep's decision on the world point rounded to the
 * working type (gf_grid_centre): the tiles are a superset.  The radius of the ellipsoid
 * carried into index space is widened by the Mahalanobis length of that rounding
 * (gf_voxel_box_init), so that a pair the per-pair test keeps at the rounded point is
 * never in a tile the Gaussian misses.
 */
#ifndef GF_VOXEL_H
#define GF_VOXEL_H

#include "gf_spatial.h"

/* World coordinates of the centre of voxel (i, j, k) (whole-grid indices), in double:
 *     x_r = origin_r + (edges[r][0] (i + 1/2)) / D0 + (edges[r][1] (j + 1/2)) / D1
 *                    + (edges[r][2] (k + 1/2)) / D2,
 * in that order, so that an axis-aligned box (edges diagonal) gives
 * lo + (i + 1/2) (hi - lo) / D bit for bit as torch computes it in float64.  The stages
 * round it once to the working type. */
GF_HD void gf_grid_centre(const gf_grid *g, int64_t i, int64_t j, int64_t k, double x[3]) {
    const double t0 = (double)i + 0.5, t1 = (double)j + 0.5, t2 = (double)k + 0.5;
    for (int r = 0; r < 3; ++r)
        x[r] = g->origin[r] + g->edges[r][0] * t0 / (double)g->shape[0] +
               g->edges[r][1] * t1 / (double)g->shape[1] +
               g->edges[r][2] * t2 / (double)g->shape[2];
}

/* Whole-grid indices of point b of the subvolume (b = (i S1 + j) S2 + k, axis 0 slowest). */
GF_HD void gf_grid_index(const gf_grid *g, int64_t b, int64_t idx[3]) {
    const int64_t k = b % g->size[2], ij = b / g->size[2];
    idx[0] = g->offset[0] + ij / g->size[1];
    idx[1] = g->offset[1] + ij % g->size[1];
    idx[2] = g->offset[2] + k;
}

/* The voxel-to-world map x = o' + A v (see above). */
typedef struct gf_grid_map {
    double a[3][3];     /* A */
    double ainv[3][3];  /* A^-1 */
    double o[3];        /* o' */
    double round;       /* a bound on |x_T - x| over the subvolume's centres, x_T the
                         * centre rounded to the working type (world units, 2-norm) */
} gf_grid_map;

/* The map of a grid; 0 when A is singular or not finite (the caller refuses such a
 * grid before this). */
GF_HD int gf_grid_map_init(const gf_grid *g, gf_dtype dtype, gf_grid_map *m) {
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) m->a[r][c] = g->edges[r][c] / (double)g->shape[c];
    const double(*a)[3] = m->a;
    const double c00 = a[1][1] * a[2][2] - a[1][2] * a[2][1];
    const double c01 = a[1][2] * a[2][0] - a[1][0] * a[2][2];
    const double c02 = a[1][0] * a[2][1] - a[1][1] * a[2][0];
    const double det = a[0][0] * c00 + a[0][1] * c01 + a[0][2] * c02;
    if (!(det != 0.0) || !isfinite(det)) return 0;
    const double id = 1.0 / det;
    m->ainv[0][0] = c00 * id;
    m->ainv[1][0] = c01 * id;
    m->ainv[2][0] = c02 * id;
    m->ainv[0][1] = (a[0][2] * a[2][1] - a[0][1] * a[2][2]) * id;
    m->ainv[1][1] = (a[0][0] * a[2][2] - a[0][2] * a[2][0]) * id;
    m->ainv[2][1] = (a[0][1] * a[2][0] - a[0][0] * a[2][1]) * id;
    m->ainv[0][2] = (a[0][1] * a[1][2] - a[0][2] * a[1][1]) * id;
    m->ainv[1][2] = (a[0][2] * a[1][0] - a[0][0] * a[1][2]) * id;
    m->ainv[2][2] = (a[0][0] * a[1][1] - a[0][1] * a[1][0]) * id;
    /* the largest |x_r| over the subvolume's corner centres bounds it over all of them */
    double big = 0.0;
    for (int corner = 0; corner < 8; ++corner) {
        double x[3];
        const int64_t i = g->offset[0] + ((corner & 1) ? g->size[0] - 1 : 0);
        const int64_t j = g->offset[1] + ((corner & 2) ? g->size[1] - 1 : 0);
        const int64_t k = g->offset[2] + ((corner & 4) ? g->size[2] - 1 : 0);
        gf_grid_centre(g, i, j, k, x);
        for (int r = 0; r < 3; ++r) big = gf_max(big, fabs(x[r]));
    }
    for (int r = 0; r < 3; ++r)
        m->o[r] = g->origin[r] + 0.5 * (m->a[r][0] + m->a[r][1] + m->a[r][2]);
    /* the rounding to the type (half an ulp), plus the double formula's own rounding
     * and its difference from o' + A v (a few ulps of double), per coordinate, times
     * sqrt(3) for the 2-norm, with room */
    const double unit = dtype == GF_FLOAT32 ? 0x1p-24 : 0x1p-53;
    m->round = 2.0 * (unit + 8.0 * 0x1p-53) * big * 1.7320508075688772;
    return 1;
}

/* The tiles of a subvolume: gf_cull_plan cells of `side` voxels in index space (see
 * above); dims = ceil(size / side) (at least 1). */
GF_HD void gf_voxel_plan(const gf_grid *g, int64_t side, gf_cull_plan *plan) {
    plan->cell_size = (double)side;
    plan->num_cells = 1;
    for (int c = 0; c < 3; ++c) {
        plan->lo[c] = (double)g->offset[c] - 0.5;
        const int64_t n = (g->size[c] + side - 1) / side;
        plan->dims[c] = n > 0 ? n : 1;
        plan->num_cells *= plan->dims[c];
    }
    plan->finite_points = g->size[0] * g->size[1] * g->size[2];
    plan->list_length = 0;
    plan->pairs_estimate = 0.0;
}

/* The tile box of one Gaussian from its record's values (world mean, M' and nkq as
 * gf_cull_box_init takes them): the Gaussian carried into index space, its radius
 * widened by the Mahalanobis length of the centres' rounding (map->round), then
 * gf_cull_box_init on the tiles' plan.  Non-finite values or reach_all: every tile. */
GF_HD void gf_voxel_box_init(const gf_cull_plan *tiles, const gf_grid_map *map,
                             const double mean[3], const double m[6], double nkq,
                             int reach_all, gf_cull_box *b) {
    /* L' = M'^-1 (lower): Sigma' = L' L'^T */
    const double l00 = 1.0 / m[GF_L00], l11 = 1.0 / m[GF_L11], l22 = 1.0 / m[GF_L22];
    const double l10 = -m[GF_L10] * l00 / m[GF_L11];
    const double l21 = -m[GF_L21] * l11 / m[GF_L22];
    const double l20 = -(m[GF_L20] * l00 + m[GF_L21] * l10) / m[GF_L22];
    const double l[3][3] = {{l00, 0.0, 0.0}, {l10, l11, 0.0}, {l20, l21, l22}};
    /* C = A^-1 L', Sigma_v = C C^T, its Cholesky factor L_v and m_v = L_v^-1 */
    double cm[3][3];
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c)
            cm[r][c] = map->ainv[r][0] * l[0][c] + map->ainv[r][1] * l[1][c] +
                       map->ainv[r][2] * l[2][c];
    double s[3][3];
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c)
            s[r][c] = cm[r][0] * cm[c][0] + cm[r][1] * cm[c][1] + cm[r][2] * cm[c][2];
    const double v00 = sqrt(s[0][0]);
    const double v10 = s[1][0] / v00, v20 = s[2][0] / v00;
    const double v11 = sqrt(gf_max(s[1][1] - v10 * v10, 0.0));
    const double v21 = (s[2][1] - v20 * v10) / v11;
    const double v22 = sqrt(gf_max(s[2][2] - v20 * v20 - v21 * v21, 0.0));
    double mv[6];
    mv[GF_L00] = 1.0 / v00;
    mv[GF_L11] = 1.0 / v11;
    mv[GF_L22] = 1.0 / v22;
    mv[GF_L10] = -v10 * mv[GF_L00] / v11;
    mv[GF_L21] = -v21 * mv[GF_L11] / v22;
    mv[GF_L20] = -(v20 * mv[GF_L00] + v21 * mv[GF_L10]) / v22;
    double mean_v[3];
    for (int r = 0; r < 3; ++r) {
        const double d0 = mean[0] - map->o[0], d1 = mean[1] - map->o[1],
                     d2 = mean[2] - map->o[2];
        mean_v[r] = map->ainv[r][0] * d0 + map->ainv[r][1] * d1 + map->ainv[r][2] * d2;
    }
    /* |M' dx| <= |M'|_F |dx|: the rounding's Mahalanobis length (folded units) */
    double mf = 0.0;
    for (int i = 0; i < 6; ++i) mf += m[i] * m[i];
    const double radius = sqrt(-nkq) + sqrt(mf) * map->round;
    gf_cull_box_init(tiles, mean_v, mv, -(radius * radius), reach_all, b);
}

#endif /* GF_VOXEL_H */
