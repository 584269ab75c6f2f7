// SPDX-License-Identifier: Apache-2.0
/*
 * dense_second.cu - the double backward on CUDA (gaussfield.h, "Second order"): the
 * gradients of Phi = <direction, backward> with respect to grad_out (the JVP of f, which
 * forward mode uses), x, means, the whitening factor and the weights, over every pair
 * (no culling).  The pair maths is gf_math.h's (gf_pair_along and what follows it), as on
 * the CPU; sums in a fixed order, no atomics, bitwise reproducible run to run.
 *
 * records       one thread per Gaussian: the record (gf_record_init) and the direction's
 *               share (gf_dir_record_init)
 * points_kernel a thread per point (grad_grad_out, grad_x); the block stages 128
 *               Gaussians' records and directions at a time in shared memory and each
 *               thread walks them in index order.  With C > 1 the weights are read from
 *               global memory per pair, and grad_grad_out takes a pass per block of 8
 *               channels (grad_x in the first).
 * gaussians_kernel a warp per Gaussian (grad_means, grad_cov, grad_weights): lanes
 *               stride over the points, each summing its pairs in double; a fixed shuffle
 *               tree adds the lanes and lane 0 applies gf_second_gaussian_store.
 *               grad_weights with C > 1: a pass per block of 8 channels.
 * Not tuned: the double backward serves second-order terms (eikonal losses, forward
 * mode), not the training step's hot path.
 */
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

constexpr int kPoints = 128;    /* threads of a points block, Gaussians staged per tile */
constexpr int kGaussWarps = 8;  /* Gaussians of a gaussians block */
constexpr int kCB = 8;          /* channels a pass */

template <typename T>
__device__ __forceinline__ T at2(const void *a, const int64_t stride[2], int64_t i, int64_t c) {
    return a ? static_cast<const T *>(a)[i * stride[0] + c * stride[1]] : T(0);
}

template <typename T>
__device__ __forceinline__ void row3(const void *a, const int64_t stride[2], int64_t i, T v[3]) {
#pragma unroll
    for (int k = 0; k < 3; ++k) v[k] = at2<T>(a, stride, i, k);
}

/* t = G_b . w_n and s = G_b . a_w,n (one channel: from the record's weight). */
template <typename T>
__device__ __forceinline__ void ts_of(const gf_params &p, int64_t b, int64_t n, T w0, T &t,
                                      T &s) {
    if (p.num_channels == 1) {
        const T g = at2<T>(p.grad_out, p.grad_out_stride, b, 0);
        t = g * w0;
        s = g * at2<T>(p.dir_weights, p.dir_weights_stride, n, 0);
        return;
    }
    t = s = T(0);
    for (int64_t c = 0; c < p.num_channels; ++c) {
        const T g = at2<T>(p.grad_out, p.grad_out_stride, b, c);
        t += g * at2<T>(p.weights, p.weights_stride, n, c);
        s += g * at2<T>(p.dir_weights, p.dir_weights_stride, n, c);
    }
}

template <typename T>
__global__ void __launch_bounds__(256)
    second_records_kernel(gf_params p, typename Types<T>::rec *records,
                          typename Types<T>::dir *dirs) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= p.num_gaussians) return;
    record_of<T>(p, n, records + n);
    const T *dm = static_cast<const T *>(p.dir_means), *dc = static_cast<const T *>(p.dir_cov);
    gf_dir_record_init(dirs + n, dm ? dm + n * p.dir_means_stride[0] : nullptr,
                       p.dir_means_stride[1], dc ? dc + n * p.dir_cov_stride[0] : nullptr,
                       p.dir_cov_stride[1]);
}

template <typename T, bool kCut>
__global__ void __launch_bounds__(kPoints)
    second_points_kernel(gf_params p, const typename Types<T>::rec *records,
                         const typename Types<T>::dir *dirs) {
    using rec_t = typename Types<T>::rec;
    using dir_t = typename Types<T>::dir;
    __shared__ rec_t s_rec[kPoints];
    __shared__ dir_t s_dir[kPoints];
    const int64_t b = int64_t(blockIdx.x) * kPoints + threadIdx.x;
    const bool active = b < p.num_points;
    const int64_t N = p.num_gaussians, C = p.num_channels;
    T x[3] = {T(0), T(0), T(0)}, ax[3] = {T(0), T(0), T(0)};
    if (active) {
        load_point<T>(p, b, x[0], x[1], x[2]);
        row3<T>(p.dir_x, p.dir_x_stride, b, ax);
    }
    T *ggo = static_cast<T *>(p.grad_grad_out), *gx = static_cast<T *>(p.grad_x);
    const int64_t passes = ggo ? ceil_div(C, kCB) : 1;
    for (int64_t pass = 0; pass < passes; ++pass) {
        const int64_t c0 = pass * kCB;
        const int nc = ggo ? int(min(int64_t(kCB), C - c0)) : 0;
        const bool point_grad = gx && pass == 0;
        double acc[kCB];
#pragma unroll
        for (int c = 0; c < kCB; ++c) acc[c] = 0.0;
        double ps[3] = {0.0, 0.0, 0.0};
        for (int64_t base = 0; base < N; base += kPoints) {
            const int count = int(min(int64_t(kPoints), N - base));
            __syncthreads();
            if (threadIdx.x < count) {
                s_rec[threadIdx.x] = records[base + threadIdx.x];
                s_dir[threadIdx.x] = dirs[base + threadIdx.x];
            }
            __syncthreads();
            if (!active) continue;
            for (int e = 0; e < count; ++e) {
                const int64_t n = base + e;
                const rec_t r = s_rec[e];
                const dir_t a = s_dir[e];
                const typename Types<T>::pair q =
                    gf_pair_along(&r, &a, x[0], x[1], x[2], ax[0], ax[1], ax[2], kCut);
#pragma unroll
                for (int c = 0; c < kCB; ++c)
                    if (c < nc) {
                        const T w = C == 1 ? r.w : at2<T>(p.weights, p.weights_stride, n, c0 + c);
                        acc[c] += double(w * q.g * q.h +
                                         at2<T>(p.dir_weights, p.dir_weights_stride, n, c0 + c) *
                                             q.g);
                    }
                if (point_grad) {
                    T t, s;
                    ts_of<T>(p, b, n, r.w, t, s);
                    const typename Types<T>::rho o = gf_pair_rho_of(&q, t, s);
                    T v[3] = {T(0), T(0), T(0)};
                    gf_pair_second_point_add(&r, &a, &o, v);
#pragma unroll
                    for (int k = 0; k < 3; ++k) ps[k] += double(v[k]);
                }
            }
        }
        if (active) {
            for (int c = 0; c < nc; ++c) ggo[b * C + c0 + c] = T(acc[c]);
            if (point_grad)
#pragma unroll
                for (int k = 0; k < 3; ++k) gx[3 * b + k] = T(GF_TWO_LN2 * ps[k]);
        }
    }
}

template <typename T, bool kCut>
__global__ void __launch_bounds__(kGaussWarps *kWarp)
    second_gaussians_kernel(gf_params p, const typename Types<T>::rec *records,
                            const typename Types<T>::dir *dirs) {
    using rec_t = typename Types<T>::rec;
    using dir_t = typename Types<T>::dir;
    const int lane = threadIdx.x % kWarp;
    const int64_t n = int64_t(blockIdx.x) * kGaussWarps + threadIdx.x / kWarp;
    if (n >= p.num_gaussians) return; /* whole warps, no block barrier */
    const int64_t B = p.num_points, C = p.num_channels;
    const rec_t r = records[n];
    const dir_t a = dirs[n];
    T *gm = static_cast<T *>(p.grad_means), *gc = static_cast<T *>(p.grad_cov),
      *gw = static_cast<T *>(p.grad_weights);
    const bool geometry = gm || gc;
    const int64_t passes = gw ? ceil_div(C, kCB) : 1;
    double sums[GF_NUM_SUMS2];
#pragma unroll
    for (int k = 0; k < GF_NUM_SUMS2; ++k) sums[k] = 0.0;
    for (int64_t pass = 0; pass < passes; ++pass) {
        const int64_t c0 = pass * kCB;
        const int nc = gw ? int(min(int64_t(kCB), C - c0)) : 0;
        const bool geo = geometry && pass == 0;
        double wsum[kCB];
#pragma unroll
        for (int c = 0; c < kCB; ++c) wsum[c] = 0.0;
        for (int64_t b = lane; b < B; b += kWarp) {
            T x[3], ax[3];
            load_point<T>(p, b, x[0], x[1], x[2]);
            row3<T>(p.dir_x, p.dir_x_stride, b, ax);
            const typename Types<T>::pair q =
                gf_pair_along(&r, &a, x[0], x[1], x[2], ax[0], ax[1], ax[2], kCut);
#pragma unroll
            for (int c = 0; c < kCB; ++c)
                if (c < nc) wsum[c] += double(at2<T>(p.grad_out, p.grad_out_stride, b, c0 + c) *
                                              q.g * q.h);
            if (geo) {
                T t, s;
                ts_of<T>(p, b, n, r.w, t, s);
                const typename Types<T>::rho o = gf_pair_rho_of(&q, t, s);
                T v[GF_NUM_SUMS2];
#pragma unroll
                for (int k = 0; k < GF_NUM_SUMS2; ++k) v[k] = T(0);
                gf_pair_second_sums_add(&q, &o, ax[0], ax[1], ax[2], v);
#pragma unroll
                for (int k = 0; k < GF_NUM_SUMS2; ++k) sums[k] += double(v[k]);
            }
        }
        for (int c = 0; c < nc; ++c) {
            const double total = warp_sum(wsum[c]);
            if (lane == 0) gw[n * C + c0 + c] = T(total);
        }
    }
    if (geometry) {
#pragma unroll
        for (int k = 0; k < GF_NUM_SUMS2; ++k) sums[k] = warp_sum(sums[k]);
        if (lane == 0) gf_second_gaussian_store(sums, &r, &a, gm ? gm + 3 * n : nullptr,
                                                gc ? gc + 9 * n : nullptr);
    }
}

struct SecondLayout {
    size_t records = 0, dirs = 0, total = 0;
};

SecondLayout second_layout(const gf_params &p) {
    SecondLayout l;
    const size_t rec = p.dtype == GF_FLOAT32 ? sizeof(gf_record_f32) : sizeof(gf_record_f64);
    const size_t dir = p.dtype == GF_FLOAT32 ? sizeof(gf_dir_record_f32) : sizeof(gf_dir_record_f64);
    l.records = 0;
    l.dirs = align256(rec * size_t(p.num_gaussians));
    l.total = l.dirs + align256(dir * size_t(p.num_gaussians));
    return l;
}

gf_status check_second(const gf_params *p) {
    const gf_status st = gf_check_second_params(p);
    if (st != GF_OK) return st;
    const bool points = p->num_points > 0, gaussians = p->num_gaussians > 0;
    if (points && !p->x) return GF_ERR_NULL_POINTER;
    if (gaussians && (!p->means || !p->cov || !p->weights)) return GF_ERR_NULL_POINTER;
    const bool want_g = p->grad_means || p->grad_cov || p->grad_weights;
    if (points && (p->grad_x || (gaussians && want_g)) && !p->grad_out) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

template <typename T>
gf_status run_second(const gf_params &p, unsigned char *ws, cudaStream_t stream,
                     int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians;
    /* empty sums: the wanted outputs are 0 */
    if (B == 0 || N == 0) {
        void *outs[5] = {p.grad_grad_out, p.grad_x, p.grad_means, p.grad_cov, p.grad_weights};
        const int64_t sizes[5] = {B * p.num_channels, 3 * B, 3 * N, 9 * N, N * p.num_channels};
        return zero_buffers(outs, sizes, 5, sizeof(T), stream, cuda_error);
    }
    const SecondLayout l = second_layout(p);
    auto *records = reinterpret_cast<typename Types<T>::rec *>(ws + l.records);
    auto *dirs = reinterpret_cast<typename Types<T>::dir *>(ws + l.dirs);
    if (!grid_fits(ceil_div(N, 256)) || !grid_fits(ceil_div(B, kPoints)) ||
        !grid_fits(ceil_div(N, kGaussWarps)))
        return GF_ERR_BAD_SIZE;
    second_records_kernel<T><<<unsigned(ceil_div(N, 256)), 256, 0, stream>>>(p, records, dirs);
    GF_LAUNCH_CHECK(cuda_error);
    const bool cut = gf_has_cutoff(p.cutoff);
    if (p.grad_grad_out || p.grad_x) {
        const unsigned blocks = unsigned(ceil_div(B, kPoints));
        GF_BOOL_SWITCH(cut, kCut, [&] {
            second_points_kernel<T, kCut><<<blocks, kPoints, 0, stream>>>(p, records, dirs);
        });
        GF_LAUNCH_CHECK(cuda_error);
    }
    if (p.grad_means || p.grad_cov || p.grad_weights) {
        const unsigned blocks = unsigned(ceil_div(N, kGaussWarps));
        GF_BOOL_SWITCH(cut, kCut, [&] {
            second_gaussians_kernel<T, kCut><<<blocks, kGaussWarps * kWarp, 0, stream>>>(
                p, records, dirs);
        });
        GF_LAUNCH_CHECK(cuda_error);
    }
    return GF_OK;
}

}  // namespace

namespace gf_cuda {

size_t second_workspace_bytes(const gf_params &p) { return second_layout(p).total; }

gf_status launch_dense_second(const gf_params *p, void *workspace, size_t workspace_bytes,
                              cudaStream_t stream, int *cuda_error) {
    const gf_status st = check_second(p);
    if (st != GF_OK) return st;
    if (workspace_bytes < second_layout(*p).total) return GF_ERR_SMALL_WORKSPACE;
    if (!workspace && p->num_gaussians > 0) return GF_ERR_NULL_POINTER;
    auto *ws = static_cast<unsigned char *>(workspace);
    return GF_DTYPE_SWITCH(p->dtype, T, [&] { return run_second<T>(*p, ws, stream, cuda_error); });
}

}  // namespace gf_cuda
