// SPDX-License-Identifier: Apache-2.0
/*
 * cull_plan.cu - the culling plan on CUDA (the first half of gf_cuda_cull_build), all on
 * the device: the host reads nothing back.  The grid and the Gaussians' cells are
 * gf_spatial.h's, as on the CPU.
 *
 *   records      one thread per Gaussian: gf_record_init (records.cu), into the structure
 *   bbox         a fixed grid of blocks, each thread a strided set of points: min, max and
 *                count of the finite points; each block reduces its threads in a fixed
 *                tree and writes one partial
 *   grid         one thread: the partials in block order, then gf_grid_choose, into the
 *                structure's header
 *   count        a thread per Gaussian: its box, its rows' runs of reached cells (the
 *                exact row test), their sum
 *   scan         cub::DeviceScan of the counts: each Gaussian's offset in the lists
 *   finish       one thread: the lists' length, the path (culled, or dense where the
 *                pairs would not pay), the report
 * Also the layouts of the structure and of the calls' workspace.
 */
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cstdint>

#include "cull.cuh"
#include "launch_plan.h"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

constexpr int kBBoxThreads = 256;

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
 * on the same box as gf_cpu_cull_plan), into the header. */
__global__ void grid_kernel(const BBox *partial, int num_partials, double points_per_cell,
                            int64_t max_cells, gf_cull_header *header) {
    double lo[3] = {double(INFINITY), double(INFINITY), double(INFINITY)};
    double hi[3] = {-double(INFINITY), -double(INFINITY), -double(INFINITY)};
    long long n = 0;
    for (int i = 0; i < num_partials; ++i)
        bbox_merge(lo, hi, n, partial[i].lo, partial[i].hi, partial[i].count);
    gf_cull_header h;
    gf_grid_choose(lo, hi, int64_t(n), points_per_cell, &h.plan);
    h.plan.finite_points = int64_t(n);
    h.plan.list_length = 0;
    h.plan.pairs_estimate = 0.0;
    h.max_cells = max_cells;
    h.culled = 0;
    h.reserved = 0;
    *header = h;
}

/* A thread per Gaussian n < N (and thread N writes the scan's final 0): the cells it
 * reaches, gf_cull_box_count's number.  A thread walks its own box's rows; a box of more
 * than 32 rows (the test applied) is counted by the whole warp, a row a lane, after the
 * small ones, so that one large Gaussian does not hold its warp for a row at a time.
 * (A warp a Gaussian for every box measured 13x slower on the H200 at B = 10^6,
 * N = 10^5: lane 0's box in double while 31 lanes wait, and lanes idle past a box's
 * rows.) */
template <typename T>
__global__ void __launch_bounds__(kThreads)
    count_kernel(gf_params p, const gf_cull_header *header,
                 const typename Types<T>::rec *records, int64_t *counts) {
    __shared__ gf_cull_box s_box[kThreads / kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t N = p.num_gaussians;
    if (int64_t(blockIdx.x) * blockDim.x + int64_t(warp) * kWarp > N) return; /* whole warps */
    if (n == N) counts[N] = 0;
    const bool valid = n < N;
    const gf_cull_plan g = header->plan;
    gf_cull_box b;
    int64_t mine = 0;
    bool together = false;
    if (valid) {
        box_of<T>(g, p, n, load_record<T>(records + n), &b);
        together = b.test && box_rows(b) > kWarp;
        if (!together) mine = gf_cull_box_count(&g, &b);
    }
    for (unsigned todo = __ballot_sync(0xffffffffu, together); todo; todo &= todo - 1) {
        const int src = __ffs(todo) - 1;
        if (lane == src) s_box[warp] = b;
        __syncwarp();
        const gf_cull_box &sb = s_box[warp];
        const int64_t rows = box_rows(sb);
        long long total = 0;
        for (int64_t r = lane; r < rows; r += kWarp) {
            int64_t first, last;
            box_row(g, sb, r, &first, &last);
            if (last >= first) total += last - first + 1;
        }
#pragma unroll
        for (int off = kWarp / 2; off > 0; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
        if (lane == src) mine = int64_t(total);
        __syncwarp();
    }
    if (valid) counts[n] = mine;
}

/* One thread: the lists' length, the pairs' estimate, the path (culled, or dense where
 * the culled pairs would not pay), the report. */
__global__ void finish_kernel(const int64_t *offsets, int64_t num_points, int64_t num_gaussians,
                              int always, double max_share, gf_cull_header *header,
                              int64_t *report) {
    gf_cull_header h = *header;
    const int64_t N = num_gaussians, length = offsets[N];
    h.plan.list_length = length;
    const double finite = double(h.plan.finite_points);
    h.plan.pairs_estimate = finite * double(length) / double(h.plan.num_cells) +
                            double(num_points - h.plan.finite_points) * double(N);
    h.culled = always || h.plan.pairs_estimate < max_share * double(num_points) * double(N);
    *header = h;
    if (report) *report = length;
}

}  // namespace

namespace gf_cuda {

StructureLayout structure_layout(const gf_params &p, const gf_cull_config &config) {
    StructureLayout l;
    const int64_t B = p.num_points, N = p.num_gaussians;
    const size_t es = p.dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.max_cells = gf_grid_max_cells(B, config.points_per_cell);
    size_t at = align256(sizeof(gf_cull_header));
    auto put = [&at](size_t bytes) {
        const size_t here = at;
        at += align256(bytes);
        return here;
    };
    l.records = put(size_t(N) * 16 * es);
    l.offsets = put(sizeof(int64_t) * size_t(N + 1));
    l.cell_start = put(sizeof(int64_t) * size_t(l.max_cells + 2));
    l.chunk_start = put(sizeof(int64_t) * size_t(l.max_cells + 2));
    l.point_order = put(sizeof(int64_t) * size_t(B));
    l.points = put(4 * es * size_t(B));
    l.gauss_order = put(sizeof(int32_t) * size_t(N));
    l.total = at;
    return l;
}

StructureView structure_view(const gf_params &p, const gf_cull_config &config, void *structure) {
    const StructureLayout l = structure_layout(p, config);
    auto *base = static_cast<unsigned char *>(structure);
    StructureView v;
    v.header = reinterpret_cast<gf_cull_header *>(base);
    v.records = base + l.records;
    v.offsets = reinterpret_cast<int64_t *>(base + l.offsets);
    v.cell_start = reinterpret_cast<int64_t *>(base + l.cell_start);
    v.chunk_start = reinterpret_cast<int64_t *>(base + l.chunk_start);
    v.point_order = reinterpret_cast<int64_t *>(base + l.point_order);
    v.points = base + l.points;
    v.gauss_order = reinterpret_cast<int32_t *>(base + l.gauss_order);
    v.max_cells = l.max_cells;
    return v;
}

gf_status workspace_layout(const gf_params &p, const gf_cull_config &config, bool backward,
                           WorkspaceLayout &l, int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians, C = p.num_channels;
    const int64_t cells = gf_grid_max_cells(B, config.points_per_cell);
    const size_t es = p.dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.capacity = config.list_capacity;
    l.bbox_blocks = int(std::min<int64_t>(kMaxBBoxBlocks,
                                          std::max<int64_t>(1, ceil_div(B, kBBoxThreads * 16))));
    /* keys in [0, cells]: points' cells; lists' keys up to cells + 1 (the padding) */
    l.point_bits = 1;
    while ((int64_t(1) << l.point_bits) <= cells) ++l.point_bits;
    l.list_bits = 1;
    while ((int64_t(1) << l.list_bits) <= cells + 1) ++l.list_bits;
    size_t at = 0;
    auto put = [&at](size_t bytes) {
        const size_t here = at;
        at += align256(bytes);
        return here;
    };
    l.bbox = put(sizeof(BBox) * size_t(l.bbox_blocks));
    l.counts = put(sizeof(int64_t) * size_t(N + 1));
    for (int i = 0; i < 2; ++i) l.point_cell[i] = put(sizeof(uint32_t) * size_t(B));
    l.iota = put(sizeof(int64_t) * size_t(B));
    for (int i = 0; i < 2; ++i) l.gauss_key[i] = put(sizeof(uint32_t) * size_t(N));
    l.gauss_iota = put(sizeof(int32_t) * size_t(N));
    const size_t cap = size_t(l.capacity);
    for (int i = 0; i < 2; ++i) l.list_key[i] = put(sizeof(uint32_t) * cap);
    for (int i = 0; i < 2; ++i) l.list_entry[i] = put(sizeof(int32_t) * cap);
    l.list_start = put(sizeof(int64_t) * size_t(cells + 1));
    l.fitted = put(sizeof(int64_t));
    if (backward) {
        l.sums = put(sizeof(double) * GF_NUM_SUMS * size_t(N));
        l.sorted_g = put(es * size_t(B));
        l.flags = put(size_t(B));
        l.extra = put(sizeof(int64_t) * size_t(B));
        l.num_extra = put(sizeof(int64_t));
        /* the dense path's partial sums, for the inputs on which the build decides dense */
        int sm_count = 0;
        const gf_status st = sm_count_of_current_device(&sm_count, cuda_error);
        if (st != GF_OK) return st;
        const Plan plan = make_plan(p, true, sm_count);
        l.dense = put(size_t(plan.chunks) * (GF_NUM_SUMS + size_t(C)) * size_t(N) * es);
    }
    /* cub's storage: the largest of the sorts, scans and the select (one at a time) */
    size_t need = 0, bytes = 0;
    cudaError_t e;
#define GF_NEED(call)                                        \
    do {                                                     \
        bytes = 0;                                           \
        e = (call);                                          \
        if (e != cudaSuccess) return cuda_status(e, cuda_error); \
        need = std::max(need, bytes);                        \
    } while (0)
    {
        uint32_t *k = nullptr;
        int64_t *v = nullptr;
        int32_t *v32 = nullptr;
        GF_NEED(cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, k, v, v, B, 0, l.point_bits));
        GF_NEED(cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, k, v32, v32, N, 0, l.point_bits));
        cub::DoubleBuffer<uint32_t> dk(nullptr, nullptr);
        cub::DoubleBuffer<int32_t> dv(nullptr, nullptr);
        GF_NEED(cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dv, l.capacity, 0, l.list_bits));
        GF_NEED(cub::DeviceScan::ExclusiveSum(nullptr, bytes, v, v, N + 1));
        GF_NEED(cub::DeviceScan::ExclusiveSum(nullptr, bytes, v, v, cells + 2));
        const uint8_t *f = nullptr;
        GF_NEED(cub::DeviceSelect::Flagged(nullptr, bytes, thrust::counting_iterator<int64_t>(0),
                                           f, v, v, B));
    }
#undef GF_NEED
    l.temp_bytes = need;
    l.temp = put(need);
    l.total = at;
    return GF_OK;
}

gf_status launch_cull_counts(const gf_params &p, const StructureView &s, int64_t *counts,
                             cudaStream_t stream, int *cuda_error) {
    const int64_t threads = p.num_gaussians + 1;
    if (!grid_fits(ceil_div(threads, kThreads))) return GF_ERR_BAD_SIZE;
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        count_kernel<T><<<unsigned(ceil_div(threads, kThreads)), kThreads, 0, stream>>>(
            p, s.header, static_cast<const typename Types<T>::rec *>(s.records), counts);
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

gf_status launch_cull_plan(const gf_params &p, const gf_cull_config &config,
                           const StructureView &s, const WorkspaceLayout &l, unsigned char *ws,
                           cudaStream_t stream, int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians;
    gf_status st;
    if (N > 0 && (st = launch_records(p, s.records, stream, cuda_error)) != GF_OK) return st;
    auto *bbox = reinterpret_cast<BBox *>(ws + l.bbox);
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        bbox_kernel<T><<<unsigned(l.bbox_blocks), kBBoxThreads, 0, stream>>>(p, bbox);
    });
    GF_LAUNCH_CHECK(cuda_error);
    grid_kernel<<<1, 1, 0, stream>>>(bbox, l.bbox_blocks, config.points_per_cell, s.max_cells,
                                     s.header);
    GF_LAUNCH_CHECK(cuda_error);
    auto *counts = reinterpret_cast<int64_t *>(ws + l.counts);
    if ((st = launch_cull_counts(p, s, counts, stream, cuda_error)) != GF_OK) return st;
    size_t temp_bytes = l.temp_bytes;
    st = cuda_status(cub::DeviceScan::ExclusiveSum(ws + l.temp, temp_bytes, counts, s.offsets,
                                                   N + 1, stream),
                     cuda_error);
    if (st != GF_OK) return st;
    finish_kernel<<<1, 1, 0, stream>>>(s.offsets, B, N, config.always, config.max_share, s.header,
                                       config.length_report);
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
