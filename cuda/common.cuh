// SPDX-License-Identifier: Apache-2.0
/*
 * common.cuh - what every file of cuda/ shares: the record type per data type, record,
 * point and channel loads, warp sums, the channel-block rule, fitting a launch to the
 * device, the workspace alignment, and the status and argument checks of the C API.
 * Device helpers are inline; host functions shared across files are declared here and
 * defined once (records.cu).  Everything is in namespace gf_cuda, the C API's
 * implementation (its extern "C" entry points are entry.cu); kernels stay in anonymous
 * namespaces of their own files.
 *
 * The files, one job each:
 *   records.cu          the per-Gaussian records (gf_record_init), both paths
 *   launch_plan.h/.cu   the dense stages' launch plan and workspace layout
 *   dense_points.cu     dense forward and backward to the points
 *   dense_gaussians.cu  dense backward to the Gaussians, and its finalize
 *   dense_second.cu     the double backward (every pair)
 *   cull.h              the culling's workspaces and the launchers of its stages
 *   cull_plan.cu        the plan: bbox, grid, each Gaussian's cell count, offsets
 *   cull_build.cu       the build: points sorted by cell, the cell lists
 *   culled_points.cu    culled forward and backward to the points
 *   culled_gaussians.cu culled backward to the Gaussians
 *   entry.cu            the extern "C" functions of gaussfield.h
 *   static_switch.h     run-time values to template arguments
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

namespace gf_cuda {

template <typename T>
struct Types;
template <>
struct Types<float> {
    using rec = gf_record_f32;
    using terms = gf_pair_terms_f32;
    using point_terms = gf_point_terms_f32;
    using dir = gf_dir_record_f32; /* second order */
    using pair = gf_pair_dir_f32;
    using rho = gf_pair_rho_f32;
};
template <>
struct Types<double> {
    using rec = gf_record_f64;
    using terms = gf_pair_terms_f64;
    using point_terms = gf_point_terms_f64;
    using dir = gf_dir_record_f64;
    using pair = gf_pair_dir_f64;
    using rho = gf_pair_rho_f64;
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

/* The channel block CB of C channels: 1 for one channel (the kernels' one-channel path,
 * which costs what it did before channels existed), 4 for C <= 4 (with 8, half of every
 * block would be padding), else 8 (one exponential serves 8 channels). */
inline int channel_block_for(int64_t num_channels) {
    return num_channels == 1 ? 1 : num_channels <= 4 ? 4 : 8;
}

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

/* The record values the pair functions read (mx .. nkq): 3 vectors (float), 6 (double);
 * the culled and voxel kernels stage only these in shared memory. */
constexpr int kPairVals = 12;

/* The pair values of a record (mx .. nkq), from global memory into a staging slot. */
template <typename T>
__device__ __forceinline__ void stage_pair_values(const typename Types<T>::rec *r, T *dst) {
    constexpr int kVecs = kPairVals * int(sizeof(T)) / 16;
    const uint4 *s = reinterpret_cast<const uint4 *>(r);
    uint4 *d = reinterpret_cast<uint4 *>(dst);
#pragma unroll
    for (int q = 0; q < kVecs; ++q) d[q] = s[q];
}

/* A record rebuilt in registers from a staging slot (the padding, never read, is 0). */
template <typename T>
__device__ __forceinline__ typename Types<T>::rec load_pair_values(const T *src) {
    using rec_t = typename Types<T>::rec;
    constexpr int kVecs = kPairVals * int(sizeof(T)) / 16;
    union {
        rec_t r;
        uint4 v[sizeof(rec_t) / 16];
    } u;
    const uint4 *s = reinterpret_cast<const uint4 *>(src);
#pragma unroll
    for (int q = 0; q < int(sizeof(rec_t) / 16); ++q)
        u.v[q] = q < kVecs ? s[q] : make_uint4(0u, 0u, 0u, 0u);
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

/* A CUDA runtime result as a gf_status (the error itself into *cuda_error). */
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

/* The record of Gaussian n of p (gf_record_init on its strided inputs). */
template <typename T>
__device__ __forceinline__ void record_of(const gf_params &p, int64_t n,
                                          typename Types<T>::rec *r) {
    const T *means = static_cast<const T *>(p.means);
    const T *cov = static_cast<const T *>(p.cov);
    const T *weights = static_cast<const T *>(p.weights);
    gf_record_init(r, means + n * p.means_stride[0], p.means_stride[1], cov + n * p.cov_stride[0],
                   p.cov_stride[1], weights[n * p.weights_stride[0]], p.cov_mode, p.eps, p.cutoff);
}

/* The records of every Gaussian (gf_record_init, one thread each) into `records`
 * (gf_records_bytes(p.dtype, N) bytes). */
gf_status launch_records(const gf_params &p, void *records, cudaStream_t stream,
                         int *cuda_error);

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

/* Zeros in `count` device buffers (NULL or of size 0: skipped) of sizes[i] elements of
 * elem_bytes each. */
inline gf_status zero_buffers(void *const *bufs, const int64_t *sizes, int count,
                              size_t elem_bytes, cudaStream_t stream, int *cuda_error) {
    for (int i = 0; i < count; ++i) {
        if (!bufs[i] || sizes[i] == 0) continue;
        const gf_status st = cuda_status(
            cudaMemsetAsync(bufs[i], 0, size_t(sizes[i]) * elem_bytes, stream), cuda_error);
        if (st != GF_OK) return st;
    }
    return GF_OK;
}

/* Zeros in the wanted outputs of an empty problem (every sum is empty). */
template <typename T>
inline gf_status zero_outputs(const gf_params &p, bool backward, cudaStream_t stream,
                              int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians, C = p.num_channels;
    void *outs[5] = {backward ? nullptr : p.out, backward ? p.grad_x : nullptr,
                     backward ? p.grad_means : nullptr, backward ? p.grad_cov : nullptr,
                     backward ? p.grad_weights : nullptr};
    const int64_t sizes[5] = {B * C, 3 * B, 3 * N, int64_t(gf_cov_params(p.cov_mode)) * N, N * C};
    return zero_buffers(outs, sizes, 5, sizeof(T), stream, cuda_error);
}

/* zero_outputs in the problem's dtype. */
inline gf_status zero_outputs_of(const gf_params &p, bool backward, cudaStream_t stream,
                                 int *cuda_error) {
    if (p.dtype == GF_FLOAT32) return zero_outputs<float>(p, backward, stream, cuda_error);
    return zero_outputs<double>(p, backward, stream, cuda_error);
}

}  // namespace gf_cuda

#endif /* GF_CUDA_COMMON_CUH */
