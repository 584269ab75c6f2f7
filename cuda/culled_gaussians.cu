// SPDX-License-Identifier: Apache-2.0
/*
 * culled_gaussians.cu - the culled backward to the Gaussians (the second half of
 * gf_cuda_culled_backward), over the structure that cull_build.cu builds.
 *
 * gaussians_kernel (backward to means, cov, weights): a warp owns one Gaussian; blocks
 * take 8 Gaussians consecutive in gauss_order, so the warps of a multiprocessor read
 * neighbouring cells and mostly hit L1.  The warp takes the rows (z, y) of its box 32 at
 * a time: each lane solves one row's interval of reached cells (the exact row test,
 * gf_cull_row) and loads its range of sorted points, then the warp walks the ranges in
 * row order, the lanes striding over the points of each (contiguous in the sorted
 * points), so no lane waits on a row's double-precision solution.
 * (Skipping groups of 32 pairs that the test drops entirely, behind a warp vote in a loop
 * all lanes run, measured 1.6x slower on the H200: 4.46 -> 7.03 ms at B = 10^6, N = 10^5.)
 * Last, the non-finite cell's points, which every Gaussian sees, and the points with a
 * non-finite grad_out row that lie in cells it does not reach (every Gaussian sees those
 * too, once).  A lane sums its pairs' terms in T over a row and adds the row into
 * double; at the end the 32 lanes' doubles are added by a fixed shuffle tree, lane 0
 * writes grad_weights and the 9 sums, and a thread-per-Gaussian finalize applies the
 * chain rule (gf_gaussian_vjp_store).  No block barrier: warps run independently.  With
 * C > 1 the warp walks once per channel block, as the dense gaussians_kernel does (the 9
 * geometric sums are linear in t and carry across blocks), reading G through the point
 * order.
 */
#include <cstdint>

#include "cull.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

constexpr int kGaussWarps = 8; /* Gaussians of a block */

/* At most 80 registers (3 blocks of 8 warps a multiprocessor): the loop waits on its
 * point loads, and on an H100 more warps in flight beat the spills outside the pair
 * loop that the bound costs (unbounded, 144 registers: 1.7x slower; 64: slower too). */
template <typename T, int CB, bool kGeom>
__global__ void __launch_bounds__(kGaussWarps *kWarp, 3)
    gaussians_kernel(gf_params p, const gf_cull_header *header,
                     const typename Types<T>::rec *records, const StagedPoint<T> *points,
                     const int64_t *order, const int64_t *cell_start, const int32_t *gauss_order,
                     const T *sorted_g, const int64_t *extra, const int64_t *num_extra,
                     double *sums_out) {
    using rec_t = typename Types<T>::rec;
    __shared__ gf_cull_box s_box[kGaussWarps];
    if (!header->culled) return; /* the dense kernels do the work */
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const gf_cull_plan g = header->plan;
    const int64_t N = p.num_gaussians, C = p.num_channels, NC = g.num_cells;
    const int64_t slot = int64_t(blockIdx.x) * kGaussWarps + warp;
    if (slot >= N) return; /* whole warps; no block barrier below */
    const int64_t n = int64_t(gauss_order[slot]);
    const rec_t rec = load_record<T>(records + n);
    if (lane == 0) box_of<T>(g, p, n, rec, &s_box[warp]);
    __syncwarp();
    const gf_cull_box &box = s_box[warp];
    const int64_t rows = box_rows(box), extras = *num_extra;
    const T *grad_out = static_cast<const T *>(p.grad_out);
    const T *weights = static_cast<const T *>(p.weights);
    T *grad_weights = static_cast<T *>(p.grad_weights);
    const bool want_w = grad_weights != nullptr;
    const int64_t num_cb = channel_blocks(C, CB);
    double acc[GF_NUM_SUMS];
#pragma unroll
    for (int q = 0; q < GF_NUM_SUMS; ++q) acc[q] = 0.0;
    for (int64_t cb = 0; cb < num_cb; ++cb) {
        const int64_t c0 = cb * CB;
        T w[CB];
        if constexpr (CB > 1)
            load_channels_global<T, CB>(weights, p.weights_stride, N, C, n, c0, w);
        double accw[CB];
#pragma unroll
        for (int a = 0; a < CB; ++a) accw[a] = 0.0;
        T part[GF_NUM_SUMS] = {}, pw[CB] = {};
        /* the pair of sorted point i, into part and pw */
        auto pair = [&](int64_t i) {
            const StagedPoint<T> sp = points[i];
            if constexpr (CB == 1) {
                const T gr = sorted_g[i];
                const typename Types<T>::terms c =
                    gf_pair_vjp_gaussian(&rec, sp.x, sp.y, sp.z, gr, gr, 1);
                if constexpr (kGeom) gf_pair_terms_add(part, &c);
                pw[0] += c.gg;
            } else {
                T gr[CB];
                load_channels_global<T, CB>(grad_out, p.grad_out_stride, p.num_points, C,
                                            order[i], c0, gr);
                T t = T(0);
#pragma unroll
                for (int a = 0; a < CB; ++a) t += gr[a] * w[a];
                const typename Types<T>::terms c =
                    gf_pair_vjp_gaussian(&rec, sp.x, sp.y, sp.z, T(1), t, 1);
                if constexpr (kGeom) gf_pair_terms_add(part, &c);
                if (want_w) {
#pragma unroll
                    for (int a = 0; a < CB; ++a) pw[a] += gr[a] * c.gg;
                }
            }
        };
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
        /* points [ws, we) of the sorted order, a lane every 32nd, summed in T */
        auto run_range = [&](int64_t ws, int64_t we) {
            begin_part();
            for (int64_t i = ws + lane; i < we; i += kWarp) pair(i);
            end_part();
        };
        /* the rows of the box, 32 at a time: each lane solves one row's run of reached
         * cells and loads its points' range, then the warp walks the runs in row order */
        for (int64_t r0 = 0; r0 < rows; r0 += kWarp) {
            int64_t s0 = 0, s1 = 0;
            if (r0 + lane < rows) {
                int64_t first, last;
                box_row(g, box, r0 + lane, &first, &last);
                if (last >= first) s0 = cell_start[first], s1 = cell_start[last + 1];
            }
            const int nr = int(min(int64_t(kWarp), rows - r0));
            for (int j = 0; j < nr; ++j) {
                const int64_t ws = __shfl_sync(0xffffffffu, s0, j);
                const int64_t we = __shfl_sync(0xffffffffu, s1, j);
                if (we > ws) run_range(ws, we);
            }
        }
        run_range(cell_start[NC], cell_start[NC + 1]); /* non-finite points */
        if (extras > 0) {
            /* the points with a non-finite grad_out, which every Gaussian sees: those in
             * a cell this one does not reach */
            begin_part();
            for (int64_t e = lane; e < extras; e += kWarp) {
                const int64_t i = extra[e];
                const StagedPoint<T> sp = points[i];
                const int64_t cell = gf_grid_cell(&g, double(sp.x), double(sp.y), double(sp.z));
                if (!gf_cull_box_reaches_cell(&g, &box, cell)) pair(i);
            }
            end_part();
        }
        if (want_w) {
#pragma unroll
            for (int a = 0; a < CB; ++a) {
                const double total = warp_sum(accw[a]);
                if (lane == 0 && c0 + a < C) grad_weights[n * C + c0 + a] = T(total);
            }
        }
    }
    if constexpr (kGeom) {
#pragma unroll
        for (int q = 0; q < GF_NUM_SUMS; ++q) {
            const double total = warp_sum(acc[q]);
            if (lane == 0) sums_out[n * GF_NUM_SUMS + q] = total;
        }
    }
}

/* Thread per Gaussian: the chain rule from its sums (gf_gaussian_vjp_store), off the
 * warps that summed them. */
template <typename T>
__global__ void __launch_bounds__(256)
    finalize_kernel(gf_params p, const gf_cull_header *header, const double *sums) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= p.num_gaussians || !header->culled) return;
    double s[GF_NUM_SUMS];
#pragma unroll
    for (int q = 0; q < GF_NUM_SUMS; ++q) s[q] = sums[n * GF_NUM_SUMS + q];
    const double scale =
        p.num_channels == 1 ? double(static_cast<const T *>(p.weights)[n * p.weights_stride[0]]) : 1.0;
    const T *cov = static_cast<const T *>(p.cov);
    T *gm = static_cast<T *>(p.grad_means);
    T *gc = static_cast<T *>(p.grad_cov);
    const int ncov = gf_cov_params(p.cov_mode);
    gf_gaussian_vjp_store(s, scale, cov + n * p.cov_stride[0], p.cov_stride[1], p.cov_mode, p.eps,
                          gm ? gm + 3 * n : nullptr, gc ? gc + ncov * n : nullptr);
}

}  // namespace

namespace gf_cuda {

gf_status launch_culled_gaussians(const gf_params &p, const StructureView &s,
                                  const WorkspaceLayout &l, unsigned char *ws,
                                  cudaStream_t stream, int *cuda_error) {
    const int64_t N = p.num_gaussians;
    const int64_t blocks = ceil_div(N, kGaussWarps);
    if (!grid_fits(blocks)) return GF_ERR_BAD_SIZE;
    auto *sums = reinterpret_cast<double *>(ws + l.sums);
    const bool geom = p.grad_means || p.grad_cov;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        GF_CHANNEL_BLOCK_SWITCH(channel_block_for(p.num_channels), CB, [&] {
            GF_BOOL_SWITCH(geom, kGeom, [&] {
                gaussians_kernel<T, CB, kGeom><<<unsigned(blocks), kGaussWarps * kWarp, 0, stream>>>(
                    p, s.header, static_cast<const typename Types<T>::rec *>(s.records),
                    static_cast<const StagedPoint<T> *>(s.points), s.point_order, s.cell_start,
                    s.gauss_order, reinterpret_cast<const T *>(ws + l.sorted_g),
                    reinterpret_cast<const int64_t *>(ws + l.extra),
                    reinterpret_cast<const int64_t *>(ws + l.num_extra), sums);
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    if (!geom) return GF_OK;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        finalize_kernel<T><<<unsigned(ceil_div(N, 256)), 256, 0, stream>>>(p, s.header, sums);
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
