// SPDX-License-Identifier: Apache-2.0
/*
 * cull.cuh - what the culling's CUDA files share (cull_plan.cu, cull_build.cu,
 * culled_points.cu, culled_gaussians.cu, entry.cu): block shapes, the structure's and the
 * workspace's layouts, the row walk of a warp, and the functions each file gives the
 * others.
 *
 * The structure (gaussfield.h, "Culling"; its size a function of B, N, C, the dtype and
 * points_per_cell, mirrored by python/gaussfield/autograd.py for the fakes), each array
 * 256-byte aligned:
 *   header       gf_cull_header: the grid, the lists' length, the path
 *   records      [N]            the pair kernels' records (records.cu)
 *   offsets      [N + 1]        each Gaussian's first entry in the lists (a scan of the
 *                               counts; offsets[N] = list_length)
 *   cell_start   [max_cells + 2] points of cell c in the sorted order (cell num_cells: the
 *                               points with a non-finite coordinate)
 *   chunk_start  [max_cells + 2] the culled points kernel's blocks of cell c
 *   point_order  [B]            point indices sorted by cell, in index order in a cell
 *   points       [B]            x, y, z of the sorted points (StagedPoint, g unused)
 *   gauss_order  [N]            the Gaussians by the cell of their mean: the backward's
 *                               execution order (the results do not depend on it)
 *
 * Nothing is read back by the host: every kernel takes the header's grid and path from
 * device memory, and a grid of blocks is sized by the host's bounds (max_cells, B, N).
 */
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "gf_spatial.h"

namespace gf_cuda {

/* Points of a culled points block at most (8 groups of 32): 1 warp of 8 slots a thread
 * or 4 warps of 2 (culled_points.cu). */
constexpr int kChunk = 256;
constexpr int kThreads = 256;              /* threads of the one-per-item kernels */
constexpr int kMaxBBoxBlocks = 128;        /* the bbox's partials, merged in one thread */

/* The culling box of Gaussian n, from its record's values in double (as the CPU does) and
 * its weights' finiteness. */
template <typename T>
__device__ __forceinline__ void box_of(const gf_cull_plan &g, const gf_params &p, int64_t n,
                                       const typename Types<T>::rec &r, gf_cull_box *b) {
    const double mean[3] = {double(r.mx), double(r.my), double(r.mz)};
    const double m[6] = {double(r.m00), double(r.m10), double(r.m11),
                         double(r.m20), double(r.m21), double(r.m22)};
    gf_cull_box_init(&g, mean, m, double(r.nkq), gf_cull_reaches_all(&p, n), b);
}

/* Row r (of ny * nz, z slowest) of box b: its run of reached cells [*first, *last]
 * (empty when *first > *last), as gf_cull_rows gives them in that order. */
__device__ __forceinline__ void box_row(const gf_cull_plan &g, const gf_cull_box &b, int64_t r,
                                        int64_t *first, int64_t *last) {
    const int64_t ny = b.hi[1] - b.lo[1] + 1;
    const int64_t iy = b.lo[1] + r % ny, iz = b.lo[2] + r / ny;
    int64_t x0, x1;
    gf_cull_row(&g, &b, iy, iz, &x0, &x1);
    const int64_t row = g.dims[0] * (iy + g.dims[1] * iz);
    *first = row + x0;
    *last = row + x1;
}

/* The rows of box b (0 for an empty box). */
__host__ __device__ __forceinline__ int64_t box_rows(const gf_cull_box &b) {
    if (b.lo[0] > b.hi[0]) return 0;
    return (b.hi[1] - b.lo[1] + 1) * (b.hi[2] - b.lo[2] + 1);
}

/* ---- layouts ------------------------------------------------------------------- */

/* The structure's arrays (bytes from its start). */
struct StructureLayout {
    size_t records = 0, offsets = 0, cell_start = 0, chunk_start = 0, point_order = 0,
           points = 0, gauss_order = 0, total = 0;
    int64_t max_cells = 1;
};
StructureLayout structure_layout(const gf_params &p, const gf_cull_config &config);

/* The workspace of a build, forward or backward (one layout for all three):
 *   build:    bbox partials, counts [N + 1], point cells [2][B] (uint32), the identity
 *             order [B] (int64), Gaussian keys [2][N] (uint32) and order [N] (int32)
 *   lists:    keys [2][capacity] (uint32), entries [2][capacity] (int32), list_start
 *             [max_cells + 1], and `fitted`: the Gaussians [0, fitted) whose entries fit
 *             the call's capacity (a prefix: the offsets grow with the index); the others
 *             are evaluated against every cell after its list (the overflow path)
 *   backward: the Gaussians' sums [N][GF_NUM_SUMS] (double), grad_out in the sorted order
 *             [B], the non-finite grad_out points' flags [B] (uint8), positions [B]
 *             (int64), their count, and the dense path's partial sums
 *   temp:     cub's storage, the largest of the sorts, scans and selects (one at a time) */
struct WorkspaceLayout {
    size_t bbox = 0, counts = 0, point_cell[2] = {0, 0}, iota = 0, gauss_key[2] = {0, 0},
           gauss_iota = 0;
    size_t list_key[2] = {0, 0}, list_entry[2] = {0, 0}, list_start = 0, fitted = 0;
    size_t sums = 0, sorted_g = 0, flags = 0, extra = 0, num_extra = 0, dense = 0;
    size_t temp = 0, temp_bytes = 0, total = 0;
    int64_t capacity = 0;
    int point_bits = 1, list_bits = 1; /* the radix sorts' key bits */
    int bbox_blocks = 1;
};
gf_status workspace_layout(const gf_params &p, const gf_cull_config &config, bool backward,
                           WorkspaceLayout &l, int *cuda_error);

/* Typed views of a structure and a workspace. */
struct StructureView {
    gf_cull_header *header;
    void *records;
    int64_t *offsets, *cell_start, *chunk_start, *point_order;
    void *points;
    int32_t *gauss_order;
    int64_t max_cells;
};
StructureView structure_view(const gf_params &p, const gf_cull_config &config, void *structure);

/* ---- what each file gives the others ------------------------------------------- */

/* cull_plan.cu: records, the grid, the counts and offsets, the path (no host sync). */
gf_status launch_cull_plan(const gf_params &p, const gf_cull_config &config,
                           const StructureView &s, const WorkspaceLayout &l, unsigned char *ws,
                           cudaStream_t stream, int *cuda_error);

/* cull_plan.cu: the Gaussians' counts of reached cells into counts[0, N), counts[N] = 0
 * (a thread a Gaussian). */
gf_status launch_cull_counts(const gf_params &p, const StructureView &s, int64_t *counts,
                             cudaStream_t stream, int *cuda_error);

/* cull_build.cu: the points sorted by cell, the cells' starts and chunks, the Gaussians'
 * execution order (with_order). */
gf_status launch_cull_points(const gf_params &p, const StructureView &s,
                             const WorkspaceLayout &l, unsigned char *ws, bool with_order,
                             cudaStream_t stream, int *cuda_error);

/* cull_build.cu: the cell lists of the fitted Gaussians into the workspace (fill, sort,
 * starts); the sorted entries into *list. */
gf_status launch_cull_lists(const gf_params &p, const StructureView &s, const WorkspaceLayout &l,
                            unsigned char *ws, const int32_t **list, cudaStream_t stream,
                            int *cuda_error);

/* cull_build.cu: the backward's grad_out in the sorted order (one channel) and the points
 * that every Gaussian visits (a non-finite grad_out row), with their count. */
gf_status launch_cull_backward_prepare(const gf_params &p, const StructureView &s,
                                       const WorkspaceLayout &l, unsigned char *ws,
                                       cudaStream_t stream, int *cuda_error);

/* culled_points.cu: the culled forward (grad_x false) or backward to the points over the
 * lists of launch_cull_lists; exits at once where the header says dense. */
gf_status launch_culled_points(const gf_params &p, const StructureView &s,
                               const WorkspaceLayout &l, const unsigned char *ws,
                               const int32_t *list, bool grad_x, cudaStream_t stream,
                               int *cuda_error);

/* culled_gaussians.cu: the culled backward to the Gaussians (sums, then the chain rule
 * per Gaussian); exits at once where the header says dense. */
gf_status launch_culled_gaussians(const gf_params &p, const StructureView &s,
                                  const WorkspaceLayout &l, unsigned char *ws,
                                  cudaStream_t stream, int *cuda_error);

}  // namespace gf_cuda
