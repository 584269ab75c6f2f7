// SPDX-License-Identifier: Apache-2.0
/*
 * voxel_forward.cu - gf_cuda_voxel_forward: the tiles' lists and the voxels' sums.
 *
 *   fill        a thread per Gaussian (its warp for more than kFillByThread entries): its
 *               tiles in gf_cull_rows' order as (tile, n) at its offset, so the entries
 *               are in Gaussian order
 *   sort        cub::DeviceRadixSort (stable) by tile, on the bits the tile count needs:
 *               each tile's list in ascending Gaussian order
 *   tile_start  a thread per tile: a binary search in the sorted keys
 *   tiles       a block per tile (and channel block, grid.y): tiles of S^3 voxels, S = 4
 *               (64 threads, a voxel each) or 8 (128 threads, four each); the block stages
 *               its list's records, 128 at a time, in shared memory, and each thread sums
 *               its voxels over them in list order: one owner per output, no reduction.
 *               Without a cutoff there are no lists: the list is every Gaussian.
 * Why tiles of 4: a Gaussian of the benchmark's field (k = 4: about 11 voxels' radius)
 * meets ~170 tiles of 4^3 (64 voxels: ~2x the voxels its ellipsoid holds) but ~40 of
 * 8^3 (512 voxels: ~3.6x); the pairs cost more than the sort of the larger lists.
 * GAUSSFIELD_CUDA_CONFIG=voxel_tile=8 takes the other for measuring.
 */
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>

#include "static_switch.h"
#include "voxel.cuh"

namespace {

using namespace gf_cuda;

constexpr int64_t kFillByThread = 64;
constexpr int kBatch = 128; /* records staged per batch */

/* Thread per Gaussian n: its tiles as (tile, n) at [offsets[n], offsets[n + 1]), in the
 * order gf_cull_box_count counted them; a Gaussian of more than kFillByThread entries is
 * written by its warp after the small ones (lanes solve 32 rows at a time,
 * a warp scan places their runs): the same entries either way. */
template <typename T>
__global__ void __launch_bounds__(kVoxelThreads, 2) /* 128 registers: the box's constants */
    fill_kernel(gf_params p, VoxelGeom geom, const typename Types<T>::rec *records,
                const int64_t *offsets, uint32_t *keys, int32_t *entries) {
    __shared__ gf_cull_box s_box[kVoxelThreads / kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t N = p.num_gaussians;
    if (int64_t(blockIdx.x) * blockDim.x + int64_t(warp) * kWarp >= N) return; /* whole warps */
    const bool valid = n < N;
    const gf_cull_plan &g = geom.plan;
    gf_cull_box b;
    int64_t base = 0, cap = 0;
    if (valid) {
        voxel_box_of<T>(geom, p, n, load_record<T>(records + n), &b);
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
        const int64_t gcap = __shfl_sync(0xffffffffu, cap, src);
        const int64_t rows = voxel_box_rows(sb), ny = sb.hi[1] - sb.lo[1] + 1;
        int64_t written = 0;
        for (int64_t r0 = 0; r0 < rows && written < gcap; r0 += kWarp) {
            const int64_t r = r0 + lane;
            int64_t first = 1, last = 0;
            if (r < rows) {
                const int64_t iy = sb.lo[1] + r % ny, iz = sb.lo[2] + r / ny;
                int64_t x0, x1;
                gf_cull_row(&g, &sb, iy, iz, &x0, &x1);
                const int64_t row = g.dims[0] * (iy + g.dims[1] * iz);
                first = row + x0;
                last = row + x1;
            }
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

/* Thread t <= tiles: the first entry of tile t's list in the sorted keys. */
__global__ void __launch_bounds__(kVoxelThreads)
    tile_start_kernel(const uint32_t *sorted_keys, int64_t length, int64_t tiles,
                      int64_t *tile_start) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t > tiles) return;
    int64_t lo = 0, hi = length;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (int64_t(sorted_keys[mid]) < t) lo = mid + 1;
        else hi = mid;
    }
    tile_start[t] = lo;
}

template <int S>
struct TileShape {
    static constexpr int kVoxels = S * S * S;
    static constexpr int kThreads = kVoxels < 128 ? kVoxels : 128;
    static constexpr int kR = kVoxels / kThreads; /* voxels a thread */
};

/* Block (t, cb): tile t of the tiles' plan (on the permuted grid: plan axis 0 is grid axis
 * 2), channel blocks cb, cb + gridDim.y, ...  Thread v holds voxels v + kThreads q of the
 * tile, voxel w at (w % S, w / S % S, w / S^2) along plan axes 0, 1, 2 (grid axes 2, 1, 0:
 * consecutive threads write consecutive voxels of a row). */
template <typename T, int CB, int S, bool kLists>
__global__ void __launch_bounds__(TileShape<S>::kThreads)
    tiles_kernel(gf_params p, VoxelGeom geom, const typename Types<T>::rec *records,
                 const int64_t *tile_start, const int32_t *list) {
    using Shape = TileShape<S>;
    constexpr int kT = Shape::kThreads, kR = Shape::kR;
    __shared__ __align__(16) T s_rec[kBatch * kPairVals];
    __shared__ __align__(16) T s_w[CB > 1 ? kBatch * CB : 1];
    const gf_cull_plan &tp = geom.plan;
    const gf_grid &g = geom.grid;
    const int64_t t = blockIdx.x;
    const int64_t tx = t % tp.dims[0], ty = t / tp.dims[0] % tp.dims[1],
                  tz = t / (tp.dims[0] * tp.dims[1]);
    bool active[kR];
    int64_t b[kR];
    T px[kR], py[kR], pz[kR];
#pragma unroll
    for (int q = 0; q < kR; ++q) {
        const int v = threadIdx.x + kT * q;
        const int64_t kk = tx * S + v % S, jj = ty * S + v / S % S, ii = tz * S + v / (S * S);
        active[q] = kk < g.size[2] && jj < g.size[1] && ii < g.size[0];
        b[q] = (ii * g.size[1] + jj) * g.size[2] + kk;
        px[q] = py[q] = pz[q] = T(0);
        if (active[q]) {
            if (geom.aligned)
                voxel_centre<T, true>(geom, g.offset[0] + ii, g.offset[1] + jj, g.offset[2] + kk,
                                      px[q], py[q], pz[q]);
            else
                voxel_centre<T, false>(geom, g.offset[0] + ii, g.offset[1] + jj, g.offset[2] + kk,
                                       px[q], py[q], pz[q]);
        }
    }
    const int64_t begin = kLists ? tile_start[t] : 0;
    const int64_t len = kLists ? tile_start[t + 1] - begin : p.num_gaussians;
    const int64_t C = p.num_channels, num_cb = channel_blocks(C, CB);
    const T *weights = static_cast<const T *>(p.weights);
    T *out = static_cast<T *>(p.out);
    for (int64_t cb = blockIdx.y; cb < num_cb; cb += gridDim.y) {
        const int64_t c0 = cb * CB;
        T acc[kR][CB];
#pragma unroll
        for (int q = 0; q < kR; ++q)
#pragma unroll
            for (int a = 0; a < CB; ++a) acc[q][a] = T(0);
        for (int64_t base = 0; base < len; base += kBatch) {
            const int count = int(min(int64_t(kBatch), len - base));
            __syncthreads(); /* the last batch is read */
            for (int e = threadIdx.x; e < count; e += kT) {
                const int64_t gi = kLists ? int64_t(list[begin + base + e]) : base + e;
                stage_pair_values<T>(records + gi, s_rec + e * kPairVals);
                if constexpr (CB > 1) {
#pragma unroll
                    for (int a = 0; a < CB; ++a)
                        s_w[e * CB + a] = c0 + a < C ? weights[gi * p.weights_stride[0] +
                                                               (c0 + a) * p.weights_stride[1]]
                                                     : T(0);
                }
            }
            __syncthreads();
            for (int e = 0; e < count; ++e) {
                const typename Types<T>::rec r = load_pair_values<T>(s_rec + e * kPairVals);
                T w[CB];
                if constexpr (CB == 1)
                    w[0] = r.w;
                else
                    load_channels<T, CB>(s_w + e * CB, w);
#pragma unroll
                for (int q = 0; q < kR; ++q) {
                    /* without a cutoff (no lists) nkq is -inf: the test keeps every pair,
                     * so it is skipped, the same bits */
                    const T gv = gf_pair_value(&r, px[q], py[q], pz[q], kLists ? 1 : 0);
#pragma unroll
                    for (int a = 0; a < CB; ++a) acc[q][a] += w[a] * gv;
                }
            }
        }
#pragma unroll
        for (int q = 0; q < kR; ++q)
            if (active[q]) {
#pragma unroll
                for (int a = 0; a < CB; ++a)
                    if (c0 + a < C) out[b[q] * C + c0 + a] = acc[q][a];
            }
    }
}

/* The bits of a key < tiles (at least 1). */
int key_bits(int64_t tiles) {
    int bits = 1;
    while (bits < 32 && (int64_t(1) << bits) < tiles) ++bits;
    return bits;
}

}  // namespace

namespace gf_cuda {

gf_status voxel_workspace_layout(const gf_params &p, const gf_grid &g, bool backward,
                                 const gf_voxel_counts &c, VoxelWorkspace &l, int *cuda_error) {
    size_t at = 0;
    auto put = [&at](size_t bytes) {
        const size_t here = at;
        at += align256(bytes);
        return here;
    };
    size_t temp = 0;
    gf_status st = GF_OK;
    if (!backward) {
        const int64_t L = c.list_length;
        const gf_cull_plan tiles = voxel_tiles(g, c.tile);
        l.key_bits = key_bits(tiles.num_cells);
        if (L > 0) {
            for (int i = 0; i < 2; ++i) {
                l.keys[i] = put(sizeof(uint32_t) * size_t(L));
                l.entries[i] = put(sizeof(int32_t) * size_t(L));
            }
            l.tile_start = put(sizeof(int64_t) * size_t(tiles.num_cells + 1));
            cub::DoubleBuffer<uint32_t> keys(nullptr, nullptr);
            cub::DoubleBuffer<int32_t> vals(nullptr, nullptr);
            st = cuda_status(cub::DeviceRadixSort::SortPairs(nullptr, temp, keys, vals, L, 0,
                                                             l.key_bits),
                             cuda_error);
        }
    } else {
        l.partials = put(sizeof(double) * size_t(c.work_items) *
                         size_t(GF_NUM_SUMS + p.num_channels));
        if (c.nonfinite > 0) {
            l.extra = put(sizeof(int64_t) * size_t(c.nonfinite));
            l.num_extra = put(sizeof(int64_t));
            st = voxel_select_temp_bytes(p, &temp, cuda_error);
        }
    }
    if (st != GF_OK) return st;
    l.temp_bytes = temp;
    l.temp = put(std::max<size_t>(temp, 1));
    l.total = at;
    return GF_OK;
}

gf_status launch_voxel_forward(const gf_params &p, VoxelGeom geom, const unsigned char *structure,
                               const VoxelStructure &sl, const gf_voxel_counts &c,
                               unsigned char *ws, const VoxelWorkspace &wl, cudaStream_t stream,
                               int *cuda_error) {
    const int64_t N = p.num_gaussians, L = c.list_length, tiles = geom.plan.num_cells;
    const bool lists = gf_has_cutoff(p.cutoff);
    if (!grid_fits(tiles) || !grid_fits(ceil_div(std::max(N, tiles + 1), kVoxelThreads)))
        return GF_ERR_BAD_SIZE;
    const void *records = structure + sl.records;
    const auto *offsets = reinterpret_cast<const int64_t *>(structure + sl.offsets);
    const int32_t *list = nullptr;
    int64_t *tile_start = nullptr;
    if (lists) {
        tile_start = reinterpret_cast<int64_t *>(ws + wl.tile_start);
        if (L == 0) /* no Gaussian reaches the subvolume: every voxel is 0 */
            return cuda_status(cudaMemsetAsync(p.out, 0,
                                               size_t(p.num_points * p.num_channels) *
                                                   (p.dtype == GF_FLOAT32 ? 4 : 8),
                                               stream),
                               cuda_error);
        cub::DoubleBuffer<uint32_t> keys(reinterpret_cast<uint32_t *>(ws + wl.keys[0]),
                                         reinterpret_cast<uint32_t *>(ws + wl.keys[1]));
        cub::DoubleBuffer<int32_t> vals(reinterpret_cast<int32_t *>(ws + wl.entries[0]),
                                        reinterpret_cast<int32_t *>(ws + wl.entries[1]));
        GF_DTYPE_SWITCH(p.dtype, T, [&] {
            fill_kernel<T><<<unsigned(ceil_div(N, kVoxelThreads)), kVoxelThreads, 0, stream>>>(
                p, geom, static_cast<const typename Types<T>::rec *>(records), offsets,
                keys.Current(), vals.Current());
        });
        GF_LAUNCH_CHECK(cuda_error);
        size_t temp_bytes = wl.temp_bytes;
        gf_status st = cuda_status(cub::DeviceRadixSort::SortPairs(ws + wl.temp, temp_bytes, keys,
                                                                   vals, L, 0, wl.key_bits, stream),
                                   cuda_error);
        if (st != GF_OK) return st;
        tile_start_kernel<<<unsigned(ceil_div(tiles + 1, kVoxelThreads)), kVoxelThreads, 0,
                            stream>>>(keys.Current(), L, tiles, tile_start);
        GF_LAUNCH_CHECK(cuda_error);
        list = vals.Current();
    }
    const int cbv = channel_block_for(p.num_channels);
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        GF_CHANNEL_BLOCK_SWITCH(cbv, CB, [&] {
            GF_BOOL_SWITCH(lists, kLists, [&] {
                const int64_t num_cb = channel_blocks(p.num_channels, CB);
                const dim3 grid(unsigned(tiles), unsigned(std::min<int64_t>(num_cb, 65535)));
                const auto *rec = static_cast<const typename Types<T>::rec *>(records);
                if (c.tile == 8)
                    tiles_kernel<T, CB, 8, kLists><<<grid, TileShape<8>::kThreads, 0, stream>>>(
                        p, geom, rec, tile_start, list);
                else
                    tiles_kernel<T, CB, 4, kLists><<<grid, TileShape<4>::kThreads, 0, stream>>>(
                        p, geom, rec, tile_start, list);
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
