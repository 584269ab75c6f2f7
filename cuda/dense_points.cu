// SPDX-License-Identifier: Apache-2.0
/*
 * dense_points.cu - the dense forward and backward to the points: every point against
 * every Gaussian (gaussfield.h's gf_cuda_forward, and grad_x of gf_cuda_backward).
 * The maths is gf_math.h, shared with the CPU loops; every reduction runs in a fixed
 * order (no atomics), so results are bitwise identical run to run on one device.
 *
 * Channels.  Every kernel takes a channel block CB as a template argument.  CB = 1 is
 * the one-channel path (C = 1): the weight comes from the record and nothing about
 * channels is staged, looped over or kept in registers, so it costs what it did before
 * channels existed.  C > 1 runs in blocks of CB = 4 (C <= 4) or 8 channels, ceil(C / CB)
 * of them; channels past C in the last block are zero weights and zero gradients in
 * the kernels and are never written.  One exponential serves the CB channels of a
 * block; each further block evaluates the pair again (CB accumulators per point is
 * what the registers hold).
 */
#include <cstdint>

#include "dense.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

/*
 * ---- forward and backward_points --------------------------------------------------
 * Decomposition: a block owns points [32 R i, 32 R (i + 1)); lane l of every warp holds
 * points 32 R i + l + 32 r (r < R) in registers.  The block's W warps split the
 * Gaussians into W contiguous ranges; a warp walks its range 32 records at a time,
 * staged through its own slice of shared memory (one coalesced 16-byte load per lane
 * per vector, then broadcast reads), so the loop needs no block-wide barrier.  At the
 * end each output element's W partial sums are added in warp order through shared
 * memory, one thread per element.
 *
 * One channel (CB = 1): the weight is the record's; backward_points adds w_n v_bn and
 * multiplies by -2 ln2 G[b] at the end (t_bn = G[b] w_n).
 *
 * C > 1 (CB = 4 or 8): beside its 32 records a warp stages their weights of the
 * channel block, [32][CB] (channels past C are 0), read back as broadcast 16-byte
 * vectors.
 *  - forward: R x CB accumulators per thread, out[b, c] += w[n, c] g_bn.  The channel
 *    blocks of a point block are independent outputs, so they are spread over the grid
 *    (block = point block * channel blocks + channel block) rather than looped over in
 *    the thread: each pair is evaluated once per channel block either way, and with few
 *    points, the usual reason for a GPU to run short of blocks, ceil(C / CB) times as
 *    many blocks fill it.  Neighbouring blocks write neighbouring columns of out.
 *  - backward_points: grad_x sums over every channel, but it is linear in t, so the
 *    thread loops over the channel blocks in order, with G of its R points for the
 *    block in registers, adding t_bn v_bn (t over the block's channels) into the same
 *    3 R accumulators: one owner per grad_x row and one summation order, as the forward.
 * Cost per thread: R x CB accumulators (forward) or R x CB values of G beside 3 R
 * accumulators (backward_points), R * CB <= 16 (see the launch plan), and CB weights
 * of the record at hand.  Shared memory per warp: 32 records (2 KiB float, 4 KiB
 * double) plus 32 x CB weights (CB = 8: 1 KiB float, 2 KiB double), at most 48 KiB a
 * block (8 warps, double, CB = 8), which the launcher checks at compile time.
 */
template <typename T, int R, int CB, bool kGradX, bool kCut>
__global__ void __launch_bounds__(kMaxWarps *kWarp)
    points_kernel(gf_params p, const typename Types<T>::rec *records, const gf_cull_header *gate) {
    using rec_t = typename Types<T>::rec;
    constexpr int kAcc = kGradX ? 3 : CB; /* accumulators per point */
    extern __shared__ __align__(16) unsigned char smem[];
    if (gate && gate->culled) return; /* a culling build chose the culled kernels */
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int num_warps = blockDim.x / kWarp;
    const int64_t C = p.num_channels;
    const int64_t num_cb = channel_blocks(C, CB);
    /* forward: one channel block per block; backward_points: every one, in order */
    const int64_t point_block = kGradX ? int64_t(blockIdx.x) : int64_t(blockIdx.x) / num_cb;
    const int64_t cb_begin = kGradX ? 0 : int64_t(blockIdx.x) % num_cb;
    const int64_t cb_end = kGradX ? num_cb : cb_begin + 1;
    const int64_t first_point = point_block * (kWarp * R);
    const T *weights = static_cast<const T *>(p.weights);
    const T *grad_out = static_cast<const T *>(p.grad_out);

    T px[R], py[R], pz[R];
    T acc[R][kAcc];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        load_point<T>(p, first_point + lane + kWarp * r, px[r], py[r], pz[r]);
#pragma unroll
        for (int a = 0; a < kAcc; ++a) acc[r][a] = T(0);
    }

    /* staging: [W][32] records, then (C > 1) [W][32][CB] weights */
    rec_t *buf = reinterpret_cast<rec_t *>(smem) + warp * kWarp;
    T *wbuf = reinterpret_cast<T *>(reinterpret_cast<rec_t *>(smem) + num_warps * kWarp) +
              warp * (kWarp * CB);
    int64_t g_begin, g_end;
    split_range(p.num_gaussians, num_warps, warp, g_begin, g_end);
    /* A channel block already gives a record CB independent updates per point;
     * unrolling two records on top of it spills registers. */
    constexpr int kUnroll = CB == 1 ? 2 : 1;
    for (int64_t cb = cb_begin; cb < cb_end; ++cb) {
        const int64_t c0 = cb * CB;
        /* backward_points with C > 1: G of the thread's points, this block's channels */
        T grad[R][CB];
        if constexpr (kGradX && CB > 1) {
#pragma unroll
            for (int r = 0; r < R; ++r)
                load_channels_global<T, CB>(grad_out, p.grad_out_stride, p.num_points, C,
                                            first_point + lane + kWarp * r, c0, grad[r]);
        }
        for (int64_t g0 = g_begin; g0 < g_end; g0 += kWarp) {
            const int count = int(min(int64_t(kWarp), g_end - g0));
            __syncwarp();
            stage_records<T>(records, g0, count, buf, lane);
            if constexpr (CB > 1)
                stage_channels<T, CB>(weights, p.weights_stride, C, g0, count, c0, wbuf, lane);
            __syncwarp();
#pragma unroll kUnroll
            for (int j = 0; j < count; ++j) {
                const rec_t r = load_record<T>(buf + j);
                T w[CB];
                if constexpr (CB == 1)
                    w[0] = r.w;
                else
                    load_channels<T, CB>(wbuf + j * CB, w);
#pragma unroll
                for (int k = 0; k < R; ++k) {
                    if constexpr (kGradX) {
                        T t = w[0];
                        if constexpr (CB > 1) {
                            t = T(0);
#pragma unroll
                            for (int c = 0; c < CB; ++c) t += grad[k][c] * w[c];
                        }
                        const typename Types<T>::point_terms v =
                            gf_pair_vjp_point(&r, px[k], py[k], pz[k], kCut);
                        const T s = t * v.g;
                        acc[k][0] += s * v.vx;
                        acc[k][1] += s * v.vy;
                        acc[k][2] += s * v.vz;
                    } else {
                        const T g = gf_pair_value(&r, px[k], py[k], pz[k], kCut);
#pragma unroll
                        for (int c = 0; c < CB; ++c) acc[k][c] += w[c] * g;
                    }
                }
            }
        }
    }

    /* Cross-warp sum in warp order; the staging buffers are reused for it. */
    __syncthreads();
    T *red = reinterpret_cast<T *>(smem); /* [W][kAcc][32 R] */
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int a = 0; a < kAcc; ++a)
            red[(warp * kAcc + a) * (kWarp * R) + lane + kWarp * r] = acc[r][a];
    __syncthreads();
    const int64_t c0 = cb_begin * CB; /* forward: the block's channels */
    /* one thread per output element; consecutive threads write consecutive elements */
    for (int i = threadIdx.x; i < kWarp * R * kAcc; i += blockDim.x) {
        const int t = i / kAcc, a = i % kAcc;
        const int64_t b = first_point + t;
        if (b >= p.num_points || (!kGradX && c0 + a >= C)) continue;
        T sum = T(0);
        for (int w = 0; w < num_warps; ++w) sum += red[(w * kAcc + a) * (kWarp * R) + t];
        if constexpr (kGradX) {
            T scale = T(-GF_TWO_LN2);
            if constexpr (CB == 1) scale *= grad_out[b * p.grad_out_stride[0]];
            static_cast<T *>(p.grad_x)[3 * b + a] = scale * sum;
        } else {
            static_cast<T *>(p.out)[b * C + c0 + a] = sum;
        }
    }
}

/* Dynamic shared memory of points_kernel: the staging buffers, reused for the
 * cross-warp sum. */
template <typename T, int R, int CB, bool kGradX>
constexpr size_t points_smem_bytes(int warps) {
    const size_t staging = size_t(warps) * kWarp *
                           (sizeof(typename Types<T>::rec) + (CB > 1 ? CB * sizeof(T) : 0));
    const size_t reduction = size_t(warps) * (kGradX ? 3 : CB) * kWarp * R * sizeof(T);
    return staging > reduction ? staging : reduction;
}

template <typename T, int R, int CB, bool kGradX, bool kCut>
void launch_points_kernel(const gf_params &p, const typename Types<T>::rec *records, dim3 grid,
                          int warps, const gf_cull_header *gate, cudaStream_t stream) {
    static_assert(R * CB <= kMaxAccumulators, "register blocking past the plan's bound");
    static_assert(points_smem_bytes<T, R, CB, kGradX>(kMaxWarps) <= kMaxSmem,
                  "points_kernel needs more shared memory than a launch gets by default");
    warps = fit_warps<points_kernel<T, R, CB, kGradX, kCut>>(warps,
                      [](int w) { return points_smem_bytes<T, R, CB, kGradX>(w); });
    if (warps < 1) warps = 1;  /* fits nowhere: the launch reports the error */
    points_kernel<T, R, CB, kGradX, kCut>
        <<<grid, warps * kWarp, points_smem_bytes<T, R, CB, kGradX>(warps), stream>>>(p, records, gate);
}

}  // namespace

namespace gf_cuda {

gf_status launch_dense_points(const gf_params &p, const Plan &plan, const void *records,
                              bool grad_x, const gf_cull_header *gate, cudaStream_t stream,
                              int *cuda_error) {
    const int64_t point_blocks = ceil_div(p.num_points, int64_t(kWarp) * plan.points_r);
    /* the forward's grid holds every (point block, channel block) pair */
    const int64_t per_point_block = grad_x ? 1 : channel_blocks(p.num_channels, plan.channel_block);
    if (point_blocks > kMaxGridX / per_point_block) return GF_ERR_BAD_SIZE;
    const dim3 grid(unsigned(point_blocks * per_point_block));
    /* without a cutoff, kernels without its test (the same bits, one less compare and
     * select per pair) */
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        GF_BOOL_SWITCH(grad_x, kGradX, [&] {
            GF_CHANNEL_BLOCK_SWITCH(plan.channel_block, CB, [&] {
                GF_BOOL_SWITCH(gf_has_cutoff(p.cutoff), kCut, [&] {
                    GF_BLOCKING_SWITCH(plan.points_r, 8, CB, kMaxAccumulators, R, [&] {
                        launch_points_kernel<T, R, CB, kGradX, kCut>(
                            p, static_cast<const typename Types<T>::rec *>(records), grid,
                            plan.points_warps, gate, stream);
                    });
                });
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
