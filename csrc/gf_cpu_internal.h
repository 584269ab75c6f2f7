// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu_internal.h - what the CPU API (gf_cpu.c) needs from the loops
 * (gf_cpu_kernels.c), which are compiled once per instruction set.  Not installed.
 */
#ifndef GF_CPU_INTERNAL_H
#define GF_CPU_INTERNAL_H

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_voxel.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*gf_range_fn)(const gf_params *params, int64_t begin, int64_t end);

/* The culling structure, lists and backward work (gf_cpu_cull.c lays them out) as
 * typed arrays:
 *   cell_start  [num_cells + 2]  points of cell c: point_order[cell_start[c] .. cell_start[c + 1])
 *                                (cell num_cells: the points with a non-finite coordinate)
 *   point_order [B]              point indices sorted by cell, in index order within a cell
 *   list_start  [num_cells + 1]  Gaussians of cell c: list[list_start[c] .. list_start[c + 1])
 *   list        [list_length]    Gaussian indices, ascending within a cell (NULL: not built)
 *   sorted      [3, B]           x, y, z of the points in point_order's order, in the dtype
 *   sorted_g    [B]              the backward's grad_out in that order (one channel), or NULL
 *   extra       [num_extra]      the backward's points (positions in the sorted order) that
 *                                every Gaussian visits: those with a non-finite grad_out row
 *   extra_cell  [num_extra]      their cells (a Gaussian reaching it visits it there) */
typedef struct gf_cull_view {
    const int64_t *cell_start;
    const int64_t *point_order;
    const int64_t *list_start;
    const int32_t *list;
    const void *sorted;
    const void *sorted_g;
    const int64_t *extra;
    const int64_t *extra_cell;
    int64_t num_extra;
} gf_cull_view;

typedef void (*gf_cull_range_fn)(const gf_params *params, const gf_cull_plan *plan,
                                 const gf_cull_view *view, int64_t begin, int64_t end);

/* A voxel structure (gf_cpu_voxel.c lays it out) as typed arrays and values:
 *   tiles       the tiles' plan (index space, gf_voxel.h), side voxels per tile edge
 *   size        the subvolume's voxels per axis (S0, S1, S2)
 *   origin      [3]           the grid's origin
 *   terms[c]    [S_c, 3]      the term of axis c of a voxel's centre, coordinate r at
 *                             [s * 3 + r] for subvolume index s: edges[r][c] (offset[c] +
 *                             s + 1/2) / D_c, so that the centre is ((origin + terms[0]) +
 *                             terms[1]) + terms[2], gf_grid_centre's sum in its order
 *   list_start  [num_tiles + 1]  Gaussians of tile t: list[list_start[t] .. [t + 1])
 *   list        [list_length] Gaussian indices, ascending within a tile; NULL: every
 *                             Gaussian for every tile
 *   unseen      [num_unseen]  the backward's voxels that every Gaussian sees (ascending) */
typedef struct gf_voxel_view {
    const gf_cull_plan *tiles;
    const gf_grid_map *map;
    int64_t side;
    int64_t size[3];
    const double *origin;
    const double *terms[3];
    const int64_t *list_start;
    const int32_t *list;
    const int64_t *unseen;
    int64_t num_unseen;
} gf_voxel_view;

typedef void (*gf_voxel_range_fn)(const gf_params *params, const gf_voxel_view *view,
                                  int64_t begin, int64_t end);

/* The loops of one instruction set, indexed by gf_dtype. */
typedef struct gf_cpu_kernels {
    const char *isa;
    gf_range_fn forward[2];
    gf_range_fn backward_points[2];
    gf_range_fn backward_gaussians[2];
    gf_cull_range_fn culled_forward[2];          /* over cells */
    gf_cull_range_fn culled_backward_points[2];  /* over cells */
    gf_cull_range_fn culled_backward_gaussians[2]; /* over Gaussians */
    gf_voxel_range_fn voxel_forward[2];            /* over tiles */
    gf_voxel_range_fn voxel_backward_gaussians[2]; /* over Gaussians */
} gf_cpu_kernels;

/* The loops chosen for this processor (at the first call). */
const gf_cpu_kernels *gf_cpu_kernels_current(void);

extern const gf_cpu_kernels gf_cpu_kernels_generic;
#if defined(GF_HAVE_X86_VARIANTS)
extern const gf_cpu_kernels gf_cpu_kernels_avx2;
extern const gf_cpu_kernels gf_cpu_kernels_avx512;
#endif

#ifdef __cplusplus
}
#endif

#endif /* GF_CPU_INTERNAL_H */
