/*
 * cull_plan.cu - the culling plan on CUDA (gf_cuda_cull_plan): the grid and the lists'
 * length, which the host needs (one synchronisation).  The grid and the Gaussians' cells
 * are gf_spatial.h's, as on the CPU.
 *
 *   records      one thread per Gaussian: gf_record_init (records.cu)
 *   bbox         a fixed grid of blocks, each thread a strided set of points: min, max and
 *                count of the finite points; each block reduces its threads in a fixed
 *                tree and writes one partial
 *   grid         one thread: the partials in block order, then gf_grid_choose
 *   count        one thread per Gaussian: gf_cull_box_init + gf_cull_box_count (a
 *                non-finite weight: every cell)
 *   scan         cub::DeviceScan of the counts: each Gaussian's offset in the lists
 *   finish       one thread: list_length; the plan is copied to the host
 */
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "cull.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

constexpr int kBBoxThreads = 256;
constexpr int kMaxBBoxBlocks = 128; /* grid_kernel merges them in one thread */

struct BBox {
    double lo[3], hi[3];
    long long count;
};

__device__ __forceinline__ void bbox_merge(double (&lo)[3], double (&hi)[3], long long &n,
                                           const double *olo, const double *ohi,
                                           long long on) {
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        lo[i] = olo[i] < lo[i] ? olo[i] : lo[i];
        hi[i] = ohi[i] > hi[i] ? ohi[i] : hi[i];
    }
    n += on;
}

/* Block i: points i * 256 + t + k * (blocks * 256); its partial in partial[i]. */
template <typename T>
__global__ void __launch_bounds__(kBBoxThreads) bbox_kernel(gf_params p, BBox *partial) {
    __shared__ double s_lo[3][kBBoxThreads], s_hi[3][kBBoxThreads];
    __shared__ long long s_n[kBBoxThreads];
    double lo[3] = {double(INFINITY), double(INFINITY), double(INFINITY)};
    double hi[3] = {-double(INFINITY), -double(INFINITY), -double(INFINITY)};
    long long n = 0;
    const int64_t stride = int64_t(gridDim.x) * kBBoxThreads;
    for (int64_t b = int64_t(blockIdx.x) * kBBoxThreads + threadIdx.x; b < p.num_points;
         b += stride) {
        T x, y, z;
        load_point<T>(p, b, x, y, z);
        const double v[3] = {double(x), double(y), double(z)};
        if (!(isfinite(v[0]) && isfinite(v[1]) && isfinite(v[2]))) continue;
        bbox_merge(lo, hi, n, v, v, 1);
    }
    const int t = threadIdx.x;
    for (int i = 0; i < 3; ++i) {
        s_lo[i][t] = lo[i];
        s_hi[i][t] = hi[i];
    }
    s_n[t] = n;
    __syncthreads();
    for (int s = kBBoxThreads / 2; s > 0; s >>= 1) {
        if (t < s) {
            for (int i = 0; i < 3; ++i) {
                s_lo[i][t] = s_lo[i][t + s] < s_lo[i][t] ? s_lo[i][t + s] : s_lo[i][t];
                s_hi[i][t] = s_hi[i][t + s] > s_hi[i][t] ? s_hi[i][t + s] : s_hi[i][t];
            }
            s_n[t] += s_n[t + s];
        }
        __syncthreads();
    }
    if (t == 0) {
        BBox out;
        for (int i = 0; i < 3; ++i) {
            out.lo[i] = s_lo[i][0];
            out.hi[i] = s_hi[i][0];
        }
        out.count = s_n[0];
        partial[blockIdx.x] = out;
    }
}

/* One thread: the partials in block order, then the grid (the same gf_grid_choose call
 * on the same box as gf_cpu_cull_plan). */
__global__ void grid_kernel(const BBox *partial, int num_partials, double points_per_cell,
                            gf_cull_plan *plan) {
    double lo[3] = {double(INFINITY), double(INFINITY), double(INFINITY)};
    double hi[3] = {-double(INFINITY), -double(INFINITY), -double(INFINITY)};
    long long n = 0;
    for (int i = 0; i < num_partials; ++i)
        bbox_merge(lo, hi, n, partial[i].lo, partial[i].hi, partial[i].count);
    gf_cull_plan g;
    gf_grid_choose(lo, hi, int64_t(n), points_per_cell, &g);
    g.finite_points = int64_t(n);
    g.list_length = 0;
    g.pairs_estimate = 0.0;
    *plan = g;
}

/* One thread per Gaussian (and one more for the scan's final 0): cells reached. */
template <typename T>
__global__ void __launch_bounds__(kThreads, 4)
    count_kernel(gf_params p, const gf_cull_plan *plan, const typename Types<T>::rec *records,
                 int64_t num_gaussians, int64_t *counts) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n > num_gaussians) return;
    if (n == num_gaussians) {
        counts[n] = 0;
        return;
    }
    const gf_cull_plan g = *plan;
    gf_cull_box box;
    box_of<T>(g, p, n, load_record<T>(records + n), &box);
    counts[n] = gf_cull_box_count(&g, &box);
}

__global__ void finish_plan_kernel(const int64_t *offsets, int64_t num_gaussians,
                                   gf_cull_plan *plan) {
    plan->list_length = offsets[num_gaussians];
}

template <typename T>
gf_status run_plan(const gf_params &p, double points_per_cell, const PlanLayout &l,
                   unsigned char *ws, cudaStream_t stream, gf_cull_plan *out, int *cuda_error) {
    using rec_t = typename Types<T>::rec;
    const int64_t B = p.num_points, N = p.num_gaussians;
    auto *records = reinterpret_cast<rec_t *>(ws + l.records);
    auto *plan_d = reinterpret_cast<gf_cull_plan *>(ws + l.plan);
    auto *bbox = reinterpret_cast<BBox *>(ws + l.bbox);
    auto *offsets = reinterpret_cast<int64_t *>(ws + l.offsets);
    gf_status st;
    if (N > 0 && (st = launch_records(p, records, stream, cuda_error)) != GF_OK) return st;
    bbox_kernel<T><<<unsigned(l.bbox_blocks), kBBoxThreads, 0, stream>>>(p, bbox);
    GF_LAUNCH_CHECK(cuda_error);
    grid_kernel<<<1, 1, 0, stream>>>(bbox, l.bbox_blocks, points_per_cell, plan_d);
    GF_LAUNCH_CHECK(cuda_error);
    if (!grid_fits(ceil_div(N + 1, kThreads))) return GF_ERR_BAD_SIZE;
    count_kernel<T><<<unsigned(ceil_div(N + 1, kThreads)), kThreads, 0, stream>>>(
        p, plan_d, records, N, offsets);
    GF_LAUNCH_CHECK(cuda_error);
    size_t temp_bytes = l.temp_bytes;
    st = cuda_status(cub::DeviceScan::ExclusiveSum(ws + l.temp, temp_bytes, offsets, N + 1,
                                                   stream),
                     cuda_error);
    if (st != GF_OK) return st;
    finish_plan_kernel<<<1, 1, 0, stream>>>(offsets, N, plan_d);
    GF_LAUNCH_CHECK(cuda_error);
    gf_cull_plan plan;
    st = cuda_status(
        cudaMemcpyAsync(&plan, plan_d, sizeof plan, cudaMemcpyDeviceToHost, stream), cuda_error);
    if (st != GF_OK) return st;
    if ((st = cuda_status(cudaStreamSynchronize(stream), cuda_error)) != GF_OK) return st;
    plan.pairs_estimate = double(plan.finite_points) * double(plan.list_length) /
                              double(plan.num_cells) +
                          double(B - plan.finite_points) * double(N);
    *out = plan;
    return GF_OK;
}

}  // namespace

namespace gf_cuda {

gf_status plan_layout(const gf_params &p, PlanLayout &l, int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians;
    l.bbox_blocks = int(std::min<int64_t>(kMaxBBoxBlocks,
                                          std::max<int64_t>(1, ceil_div(B, kBBoxThreads * 16))));
    l.records = 0;
    l.plan = align256(gf_records_bytes(p.dtype, N));
    l.bbox = l.plan + align256(sizeof(gf_cull_plan));
    l.offsets = l.bbox + align256(sizeof(BBox) * size_t(l.bbox_blocks));
    l.temp = l.offsets + align256(sizeof(int64_t) * size_t(N + 1));
    int64_t *null = nullptr;
    const gf_status st = cuda_status(
        cub::DeviceScan::ExclusiveSum(nullptr, l.temp_bytes, null, N + 1), cuda_error);
    if (st != GF_OK) return st;
    l.total = l.temp + align256(l.temp_bytes);
    return GF_OK;
}

gf_status run_cull_plan(const gf_params &p, double points_per_cell, const PlanLayout &l,
                        unsigned char *plan_ws, cudaStream_t stream, gf_cull_plan *out,
                        int *cuda_error) {
    return GF_DTYPE_SWITCH(p.dtype, T, [&] {
        return run_plan<T>(p, points_per_cell, l, plan_ws, stream, out, cuda_error);
    });
}

}  // namespace gf_cuda
