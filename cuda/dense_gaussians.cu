// SPDX-License-Identifier: Apache-2.0
/*
 * dense_gaussians.cu - the dense backward to the Gaussians (grad_means, grad_cov,
 * grad_weights of gf_cuda_backward): every Gaussian against every point, in chunks of
 * points whose partial sums a finalize kernel adds in chunk order.  Channels as in
 * dense_points.cu.  No atomics: bitwise reproducible run to run on one device.
 */
#include <cstdint>

#include "dense.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

/*
 * ---- backward_gaussians ------------------------------------------------------------
 * Decomposition: blockIdx.x owns Gaussians [32 K i, 32 K (i + 1)), lane l holding
 * Gaussians 32 K i + l + 32 k (k < K), their records and sums in registers.
 * blockIdx.y is a chunk of the points; the block's W warps split the chunk, each
 * staging 32 points at a time in its own shared slice and reading them back as
 * broadcasts.  Each sum's W partial values are added in warp order, and the block
 * writes its chunk's sums to partial[chunk][9 + C][N] (the 9 geometric sums, then one
 * weight sum per channel); finalize adds the chunks in order.
 *
 * One channel (CB = 1): a staged point is (x, y, z, G[b]) and a pair adds its terms with
 * t = G[b] (the weight, a common factor of t = G w_n, is applied by finalize in double,
 * so a pair costs what it did before channels) and G g to the weight's sum: 10 sums.
 *
 * C > 1 (CB = 4 or 8): the warps walk their points once per block of CB channels, in
 * order.  A lane holds its Gaussians' weights of the block in registers; a staged point
 * brings G[b, c0 .. c0 + CB) ([32][CB] beside the points, 0 past C).  A pair adds its
 * geometric terms with t = G . w over the block (the 9 sums are linear in t, so they
 * accumulate across the blocks, in block order) and G[b, c] g to the block's CB weight
 * sums, which the block writes at the end of its pass.
 */
/* row[n] = the W warps' values v of the block's Gaussians, added in warp order. */
template <typename T, int K>
__device__ __forceinline__ void sum_warps_store(const T (&v)[K], T *red, int64_t first_gaussian,
                                                int64_t n_gauss, T *row) {
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int num_warps = blockDim.x / kWarp;
    __syncthreads(); /* red aliases the staging buffers and the previous sum */
#pragma unroll
    for (int k = 0; k < K; ++k) red[warp * (kWarp * K) + lane + kWarp * k] = v[k];
    __syncthreads();
    for (int t = threadIdx.x; t < kWarp * K; t += blockDim.x) {
        const int64_t n = first_gaussian + t;
        if (n >= n_gauss) continue;
        T total = T(0);
        for (int w = 0; w < num_warps; ++w) total += red[w * (kWarp * K) + t];
        row[n] = total;
    }
}

template <typename T, int K, int CB, bool kCut>
__global__ void __launch_bounds__(kMaxWarps *kWarp)
    gaussians_kernel(gf_params p, const typename Types<T>::rec *records, int64_t num_chunks,
                     T *partial, const gf_cull_header *gate) {
    using rec_t = typename Types<T>::rec;
    extern __shared__ __align__(16) unsigned char smem[];
    if (gate && gate->culled) return; /* a culling build chose the culled kernels */
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int num_warps = blockDim.x / kWarp;
    const int64_t first_gaussian = int64_t(blockIdx.x) * (kWarp * K);
    const int64_t n_gauss = p.num_gaussians;
    const int64_t C = p.num_channels;
    T *chunk_sums = partial + int64_t(blockIdx.y) * (GF_NUM_SUMS + C) * n_gauss; /* [9 + C][N] */

    rec_t rec[K];
    T sums[K][GF_NUM_SUMS];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const int64_t n = first_gaussian + lane + kWarp * k;
        rec[k] = load_record<T>(records + (n < n_gauss ? n : 0));
#pragma unroll
        for (int s = 0; s < GF_NUM_SUMS; ++s) sums[k][s] = T(0);
    }

    int64_t c_begin, c_end, b_begin, b_end;
    split_range(p.num_points, num_chunks, blockIdx.y, c_begin, c_end);
    split_range(c_end - c_begin, num_warps, warp, b_begin, b_end);
    b_begin += c_begin;
    b_end += c_begin;

    /* staging: [W][32] points, then (C > 1) [W][32][CB] of grad_out */
    StagedPoint<T> *buf = reinterpret_cast<StagedPoint<T> *>(smem) + warp * kWarp;
    T *gbuf = reinterpret_cast<T *>(reinterpret_cast<StagedPoint<T> *>(smem) +
                                    num_warps * kWarp) +
              warp * (kWarp * CB);
    T *red = reinterpret_cast<T *>(smem); /* [W][32 K], after the staging is done */
    const T *grad_out = static_cast<const T *>(p.grad_out);
    const T *weights = static_cast<const T *>(p.weights);
    const int64_t num_cb = channel_blocks(C, CB);
    constexpr int kUnroll = CB == 1 ? 2 : 1; /* as in points_kernel */
    for (int64_t cb = 0; cb < num_cb; ++cb) {
        const int64_t c0 = cb * CB;
        T w[K][CB];    /* C > 1: the lane's Gaussians' weights of the block */
        T wsum[K][CB]; /* sum_b G[b, c0 + c] g_bn */
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if constexpr (CB > 1)
                load_channels_global<T, CB>(weights, p.weights_stride, n_gauss, C,
                                            first_gaussian + lane + kWarp * k, c0, w[k]);
#pragma unroll
            for (int c = 0; c < CB; ++c) wsum[k][c] = T(0);
        }
        if (cb > 0) __syncthreads(); /* the last pass's final sum still reads the buffers */
        for (int64_t b0 = b_begin; b0 < b_end; b0 += kWarp) {
            const int count = int(min(int64_t(kWarp), b_end - b0));
            __syncwarp();
            if (lane < count) {
                StagedPoint<T> sp;
                load_point<T>(p, b0 + lane, sp.x, sp.y, sp.z);
                sp.g = CB == 1 ? grad_out[(b0 + lane) * p.grad_out_stride[0]] : T(0);
                buf[lane] = sp;
            }
            if constexpr (CB > 1)
                stage_channels<T, CB>(grad_out, p.grad_out_stride, C, b0, count, c0, gbuf, lane);
            __syncwarp();
#pragma unroll kUnroll
            for (int j = 0; j < count; ++j) {
                const StagedPoint<T> sp = buf[j];
                if constexpr (CB == 1) {
#pragma unroll
                    for (int k = 0; k < K; ++k) {
                        const typename Types<T>::terms c =
                            gf_pair_vjp_gaussian(&rec[k], sp.x, sp.y, sp.z, sp.g, sp.g, kCut);
                        gf_pair_terms_add(sums[k], &c);
                        wsum[k][0] += c.gg;
                    }
                } else {
                    T g[CB];
                    load_channels<T, CB>(gbuf + j * CB, g);
#pragma unroll
                    for (int k = 0; k < K; ++k) {
                        T t = T(0);
#pragma unroll
                        for (int c = 0; c < CB; ++c) t += g[c] * w[k][c];
                        const typename Types<T>::terms c =
                            gf_pair_vjp_gaussian(&rec[k], sp.x, sp.y, sp.z, T(1), t, kCut);
                        gf_pair_terms_add(sums[k], &c);
#pragma unroll
                        for (int ch = 0; ch < CB; ++ch) wsum[k][ch] += g[ch] * c.gg;
                    }
                }
            }
        }
        /* the block's weight sums: rows 9 + c0 + c (the bound is uniform in the block) */
#pragma unroll
        for (int c = 0; c < CB; ++c) {
            if (c0 + c >= C) break;
            T v[K];
#pragma unroll
            for (int k = 0; k < K; ++k) v[k] = wsum[k][c];
            sum_warps_store<T, K>(v, red, first_gaussian, n_gauss,
                                  chunk_sums + (GF_NUM_SUMS + c0 + c) * n_gauss);
        }
    }
    /* the geometric sums: rows 0 .. 8 */
#pragma unroll
    for (int s = 0; s < GF_NUM_SUMS; ++s) {
        T v[K];
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = sums[k][s];
        sum_warps_store<T, K>(v, red, first_gaussian, n_gauss, chunk_sums + s * n_gauss);
    }
}

/* Dynamic shared memory of gaussians_kernel: the staging buffers, reused for the
 * cross-warp sums. */
template <typename T, int K, int CB>
constexpr size_t gaussians_smem_bytes(int warps) {
    const size_t staging =
        size_t(warps) * kWarp * (sizeof(StagedPoint<T>) + (CB > 1 ? CB * sizeof(T) : 0));
    const size_t reduction = size_t(warps) * kWarp * K * sizeof(T);
    return staging > reduction ? staging : reduction;
}

/* ---- finalize: one thread per Gaussian -------------------------------------------
 * Adds the chunks' partial sums in chunk order, in double, then applies the chain rule
 * (gf_gaussian_vjp_store) and writes grad_weights[n, :].  With one channel the geometric
 * sums were taken with t = G, so they are multiplied by the weight here. */
template <typename T>
__global__ void __launch_bounds__(256)
    finalize_kernel(gf_params p, const T *partial, int64_t num_chunks, const gf_cull_header *gate) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t n_gauss = p.num_gaussians;
    if (n >= n_gauss || (gate && gate->culled)) return;
    const int64_t C = p.num_channels;
    const int64_t rows = GF_NUM_SUMS + C; /* per chunk */
    T *gm = static_cast<T *>(p.grad_means);
    T *gc = static_cast<T *>(p.grad_cov);
    T *gw = static_cast<T *>(p.grad_weights);
    if (gm || gc) {
        double sums[GF_NUM_SUMS];
#pragma unroll
        for (int s = 0; s < GF_NUM_SUMS; ++s) {
            double total = 0.0;
            for (int64_t c = 0; c < num_chunks; ++c)
                total += double(partial[(c * rows + s) * n_gauss + n]);
            sums[s] = total;
        }
        const double scale =
            C == 1 ? double(static_cast<const T *>(p.weights)[n * p.weights_stride[0]]) : 1.0;
        const T *cov = static_cast<const T *>(p.cov);
        const int ncov = gf_cov_params(p.cov_mode);
        gf_gaussian_vjp_store(sums, scale, cov + n * p.cov_stride[0], p.cov_stride[1], p.cov_mode,
                              p.eps, gm ? gm + 3 * n : nullptr, gc ? gc + ncov * n : nullptr);
    }
    if (gw) {
        for (int64_t ch = 0; ch < C; ++ch) {
            double total = 0.0;
            for (int64_t c = 0; c < num_chunks; ++c)
                total += double(partial[(c * rows + GF_NUM_SUMS + ch) * n_gauss + n]);
            gw[n * C + ch] = T(total);
        }
    }
}

template <typename T, int K, int CB, bool kCut>
void launch_gaussians_kernel(const gf_params &p, const typename Types<T>::rec *records,
                             dim3 grid, int warps, int64_t chunks, T *partial,
                             const gf_cull_header *gate, cudaStream_t stream) {
    static_assert(K * CB <= kMaxChannelSums, "register blocking past the plan's bound");
    static_assert(gaussians_smem_bytes<T, K, CB>(kMaxWarps) <= kMaxSmem,
                  "gaussians_kernel needs more shared memory than a launch gets by default");
    warps = fit_warps<gaussians_kernel<T, K, CB, kCut>>(warps,
                      [](int w) { return gaussians_smem_bytes<T, K, CB>(w); });
    if (warps < 1) warps = 1;  /* fits nowhere: the launch reports the error */
    gaussians_kernel<T, K, CB, kCut><<<grid, warps * kWarp, gaussians_smem_bytes<T, K, CB>(warps),
                                 stream>>>(p, records, chunks, partial, gate);
}

}  // namespace

namespace gf_cuda {

gf_status launch_dense_gaussians(const gf_params &p, const Plan &plan, const void *records,
                                 void *partial, const gf_cull_header *gate, cudaStream_t stream,
                                 int *cuda_error) {
    const int64_t blocks = ceil_div(p.num_gaussians, int64_t(kWarp) * plan.gauss_k);
    if (!grid_fits(blocks)) return GF_ERR_BAD_SIZE;
    const dim3 grid(unsigned(blocks), unsigned(plan.chunks));
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        const auto *rec = static_cast<const typename Types<T>::rec *>(records);
        T *sums = static_cast<T *>(partial);
        GF_CHANNEL_BLOCK_SWITCH(plan.channel_block, CB, [&] {
            GF_BOOL_SWITCH(gf_has_cutoff(p.cutoff), kCut, [&] {
                GF_BLOCKING_SWITCH(plan.gauss_k, 4, CB, kMaxChannelSums, K, [&] {
                    launch_gaussians_kernel<T, K, CB, kCut>(p, rec, grid, plan.gauss_warps,
                                                            plan.chunks, sums, gate, stream);
                });
            });
        });
    });
    GF_LAUNCH_CHECK(cuda_error);
    const int threads = 256;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        finalize_kernel<T><<<unsigned(ceil_div(p.num_gaussians, threads)), threads, 0, stream>>>(
            p, static_cast<const T *>(partial), plan.chunks, gate);
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
