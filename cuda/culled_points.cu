// SPDX-License-Identifier: Apache-2.0
/*
 * culled_points.cu - the culled forward and backward to the points (the first half of
 * gf_cuda_culled_forward / gf_cuda_culled_backward), over the structure that
 * cull_build.cu builds.
 *
 * points_kernel (forward, backward to x): a block of W warps (1 or 4: points_warps)
 * owns one chunk of one cell, at most kChunk = 256 points (a cell's points split into
 * ceil(n / 256) chunks of whole groups of 32): warp w holds groups w, w + W, ... in its
 * slots, so that each record it reads from shared memory serves one pair per slot (up
 * to 8 with one warp, 2 with four).  The block walks the cell's list (cell num_cells: every
 * Gaussian) in list order, then the Gaussians whose entries did not fit the lists'
 * capacity (fitted .. N, fitted per call), 128 records at a time gathered into shared memory,
 * so each point's sum runs over its cell's Gaussians in ascending index order whatever
 * the capacity: one owner per output row, no reduction.  Channels as in dense_points.cu: CB = 1 uses the record's
 * weight; C > 1 stages the weights of a block of CB = 4 or 8 channels beside the
 * records; the forward spreads the channel blocks over grid.y, the backward to x loops
 * over them in order.
 */
#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "cull.cuh"
#include "launch_plan.h"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

constexpr int kBatch = 128; /* records staged per batch */
/* One staged batch of `count` records against a warp's R point slots (R = 2 when the
 * warp holds a second slot of points: each record loaded from shared memory then serves
 * two pairs).  Sums in the list's order, per slot. */
template <typename T, int CB, bool kGradX, int R, int kMaxR>
__device__ __forceinline__ void points_batch(const T *s_rec, const T *s_w, int count,
                                             const StagedPoint<T> (&sp)[kMaxR],
                                             const T (&grad)[kMaxR][CB], T (&acc)[kMaxR][CB],
                                             T (&gx)[kMaxR][3]) {
    using rec_t = typename Types<T>::rec;
    constexpr int kUnroll = CB == 1 && R == 1 ? 2 : 1;
#pragma unroll kUnroll
    for (int e = 0; e < count; ++e) {
        const rec_t r = load_pair_values<T>(s_rec + e * kPairVals);
        T w[CB];
        if constexpr (CB == 1)
            w[0] = r.w;
        else
            load_channels<T, CB>(s_w + e * CB, w);
#pragma unroll
        for (int q = 0; q < R; ++q) {
            if constexpr (kGradX) {
                T t = w[0];
                if constexpr (CB > 1) {
                    t = T(0);
#pragma unroll
                    for (int a = 0; a < CB; ++a) t += grad[q][a] * w[a];
                }
                const typename Types<T>::point_terms v =
                    gf_pair_vjp_point(&r, sp[q].x, sp[q].y, sp[q].z, 1);
                const T tg = t * v.g;
                gx[q][0] += tg * v.vx;
                gx[q][1] += tg * v.vy;
                gx[q][2] += tg * v.vz;
            } else {
                const T g = gf_pair_value(&r, sp[q].x, sp[q].y, sp[q].z, 1);
#pragma unroll
                for (int a = 0; a < CB; ++a) acc[q][a] += w[a] * g;
            }
        }
    }
}

/* Slot q of a warp is valid when the warp holds at least q + 1 groups (warp-uniform):
 * dispatch the batch to the template of the warp's slot count R. */
template <typename T, int CB, bool kGradX, int kMaxR>
__device__ __forceinline__ void points_batch_for(int slots, const T *s_rec, const T *s_w, int count,
                                                 const StagedPoint<T> (&sp)[kMaxR],
                                                 const T (&grad)[kMaxR][CB], T (&acc)[kMaxR][CB],
                                                 T (&gx)[kMaxR][3]) {
    static_assert(kMaxR == 1 || kMaxR == 2 || kMaxR == 4 || kMaxR == 8, "slots");
    switch (slots) {
    case 1: points_batch<T, CB, kGradX, 1>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 2: if constexpr (kMaxR >= 2) points_batch<T, CB, kGradX, 2>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 3: if constexpr (kMaxR >= 4) points_batch<T, CB, kGradX, 3>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 4: if constexpr (kMaxR >= 4) points_batch<T, CB, kGradX, 4>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 5: if constexpr (kMaxR >= 8) points_batch<T, CB, kGradX, 5>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 6: if constexpr (kMaxR >= 8) points_batch<T, CB, kGradX, 6>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 7: if constexpr (kMaxR >= 8) points_batch<T, CB, kGradX, 7>(s_rec, s_w, count, sp, grad, acc, gx); break;
    case 8: if constexpr (kMaxR >= 8) points_batch<T, CB, kGradX, 8>(s_rec, s_w, count, sp, grad, acc, gx); break;
    default: break;
    }
}

/* A block of W warps owns one chunk (at most kChunk = 256 points, 8 groups of 32): warp
 * w holds groups w, w + W, w + 2W, ... in its slots 0, 1, 2, ... (at most 8 / W), so
 * that each record it reads from shared memory serves as many pairs as it has slots. */
template <typename T, int CB, bool kGradX, int W>
__global__ void __launch_bounds__(W *kWarp)
    points_kernel(gf_params p, const gf_cull_header *header, const typename Types<T>::rec *records,
                  const StagedPoint<T> *points, const int64_t *order,
                  const int64_t *cell_start, const int64_t *chunk_start,
                  const int64_t *list_start, const int32_t *list, const int64_t *fitted_in) {
    constexpr int kThreadsW = W * kWarp;
    constexpr int kMaxR = kChunk / kThreadsW; /* slots a thread */
    __shared__ __align__(16) T s_rec[kBatch * kPairVals];
    __shared__ __align__(16) T s_w[CB > 1 ? kBatch * CB : 1];

    if (!header->culled) return; /* the dense kernels do the work */
    const int64_t num_cells = header->plan.num_cells, fitted = *fitted_in;
    const int64_t j = blockIdx.x;
    if (j >= chunk_start[num_cells + 1]) return; /* the grid is an upper bound */
    /* the chunk's cell: the last c with chunk_start[c] <= j */
    int64_t lo = 0, hi = num_cells;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (chunk_start[mid] <= j) lo = mid;
        else hi = mid - 1;
    }
    const int64_t c = lo;
    /* chunk k of m: whole groups of 32 of the cell's points, near-equal shares, at most
     * kChunk / 32 groups */
    const int64_t k = j - chunk_start[c], m = chunk_start[c + 1] - chunk_start[c];
    const int64_t s = cell_start[c], n = cell_start[c + 1] - s;
    const int64_t groups = ceil_div(n, kWarp);
    const int64_t p0 = s + kWarp * (groups * k / m);
    const int64_t p1 = min(s + n, s + kWarp * (groups * (k + 1) / m));
    const int warp = threadIdx.x / kWarp;
    /* the warp's slots: groups warp + W q below the chunk's end */
    int slots = 0;
#pragma unroll
    for (int q = 0; q < kMaxR; ++q)
        if (p0 + int64_t(warp + W * q) * kWarp < p1) slots = q + 1;
    bool active[kMaxR];
    StagedPoint<T> sp[kMaxR];
    int64_t b[kMaxR];
#pragma unroll
    for (int q = 0; q < kMaxR; ++q) {
        const int64_t idx = p0 + int64_t(kThreadsW) * q + threadIdx.x;
        active[q] = idx < p1;
        sp[q] = {T(0), T(0), T(0), T(0)};
        b[q] = 0;
        if (active[q]) {
            sp[q] = points[idx];
            b[q] = order[idx];
        }
    }
    const bool implicit = c == num_cells; /* the non-finite cell: every Gaussian */
    const int64_t list_begin = implicit ? 0 : list_start[c];
    const int64_t in_list = implicit ? p.num_gaussians : list_start[c + 1] - list_begin;
    /* after the list (Gaussians below `fitted`, ascending), those whose entries did not
     * fit the lists' capacity, ascending: every Gaussian that may reach the cell, once,
     * in index order, whatever the capacity */
    const int64_t len = in_list + (implicit ? 0 : p.num_gaussians - fitted);

    const int64_t C = p.num_channels;
    const int64_t num_cb = channel_blocks(C, CB);
    const T *weights = static_cast<const T *>(p.weights);
    const T *grad_out = static_cast<const T *>(p.grad_out);
    T gx[kMaxR][3]; /* backward to x: all blocks */
#pragma unroll
    for (int q = 0; q < kMaxR; ++q) gx[q][0] = gx[q][1] = gx[q][2] = T(0);

    for (int64_t cb = kGradX ? 0 : blockIdx.y; cb < num_cb; cb += kGradX ? 1 : gridDim.y) {
        const int64_t c0 = cb * CB;
        T acc[kMaxR][CB]; /* forward: out[b, c0 .. c0 + CB) per slot */
#pragma unroll
        for (int q = 0; q < kMaxR; ++q)
#pragma unroll
            for (int a = 0; a < CB; ++a) acc[q][a] = T(0);
        T grad[kMaxR][CB]; /* backward to x with C > 1: G of the slot's point, this block */
        if constexpr (kGradX && CB > 1) {
#pragma unroll
            for (int q = 0; q < kMaxR; ++q)
                load_channels_global<T, CB>(grad_out, p.grad_out_stride,
                                            active[q] ? p.num_points : 0, C, b[q], c0, grad[q]);
        }
        for (int64_t base = 0; base < len; base += kBatch) {
            const int count = int(min(int64_t(kBatch), len - base));
            __syncthreads(); /* the last batch is read */
            for (int e = threadIdx.x; e < count; e += kThreadsW) {
                const int64_t at = base + e;
                const int64_t gi = implicit       ? at
                                   : at < in_list ? int64_t(list[list_begin + at])
                                                  : fitted + (at - in_list);
                stage_pair_values<T>(records + gi, s_rec + e * kPairVals);
                if constexpr (CB > 1) {
#pragma unroll
                    for (int a = 0; a < CB; ++a)
                        s_w[e * CB + a] =
                            c0 + a < C ? weights[gi * p.weights_stride[0] +
                                                 (c0 + a) * p.weights_stride[1]]
                                       : T(0);
                }
            }
            __syncthreads();
            points_batch_for<T, CB, kGradX, kMaxR>(slots, s_rec, s_w, count, sp, grad, acc, gx);
        }
        if (!kGradX) {
            T *out = static_cast<T *>(p.out);
#pragma unroll
            for (int q = 0; q < kMaxR; ++q)
                if (active[q]) {
#pragma unroll
                    for (int a = 0; a < CB; ++a)
                        if (c0 + a < C) out[b[q] * C + c0 + a] = acc[q][a];
                }
        }
    }
    if constexpr (kGradX) {
        T *grad_x = static_cast<T *>(p.grad_x);
#pragma unroll
        for (int q = 0; q < kMaxR; ++q)
            if (active[q]) {
                T scale = T(-GF_TWO_LN2);
                if constexpr (CB == 1) /* t = G w: G applied once here */
                    scale *= grad_out[b[q] * p.grad_out_stride[0]];
#pragma unroll
                for (int a = 0; a < 3; ++a) grad_x[3 * b[q] + a] = scale * gx[q][a];
            }
    }
}

/* Warps a points block has: GAUSSFIELD_CUDA_CONFIG's cull_warps (1 or 4) where set;
 * else one warp (eight slots a thread: each staged record serves up to eight pairs) when
 * the points give at least 16 full chunks a multiprocessor, four warps (two slots)
 * otherwise, so that a small problem keeps its multiprocessors busy.  Measured on the
 * H200 (2026-12-02, forward / train ms, 4 -> 1 warps): big (10^6 points) 2.58 / 6.22 ->
 * 2.31 / 5.95, aniso (2^20) 1.58 / 4.05 -> 1.47 / 3.95, sheets (2^20) 0.70 / 1.38 ->
 * 0.74 / 1.43; mid (131,072) 0.63 / 1.27 -> 0.68 / 1.31 and the trained field (2^18)
 * 0.83 / 1.69 -> 0.84 / 1.70 keep four.  Channel blocks (CB > 1) keep four warps, two
 * slots, so that a thread holds at most 16 accumulators (the dense rule R * CB <= 16).
 * The sums do not depend on it: each point adds its cell's records in list order. */
int points_warps(const gf_params &p, int CB, int sm_count) {
    if (CB > 1) return 4;
    const int v = parse_override(std::getenv("GAUSSFIELD_CUDA_CONFIG"), "cull_warps", 0);
    if (v == 1 || v == 4) return v;
    return p.num_points >= int64_t(16) * kChunk * sm_count ? 1 : 4;
}

/* The points kernel of points_warps(...) warps, on the given grid. */
template <typename T, int CB, bool kGradX>
void launch_points(dim3 grid, const gf_params &p, const StructureView &s, const WorkspaceLayout &l,
                   const unsigned char *ws, const int32_t *list, int sm_count, cudaStream_t stream) {
    const auto launch = [&](auto kernel, int warps) {
        kernel<<<grid, warps * kWarp, 0, stream>>>(
            p, s.header, static_cast<const typename Types<T>::rec *>(s.records),
            static_cast<const StagedPoint<T> *>(s.points), s.point_order, s.cell_start,
            s.chunk_start, reinterpret_cast<const int64_t *>(ws + l.list_start), list,
            reinterpret_cast<const int64_t *>(ws + l.fitted));
    };
    if constexpr (CB > 1) {
        launch(points_kernel<T, CB, kGradX, 4>, 4);
    } else {
        if (points_warps(p, CB, sm_count) == 1) launch(points_kernel<T, CB, kGradX, 1>, 1);
        else launch(points_kernel<T, CB, kGradX, 4>, 4);
    }
}

}  // namespace

namespace gf_cuda {

gf_status launch_culled_points(const gf_params &p, const StructureView &s,
                               const WorkspaceLayout &l, const unsigned char *ws,
                               const int32_t *list, bool grad_x, cudaStream_t stream,
                               int *cuda_error) {
    /* at most ceil(B / kChunk) + num_cells + 1 chunks; the blocks past the last exit */
    const int64_t blocks = ceil_div(p.num_points, kChunk) + s.max_cells + 1;
    if (!grid_fits(blocks)) return GF_ERR_BAD_SIZE;
    const int cbv = channel_block_for(p.num_channels);
    int sm_count = 1;
    const gf_status st = sm_count_of_current_device(&sm_count, cuda_error);
    if (st != GF_OK) return st;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        GF_CHANNEL_BLOCK_SWITCH(cbv, CB, [&] {
            GF_BOOL_SWITCH(grad_x, kGradX, [&] {
                const int64_t num_cb = kGradX ? 1 : channel_blocks(p.num_channels, CB);
                const dim3 grid(unsigned(blocks), unsigned(std::min<int64_t>(num_cb, 65535)));
                launch_points<T, CB, kGradX>(grid, p, s, l, ws, list, sm_count, stream);
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
