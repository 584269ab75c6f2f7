/*
 * culled_gaussians.cu - the culled backward to the Gaussians (the second half of
 * gf_cuda_culled_backward), over the structure that cull_build.cu builds.
 *
 * gaussians_kernel (backward to means, cov, weights): a warp owns one Gaussian; blocks
 * take 8 Gaussians consecutive in gauss_order, so the warps of a multiprocessor read
 * neighbouring cells and mostly hit L1.  The warp walks the rows (z, y) of its box; in
 * each row it solves the row's interval of reached cells (gf_cull_row, warp-uniform), and
 * the lanes stride over the points of those cells, contiguous in the sorted points.
 * (Skipping groups of 32 pairs that the test drops entirely, behind a warp vote in a loop
 * all lanes run, measured 1.6x slower on the H200: 4.46 -> 7.03 ms at B = 10^6, N = 10^5.)
 * Last, the non-finite cell's points, which every Gaussian sees.  A lane sums its pairs' terms in T over a row and
 * adds the row into double; at the end the 32 lanes' doubles are added by a fixed
 * shuffle tree and lane 0 applies the chain rule (gf_gaussian_vjp_store) and writes
 * grad_weights.  No block barrier: warps run independently.  With C > 1 the warp walks
 * once per channel block, as the dense gaussians_kernel does (the 9 geometric sums are
 * linear in t and carry across blocks), reading G through the point order.
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
    gaussians_kernel(gf_params p, gf_cull_plan g, const typename Types<T>::rec *records,
                     const StagedPoint<T> *points, const int64_t *order,
                     const int64_t *cell_start, const int32_t *gauss_order) {
    using rec_t = typename Types<T>::rec;
    __shared__ gf_cull_box s_box[kGaussWarps];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int64_t N = p.num_gaussians, C = p.num_channels, NC = g.num_cells;
    const int64_t slot = int64_t(blockIdx.x) * kGaussWarps + warp;
    if (slot >= N) return; /* whole warps; no block barrier below */
    const int64_t n = int64_t(gauss_order[slot]);
    const rec_t rec = load_record<T>(records + n);
    if (lane == 0) box_of<T>(g, p, n, rec, &s_box[warp]);
    __syncwarp();
    const gf_cull_box &box = s_box[warp];
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
        auto run_range = [&](int64_t ws, int64_t we) {
            T part[GF_NUM_SUMS];
#pragma unroll
            for (int q = 0; q < GF_NUM_SUMS; ++q) part[q] = T(0);
            T pw[CB];
#pragma unroll
            for (int a = 0; a < CB; ++a) pw[a] = T(0);
            for (int64_t i = ws + lane; i < we; i += kWarp) {
                const StagedPoint<T> sp = points[i];
                if constexpr (CB == 1) {
                    const typename Types<T>::terms c =
                        gf_pair_vjp_gaussian(&rec, sp.x, sp.y, sp.z, sp.g, sp.g, 1);
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
            }
#pragma unroll
            for (int q = 0; q < GF_NUM_SUMS; ++q) acc[q] += double(part[q]);
#pragma unroll
            for (int a = 0; a < CB; ++a) accw[a] += double(pw[a]);
        };
        /* each row's reached cells: one interval (warp-uniform) */
        gf_cull_rows it;
        gf_cull_rows_begin(&box, &it);
        for (int64_t first, last; gf_cull_rows_next(&g, &box, &it, &first, &last);)
            run_range(cell_start[first], cell_start[last + 1]);
        run_range(cell_start[NC], cell_start[NC + 1]); /* non-finite points, G */
        if (want_w) {
#pragma unroll
            for (int a = 0; a < CB; ++a) {
                const double total = warp_sum(accw[a]);
                if (lane == 0 && c0 + a < C) grad_weights[n * C + c0 + a] = T(total);
            }
        }
    }
    if constexpr (kGeom) {
        double sums[GF_NUM_SUMS];
#pragma unroll
        for (int q = 0; q < GF_NUM_SUMS; ++q) sums[q] = warp_sum(acc[q]);
        if (lane == 0) {
            const double scale = C == 1 ? double(weights[n * p.weights_stride[0]]) : 1.0;
            const T *cov = static_cast<const T *>(p.cov);
            T *gm = static_cast<T *>(p.grad_means);
            T *gc = static_cast<T *>(p.grad_cov);
            const int ncov = gf_cov_params(p.cov_mode);
            gf_gaussian_vjp_store(sums, scale, cov + n * p.cov_stride[0], p.cov_stride[1],
                                  p.cov_mode, p.eps, gm ? gm + 3 * n : nullptr,
                                  gc ? gc + ncov * n : nullptr);
        }
    }
}

}  // namespace

namespace gf_cuda {

gf_status launch_culled_gaussians(const gf_params &p, const gf_cull_plan &plan,
                                  const void *records, const void *points, const int64_t *order,
                                  const int64_t *cell_start, const int32_t *gauss_order,
                                  cudaStream_t stream, int *cuda_error) {
    const int64_t blocks = ceil_div(p.num_gaussians, kGaussWarps);
    if (!grid_fits(blocks)) return GF_ERR_BAD_SIZE;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        GF_CHANNEL_BLOCK_SWITCH(channel_block_for(p.num_channels), CB, [&] {
            GF_BOOL_SWITCH(p.grad_means || p.grad_cov, kGeom, [&] {
                gaussians_kernel<T, CB, kGeom><<<unsigned(blocks), kGaussWarps * kWarp, 0, stream>>>(
                    p, plan, static_cast<const typename Types<T>::rec *>(records),
                    static_cast<const StagedPoint<T> *>(points), order, cell_start, gauss_order);
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
