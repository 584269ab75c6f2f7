/*
 * gf_cuda.cu - the CUDA half of the C API (gaussfield.h): kernels and their launchers.
 *
 * The maths is gf_math.h, the same header the CPU loops use.  Every reduction runs in
 * a fixed order (no atomics), so results are bitwise identical from run to run on one
 * device, whatever torch.use_deterministic_algorithms says.  Kernels never allocate:
 * the caller passes a workspace of gf_cuda_workspace_bytes().
 *
 * Stages (each one launch):
 *   records             one thread per Gaussian: mean, weight, folded inverse covariance
 *   forward             f(x) for every point
 *   backward_points     grad_x
 *   backward_gaussians  per-chunk partial sums of the 10 pair terms of every Gaussian
 *   finalize            sum of the chunks, chain rule to grad_means / grad_cov / grad_weights
 */
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gaussfield.h"
#include "gf_cpu_internal.h"
#include "gf_math.h"

namespace {

template <typename T>
struct Types;
template <>
struct Types<float> {
    using rec = gf_record_f32;
    using terms = gf_pair_terms_f32;
    using vec3 = gf_vec3_f32;
};
template <>
struct Types<double> {
    using rec = gf_record_f64;
    using terms = gf_pair_terms_f64;
    using vec3 = gf_vec3_f64;
};

constexpr int kWarp = 32;
constexpr int kMaxWarps = 8;

/* A record copied into registers with 16-byte loads (from shared or global memory). */
template <typename T>
__device__ __forceinline__ typename Types<T>::rec load_record(const typename Types<T>::rec *p) {
    union {
        typename Types<T>::rec r;
        uint4 v[sizeof(typename Types<T>::rec) / 16];
    } u;
    const uint4 *src = reinterpret_cast<const uint4 *>(p);
#pragma unroll
    for (int i = 0; i < int(sizeof(u.v) / 16); ++i) u.v[i] = src[i];
    return u.r;
}

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

/* Point b of x (strided), or 0 past the end. */
template <typename T>
__device__ __forceinline__ void load_point(const gf_params &p, int64_t b, T &x, T &y, T &z) {
    if (b < p.num_points) {
        const T *row = static_cast<const T *>(p.x) + b * p.x_stride[0];
        x = row[0];
        y = row[p.x_stride[1]];
        z = row[2 * p.x_stride[1]];
    } else {
        x = y = z = T(0);
    }
}

/* The range [begin, end) of part `i` when `total` is split into `parts` near-equal parts. */
__device__ __forceinline__ void split_range(int64_t total, int64_t parts, int64_t i,
                                            int64_t &begin, int64_t &end) {
    begin = total * i / parts;
    end = total * (i + 1) / parts;
}

/* ---- records: one thread per Gaussian ------------------------------------------ */
template <typename T>
__global__ void __launch_bounds__(256)
    records_kernel(gf_params p, typename Types<T>::rec *records) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= p.num_gaussians) return;
    const T *means = static_cast<const T *>(p.means);
    const T *cov = static_cast<const T *>(p.cov);
    const T *weights = static_cast<const T *>(p.weights);
    gf_record_init(records + n, means + n * p.means_stride[0], p.means_stride[1],
                   cov + n * p.cov_stride[0], p.cov_stride[1], weights[n * p.weights_stride],
                   p.cov_mode, p.eps);
}

/*
 * ---- forward and backward_points --------------------------------------------------
 * Decomposition: block i owns points [32 R i, 32 R (i + 1)); lane l of every warp holds
 * points 32 R i + l + 32 r (r < R) in registers.  The block's W warps split the
 * Gaussians into W contiguous ranges; a warp walks its range 32 records at a time,
 * staged through its own slice of shared memory (one coalesced 16-byte load per lane
 * per vector, then broadcast reads), so the loop needs no block-wide barrier.  At the
 * end each point's W partial sums are added in warp order through shared memory.
 */
template <typename T, int R, bool kGradX>
__global__ void __launch_bounds__(kMaxWarps *kWarp)
    points_kernel(gf_params p, const typename Types<T>::rec *records) {
    using rec_t = typename Types<T>::rec;
    extern __shared__ __align__(16) unsigned char smem[];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int num_warps = blockDim.x / kWarp;
    const int64_t first_point = int64_t(blockIdx.x) * (kWarp * R);

    T px[R], py[R], pz[R];
    T acc[R][kGradX ? 3 : 1];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        load_point<T>(p, first_point + lane + kWarp * r, px[r], py[r], pz[r]);
#pragma unroll
        for (int c = 0; c < (kGradX ? 3 : 1); ++c) acc[r][c] = T(0);
    }

    rec_t *buf = reinterpret_cast<rec_t *>(smem) + warp * kWarp;
    int64_t g_begin, g_end;
    split_range(p.num_gaussians, num_warps, warp, g_begin, g_end);
    for (int64_t g0 = g_begin; g0 < g_end; g0 += kWarp) {
        const int count = int(min(int64_t(kWarp), g_end - g0));
        __syncwarp();
        stage_records<T>(records, g0, count, buf, lane);
        __syncwarp();
#pragma unroll 2
        for (int j = 0; j < count; ++j) {
            const rec_t r = load_record<T>(buf + j);
#pragma unroll
            for (int k = 0; k < R; ++k) {
                if (kGradX) {
                    const typename Types<T>::vec3 v = gf_pair_vjp_point(&r, px[k], py[k], pz[k]);
                    acc[k][0] += v.x;
                    acc[k][1] += v.y;
                    acc[k][2] += v.z;
                } else {
                    acc[k][0] += gf_pair_value(&r, px[k], py[k], pz[k]);
                }
            }
        }
    }

    /* Cross-warp sum in warp order; the staging buffers are reused for it. */
    constexpr int C = kGradX ? 3 : 1;
    __syncthreads();
    T *red = reinterpret_cast<T *>(smem); /* [W][C][32 R] */
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < C; ++c)
            red[(warp * C + c) * (kWarp * R) + lane + kWarp * r] = acc[r][c];
    __syncthreads();
    for (int t = threadIdx.x; t < kWarp * R; t += blockDim.x) {
        const int64_t b = first_point + t;
        if (b >= p.num_points) continue;
        T sum[C];
#pragma unroll
        for (int c = 0; c < C; ++c) sum[c] = T(0);
        for (int w = 0; w < num_warps; ++w)
#pragma unroll
            for (int c = 0; c < C; ++c) sum[c] += red[(w * C + c) * (kWarp * R) + t];
        if (kGradX) {
            const T g = static_cast<const T *>(p.grad_out)[b * p.grad_out_stride];
            const T scale = T(2.0 * GF_LN2) * g;
            T *out = static_cast<T *>(p.grad_x) + 3 * b;
            out[0] = scale * sum[0];
            out[1] = scale * sum[1];
            out[2] = scale * sum[2];
        } else {
            static_cast<T *>(p.out)[b] = sum[0];
        }
    }
}

/*
 * ---- backward_gaussians ------------------------------------------------------------
 * Decomposition: blockIdx.x owns Gaussians [32 K i, 32 K (i + 1)), lane l holding
 * Gaussians 32 K i + l + 32 k (k < K), their records and 10 sums each in registers.
 * blockIdx.y is a chunk of the points; the block's W warps split the chunk, each
 * staging 32 points (x, y, z, grad_out) at a time in its own shared slice and reading
 * them back as broadcasts.  The W partial sums are added in warp order, and the block
 * writes its chunk's sums to partial[chunk][10][N]; finalize adds the chunks in order.
 */
template <typename T>
struct alignas(16) StagedPoint {
    T x, y, z, g;
};

template <typename T, int K>
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

    StagedPoint<T> *buf = reinterpret_cast<StagedPoint<T> *>(smem) + warp * kWarp;
    const T *grad_out = static_cast<const T *>(p.grad_out);
    for (int64_t b0 = b_begin; b0 < b_end; b0 += kWarp) {
        const int count = int(min(int64_t(kWarp), b_end - b0));
        __syncwarp();
        if (lane < count) {
            StagedPoint<T> sp;
            load_point<T>(p, b0 + lane, sp.x, sp.y, sp.z);
            sp.g = grad_out[(b0 + lane) * p.grad_out_stride];
            buf[lane] = sp;
        }
        __syncwarp();
#pragma unroll 2
        for (int j = 0; j < count; ++j) {
            const StagedPoint<T> sp = buf[j];
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const typename Types<T>::terms c =
                    gf_pair_vjp_gaussian(&rec[k], sp.x, sp.y, sp.z, sp.g);
                gf_pair_terms_add(sums[k], &c);
            }
        }
    }

    /* Cross-warp sum in warp order, one sum index at a time to bound shared memory. */
    T *red = reinterpret_cast<T *>(smem); /* [W][32 K] */
#pragma unroll
    for (int s = 0; s < GF_NUM_SUMS; ++s) {
        __syncthreads();
#pragma unroll
        for (int k = 0; k < K; ++k) red[warp * (kWarp * K) + lane + kWarp * k] = sums[k][s];
        __syncthreads();
        for (int t = threadIdx.x; t < kWarp * K; t += blockDim.x) {
            const int64_t n = first_gaussian + t;
            if (n >= n_gauss) continue;
            T total = T(0);
            for (int w = 0; w < num_warps; ++w) total += red[w * (kWarp * K) + t];
            partial[(int64_t(blockIdx.y) * GF_NUM_SUMS + s) * n_gauss + n] = total;
        }
    }
}

/* ---- finalize: one thread per Gaussian ------------------------------------------- */
template <typename T>
__global__ void __launch_bounds__(256)
    finalize_kernel(gf_params p, const T *partial, int64_t num_chunks) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t n_gauss = p.num_gaussians;
    if (n >= n_gauss) return;
    double sums[GF_NUM_SUMS];
#pragma unroll
    for (int s = 0; s < GF_NUM_SUMS; ++s) {
        double total = 0.0;
        for (int64_t c = 0; c < num_chunks; ++c)
            total += double(partial[(c * GF_NUM_SUMS + s) * n_gauss + n]);
        sums[s] = total;
    }
    const T *cov = static_cast<const T *>(p.cov);
    const T *weights = static_cast<const T *>(p.weights);
    const int ncov = int(p.cov_mode);
    T *gm = static_cast<T *>(p.grad_means);
    T *gc = static_cast<T *>(p.grad_cov);
    T *gw = static_cast<T *>(p.grad_weights);
    gf_gaussian_vjp_store(sums, cov + n * p.cov_stride[0], p.cov_stride[1],
                          weights[n * p.weights_stride], p.cov_mode, p.eps,
                          gm ? gm + 3 * n : nullptr, gc ? gc + ncov * n : nullptr,
                          gw ? gw + n : nullptr);
}

/* ---- launch plan ---------------------------------------------------------------------
 * Chosen from the problem size and the multiprocessor count; the same inputs always
 * give the same plan, so the workspace size and the summation order are reproducible.
 * GAUSSFIELD_CUDA_CONFIG ("points_r=8,points_warps=8,gauss_k=2,gauss_warps=8,chunks=4",
 * any subset) overrides the heuristic; the benchmark uses it to sweep configurations.
 */
struct Plan {
    int points_r = 1;       /* points per thread: 1, 2, 4, 8 */
    int points_warps = 8;   /* warps splitting the Gaussians in forward / backward_points */
    int gauss_k = 1;        /* Gaussians per thread in backward_gaussians: 1, 2, 4 */
    int gauss_warps = 8;    /* warps splitting the points in backward_gaussians */
    int64_t chunks = 1;     /* point chunks (grid.y) in backward_gaussians */
};

int parse_override(const char *spec, const char *key, int fallback) {
    if (!spec) return fallback;
    const char *hit = std::strstr(spec, key);
    if (!hit || hit[std::strlen(key)] != '=') return fallback;
    const int v = std::atoi(hit + std::strlen(key) + 1);
    return v > 0 ? v : fallback;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Plan make_plan(int64_t B, int64_t N, int sm_count) {
    Plan plan;
    /* Enough blocks of points for two per multiprocessor before asking for more
     * points per thread (register blocking amortises the record loads). */
    const int64_t want_blocks = 2 * int64_t(sm_count);
    plan.points_r = 1;
    for (int r : {8, 4, 2}) {
        if (ceil_div(B, int64_t(kWarp) * r) >= want_blocks) {
            plan.points_r = r;
            break;
        }
    }
    /* Each warp should see at least a couple of staged batches of Gaussians. */
    plan.points_warps = int(std::max<int64_t>(1, std::min<int64_t>(8, ceil_div(N, 64))));
    plan.gauss_k = ceil_div(N, int64_t(kWarp) * 2) >= want_blocks ? 2 : 1;
    plan.gauss_warps = int(std::max<int64_t>(1, std::min<int64_t>(8, ceil_div(B, 64))));
    /* Chunks of points until about four blocks per multiprocessor, keeping at least
     * four staged batches per warp per chunk.  Bounded by a constant, so the partial
     * sums stay O(N). */
    const int64_t gauss_blocks = ceil_div(N, int64_t(kWarp) * plan.gauss_k);
    const int64_t max_chunks = std::max<int64_t>(1, B / (int64_t(plan.gauss_warps) * kWarp * 4));
    plan.chunks = std::max<int64_t>(
        1, std::min<int64_t>(ceil_div(4 * int64_t(sm_count), gauss_blocks), max_chunks));

    const char *spec = std::getenv("GAUSSFIELD_CUDA_CONFIG");
    plan.points_r = parse_override(spec, "points_r", plan.points_r);
    plan.points_warps = std::min(kMaxWarps, parse_override(spec, "points_warps", plan.points_warps));
    plan.gauss_k = parse_override(spec, "gauss_k", plan.gauss_k);
    plan.gauss_warps = std::min(kMaxWarps, parse_override(spec, "gauss_warps", plan.gauss_warps));
    plan.chunks = parse_override(spec, "chunks", int(plan.chunks));
    plan.chunks = std::min<int64_t>(plan.chunks, 65535); /* grid.y limit */
    if (plan.points_r != 1 && plan.points_r != 2 && plan.points_r != 4 && plan.points_r != 8)
        plan.points_r = 1;
    if (plan.gauss_k != 1 && plan.gauss_k != 2 && plan.gauss_k != 4) plan.gauss_k = 1;
    return plan;
}

/* Byte layout of the workspace: records, then (backward) the partial sums. */
struct Layout {
    size_t records = 0;  /* offset 0 */
    size_t partial = 0;  /* offset of the partial sums */
    size_t total = 0;
};

size_t align256(size_t v) { return (v + 255) & ~size_t(255); }

Layout make_layout(const gf_params &p, const Plan &plan, bool backward) {
    Layout l;
    const size_t elem = p.dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.partial = align256(gf_records_bytes(p.dtype, p.num_gaussians));
    l.total = l.partial;
    if (backward)
        l.total += align256(size_t(plan.chunks) * GF_NUM_SUMS * size_t(p.num_gaussians) * elem);
    return l;
}

gf_status cuda_status(cudaError_t e, int *cuda_error) {
    if (e == cudaSuccess) return GF_OK;
    if (cuda_error) *cuda_error = int(e);
    return GF_ERR_CUDA;
}

gf_status sm_count_of_current_device(int *sm_count, int *cuda_error) {
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(sm_count, cudaDevAttrMultiProcessorCount, device);
    return cuda_status(e, cuda_error);
}

#define GF_LAUNCH_CHECK(cuda_error)                                       \
    do {                                                                   \
        const gf_status st_ = cuda_status(cudaGetLastError(), cuda_error); \
        if (st_ != GF_OK) return st_;                                      \
    } while (0)

/* Blocks of a 1-D grid: CUDA allows up to 2^31 - 1 in x. */
bool grid_fits(int64_t blocks) { return blocks <= int64_t(0x7fffffff); }

template <typename T>
gf_status launch_records(const gf_params &p, typename Types<T>::rec *records,
                         cudaStream_t stream, int *cuda_error) {
    const int threads = 256;
    if (!grid_fits(ceil_div(p.num_gaussians, threads))) return GF_ERR_BAD_SIZE;
    const unsigned blocks = unsigned(ceil_div(p.num_gaussians, threads));
    records_kernel<T><<<blocks, threads, 0, stream>>>(p, records);
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

template <typename T, bool kGradX>
gf_status launch_points(const gf_params &p, const Plan &plan,
                        const typename Types<T>::rec *records, cudaStream_t stream,
                        int *cuda_error) {
    const int R = plan.points_r;
    const int warps = plan.points_warps;
    if (!grid_fits(ceil_div(p.num_points, int64_t(kWarp) * R))) return GF_ERR_BAD_SIZE;
    const unsigned blocks = unsigned(ceil_div(p.num_points, int64_t(kWarp) * R));
    const size_t staging = size_t(warps) * kWarp * sizeof(typename Types<T>::rec);
    const size_t reduction = size_t(warps) * (kGradX ? 3 : 1) * kWarp * R * sizeof(T);
    const size_t smem = staging > reduction ? staging : reduction;
    const dim3 grid(blocks), block(warps * kWarp);
    switch (R) {
    case 8: points_kernel<T, 8, kGradX><<<grid, block, smem, stream>>>(p, records); break;
    case 4: points_kernel<T, 4, kGradX><<<grid, block, smem, stream>>>(p, records); break;
    case 2: points_kernel<T, 2, kGradX><<<grid, block, smem, stream>>>(p, records); break;
    default: points_kernel<T, 1, kGradX><<<grid, block, smem, stream>>>(p, records); break;
    }
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

template <typename T>
gf_status launch_gaussians(const gf_params &p, const Plan &plan,
                           const typename Types<T>::rec *records, T *partial,
                           cudaStream_t stream, int *cuda_error) {
    const int K = plan.gauss_k;
    const int warps = plan.gauss_warps;
    if (!grid_fits(ceil_div(p.num_gaussians, int64_t(kWarp) * K))) return GF_ERR_BAD_SIZE;
    const dim3 grid(unsigned(ceil_div(p.num_gaussians, int64_t(kWarp) * K)),
                    unsigned(plan.chunks));
    const dim3 block(warps * kWarp);
    const size_t staging = size_t(warps) * kWarp * sizeof(StagedPoint<T>);
    const size_t reduction = size_t(warps) * kWarp * K * sizeof(T);
    const size_t smem = staging > reduction ? staging : reduction;
    switch (K) {
    case 4: gaussians_kernel<T, 4><<<grid, block, smem, stream>>>(p, records, plan.chunks, partial); break;
    case 2: gaussians_kernel<T, 2><<<grid, block, smem, stream>>>(p, records, plan.chunks, partial); break;
    default: gaussians_kernel<T, 1><<<grid, block, smem, stream>>>(p, records, plan.chunks, partial); break;
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
    if (p.num_gaussians == 0)
        return cuda_status(cudaMemsetAsync(p.out, 0, size_t(p.num_points) * sizeof(T), stream),
                           cuda_error);
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
    if (N == 0 || B == 0) {
        /* empty sums: every wanted gradient is 0 */
        void *outs[4] = {p.grad_x, p.grad_means, p.grad_cov, p.grad_weights};
        const int64_t sizes[4] = {3 * B, 3 * N, int64_t(p.cov_mode) * N, N};
        for (int i = 0; i < 4; ++i) {
            if (!outs[i]) continue;
            const gf_status st = cuda_status(
                cudaMemsetAsync(outs[i], 0, size_t(sizes[i]) * sizeof(T), stream), cuda_error);
            if (st != GF_OK) return st;
        }
        return GF_OK;
    }
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

gf_status check_problem(const gf_params *p, bool backward) {
    const gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    const bool points = p->num_points > 0, gaussians = p->num_gaussians > 0;
    if (points && !p->x) return GF_ERR_NULL_POINTER;
    if (gaussians && (!p->means || !p->cov || !p->weights)) return GF_ERR_NULL_POINTER;
    if (!backward) return (points && !p->out) ? GF_ERR_NULL_POINTER : GF_OK;
    if (points && !p->grad_out) return GF_ERR_NULL_POINTER;
    return GF_OK;
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
    const Plan plan = make_plan(p->num_points, p->num_gaussians, sm_count);
    *bytes = make_layout(*p, plan, backward != 0).total;
    return GF_OK;
}

static gf_status dispatch(const gf_params *p, bool backward, void *workspace,
                          size_t workspace_bytes, void *stream, int *cuda_error) {
    gf_status st = check_problem(p, backward);
    if (st != GF_OK) return st;
    int sm_count = 0;
    if ((st = sm_count_of_current_device(&sm_count, cuda_error)) != GF_OK) return st;
    const Plan plan = make_plan(p->num_points, p->num_gaussians, sm_count);
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
