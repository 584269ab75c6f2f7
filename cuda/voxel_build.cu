// SPDX-License-Identifier: Apache-2.0
/*
 * voxel_build.cu - gf_cuda_voxel_build's stages, and the structure's layout:
 *
 *   records    one thread per Gaussian: gf_record_init (records.cu)
 *   tables     one thread per entry of D0 + D1 + D2: the centres' per-axis terms and the
 *              axis-aligned centres (voxel.cuh)
 *   count      a thread per Gaussian (its warp for a box of many rows): forward, the tiles
 *              its ellipsoid meets (gf_cull_box_count on the tiles' plan); backward, its
 *              work items, ceil(rows / GF_CUDA_VOXEL_ITEM_ROWS) of its box on the plan of
 *              one-voxel cells, at least 1 (every Gaussian visits the non-finite voxels)
 *   scan       cub::DeviceScan of the counts: offsets, offsets[N] the total
 *   nonfinite  (backward) a grid-stride count of the voxels whose grad_out row is not
 *              finite: an integer sum (atomicAdd of integers: the same total whatever the
 *              order)
 *   read back  offsets[N] and the count, one wait for the stream
 * A forward without a cutoff counts nothing (every tile's list is every Gaussian) and
 * does not wait.
 */
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "static_switch.h"
#include "voxel.cuh"

namespace {

using namespace gf_cuda;

template <typename T>
__global__ void __launch_bounds__(kVoxelThreads)
    tables_kernel(gf_grid g, double *terms, T *centres) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= axis_entries(g)) return;
    const int c = e < g.shape[0] ? 0 : e < g.shape[0] + g.shape[1] ? 1 : 2;
    const int64_t t = c == 0 ? e : c == 1 ? e - g.shape[0] : e - g.shape[0] - g.shape[1];
    const double h = double(t) + 0.5; /* as gf_grid_centre */
    for (int r = 0; r < 3; ++r) terms[3 * e + r] = g.edges[r][c] * h / double(g.shape[c]);
    /* coordinate c of a voxel whose index c is t (the others 0): where the edges are
     * diagonal, coordinate c of every voxel with that index */
    int64_t idx[3] = {0, 0, 0};
    idx[c] = t;
    double x[3];
    gf_grid_centre(&g, idx[0], idx[1], idx[2], x);
    centres[e] = T(x[c]);
}

/* Thread n < N: Gaussian n's count (see the file's comment); thread N writes the scan's
 * final 0.  A box of more than 32 rows with the row test is counted by the whole warp, a
 * row a lane, after the small ones (cull_plan.cu's count_kernel does the same, measured). */
template <typename T>
__global__ void __launch_bounds__(kVoxelThreads)
    count_kernel(gf_params p, VoxelGeom geom, bool backward,
                 const typename Types<T>::rec *records, int64_t *counts) {
    __shared__ gf_cull_box s_box[kVoxelThreads / kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t N = p.num_gaussians;
    if (int64_t(blockIdx.x) * blockDim.x + int64_t(warp) * kWarp > N) return; /* whole warps */
    if (n == N) counts[N] = 0;
    const bool valid = n < N;
    const gf_cull_plan &g = geom.plan;
    gf_cull_box b;
    int64_t mine = 0;
    bool together = false;
    if (valid) {
        voxel_box_of<T>(geom, p, n, load_record<T>(records + n), &b);
        if (backward) {
            const int64_t rows = voxel_box_rows(b);
            const int64_t items = ceil_div(rows, GF_CUDA_VOXEL_ITEM_ROWS);
            mine = items > 1 ? items : 1;
        } else {
            together = b.test && voxel_box_rows(b) > kWarp;
            if (!together) mine = gf_cull_box_count(&g, &b);
        }
    }
    for (unsigned todo = __ballot_sync(0xffffffffu, together); todo; todo &= todo - 1) {
        const int src = __ffs(todo) - 1;
        if (lane == src) s_box[warp] = b;
        __syncwarp();
        const gf_cull_box &sb = s_box[warp];
        const int64_t rows = voxel_box_rows(sb), ny = sb.hi[1] - sb.lo[1] + 1;
        long long total = 0;
        for (int64_t r = lane; r < rows; r += kWarp) {
            int64_t x0, x1;
            gf_cull_row(&g, &sb, sb.lo[1] + r % ny, sb.lo[2] + r / ny, &x0, &x1);
            if (x1 >= x0) total += x1 - x0 + 1;
        }
#pragma unroll
        for (int off = kWarp / 2; off > 0; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
        if (lane == src) mine = int64_t(total);
        __syncwarp();
    }
    if (valid) counts[n] = mine;
}

/* The voxels whose grad_out row is not finite, counted into *count. */
__global__ void __launch_bounds__(kVoxelThreads)
    nonfinite_kernel(gf_params p, unsigned long long *count) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    unsigned long long mine = 0;
    for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < p.num_points; b += stride)
        mine += !gf_row_finite(p.dtype, p.grad_out, p.grad_out_stride, b, p.num_channels);
#pragma unroll
    for (int off = kWarp / 2; off > 0; off >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, off);
    if (threadIdx.x % kWarp == 0 && mine) atomicAdd(count, mine);
}

}  // namespace

namespace gf_cuda {

gf_status voxel_structure_layout(const gf_params &p, const gf_grid &g, VoxelStructure &l,
                                 int *cuda_error) {
    const int64_t N = p.num_gaussians;
    const size_t es = p.dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    size_t at = 0;
    auto put = [&at](size_t bytes) {
        const size_t here = at;
        at += align256(bytes);
        return here;
    };
    l.records = put(size_t(N) * 16 * es);
    l.offsets = put(sizeof(int64_t) * size_t(N + 1));
    l.terms = put(sizeof(double) * 3 * size_t(axis_entries(g)));
    l.centres = put(es * size_t(axis_entries(g)));
    l.counter = put(2 * sizeof(int64_t));
    size_t temp = 0;
    const gf_status st = cuda_status(
        cub::DeviceScan::ExclusiveSum(nullptr, temp, static_cast<int64_t *>(nullptr),
                                      static_cast<int64_t *>(nullptr), N + 1),
        cuda_error);
    if (st != GF_OK) return st;
    l.temp_bytes = std::max<size_t>(temp, 1);
    l.temp = put(l.temp_bytes);
    l.total = at;
    return GF_OK;
}

gf_status launch_voxel_build(const gf_params &p, VoxelGeom geom, bool backward,
                             unsigned char *structure, const VoxelStructure &sl,
                             gf_voxel_counts *counts, cudaStream_t stream, int *cuda_error) {
    const int64_t N = p.num_gaussians, E = axis_entries(geom.grid);
    if (!grid_fits(ceil_div(std::max(N + 1, E), kVoxelThreads))) return GF_ERR_BAD_SIZE;
    void *records = structure + sl.records;
    auto *offsets = reinterpret_cast<int64_t *>(structure + sl.offsets);
    auto *counter = reinterpret_cast<unsigned long long *>(structure + sl.counter);
    gf_status st;
    if (N > 0 && (st = launch_records(p, records, stream, cuda_error)) != GF_OK) return st;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        tables_kernel<T><<<unsigned(ceil_div(E, kVoxelThreads)), kVoxelThreads, 0, stream>>>(
            geom.grid, reinterpret_cast<double *>(structure + sl.terms),
            reinterpret_cast<T *>(structure + sl.centres));
    });
    GF_LAUNCH_CHECK(cuda_error);
    const bool lists = !backward && gf_has_cutoff(p.cutoff);
    const bool count = lists || backward;
    if (count) {
        GF_DTYPE_SWITCH(p.dtype, T, [&] {
            count_kernel<T><<<unsigned(ceil_div(N + 1, kVoxelThreads)), kVoxelThreads, 0, stream>>>(
                p, geom, backward, static_cast<const typename Types<T>::rec *>(records), offsets);
        });
        GF_LAUNCH_CHECK(cuda_error);
        size_t temp_bytes = sl.temp_bytes;
        st = cuda_status(cub::DeviceScan::ExclusiveSum(structure + sl.temp, temp_bytes, offsets,
                                                       offsets, N + 1, stream),
                         cuda_error);
        if (st != GF_OK) return st;
    }
    if ((st = cuda_status(cudaMemsetAsync(counter, 0, 2 * sizeof(int64_t), stream), cuda_error)) !=
        GF_OK)
        return st;
    if (backward && p.num_points > 0) {
        const int64_t blocks = std::min<int64_t>(ceil_div(p.num_points, kVoxelThreads), 4096);
        nonfinite_kernel<<<unsigned(blocks), kVoxelThreads, 0, stream>>>(p, counter);
        GF_LAUNCH_CHECK(cuda_error);
    }
    int64_t total = 0, nonfinite = 0;
    if (count) {
        if ((st = cuda_status(cudaMemcpyAsync(&total, offsets + N, sizeof total,
                                              cudaMemcpyDeviceToHost, stream),
                              cuda_error)) != GF_OK)
            return st;
        if (backward && (st = cuda_status(cudaMemcpyAsync(&nonfinite, counter, sizeof nonfinite,
                                                          cudaMemcpyDeviceToHost, stream),
                                          cuda_error)) != GF_OK)
            return st;
        if ((st = cuda_status(cudaStreamSynchronize(stream), cuda_error)) != GF_OK) return st;
    }
    counts->list_length = lists ? total : 0;
    counts->work_items = backward ? total : 0;
    counts->nonfinite = nonfinite;
    return GF_OK;
}

}  // namespace gf_cuda
