// SPDX-License-Identifier: Apache-2.0
/*
 * cull_build.cu - the culling's build on CUDA after the plan (cull_plan.cu): the points
 * sorted by cell and the Gaussians' execution order (the second half of
 * gf_cuda_cull_build), the cell lists (inside gf_cuda_culled_forward and, for grad_x,
 * gf_cuda_culled_backward), and the backward's view of grad_out.  All on the stream,
 * nothing read back by the host; every kernel past the plan exits at once where the
 * header says dense.  No floating-point atomics anywhere.
 *
 *   point_cells  one thread per point: its cell (gf_grid_cell; a non-finite coordinate:
 *                num_cells, the cell every Gaussian sees)
 *   sort         cub::DeviceRadixSort (stable) of (cell, point index): points by cell,
 *                in index order within a cell, into the structure's point_order
 *   cells        one thread per cell (up to max_cells + 1): cell_start (binary search in
 *                the sorted cells) and the cell's chunk count, ceil(points / kChunk); a
 *                scan gives chunk_start
 *   gather       one thread per sorted point: x, y, z into the structure's points
 *   gauss_order  the Gaussians sorted by the cell of their mean: an execution order that
 *                puts Gaussians sharing cells in one block (results do not depend on it)
 *   fit          one thread: the Gaussians whose entries fit the call's capacity
 *   fill         a thread per Gaussian n < fitted (its warp for one of many cells): its
 *                reached cells in z, y, x order
 *                (lanes solve 32 rows at a time, a warp scan places them), written as
 *                (cell, n) at its offset, so the entries are in Gaussian order; the rest
 *                of the capacity is padded with a key past every cell; a stable radix
 *                sort by cell then leaves each cell's list in ascending Gaussian order
 *   list_start   one thread per cell: binary search in the sorted keys
 *   prepare      (backward) one thread per sorted point: grad_out in that order (one
 *                channel) and whether its row is finite; a select compacts the others
 */
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cstdint>

#include "cull.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

/* First index in sorted a[0, n) whose value is >= v. */
__device__ __forceinline__ int64_t lower_bound_u32(const uint32_t *a, int64_t n, uint32_t v) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    point_cells_kernel(gf_params p, const gf_cull_header *header, uint32_t *cell, int64_t *iota) {
    const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= p.num_points) return; /* (also where dense: the sort reads what it writes) */
    T x, y, z;
    load_point<T>(p, b, x, y, z);
    const gf_cull_plan g = header->plan;
    cell[b] = uint32_t(gf_grid_cell(&g, double(x), double(y), double(z)));
    iota[b] = b;
}

/* Thread c <= max_cells + 1: cell_start[c] and the chunk count of cell c (0 past the
 * non-finite cell num_cells, whose successor the scan turns into the total). */
__global__ void __launch_bounds__(kThreads)
    cells_kernel(const gf_cull_header *header, const uint32_t *sorted_cell, int64_t num_points,
                 int64_t max_cells, int64_t *cell_start, int64_t *chunk_count) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c > max_cells + 1) return; /* (also where dense: the scan reads what it writes) */
    const int64_t nc = header->plan.num_cells;
    if (c > nc + 1) {
        cell_start[c] = num_points;
        chunk_count[c] = 0;
        return;
    }
    const int64_t s0 = lower_bound_u32(sorted_cell, num_points, uint32_t(c));
    cell_start[c] = s0;
    if (c == nc + 1) {
        chunk_count[c] = 0;
        return;
    }
    const int64_t s1 = lower_bound_u32(sorted_cell, num_points, uint32_t(c + 1));
    chunk_count[c] = ceil_div(s1 - s0, kChunk);
}

/* Sorted point i: x, y, z of point order[i]. */
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather_points_kernel(gf_params p, const gf_cull_header *header, const int64_t *order,
                         StagedPoint<T> *points) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.num_points || !header->culled) return;
    StagedPoint<T> sp;
    load_point<T>(p, order[i], sp.x, sp.y, sp.z);
    sp.g = T(0);
    points[i] = sp;
}

/* Thread per Gaussian: the cell of its mean (the key of the execution order). */
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gauss_cells_kernel(const gf_cull_header *header, const typename Types<T>::rec *records,
                       int64_t num_gaussians, uint32_t *cell, int32_t *iota) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= num_gaussians) return; /* (also where dense: the sort reads what it writes) */
    const typename Types<T>::rec r = load_record<T>(records + n);
    const gf_cull_plan g = header->plan;
    cell[n] = uint32_t(gf_grid_cell(&g, double(r.mx), double(r.my), double(r.mz)));
    iota[n] = int32_t(n);
}

/* Thread per Gaussian n < fitted: its reached cells (z, y, x order, as the count counted
 * them) as (cell, n) at [offsets[n], offsets[n + 1]).  A thread writes its own entries
 * where they are at most kFillByThread; a Gaussian of more is filled by its whole warp
 * after the small ones: lanes take 32 rows of the box at a time, each solves its row's
 * run, a warp scan of the runs' lengths places them.  Either way the same entries in the
 * same order. */
constexpr int64_t kFillByThread = 64;

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) /* 128 registers: the box's constants */
    fill_kernel(gf_params p, const gf_cull_header *header, const typename Types<T>::rec *records,
                const int64_t *offsets, const int64_t *fitted, uint32_t *keys, int32_t *entries) {
    __shared__ gf_cull_box s_box[kThreads / kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t F = *fitted;
    if (!header->culled || int64_t(blockIdx.x) * blockDim.x + int64_t(warp) * kWarp >= F)
        return; /* whole warps */
    const bool valid = n < F;
    const gf_cull_plan g = header->plan;
    gf_cull_box b;
    int64_t base = 0, cap = 0;
    if (valid) {
        box_of<T>(g, p, n, load_record<T>(records + n), &b);
        base = offsets[n];
        cap = offsets[n + 1] - base;
    }
    const bool together = valid && cap > kFillByThread;
    if (valid && !together && cap > 0) {
        int64_t at = 0;
        gf_cull_rows it;
        gf_cull_rows_begin(&b, &it);
        for (int64_t first, last; at < cap && gf_cull_rows_next(&g, &b, &it, &first, &last);)
            for (int64_t c = first; c <= last && at < cap; ++c, ++at) {
                keys[base + at] = uint32_t(c);
                entries[base + at] = int32_t(n);
            }
    }
    for (unsigned todo = __ballot_sync(0xffffffffu, together); todo; todo &= todo - 1) {
        const int src = __ffs(todo) - 1;
        if (lane == src) s_box[warp] = b;
        __syncwarp();
        const gf_cull_box &sb = s_box[warp];
        const int64_t gn = __shfl_sync(0xffffffffu, n, src);
        const int64_t gbase = __shfl_sync(0xffffffffu, base, src);
        const int64_t gcap = __shfl_sync(0xffffffffu, cap, src), rows = box_rows(sb);
        int64_t written = 0;
        for (int64_t r0 = 0; r0 < rows && written < gcap; r0 += kWarp) {
            const int64_t r = r0 + lane;
            int64_t first = 1, last = 0;
            if (r < rows) box_row(g, sb, r, &first, &last);
            const int64_t count = last >= first ? last - first + 1 : 0;
            int64_t incl = count; /* inclusive scan over the lanes */
#pragma unroll
            for (int off = 1; off < kWarp; off <<= 1) {
                const int64_t v = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += v;
            }
            const int64_t at = written + incl - count;
            for (int64_t q = 0; q < count && at + q < gcap; ++q) {
                keys[gbase + at + q] = uint32_t(first + q);
                entries[gbase + at + q] = int32_t(gn);
            }
            written += __shfl_sync(0xffffffffu, incl, kWarp - 1);
        }
        __syncwarp();
    }
}

/* The capacity past the fitted Gaussians' entries (all of it where the header says
 * dense and nothing is filled): a key past every cell. */
__global__ void __launch_bounds__(kThreads)
    pad_kernel(const gf_cull_header *header, const int64_t *offsets, const int64_t *fitted,
               int64_t capacity, uint32_t pad, uint32_t *keys, int32_t *entries) {
    const int64_t first = header->culled ? offsets[*fitted] : 0;
    for (int64_t i = first + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < capacity;
         i += int64_t(gridDim.x) * blockDim.x) {
        keys[i] = pad;
        entries[i] = 0;
    }
}

/* One thread: the Gaussians whose entries fit `capacity`, the largest k <= N with
 * offsets[k] <= capacity. */
__global__ void fit_kernel(const int64_t *offsets, int64_t num_gaussians, int64_t capacity,
                           int64_t *fitted) {
    int64_t lo = 0, hi = num_gaussians;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (offsets[mid] <= capacity) lo = mid;
        else hi = mid - 1;
    }
    *fitted = lo;
}

/* Thread c <= max_cells: the first entry of cell c's list. */
__global__ void __launch_bounds__(kThreads)
    list_start_kernel(const gf_cull_header *header, const uint32_t *sorted_keys, int64_t length,
                      int64_t max_cells, int64_t *list_start) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c > max_cells || !header->culled) return;
    list_start[c] = lower_bound_u32(sorted_keys, length, uint32_t(c));
}

/* Sorted point i: grad_out of its point (one channel), and whether its row is finite. */
template <typename T>
__global__ void __launch_bounds__(kThreads)
    prepare_kernel(gf_params p, const gf_cull_header *header, const int64_t *order, T *sorted_g,
                   uint8_t *flags) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.num_points) return;
    if (!header->culled) { /* order is not built; the select still reads the flags */
        flags[i] = 0;
        return;
    }
    const int64_t b = order[i];
    if (p.num_channels == 1) sorted_g[i] = static_cast<const T *>(p.grad_out)[b * p.grad_out_stride[0]];
    flags[i] = uint8_t(gf_cull_point_seen_by_all(&p, b));
}

}  // namespace

namespace gf_cuda {

gf_status launch_cull_points(const gf_params &p, const StructureView &s,
                             const WorkspaceLayout &l, unsigned char *ws, bool with_order,
                             cudaStream_t stream, int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians;
    const auto blocks_of = [](int64_t items) { return unsigned(ceil_div(items, kThreads)); };
    if (!grid_fits(ceil_div(std::max(B, s.max_cells + 2), kThreads))) return GF_ERR_BAD_SIZE;
    auto *cell_in = reinterpret_cast<uint32_t *>(ws + l.point_cell[0]);
    auto *cell_out = reinterpret_cast<uint32_t *>(ws + l.point_cell[1]);
    auto *iota = reinterpret_cast<int64_t *>(ws + l.iota);
    gf_status st;
    if (B > 0) {
        GF_DTYPE_SWITCH(p.dtype, T, [&] {
            point_cells_kernel<T><<<blocks_of(B), kThreads, 0, stream>>>(p, s.header, cell_in, iota);
        });
        GF_LAUNCH_CHECK(cuda_error);
        size_t temp_bytes = l.temp_bytes;
        st = cuda_status(cub::DeviceRadixSort::SortPairs(ws + l.temp, temp_bytes, cell_in, cell_out,
                                                         iota, s.point_order, B, 0, l.point_bits,
                                                         stream),
                         cuda_error);
        if (st != GF_OK) return st;
    }
    cells_kernel<<<blocks_of(s.max_cells + 2), kThreads, 0, stream>>>(
        s.header, cell_out, B, s.max_cells, s.cell_start, s.chunk_start);
    GF_LAUNCH_CHECK(cuda_error);
    size_t temp_bytes = l.temp_bytes;
    st = cuda_status(cub::DeviceScan::ExclusiveSum(ws + l.temp, temp_bytes, s.chunk_start,
                                                   s.chunk_start, s.max_cells + 2, stream),
                     cuda_error);
    if (st != GF_OK) return st;
    if (B > 0) {
        GF_DTYPE_SWITCH(p.dtype, T, [&] {
            gather_points_kernel<T><<<blocks_of(B), kThreads, 0, stream>>>(
                p, s.header, s.point_order, static_cast<StagedPoint<T> *>(s.points));
        });
        GF_LAUNCH_CHECK(cuda_error);
    }
    if (!with_order || N == 0) return GF_OK;
    if (!grid_fits(ceil_div(N, kThreads))) return GF_ERR_BAD_SIZE;
    auto *gkey_in = reinterpret_cast<uint32_t *>(ws + l.gauss_key[0]);
    auto *gkey_out = reinterpret_cast<uint32_t *>(ws + l.gauss_key[1]);
    auto *giota = reinterpret_cast<int32_t *>(ws + l.gauss_iota);
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        gauss_cells_kernel<T><<<blocks_of(N), kThreads, 0, stream>>>(
            s.header, static_cast<const typename Types<T>::rec *>(s.records), N, gkey_in, giota);
    });
    GF_LAUNCH_CHECK(cuda_error);
    temp_bytes = l.temp_bytes;
    return cuda_status(cub::DeviceRadixSort::SortPairs(ws + l.temp, temp_bytes, gkey_in, gkey_out,
                                                       giota, s.gauss_order, N, 0, l.point_bits,
                                                       stream),
                       cuda_error);
}

gf_status launch_cull_lists(const gf_params &p, const StructureView &s, const WorkspaceLayout &l,
                            unsigned char *ws, const int32_t **list, cudaStream_t stream,
                            int *cuda_error) {
    const int64_t N = p.num_gaussians, cap = l.capacity;
    cub::DoubleBuffer<uint32_t> keys(reinterpret_cast<uint32_t *>(ws + l.list_key[0]),
                                     reinterpret_cast<uint32_t *>(ws + l.list_key[1]));
    cub::DoubleBuffer<int32_t> entries(reinterpret_cast<int32_t *>(ws + l.list_entry[0]),
                                       reinterpret_cast<int32_t *>(ws + l.list_entry[1]));
    if (!grid_fits(ceil_div(N, kThreads)) || !grid_fits(ceil_div(s.max_cells + 1, kThreads)))
        return GF_ERR_BAD_SIZE;
    auto *fitted = reinterpret_cast<int64_t *>(ws + l.fitted);
    fit_kernel<<<1, 1, 0, stream>>>(s.offsets, N, cap, fitted);
    GF_LAUNCH_CHECK(cuda_error);
    gf_status st;
    if (cap > 0) {
        if (N > 0) {
            GF_DTYPE_SWITCH(p.dtype, T, [&] {
                fill_kernel<T><<<unsigned(ceil_div(N, kThreads)), kThreads, 0, stream>>>(
                    p, s.header, static_cast<const typename Types<T>::rec *>(s.records), s.offsets,
                    fitted, keys.Current(), entries.Current());
            });
            GF_LAUNCH_CHECK(cuda_error);
        }
        const unsigned pad_blocks = unsigned(std::min<int64_t>(ceil_div(cap, kThreads), 4096));
        pad_kernel<<<pad_blocks, kThreads, 0, stream>>>(s.header, s.offsets, fitted, cap,
                                                        uint32_t(s.max_cells + 1), keys.Current(),
                                                        entries.Current());
        GF_LAUNCH_CHECK(cuda_error);
        size_t temp_bytes = l.temp_bytes;
        st = cuda_status(cub::DeviceRadixSort::SortPairs(ws + l.temp, temp_bytes, keys, entries, cap,
                                                         0, l.list_bits, stream),
                         cuda_error);
        if (st != GF_OK) return st;
    }
    list_start_kernel<<<unsigned(ceil_div(s.max_cells + 1, kThreads)), kThreads, 0, stream>>>(
        s.header, keys.Current(), cap, s.max_cells,
        reinterpret_cast<int64_t *>(ws + l.list_start));
    GF_LAUNCH_CHECK(cuda_error);
    *list = entries.Current();
    return GF_OK;
}

gf_status launch_cull_backward_prepare(const gf_params &p, const StructureView &s,
                                       const WorkspaceLayout &l, unsigned char *ws,
                                       cudaStream_t stream, int *cuda_error) {
    const int64_t B = p.num_points;
    auto *flags = reinterpret_cast<uint8_t *>(ws + l.flags);
    auto *extra = reinterpret_cast<int64_t *>(ws + l.extra);
    auto *num_extra = reinterpret_cast<int64_t *>(ws + l.num_extra);
    gf_status st = cuda_status(cudaMemsetAsync(num_extra, 0, sizeof(int64_t), stream), cuda_error);
    if (st != GF_OK || B == 0) return st;
    if (!grid_fits(ceil_div(B, kThreads))) return GF_ERR_BAD_SIZE;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        prepare_kernel<T><<<unsigned(ceil_div(B, kThreads)), kThreads, 0, stream>>>(
            p, s.header, s.point_order, reinterpret_cast<T *>(ws + l.sorted_g), flags);
    });
    GF_LAUNCH_CHECK(cuda_error);
    size_t temp_bytes = l.temp_bytes;
    return cuda_status(cub::DeviceSelect::Flagged(ws + l.temp, temp_bytes,
                                                  thrust::counting_iterator<int64_t>(0), flags,
                                                  extra, num_extra, B, stream),
                       cuda_error);
}

}  // namespace gf_cuda
