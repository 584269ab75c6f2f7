/*
 * gf_cuda_common.cuh - what the CUDA files share (the dense kernels, gf_cuda.cu, and
 * the culled ones, gf_cuda_cull.cu): the record type per data type, record and channel
 * loads, the records kernel, the workspace alignment, and the status and launch checks
 * of the C API.  Everything here has internal linkage (an anonymous namespace), so each
 * .cu file gets its own copy of the kernels and no symbol crosses files.
 */
#ifndef GF_CUDA_COMMON_CUH
#define GF_CUDA_COMMON_CUH

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_math.h"

namespace {

template <typename T>
struct Types;
template <>
struct Types<float> {
    using rec = gf_record_f32;
    using terms = gf_pair_terms_f32;
    using point_terms = gf_point_terms_f32;
};
template <>
struct Types<double> {
    using rec = gf_record_f64;
    using terms = gf_pair_terms_f64;
    using point_terms = gf_point_terms_f64;
};

constexpr int kWarp = 32;
/* Dynamic shared memory a launch may ask for without opting in (cudaFuncSetAttribute). */
constexpr size_t kMaxSmem = 48 * 1024;
/* Blocks of a 1-D grid: CUDA allows up to 2^31 - 1 in x. */
constexpr int64_t kMaxGridX = 0x7fffffff;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

inline bool grid_fits(int64_t blocks) { return blocks <= kMaxGridX; }

/* The most warps (up to `want`) a block of `kernel` may have on the current device:
 * its registers (cudaFuncGetAttributes' maxThreadsPerBlock, which counts them on this
 * device) and its shared memory (static plus smem_bytes(warps) of dynamic) within the
 * device's per-block limits, read once per device and kernel.  0 when not even one warp
 * fits (the launch would fail; the caller reports it).  The plans' constants (up to 8
 * warps, under 48 KiB) fit every architecture CUDA 13 builds for; this keeps a launch
 * right on a device, or a JIT compilation from PTX, that grants less. */
template <auto Kernel, typename SmemFn>
int fit_warps(int want, SmemFn smem_bytes) {
    /* one cache per kernel (the template argument is the kernel itself) and device;
     * 0: not read yet */
    constexpr int kDevices = 64;
    static std::atomic<int> cached_threads[kDevices], cached_static[kDevices], cached_smem[kDevices];
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return want;  /* the launch reports it */
    const bool cacheable = device >= 0 && device < kDevices;
    int threads = cacheable ? cached_threads[device].load(std::memory_order_acquire) : 0;
    int static_smem = 0, smem = 0;
    if (threads > 0) {
        static_smem = cached_static[device].load(std::memory_order_relaxed);
        smem = cached_smem[device].load(std::memory_order_relaxed);
    } else {
        cudaFuncAttributes a;
        if (cudaFuncGetAttributes(&a, Kernel) != cudaSuccess ||
            cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlock, device) != cudaSuccess) {
            (void)cudaGetLastError();
            return want;
        }
        threads = a.maxThreadsPerBlock;
        static_smem = int(a.sharedSizeBytes);
        if (cacheable) {
            cached_static[device].store(static_smem, std::memory_order_relaxed);
            cached_smem[device].store(smem, std::memory_order_relaxed);
            cached_threads[device].store(threads, std::memory_order_release);
        }
    }
    int warps = want < threads / kWarp ? want : threads / kWarp;
    while (warps > 0 && size_t(static_smem) + smem_bytes(warps) > size_t(smem)) --warps;
    return warps;
}

/* Workspace sub-buffers start on 256-byte boundaries. */
inline size_t align256(size_t v) { return (v + 255) & ~size_t(255); }

/* Number of channel blocks: 1 for the one-channel path. */
__host__ __device__ __forceinline__ int64_t channel_blocks(int64_t num_channels, int cb) {
    return cb == 1 ? 1 : (num_channels + cb - 1) / cb;
}

/* A point as the kernels stage it: 16 bytes (float) or 32 (double), one vector load. */
template <typename T>
struct alignas(16) StagedPoint {
    T x, y, z, g; /* g: G[b] where one channel's grad_out rides along, else unused */
};

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

/* CB channel values copied into registers with 16-byte loads from shared memory
 * (a staged block of channels starts on a 16-byte boundary). */
template <typename T, int CB>
__device__ __forceinline__ void load_channels(const T *src, T (&dst)[CB]) {
    static_assert((CB * sizeof(T)) % 16 == 0, "a channel block is whole 16-byte vectors");
    union {
        T v[CB];
        uint4 q[CB * sizeof(T) / 16];
    } u;
    const uint4 *s = reinterpret_cast<const uint4 *>(src);
#pragma unroll
    for (int i = 0; i < int(CB * sizeof(T) / 16); ++i) u.q[i] = s[i];
#pragma unroll
    for (int c = 0; c < CB; ++c) dst[c] = u.v[c];
}

/* Channels [c0, c0 + CB) of row `row` of an [rows, C] array, 0 past C or past the last
 * row, straight into registers. */
template <typename T, int CB>
__device__ __forceinline__ void load_channels_global(const T *src, const int64_t stride[2],
                                                     int64_t num_rows, int64_t num_channels,
                                                     int64_t row, int64_t c0, T (&dst)[CB]) {
#pragma unroll
    for (int c = 0; c < CB; ++c)
        dst[c] = (row < num_rows && c0 + c < num_channels)
                     ? src[row * stride[0] + (c0 + c) * stride[1]]
                     : T(0);
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

/* The sum of v over the warp's lanes by a fixed tree; lane 0 holds it. */
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
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
                   cov + n * p.cov_stride[0], p.cov_stride[1],
                   weights[n * p.weights_stride[0]], p.cov_mode, p.eps, p.cutoff);
}

inline gf_status cuda_status(cudaError_t e, int *cuda_error) {
    if (e == cudaSuccess) return GF_OK;
    if (cuda_error) *cuda_error = int(e);
    return GF_ERR_CUDA;
}

#define GF_LAUNCH_CHECK(cuda_error)                                       \
    do {                                                                   \
        const gf_status st_ = cuda_status(cudaGetLastError(), cuda_error); \
        if (st_ != GF_OK) return st_;                                      \
    } while (0)

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

/* The argument checks of a forward (backward = false) or backward problem: gf_params'
 * common checks and the pointers that the inputs of a non-empty problem need. */
inline gf_status check_problem(const gf_params *p, bool backward) {
    const gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    const bool points = p->num_points > 0, gaussians = p->num_gaussians > 0;
    if (points && !p->x) return GF_ERR_NULL_POINTER;
    if (gaussians && (!p->means || !p->cov || !p->weights)) return GF_ERR_NULL_POINTER;
    if (!backward) return (points && !p->out) ? GF_ERR_NULL_POINTER : GF_OK;
    if (points && !p->grad_out) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

/* Zeros in the wanted outputs of an empty problem (every sum is empty). */
template <typename T>
gf_status zero_outputs(const gf_params &p, bool backward, cudaStream_t stream,
                       int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians, C = p.num_channels;
    void *outs[5] = {backward ? nullptr : p.out, backward ? p.grad_x : nullptr,
                     backward ? p.grad_means : nullptr, backward ? p.grad_cov : nullptr,
                     backward ? p.grad_weights : nullptr};
    const int64_t sizes[5] = {B * C, 3 * B, 3 * N, int64_t(gf_cov_params(p.cov_mode)) * N, N * C};
    for (int i = 0; i < 5; ++i) {
        if (!outs[i] || sizes[i] == 0) continue;
        const gf_status st = cuda_status(
            cudaMemsetAsync(outs[i], 0, size_t(sizes[i]) * sizeof(T), stream), cuda_error);
        if (st != GF_OK) return st;
    }
    return GF_OK;
}

}  // namespace

#endif /* GF_CUDA_COMMON_CUH */
