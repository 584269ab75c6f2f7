/*
 * gf_cuda.cu - the dense CUDA stages of the C API (gaussfield.h): kernels and their
 * launchers, every point against every Gaussian.  The culled stages are gf_cuda_cull.cu;
 * what both use (record loads, the records kernel, status checks) is gf_cuda_common.cuh.
 *
 * The maths is gf_math.h, the same header the CPU loops use: a record per Gaussian
 * (mean, weight of channel 0, folded whitening factor M', cutoff threshold) and the
 * pair functions.  Every reduction runs in a fixed order (no atomics), so results are
 * bitwise identical from run to run on one device, whatever
 * torch.use_deterministic_algorithms says.  Kernels never allocate: the caller passes
 * a workspace of gf_cuda_workspace_bytes() (records, then the backward's partial sums).
 *
 * Stages (each one launch), with g_bn the pair's masked value exp(-q/2), G = grad_out
 * and t_bn = sum_c G[b, c] w[n, c]:
 *   records             one thread per Gaussian: gf_record_init
 *   forward             out[b, c] = sum_n w[n, c] g_bn
 *   backward_points     grad_x[b] = -2 ln2 sum_n t_bn (g M'^T u')_bn
 *   backward_gaussians  per chunk of points, the partial sums of every Gaussian: the 9
 *                       geometric sums (t g u', t g u'u'^T) and C weight sums
 *                       (sum_b G[b, c] g_bn)
 *   finalize            sum of the chunks in double; chain rule to grad_means and
 *                       grad_cov (gf_gaussian_vjp_store); grad_weights
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
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gf_cuda_common.cuh"

namespace {

constexpr int kMaxWarps = 8;

/* Copy records [first, first + count) (count <= 32) into a warp's shared buffer. */
template <typename T>
__device__ __forceinline__ void stage_records(const typename Types<T>::rec *records,
                                              int64_t first, int count,
                                              typename Types<T>::rec *buf, int lane) {
    constexpr int kVecs = sizeof(typename Types<T>::rec) / 16;
    const uint4 *src = reinterpret_cast<const uint4 *>(records + first);
    uint4 *dst = reinterpret_cast<uint4 *>(buf);
    for (int k = lane; k < count * kVecs; k += kWarp) dst[k] = src[k];
}

/* Copy channels [c0, c0 + CB) of rows [first, first + count) (count <= 32) of an
 * [rows, C] array (weights or grad_out, strided) into a warp's shared buffer [32][CB],
 * row-major; channels past C are 0.  Consecutive lanes read consecutive channels of a
 * row, so dense rows load coalesced. */
template <typename T, int CB>
__device__ __forceinline__ void stage_channels(const T *src, const int64_t stride[2],
                                               int64_t num_channels, int64_t first, int count,
                                               int64_t c0, T *buf, int lane) {
    for (int k = lane; k < kWarp * CB; k += kWarp) {
        const int j = k / CB, c = k % CB;
        buf[k] = (j < count && c0 + c < num_channels)
                     ? src[(first + j) * stride[0] + (c0 + c) * stride[1]]
                     : T(0);
    }
}

/* The range [begin, end) of part `i` when `total` is split into `parts` near-equal parts. */
__device__ __forceinline__ void split_range(int64_t total, int64_t parts, int64_t i,
                                            int64_t &begin, int64_t &end) {
    begin = total * i / parts;
    end = total * (i + 1) / parts;
}

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
    points_kernel(gf_params p, const typename Types<T>::rec *records) {
    using rec_t = typename Types<T>::rec;
    constexpr int kAcc = kGradX ? 3 : CB; /* accumulators per point */
    extern __shared__ __align__(16) unsigned char smem[];
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
                     T *partial) {
    using rec_t = typename Types<T>::rec;
    extern __shared__ __align__(16) unsigned char smem[];
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
    finalize_kernel(gf_params p, const T *partial, int64_t num_chunks) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t n_gauss = p.num_gaussians;
    if (n >= n_gauss) return;
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

/* ---- launch plan ---------------------------------------------------------------------
 * Chosen from the problem size and the multiprocessor count; the same inputs always
 * give the same plan, so the workspace size and the summation order are reproducible.
 * GAUSSFIELD_CUDA_CONFIG ("points_r=8,points_warps=8,gauss_k=2,gauss_warps=8,chunks=4,
 * channel_block=8", any subset) overrides the heuristic; the benchmark uses it to sweep
 * configurations.
 *
 * Channels (C > 1).  CB = 4 for C <= 4 (with 8, half of every block would be padding),
 * else 8: one exponential per 8 channels.  Register blocking shrinks as CB grows, so
 * that a thread keeps at most 16 accumulators (R * CB <= 16: R <= 4 with CB = 4, R <= 2
 * with CB = 8; backward_points holds as many G values beside its 3 R accumulators) and
 * at most 8 weights and 8 weight sums (K * CB <= 8: K <= 2 with CB = 4, K = 1 with
 * CB = 8); an override beyond these bounds is clamped to them.  The forward has
 * ceil(C / CB) blocks per block of points, so its R is chosen for that many blocks;
 * backward_points and backward_gaussians loop over the channel blocks in the thread and
 * keep the one-channel rules.  One channel: CB = 1, and the heuristic is the original.
 */
struct Plan {
    int channel_block = 1;  /* CB: 1 (one channel), 4 or 8 */
    int points_r = 1;       /* points per thread: 1, 2, 4, 8, with R * CB <= 16 */
    int points_warps = 8;   /* warps splitting the Gaussians in forward / backward_points */
    int gauss_k = 1;        /* Gaussians per thread in backward_gaussians: 1, 2, 4, K * CB <= 8 */
    int gauss_warps = 8;    /* warps splitting the points in backward_gaussians */
    int64_t chunks = 1;     /* point chunks (grid.y) in backward_gaussians */
};

constexpr int kMaxAccumulators = 16; /* R * CB */
constexpr int kMaxChannelSums = 8;   /* K * CB */

int parse_override(const char *spec, const char *key, int fallback) {
    if (!spec) return fallback;
    const char *hit = std::strstr(spec, key);
    if (!hit || hit[std::strlen(key)] != '=') return fallback;
    const int v = std::atoi(hit + std::strlen(key) + 1);
    return v > 0 ? v : fallback;
}

/* The plan of gf_cuda_forward (backward = false) or gf_cuda_backward (true). */
Plan make_plan(const gf_params &p, bool backward, int sm_count) {
    const int64_t B = p.num_points, N = p.num_gaussians, C = p.num_channels;
    const char *spec = std::getenv("GAUSSFIELD_CUDA_CONFIG");
    Plan plan;
    if (C > 1) {
        plan.channel_block = C <= 4 ? 4 : 8;
        const int cb = parse_override(spec, "channel_block", plan.channel_block);
        if (cb == 4 || cb == 8) plan.channel_block = cb;
    }
    const int CB = plan.channel_block;
    /* Enough blocks of points for two per multiprocessor before asking for more
     * points per thread (register blocking amortises the record loads). */
    const int64_t want_blocks = 2 * int64_t(sm_count);
    const int64_t blocks_per_point_block = backward ? 1 : channel_blocks(C, CB);
    plan.points_r = 1;
    for (int r : {8, 4, 2}) {
        if (r * CB <= kMaxAccumulators &&
            ceil_div(B, int64_t(kWarp) * r) * blocks_per_point_block >= want_blocks) {
            plan.points_r = r;
            break;
        }
    }
    /* Each warp should see at least a couple of staged batches of Gaussians. */
    plan.points_warps = int(std::max<int64_t>(1, std::min<int64_t>(8, ceil_div(N, 64))));
    plan.gauss_k =
        2 * CB <= kMaxChannelSums && ceil_div(N, int64_t(kWarp) * 2) >= want_blocks ? 2 : 1;
    plan.gauss_warps = int(std::max<int64_t>(1, std::min<int64_t>(8, ceil_div(B, 64))));
    /* Chunks of points until about four blocks per multiprocessor, keeping at least
     * four staged batches per warp per chunk.  Bounded by a constant, so the partial
     * sums stay O(N (9 + C)). */
    const int64_t gauss_blocks = ceil_div(N, int64_t(kWarp) * plan.gauss_k);
    const int64_t max_chunks = std::max<int64_t>(1, B / (int64_t(plan.gauss_warps) * kWarp * 4));
    plan.chunks = std::max<int64_t>(
        1, std::min<int64_t>(ceil_div(4 * int64_t(sm_count), gauss_blocks), max_chunks));

    plan.points_r = parse_override(spec, "points_r", plan.points_r);
    plan.points_warps = std::min(kMaxWarps, parse_override(spec, "points_warps", plan.points_warps));
    plan.gauss_k = parse_override(spec, "gauss_k", plan.gauss_k);
    plan.gauss_warps = std::min(kMaxWarps, parse_override(spec, "gauss_warps", plan.gauss_warps));
    plan.chunks = parse_override(spec, "chunks", int(plan.chunks));
    plan.chunks = std::min<int64_t>(plan.chunks, 65535); /* grid.y limit */
    if (plan.points_r != 1 && plan.points_r != 2 && plan.points_r != 4 && plan.points_r != 8)
        plan.points_r = 1;
    while (plan.points_r * CB > kMaxAccumulators) plan.points_r /= 2;
    if (plan.gauss_k != 1 && plan.gauss_k != 2 && plan.gauss_k != 4) plan.gauss_k = 1;
    while (plan.gauss_k * CB > kMaxChannelSums) plan.gauss_k /= 2;
    return plan;
}

/* Byte layout of the workspace: records, then (backward) the partial sums,
 * [chunks][9 + C][N]. */
struct Layout {
    size_t records = 0;  /* offset 0 */
    size_t partial = 0;  /* offset of the partial sums */
    size_t total = 0;
};

Layout make_layout(const gf_params &p, const Plan &plan, bool backward) {
    Layout l;
    const size_t elem = p.dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.partial = align256(gf_records_bytes(p.dtype, p.num_gaussians));
    l.total = l.partial;
    const size_t rows = GF_NUM_SUMS + size_t(p.num_channels);
    if (backward)
        l.total += align256(size_t(plan.chunks) * rows * size_t(p.num_gaussians) * elem);
    return l;
}

gf_status sm_count_of_current_device(int *sm_count, int *cuda_error) {
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(sm_count, cudaDevAttrMultiProcessorCount, device);
    return cuda_status(e, cuda_error);
}

template <typename T, int R, int CB, bool kGradX, bool kCut>
void launch_points_kernel(const gf_params &p, const typename Types<T>::rec *records, dim3 grid,
                          int warps, cudaStream_t stream) {
    static_assert(R * CB <= kMaxAccumulators, "register blocking past the plan's bound");
    static_assert(points_smem_bytes<T, R, CB, kGradX>(kMaxWarps) <= kMaxSmem,
                  "points_kernel needs more shared memory than a launch gets by default");
    warps = fit_warps<points_kernel<T, R, CB, kGradX, kCut>>(warps,
                      [](int w) { return points_smem_bytes<T, R, CB, kGradX>(w); });
    if (warps < 1) warps = 1;  /* fits nowhere: the launch reports the error */
    points_kernel<T, R, CB, kGradX, kCut>
        <<<grid, warps * kWarp, points_smem_bytes<T, R, CB, kGradX>(warps), stream>>>(p, records);
}

/* The R of the plan, among those that R * CB <= 16 allows. */
template <typename T, int CB, bool kGradX, bool kCut>
void launch_points_cb(const gf_params &p, const Plan &plan, const typename Types<T>::rec *records,
                      dim3 grid, cudaStream_t stream) {
    const int R = plan.points_r, warps = plan.points_warps;
    if constexpr (8 * CB <= kMaxAccumulators) {
        if (R == 8) return launch_points_kernel<T, 8, CB, kGradX, kCut>(p, records, grid, warps, stream);
    }
    if constexpr (4 * CB <= kMaxAccumulators) {
        if (R == 4) return launch_points_kernel<T, 4, CB, kGradX, kCut>(p, records, grid, warps, stream);
    }
    if (R == 2) return launch_points_kernel<T, 2, CB, kGradX, kCut>(p, records, grid, warps, stream);
    launch_points_kernel<T, 1, CB, kGradX, kCut>(p, records, grid, warps, stream);
}

template <typename T, bool kGradX>
gf_status launch_points(const gf_params &p, const Plan &plan,
                        const typename Types<T>::rec *records, cudaStream_t stream,
                        int *cuda_error) {
    const int CB = plan.channel_block;
    const int64_t point_blocks = ceil_div(p.num_points, int64_t(kWarp) * plan.points_r);
    /* the forward's grid holds every (point block, channel block) pair */
    const int64_t per_point_block = kGradX ? 1 : channel_blocks(p.num_channels, CB);
    if (point_blocks > kMaxGridX / per_point_block) return GF_ERR_BAD_SIZE;
    const dim3 grid(unsigned(point_blocks * per_point_block));
    /* without a cutoff, kernels without its test (the same bits, one less compare and
     * select per pair) */
    const bool cut = gf_has_cutoff(p.cutoff);
    switch (CB) {
    case 8:
        cut ? launch_points_cb<T, 8, kGradX, true>(p, plan, records, grid, stream)
            : launch_points_cb<T, 8, kGradX, false>(p, plan, records, grid, stream);
        break;
    case 4:
        cut ? launch_points_cb<T, 4, kGradX, true>(p, plan, records, grid, stream)
            : launch_points_cb<T, 4, kGradX, false>(p, plan, records, grid, stream);
        break;
    default:
        cut ? launch_points_cb<T, 1, kGradX, true>(p, plan, records, grid, stream)
            : launch_points_cb<T, 1, kGradX, false>(p, plan, records, grid, stream);
        break;
    }
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

template <typename T, int K, int CB, bool kCut>
void launch_gaussians_kernel(const gf_params &p, const typename Types<T>::rec *records,
                             dim3 grid, int warps, int64_t chunks, T *partial,
                             cudaStream_t stream) {
    static_assert(K * CB <= kMaxChannelSums, "register blocking past the plan's bound");
    static_assert(gaussians_smem_bytes<T, K, CB>(kMaxWarps) <= kMaxSmem,
                  "gaussians_kernel needs more shared memory than a launch gets by default");
    warps = fit_warps<gaussians_kernel<T, K, CB, kCut>>(warps,
                      [](int w) { return gaussians_smem_bytes<T, K, CB>(w); });
    if (warps < 1) warps = 1;  /* fits nowhere: the launch reports the error */
    gaussians_kernel<T, K, CB, kCut><<<grid, warps * kWarp, gaussians_smem_bytes<T, K, CB>(warps),
                                 stream>>>(p, records, chunks, partial);
}

/* The K of the plan, among those that K * CB <= 8 allows. */
template <typename T, int CB, bool kCut>
void launch_gaussians_cb(const gf_params &p, const Plan &plan,
                         const typename Types<T>::rec *records, dim3 grid, T *partial,
                         cudaStream_t stream) {
    const int K = plan.gauss_k, warps = plan.gauss_warps;
    if constexpr (4 * CB <= kMaxChannelSums) {
        if (K == 4)
            return launch_gaussians_kernel<T, 4, CB, kCut>(p, records, grid, warps, plan.chunks,
                                                     partial, stream);
    }
    if constexpr (2 * CB <= kMaxChannelSums) {
        if (K == 2)
            return launch_gaussians_kernel<T, 2, CB, kCut>(p, records, grid, warps, plan.chunks,
                                                     partial, stream);
    }
    launch_gaussians_kernel<T, 1, CB, kCut>(p, records, grid, warps, plan.chunks, partial, stream);
}

template <typename T>
gf_status launch_gaussians(const gf_params &p, const Plan &plan,
                           const typename Types<T>::rec *records, T *partial,
                           cudaStream_t stream, int *cuda_error) {
    const int K = plan.gauss_k;
    if (!grid_fits(ceil_div(p.num_gaussians, int64_t(kWarp) * K))) return GF_ERR_BAD_SIZE;
    const dim3 grid(unsigned(ceil_div(p.num_gaussians, int64_t(kWarp) * K)),
                    unsigned(plan.chunks));
    const bool cut = gf_has_cutoff(p.cutoff);
    switch (plan.channel_block) {
    case 8:
        cut ? launch_gaussians_cb<T, 8, true>(p, plan, records, grid, partial, stream)
            : launch_gaussians_cb<T, 8, false>(p, plan, records, grid, partial, stream);
        break;
    case 4:
        cut ? launch_gaussians_cb<T, 4, true>(p, plan, records, grid, partial, stream)
            : launch_gaussians_cb<T, 4, false>(p, plan, records, grid, partial, stream);
        break;
    default:
        cut ? launch_gaussians_cb<T, 1, true>(p, plan, records, grid, partial, stream)
            : launch_gaussians_cb<T, 1, false>(p, plan, records, grid, partial, stream);
        break;
    }
    GF_LAUNCH_CHECK(cuda_error);
    const int threads = 256;
    finalize_kernel<T><<<unsigned(ceil_div(p.num_gaussians, threads)), threads, 0, stream>>>(
        p, partial, plan.chunks);
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

template <typename T>
gf_status run_forward(const gf_params &p, const Plan &plan, const Layout &layout,
                      unsigned char *ws, cudaStream_t stream, int *cuda_error) {
    if (p.num_gaussians == 0) return zero_outputs<T>(p, false, stream, cuda_error);
    auto *records = reinterpret_cast<typename Types<T>::rec *>(ws + layout.records);
    gf_status st = launch_records<T>(p, records, stream, cuda_error);
    if (st != GF_OK) return st;
    return launch_points<T, false>(p, plan, records, stream, cuda_error);
}

template <typename T>
gf_status run_backward(const gf_params &p, const Plan &plan, const Layout &layout,
                       unsigned char *ws, cudaStream_t stream, int *cuda_error) {
    const bool want_gaussians = p.grad_means || p.grad_cov || p.grad_weights;
    const int64_t B = p.num_points, N = p.num_gaussians;
    /* empty sums: every wanted gradient is 0 */
    if (N == 0 || B == 0) return zero_outputs<T>(p, true, stream, cuda_error);
    if (!p.grad_x && !want_gaussians) return GF_OK;
    auto *records = reinterpret_cast<typename Types<T>::rec *>(ws + layout.records);
    gf_status st = launch_records<T>(p, records, stream, cuda_error);
    if (st != GF_OK) return st;
    if (p.grad_x) {
        st = launch_points<T, true>(p, plan, records, stream, cuda_error);
        if (st != GF_OK) return st;
    }
    if (want_gaussians) {
        T *partial = reinterpret_cast<T *>(ws + layout.partial);
        st = launch_gaussians<T>(p, plan, records, partial, stream, cuda_error);
    }
    return st;
}

}  // namespace

extern "C" {

gf_status gf_cuda_workspace_bytes(const gf_params *p, int backward, size_t *bytes,
                                  int *cuda_error) {
    gf_status st = check_problem(p, backward != 0);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    int sm_count = 0;
    if ((st = sm_count_of_current_device(&sm_count, cuda_error)) != GF_OK) return st;
    const Plan plan = make_plan(*p, backward != 0, sm_count);
    *bytes = make_layout(*p, plan, backward != 0).total;
    return GF_OK;
}

static gf_status dispatch(const gf_params *p, bool backward, void *workspace,
                          size_t workspace_bytes, void *stream, int *cuda_error) {
    gf_status st = check_problem(p, backward);
    if (st != GF_OK) return st;
    int sm_count = 0;
    if ((st = sm_count_of_current_device(&sm_count, cuda_error)) != GF_OK) return st;
    const Plan plan = make_plan(*p, backward, sm_count);
    const Layout layout = make_layout(*p, plan, backward);
    if (workspace_bytes < layout.total) return GF_ERR_SMALL_WORKSPACE;
    if (layout.total > 0 && !workspace) return GF_ERR_NULL_POINTER;
    if (!backward && p->num_points == 0) return GF_OK;
    auto *ws = static_cast<unsigned char *>(workspace);
    auto s = static_cast<cudaStream_t>(stream);
    if (p->dtype == GF_FLOAT32)
        return backward ? run_backward<float>(*p, plan, layout, ws, s, cuda_error)
                        : run_forward<float>(*p, plan, layout, ws, s, cuda_error);
    return backward ? run_backward<double>(*p, plan, layout, ws, s, cuda_error)
                    : run_forward<double>(*p, plan, layout, ws, s, cuda_error);
}

gf_status gf_cuda_forward(const gf_params *p, void *workspace, size_t workspace_bytes,
                          void *stream, int *cuda_error) {
    return dispatch(p, false, workspace, workspace_bytes, stream, cuda_error);
}

gf_status gf_cuda_backward(const gf_params *p, void *workspace, size_t workspace_bytes,
                           void *stream, int *cuda_error) {
    return dispatch(p, true, workspace, workspace_bytes, stream, cuda_error);
}

const char *gf_cuda_error_string(int cuda_error) {
    return cudaGetErrorString(static_cast<cudaError_t>(cuda_error));
}

}  // extern "C"
