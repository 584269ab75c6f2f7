// SPDX-License-Identifier: Apache-2.0
/*
 * voxel.cuh - what the voxelize files share (voxel_build.cu, voxel_forward.cu,
 * voxel_backward.cu, voxel_entry.cu): the grid's geometry as the kernels take it, the
 * structure's and the workspaces' layouts, the voxel centres, and the launchers.
 *
 * Index space.  The kernels see the grid with its axes reversed (the "permuted" grid:
 * plan axis 0 = grid axis 2, the fastest in memory), so that gf_spatial.h's rows of
 * cells, which run along plan axis 0, run along contiguous voxels: a backward warp walking
 * a row reads grad_out coalesced, and on the plan of one-voxel cells a cell's linear index
 * x + S2 (y + S1 z) is the voxel's own index b = (i S1 + j) S2 + k in the subvolume.  The
 * test of a Gaussian against tiles or voxels is the same either way (a relabelling of the
 * index axes).
 *
 * Centres.  Voxel (i, j, k)'s centre is gf_grid_centre's sum
 *     x_r = ((origin_r + P0[i]_r) + P1[j]_r) + P2[k]_r,   Pc[t]_r = (edges[r][c] (t + 1/2)) / Dc,
 * so the build tabulates the per-axis terms (terms [D0 + D1 + D2][3], double) and the
 * kernels add them in that order: the same bits as gf_grid_centre, without its nine
 * divisions per voxel.  Where the edges are diagonal (a box [lo, hi]) coordinate c
 * depends on index c alone, and the build also tabulates it rounded to the type
 * (centres [D0 + D1 + D2]): then a voxel's point is three table loads.
 *
 * The structure (gf_cuda_voxel_structure_bytes; 256-byte aligned arrays):
 *   records  [N]          the pair kernels' records (records.cu)
 *   offsets  [N + 1]      forward: each Gaussian's first list entry (a scan of its tile
 *                         count); backward: its first work item
 *   terms    [D0+D1+D2][3] double, the centres' per-axis terms
 *   centres  [D0+D1+D2]   T, the axis-aligned centres
 *   counter  [2]          int64: the non-finite grad_out voxels' count
 *   temp                  cub's scan storage for N + 1 items
 */
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "gf_voxel.h"

namespace gf_cuda {

/* The grid as the kernels take it (by value). */
struct VoxelGeom {
    gf_grid grid;        /* the caller's grid */
    gf_grid perm;        /* its axes reversed (see above) */
    gf_grid_map map;     /* of perm */
    gf_cull_plan plan;   /* tiles (forward) or one-voxel cells (backward) on perm */
    int aligned;         /* the edges are diagonal: centres[] holds the points */
    const double *terms; /* [D0 + D1 + D2][3] */
    const void *centres; /* [D0 + D1 + D2] of T */
};

/* The grid with its axes reversed. */
inline gf_grid permuted_grid(const gf_grid &g) {
    gf_grid q = g;
    for (int c = 0; c < 3; ++c) {
        q.shape[c] = g.shape[2 - c];
        q.offset[c] = g.offset[2 - c];
        q.size[c] = g.size[2 - c];
        for (int r = 0; r < 3; ++r) q.edges[r][c] = g.edges[r][2 - c];
    }
    return q;
}

/* Whether every off-diagonal edge entry is zero. */
inline int grid_aligned(const gf_grid &g) {
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c)
            if (r != c && g.edges[r][c] != 0.0) return 0;
    return 1;
}

/* Entries of the per-axis tables. */
__host__ __device__ inline int64_t axis_entries(const gf_grid &g) { return g.shape[0] + g.shape[1] + g.shape[2]; }

/* The centre of voxel (i, j, k) (whole-grid indices), rounded to T: gf_grid_centre's bits
 * from the tables (see above). */
template <typename T, bool kAligned>
__device__ __forceinline__ void voxel_centre(const VoxelGeom &g, int64_t i, int64_t j, int64_t k,
                                             T &x, T &y, T &z) {
    const int64_t j0 = g.grid.shape[0] + j, k0 = g.grid.shape[0] + g.grid.shape[1] + k;
    if constexpr (kAligned) {
        const T *c = static_cast<const T *>(g.centres);
        x = c[i];
        y = c[j0];
        z = c[k0];
    } else {
        const double *t0 = g.terms + 3 * i, *t1 = g.terms + 3 * j0, *t2 = g.terms + 3 * k0;
        x = T(((g.grid.origin[0] + t0[0]) + t1[0]) + t2[0]);
        y = T(((g.grid.origin[1] + t0[1]) + t1[1]) + t2[1]);
        z = T(((g.grid.origin[2] + t0[2]) + t1[2]) + t2[2]);
    }
}

/* The box of Gaussian n on the geometry's plan, from its record's values in double (as
 * box_of in cull.cuh) and its weights' finiteness. */
template <typename T>
__device__ __forceinline__ void voxel_box_of(const VoxelGeom &g, const gf_params &p, int64_t n,
                                             const typename Types<T>::rec &r, gf_cull_box *b) {
    const double mean[3] = {double(r.mx), double(r.my), double(r.mz)};
    const double m[6] = {double(r.m00), double(r.m10), double(r.m11),
                         double(r.m20), double(r.m21), double(r.m22)};
    gf_voxel_box_init(&g.plan, &g.map, mean, m, double(r.nkq), gf_cull_reaches_all(&p, n), b);
}

/* The rows of box b (0 for an empty box). */
__host__ __device__ __forceinline__ int64_t voxel_box_rows(const gf_cull_box &b) {
    if (b.lo[0] > b.hi[0]) return 0;
    return (b.hi[1] - b.lo[1] + 1) * (b.hi[2] - b.lo[2] + 1);
}

constexpr int kVoxelThreads = 256; /* threads of the one-per-item kernels */

/* ---- layouts ---------------------------------------------------------------------- */

struct VoxelStructure {
    size_t records = 0, offsets = 0, terms = 0, centres = 0, counter = 0, temp = 0,
           temp_bytes = 0, total = 0;
};
gf_status voxel_structure_layout(const gf_params &p, const gf_grid &g, VoxelStructure &l,
                                 int *cuda_error);

/* Forward: keys [2][L] (uint32 tiles), entries [2][L] (int32 Gaussians), tile_start
 * [tiles + 1], the sort's storage.  Backward: the work items' sums [items][9 + C]
 * (double), the non-finite voxels [nonfinite] (int64), their count, the select's
 * storage. */
struct VoxelWorkspace {
    size_t keys[2] = {0, 0}, entries[2] = {0, 0}, tile_start = 0;
    size_t partials = 0, extra = 0, num_extra = 0;
    size_t temp = 0, temp_bytes = 0, total = 0;
    int key_bits = 1;
};
gf_status voxel_workspace_layout(const gf_params &p, const gf_grid &g, bool backward,
                                 const gf_voxel_counts &c, VoxelWorkspace &l, int *cuda_error);

/* The tiles' plan of a forward with tiles of `side` voxels (perm's plan). */
inline gf_cull_plan voxel_tiles(const gf_grid &g, int64_t side) {
    const gf_grid perm = permuted_grid(g);
    gf_cull_plan plan;
    gf_voxel_plan(&perm, side, &plan);
    return plan;
}

/* ---- what each file gives the others ------------------------------------------- */

/* voxel_build.cu: the records, the tables, each Gaussian's tile count (forward) or work
 * items (backward) scanned into offsets, the non-finite grad_out voxels' count (backward),
 * and the counts read back (one wait). */
gf_status launch_voxel_build(const gf_params &p, VoxelGeom geom, bool backward,
                             unsigned char *structure, const VoxelStructure &sl,
                             gf_voxel_counts *counts, cudaStream_t stream, int *cuda_error);

/* voxel_forward.cu: the lists (fill, sort, tile starts; none without a cutoff) and the
 * tiles' sums into out. */
gf_status launch_voxel_forward(const gf_params &p, VoxelGeom geom, const unsigned char *structure,
                               const VoxelStructure &sl, const gf_voxel_counts &c,
                               unsigned char *ws, const VoxelWorkspace &wl, cudaStream_t stream,
                               int *cuda_error);

/* voxel_backward.cu: the non-finite voxels, the work items' sums and each Gaussian's chain
 * rule into the wanted gradients. */
gf_status launch_voxel_backward(const gf_params &p, VoxelGeom geom, const unsigned char *structure,
                                const VoxelStructure &sl, const gf_voxel_counts &c,
                                unsigned char *ws, const VoxelWorkspace &wl, cudaStream_t stream,
                                int *cuda_error);

/* voxel_backward.cu: cub's select storage over B voxels (for the workspace's layout). */
gf_status voxel_select_temp_bytes(const gf_params &p, size_t *bytes, int *cuda_error);

}  // namespace gf_cuda
