// SPDX-License-Identifier: Apache-2.0
/*
 * voxel_backward.cu - gf_cuda_voxel_backward: the backward to the Gaussians, no lists.
 *
 *   extra      (only where the build counted voxels of non-finite grad_out) cub's
 *              DeviceSelect of those voxels' indices, in ascending order
 *   items      a warp per work item: item k of Gaussian n is rows [k R, (k + 1) R) of its
 *              box on the plan of one-voxel cells (R = GF_CUDA_VOXEL_ITEM_ROWS; a
 *              Gaussian's items are consecutive, offsets[n] its first), so that one large
 *              Gaussian is spread over many warps.  The warp takes its rows 32 at a time:
 *              each lane solves one row's exact interval of voxels (gf_cull_row, double),
 *              a warp scan flattens the 32 runs, and the lanes take the flattened voxels
 *              in turn (lane l: l, l + 32, ...; a cursor finds each one's row), so no lane
 *              idles on a short row.  Rows run along grid axis 2, so a warp's grad_out
 *              reads are contiguous.  Item 0 of each Gaussian also visits the voxels of
 *              non-finite grad_out that its box's rows do not hold (every Gaussian sees
 *              them, as in the dense stages: 0 * NaN).  Each lane sums its pairs in T per
 *              batch of rows and adds the batch into double; the lanes' doubles are added
 *              by a fixed shuffle tree; lane 0 writes the item's 9 + C sums.  With C > 1
 *              the warp walks once per channel block, as culled_gaussians.cu does.
 *   finalize   a thread per Gaussian: its items' sums in item order, grad_weights, and the
 *              chain rule (gf_gaussian_vjp_store)
 * Every sum has a fixed order: bitwise reproducible, no floating-point atomics.
 */
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cstdint>

#include "static_switch.h"
#include "voxel.cuh"

namespace {

using namespace gf_cuda;

constexpr int kItemWarps = 4; /* work items of a block */

/* Whether voxel b's grad_out row is not finite (the select's predicate). */
struct NonFiniteRow {
    gf_params p;
    __device__ bool operator()(int64_t b) const {
        return !gf_row_finite(p.dtype, p.grad_out, p.grad_out_stride, b, p.num_channels);
    }
};

template <typename T, int CB, bool kGeom, bool kAligned>
__global__ void __launch_bounds__(kItemWarps *kWarp)
    items_kernel(gf_params p, VoxelGeom geom, const typename Types<T>::rec *records,
                 const int64_t *item_start, int64_t num_items, const int64_t *extra,
                 int64_t num_extra, double *partials) {
    using rec_t = typename Types<T>::rec;
    __shared__ gf_cull_box s_box[kItemWarps];
    /* the batch's rows: flattened end, voxel index and grid axis-2 index shifts, and the
     * row's first two coordinates (aligned: the centres; else the partial sums) */
    __shared__ int64_t s_end[kItemWarps][kWarp], s_shift[kItemWarps][kWarp],
        s_kshift[kItemWarps][kWarp];
    __shared__ double s_row[kItemWarps][3][kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t item = int64_t(blockIdx.x) * kItemWarps + warp;
    if (item >= num_items) return; /* whole warps; no block barrier below */
    const int64_t N = p.num_gaussians, C = p.num_channels;
    /* the item's Gaussian: the last n with item_start[n] <= item (each has >= 1 item) */
    int64_t lo = 0, hi = N - 1;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (item_start[mid] <= item) lo = mid;
        else hi = mid - 1;
    }
    const int64_t n = lo, k_item = item - item_start[n];
    const rec_t rec = load_record<T>(records + n);
    if (lane == 0) voxel_box_of<T>(geom, p, n, rec, &s_box[warp]);
    __syncwarp();
    const gf_cull_box &box = s_box[warp];
    const gf_cull_plan &vp = geom.plan;
    const gf_grid &g = geom.grid;
    const int64_t rows = voxel_box_rows(box), ny = box.hi[1] - box.lo[1] + 1;
    const int64_t r_begin = k_item * GF_CUDA_VOXEL_ITEM_ROWS;
    const int64_t r_end = min(rows, r_begin + int64_t(GF_CUDA_VOXEL_ITEM_ROWS));
    const T *grad_out = static_cast<const T *>(p.grad_out);
    const T *weights = static_cast<const T *>(p.weights);
    const T *cen2 = static_cast<const T *>(geom.centres) + g.shape[0] + g.shape[1];
    const double *terms2 = geom.terms + 3 * (g.shape[0] + g.shape[1]);
    const bool want_w = p.grad_weights != nullptr;
    const int64_t num_cb = channel_blocks(C, CB);
    double *out = partials + item * (GF_NUM_SUMS + C);
    double acc[GF_NUM_SUMS];
#pragma unroll
    for (int q = 0; q < GF_NUM_SUMS; ++q) acc[q] = 0.0;
    for (int64_t cb = 0; cb < num_cb; ++cb) {
        const int64_t c0 = cb * CB;
        T w[CB];
        if constexpr (CB > 1) load_channels_global<T, CB>(weights, p.weights_stride, N, C, n, c0, w);
        double accw[CB];
#pragma unroll
        for (int a = 0; a < CB; ++a) accw[a] = 0.0;
        T part[GF_NUM_SUMS], pw[CB];
        auto begin_part = [&] {
#pragma unroll
            for (int q = 0; q < GF_NUM_SUMS; ++q) part[q] = T(0);
#pragma unroll
            for (int a = 0; a < CB; ++a) pw[a] = T(0);
        };
        auto end_part = [&] {
#pragma unroll
            for (int q = 0; q < GF_NUM_SUMS; ++q) acc[q] += double(part[q]);
#pragma unroll
            for (int a = 0; a < CB; ++a) accw[a] += double(pw[a]);
        };
        /* the pair of voxel b (subvolume index) at (x, y, z), into part and pw */
        auto pair = [&](T x, T y, T z, int64_t b) {
            if constexpr (CB == 1) {
                const T gr = grad_out[b * p.grad_out_stride[0]];
                const typename Types<T>::terms c = gf_pair_vjp_gaussian(&rec, x, y, z, gr, gr, 1);
                if constexpr (kGeom) gf_pair_terms_add(part, &c);
                pw[0] += c.gg;
            } else {
                T gr[CB];
                load_channels_global<T, CB>(grad_out, p.grad_out_stride, p.num_points, C, b, c0, gr);
                T t = T(0);
#pragma unroll
                for (int a = 0; a < CB; ++a) t += gr[a] * w[a];
                const typename Types<T>::terms c = gf_pair_vjp_gaussian(&rec, x, y, z, T(1), t, 1);
                if constexpr (kGeom) gf_pair_terms_add(part, &c);
                if (want_w) {
#pragma unroll
                    for (int a = 0; a < CB; ++a) pw[a] += gr[a] * c.gg;
                }
            }
        };
        for (int64_t r0 = r_begin; r0 < r_end; r0 += kWarp) {
            const int64_t r = r0 + lane;
            int64_t count = 0, first = 0, iy = 0, iz = 0;
            if (r < r_end) {
                iy = box.lo[1] + r % ny;
                iz = box.lo[2] + r / ny;
                int64_t x0, x1;
                gf_cull_row(&vp, &box, iy, iz, &x0, &x1);
                if (x1 >= x0) {
                    count = x1 - x0 + 1;
                    first = x0;
                }
            }
            int64_t incl = count; /* inclusive scan over the lanes */
#pragma unroll
            for (int off = 1; off < kWarp; off <<= 1) {
                const int64_t v = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += v;
            }
            const int64_t excl = incl - count;
            /* plan (x, y, z) = local (k, j, i): voxel b = x + S2 (y + S1 z) */
            s_end[warp][lane] = incl;
            s_shift[warp][lane] = first + g.size[2] * (iy + g.size[1] * iz) - excl;
            s_kshift[warp][lane] = g.offset[2] + first - excl;
            if (count > 0) {
                const int64_t i = g.offset[0] + iz, j = g.offset[1] + iy;
                if constexpr (kAligned) {
                    const T *cen = static_cast<const T *>(geom.centres);
                    s_row[warp][0][lane] = double(cen[i]);
                    s_row[warp][1][lane] = double(cen[g.shape[0] + j]);
                } else {
                    const double *t0 = geom.terms + 3 * i, *t1 = geom.terms + 3 * (g.shape[0] + j);
#pragma unroll
                    for (int c = 0; c < 3; ++c) s_row[warp][c][lane] = (g.origin[c] + t0[c]) + t1[c];
                }
            }
            __syncwarp();
            const int64_t total = __shfl_sync(0xffffffffu, incl, kWarp - 1);
            begin_part();
            int rho = 0;
            for (int64_t q = lane; q < total; q += kWarp) {
                while (s_end[warp][rho] <= q) ++rho;
                const int64_t b = s_shift[warp][rho] + q, kk = s_kshift[warp][rho] + q;
                T x, y, z;
                if constexpr (kAligned) {
                    x = T(s_row[warp][0][rho]);
                    y = T(s_row[warp][1][rho]);
                    z = cen2[kk];
                } else {
                    const double *t2 = terms2 + 3 * kk;
                    x = T(s_row[warp][0][rho] + t2[0]);
                    y = T(s_row[warp][1][rho] + t2[1]);
                    z = T(s_row[warp][2][rho] + t2[2]);
                }
                pair(x, y, z, b);
            }
            end_part();
            __syncwarp(); /* the batch's rows are read before the next overwrites them */
        }
        if (k_item == 0 && num_extra > 0) {
            /* the voxels of non-finite grad_out outside the box's rows: every Gaussian
             * sees them */
            begin_part();
            for (int64_t e = lane; e < num_extra; e += kWarp) {
                const int64_t b = extra[e];
                if (gf_cull_box_reaches_cell(&vp, &box, b)) continue; /* in a row above */
                const int64_t kk = b % g.size[2], jj = b / g.size[2] % g.size[1],
                              ii = b / (g.size[2] * g.size[1]);
                T x, y, z;
                voxel_centre<T, kAligned>(geom, g.offset[0] + ii, g.offset[1] + jj,
                                          g.offset[2] + kk, x, y, z);
                pair(x, y, z, b);
            }
            end_part();
        }
        if (want_w) {
#pragma unroll
            for (int a = 0; a < CB; ++a) {
                const double s = warp_sum(accw[a]);
                if (lane == 0 && c0 + a < C) out[GF_NUM_SUMS + c0 + a] = s;
            }
        }
    }
    if constexpr (kGeom) {
#pragma unroll
        for (int q = 0; q < GF_NUM_SUMS; ++q) {
            const double s = warp_sum(acc[q]);
            if (lane == 0) out[q] = s;
        }
    }
}

/* Thread per Gaussian: its items' sums in item order, grad_weights and the chain rule. */
template <typename T>
__global__ void __launch_bounds__(kVoxelThreads)
    finalize_kernel(gf_params p, const int64_t *item_start, const double *partials) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= p.num_gaussians) return;
    const int64_t C = p.num_channels, width = GF_NUM_SUMS + C;
    const int64_t i0 = item_start[n], i1 = item_start[n + 1];
    T *gw = static_cast<T *>(p.grad_weights);
    if (gw) {
        for (int64_t c = 0; c < C; ++c) {
            double s = 0.0;
            for (int64_t it = i0; it < i1; ++it) s += partials[it * width + GF_NUM_SUMS + c];
            gw[n * C + c] = T(s);
        }
    }
    T *gm = static_cast<T *>(p.grad_means);
    T *gc = static_cast<T *>(p.grad_cov);
    if (!gm && !gc) return;
    double s[GF_NUM_SUMS];
    for (int q = 0; q < GF_NUM_SUMS; ++q) {
        double v = 0.0;
        for (int64_t it = i0; it < i1; ++it) v += partials[it * width + q];
        s[q] = v;
    }
    const double scale =
        C == 1 ? double(static_cast<const T *>(p.weights)[n * p.weights_stride[0]]) : 1.0;
    const T *cov = static_cast<const T *>(p.cov);
    const int ncov = gf_cov_params(p.cov_mode);
    gf_gaussian_vjp_store(s, scale, cov + n * p.cov_stride[0], p.cov_stride[1], p.cov_mode, p.eps,
                          gm ? gm + 3 * n : nullptr, gc ? gc + ncov * n : nullptr);
}

}  // namespace

namespace gf_cuda {

gf_status voxel_select_temp_bytes(const gf_params &p, size_t *bytes, int *cuda_error) {
    *bytes = 0;
    return cuda_status(cub::DeviceSelect::If(nullptr, *bytes, thrust::counting_iterator<int64_t>(0),
                                             static_cast<int64_t *>(nullptr),
                                             static_cast<int64_t *>(nullptr), p.num_points,
                                             NonFiniteRow{p}),
                       cuda_error);
}

gf_status launch_voxel_backward(const gf_params &p, VoxelGeom geom, const unsigned char *structure,
                                const VoxelStructure &sl, const gf_voxel_counts &c,
                                unsigned char *ws, const VoxelWorkspace &wl, cudaStream_t stream,
                                int *cuda_error) {
    const int64_t N = p.num_gaussians, items = c.work_items;
    const int64_t blocks = ceil_div(items, kItemWarps);
    if (!grid_fits(blocks) || !grid_fits(ceil_div(N, kVoxelThreads))) return GF_ERR_BAD_SIZE;
    const void *records = structure + sl.records;
    const auto *item_start = reinterpret_cast<const int64_t *>(structure + sl.offsets);
    auto *partials = reinterpret_cast<double *>(ws + wl.partials);
    const int64_t *extra = nullptr;
    gf_status st;
    if (c.nonfinite > 0) {
        auto *out = reinterpret_cast<int64_t *>(ws + wl.extra);
        size_t temp_bytes = wl.temp_bytes;
        st = cuda_status(cub::DeviceSelect::If(ws + wl.temp, temp_bytes,
                                               thrust::counting_iterator<int64_t>(0), out,
                                               reinterpret_cast<int64_t *>(ws + wl.num_extra),
                                               p.num_points, NonFiniteRow{p}, stream),
                         cuda_error);
        if (st != GF_OK) return st;
        extra = out;
    }
    const bool geom_wanted = p.grad_means || p.grad_cov;
    const int cbv = channel_block_for(p.num_channels);
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        GF_CHANNEL_BLOCK_SWITCH(cbv, CB, [&] {
            GF_BOOL_SWITCH(geom_wanted, kGeom, [&] {
                GF_BOOL_SWITCH(geom.aligned != 0, kAligned, [&] {
                    items_kernel<T, CB, kGeom, kAligned>
                        <<<unsigned(blocks), kItemWarps * kWarp, 0, stream>>>(
                            p, geom, static_cast<const typename Types<T>::rec *>(records),
                            item_start, items, extra, c.nonfinite, partials);
                });
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        finalize_kernel<T><<<unsigned(ceil_div(N, kVoxelThreads)), kVoxelThreads, 0, stream>>>(
            p, item_start, partials);
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
