/*
 * cull.cuh - what the culling's CUDA files share (cull_plan.cu, cull_build.cu,
 * culled_points.cu, culled_gaussians.cu): their block shapes, each Gaussian's box, the
 * workspaces' layouts, and the functions each file gives the others.  The stages, the
 * decomposition of each kernel and the workspaces are described in cull_build.cu.
 */
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "gf_spatial.h"

namespace gf_cuda {

constexpr int kChunkWarps = 4;
constexpr int kChunkThreads = kChunkWarps * kWarp; /* threads of a culled points block */
constexpr int kChunk = 2 * kChunkThreads;  /* its points at most: two slots a thread */
constexpr int kThreads = 256;              /* threads of the one-per-item kernels */

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

/* ---- workspaces (each sub-buffer 256-byte aligned) ---------------------------- */

/* The plan's: records [N], the device plan, bbox partials, offsets [N + 1] (int64), cub
 * scan storage. */
struct PlanLayout {
    size_t records = 0, plan = 0, bbox = 0, offsets = 0, temp = 0;
    size_t temp_bytes = 0, total = 0;
    int bbox_blocks = 1;
};

gf_status plan_layout(const gf_params &p, PlanLayout &l, int *cuda_error);

/* Bits of the cell keys, which lie in [0, num_cells]. */
inline int key_bits(int64_t num_cells) {
    int bits = 1;
    while ((int64_t(1) << bits) <= num_cells) ++bits;
    return bits;
}

/* The culled stages': point cells [2][B] (uint32), point order [2][B] (int64),
 * cell_start [num_cells + 2], chunk_start [num_cells + 2], sorted points [B], list keys
 * [2][L] (uint32), list entries [2][L] (int32), list_start [num_cells + 1], backward:
 * Gaussian keys and order [2][N] each; cub storage (the largest of its sorts and scans,
 * which share it one after another).  [2][..] pairs are the ping-pong buffers of cub's
 * DoubleBuffer sorts. */
struct CullLayout {
    size_t point_cell[2] = {0, 0}, point_order[2] = {0, 0}, cell_start = 0, chunk_start = 0,
           points = 0, list_keys[2] = {0, 0}, list_entries[2] = {0, 0}, list_start = 0,
           gauss_cell[2] = {0, 0}, gauss_order[2] = {0, 0}, temp = 0;
    size_t temp_bytes = 0, total = 0;
    int bits = 1;
};

gf_status cull_layout(const gf_params &p, const gf_cull_plan &plan, bool backward,
                      CullLayout &l, int *cuda_error);

/* ---- what each file gives the others ------------------------------------------- */

/* cull_plan.cu: the plan (records, bbox, grid, counts, offsets) into the plan workspace,
 * then *out on the host (one synchronisation of the stream). */
gf_status run_cull_plan(const gf_params &p, double points_per_cell, const PlanLayout &l,
                        unsigned char *plan_ws, cudaStream_t stream, gf_cull_plan *out,
                        int *cuda_error);

/* cull_build.cu: the build of the sorted points and the lists, then the culled kernels
 * of a forward (backward false) or backward. */
gf_status run_culled(const gf_params &p, const gf_cull_plan &plan, bool backward,
                     const PlanLayout &pl, const unsigned char *plan_ws, const CullLayout &l,
                     unsigned char *ws, cudaStream_t stream, int *cuda_error);

/* culled_points.cu: the culled forward (grad_x false) or backward to the points over
 * the built structure. */
gf_status launch_culled_points(const gf_params &p, const gf_cull_plan &plan,
                               const void *records, const void *points, const int64_t *order,
                               const int64_t *cell_start, const int64_t *chunk_start,
                               const int64_t *list_start, const int32_t *list, bool grad_x,
                               cudaStream_t stream, int *cuda_error);

/* culled_gaussians.cu: the culled backward to the Gaussians, in gauss_order. */
gf_status launch_culled_gaussians(const gf_params &p, const gf_cull_plan &plan,
                                  const void *records, const void *points, const int64_t *order,
                                  const int64_t *cell_start, const int32_t *gauss_order,
                                  cudaStream_t stream, int *cuda_error);

}  // namespace gf_cuda
