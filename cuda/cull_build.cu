/*
 * cull_build.cu - the culled forward and backward on CUDA (gf_cuda_culled_forward,
 * gf_cuda_culled_backward): the build of the sorted points and the cell lists, then the
 * culled kernels (culled_points.cu, culled_gaussians.cu).  The pair maths is gf_math.h
 * and the grid and the Gaussians' cells are gf_spatial.h, as on the CPU; which pairs
 * count is gf_pair_keep's decision alone (kCut = true in every pair call), the grid only
 * chooses a superset of pairs to evaluate.  No floating-point atomics: every output has
 * one owner and a fixed summation order, so results are bitwise reproducible run to run
 * on one device.  Kernels never allocate.
 *
 * Build (inside the culled forward and backward, on the stream, no synchronisation):
 *   point_cells  one thread per point: its cell (gf_grid_cell; a non-finite coordinate, or
 *                in a backward a non-finite grad_out row: num_cells, seen by every Gaussian)
 *   sort         cub::DeviceRadixSort (stable) of (cell, point index): points by cell,
 *                in index order within a cell
 *   cells        one thread per cell: cell_start (binary search in the sorted cells) and
 *                the cell's chunk count, ceil(points / 128); a scan gives chunk_start
 *   gather       one thread per sorted point: x (and grad_out with one channel)
 *   fill_lists   one warp per Gaussian: its reached cells in z, y, x order (lanes solve
 *                32 rows' intervals at a time, a warp scan places them), written as
 *                (cell, Gaussian) at the Gaussian's offset from the plan, so the pairs are
 *                in Gaussian order; a stable radix sort by cell then leaves each cell's
 *                list in ascending Gaussian order.  A Gaussian writes at most its planned
 *                count and pads the rest with the key num_cells (sorted past every list).
 *   list_start   one thread per cell: binary search in the sorted keys
 *   gauss_order  (backward) the Gaussians sorted by the cell of their mean: an execution
 *                order that puts Gaussians sharing cells in one block (results do not
 *                depend on it)
 */
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "cull.cuh"

namespace {

using namespace gf_cuda;

/* First index in sorted a[0, n) whose value is >= v. */
__device__ __forceinline__ int64_t lower_bound_u32(const uint32_t *a, int64_t n, uint32_t v) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    point_cells_kernel(gf_params p, gf_cull_plan g, uint32_t *cell, int64_t *order) {
    const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= p.num_points) return;
    T x, y, z;
    load_point<T>(p, b, x, y, z);
    cell[b] = uint32_t(gf_cull_point_seen_by_all(&p, b)
                           ? g.num_cells
                           : gf_grid_cell(&g, double(x), double(y), double(z)));
    order[b] = b;
}

/* Thread c <= num_cells + 1: cell_start[c] and the chunk count of cell c (0 for the
 * last entry, which the scan turns into the total). */
__global__ void __launch_bounds__(kThreads)
    cells_kernel(const uint32_t *sorted_cell, int64_t num_points, int64_t num_cells,
                 int64_t *cell_start, int64_t *chunk_count) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c > num_cells + 1) return;
    const int64_t s0 = lower_bound_u32(sorted_cell, num_points, uint32_t(c));
    cell_start[c] = s0;
    if (!chunk_count) return;
    if (c == num_cells + 1) {
        chunk_count[c] = 0;
        return;
    }
    const int64_t s1 = lower_bound_u32(sorted_cell, num_points, uint32_t(c + 1));
    chunk_count[c] = ceil_div(s1 - s0, kChunk);
}

/* Sorted point i: x of point order[i], and G with one channel in the backward. */
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather_points_kernel(gf_params p, const int64_t *order, bool with_grad,
                         StagedPoint<T> *points) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.num_points) return;
    const int64_t b = order[i];
    StagedPoint<T> sp;
    load_point<T>(p, b, sp.x, sp.y, sp.z);
    sp.g = with_grad ? static_cast<const T *>(p.grad_out)[b * p.grad_out_stride[0]] : T(0);
    points[i] = sp;
}

/* Warp per Gaussian n: its reached cells (z, y, x order, as gf_cull_box_count counts
 * them) as (cell, n) at [offsets[n], offsets[n + 1]).  Lanes take 32 rows (z, y) of the
 * box at a time: each solves its row's interval (gf_cull_row), a warp scan of the
 * intervals' lengths gives each row's place, and the lane writes its row's cells. */
template <typename T>
__global__ void __launch_bounds__(kThreads, 4) /* latency-bound: warps in flight */
    fill_lists_kernel(gf_params p, gf_cull_plan g, const typename Types<T>::rec *records,
                      int64_t num_gaussians, const int64_t *offsets, uint32_t *keys,
                      int32_t *entries) {
    const int lane = threadIdx.x % kWarp;
    const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
    if (n >= num_gaussians) return; /* whole warps */
    const int64_t base = offsets[n], cap = offsets[n + 1] - base;
    gf_cull_box box;
    box_of<T>(g, p, n, load_record<T>(records + n), &box);
    int64_t written = 0;
    if (box.lo[0] <= box.hi[0]) {
        const int64_t ny = box.hi[1] - box.lo[1] + 1;
        const int64_t rows = ny * (box.hi[2] - box.lo[2] + 1);
        for (int64_t r0 = 0; r0 < rows && written < cap; r0 += kWarp) {
            const int64_t r = r0 + lane;
            int64_t x0 = 1, x1 = 0, iy = 0, iz = 0;
            if (r < rows) {
                iy = box.lo[1] + r % ny;
                iz = box.lo[2] + r / ny;
                gf_cull_row(&g, &box, iy, iz, &x0, &x1);
            }
            const int64_t count = x1 >= x0 ? x1 - x0 + 1 : 0;
            int64_t incl = count; /* inclusive scan over the lanes */
#pragma unroll
            for (int off = 1; off < kWarp; off <<= 1) {
                const int64_t v = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += v;
            }
            const int64_t first = written + incl - count;
            const int64_t cell0 = x0 + g.dims[0] * (iy + g.dims[1] * iz);
            for (int64_t q = 0; q < count && first + q < cap; ++q) {
                keys[base + first + q] = uint32_t(cell0 + q);
                entries[base + first + q] = int32_t(n);
            }
            written += __shfl_sync(0xffffffffu, incl, kWarp - 1);
        }
    }
    /* fewer cells than planned (only if the plan's count rounded differently): pad */
    for (int64_t k = written + lane; k < cap; k += kWarp) {
        keys[base + k] = uint32_t(g.num_cells);
        entries[base + k] = int32_t(n);
    }
}

/* Thread c <= num_cells: the first entry of cell c's list. */
__global__ void __launch_bounds__(kThreads)
    list_start_kernel(const uint32_t *sorted_keys, int64_t length, int64_t num_cells,
                      int64_t *list_start) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c > num_cells) return;
    list_start[c] = lower_bound_u32(sorted_keys, length, uint32_t(c));
}

/* Thread per Gaussian: the cell of its mean (the key of the execution order). */
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gauss_cells_kernel(gf_cull_plan g, const typename Types<T>::rec *records,
                       int64_t num_gaussians, uint32_t *cell, int32_t *order) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= num_gaussians) return;
    const typename Types<T>::rec r = load_record<T>(records + n);
    cell[n] = uint32_t(gf_grid_cell(&g, double(r.mx), double(r.my), double(r.mz)));
    order[n] = int32_t(n);
}

template <typename T>
gf_status run_culled_t(const gf_params &p, const gf_cull_plan &plan, bool backward,
                     const PlanLayout &pl, const unsigned char *plan_ws, const CullLayout &l,
                     unsigned char *ws, cudaStream_t stream, int *cuda_error) {
    using rec_t = typename Types<T>::rec;
    const int64_t B = p.num_points, N = p.num_gaussians, NC = plan.num_cells;
    const int64_t L = plan.list_length;
    if (B == 0 && !backward) return GF_OK;
    if (B == 0 || N == 0) return zero_outputs<T>(p, backward, stream, cuda_error);
    const bool want_x = !backward || p.grad_x;
    const bool want_gaussians = backward && (p.grad_means || p.grad_cov || p.grad_weights);
    if (!want_x && !want_gaussians) return GF_OK;

    const auto *records = reinterpret_cast<const rec_t *>(plan_ws + pl.records);
    const auto *offsets = reinterpret_cast<const int64_t *>(plan_ws + pl.offsets);
    auto *cell_start = reinterpret_cast<int64_t *>(ws + l.cell_start);
    auto *chunk_start = reinterpret_cast<int64_t *>(ws + l.chunk_start);
    auto *points = reinterpret_cast<StagedPoint<T> *>(ws + l.points);
    auto *list_start = reinterpret_cast<int64_t *>(ws + l.list_start);
    void *temp = ws + l.temp;
    gf_status st;
    const auto blocks_of = [](int64_t items) { return ceil_div(items, kThreads); };
    if (!grid_fits(blocks_of(B)) || !grid_fits(blocks_of(NC + 2)) ||
        !grid_fits(ceil_div(N, kThreads / kWarp)))
        return GF_ERR_BAD_SIZE;

    /* the points by cell */
    cub::DoubleBuffer<uint32_t> pcell(reinterpret_cast<uint32_t *>(ws + l.point_cell[0]),
                                      reinterpret_cast<uint32_t *>(ws + l.point_cell[1]));
    cub::DoubleBuffer<int64_t> porder(reinterpret_cast<int64_t *>(ws + l.point_order[0]),
                                      reinterpret_cast<int64_t *>(ws + l.point_order[1]));
    point_cells_kernel<T><<<unsigned(blocks_of(B)), kThreads, 0, stream>>>(
        p, plan, pcell.Current(), porder.Current());
    GF_LAUNCH_CHECK(cuda_error);
    size_t temp_bytes = l.temp_bytes;
    st = cuda_status(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, pcell, porder, B, 0,
                                                     l.bits, stream),
                     cuda_error);
    if (st != GF_OK) return st;
    const int64_t *order = porder.Current();
    cells_kernel<<<unsigned(blocks_of(NC + 2)), kThreads, 0, stream>>>(
        pcell.Current(), B, NC, cell_start, want_x ? chunk_start : nullptr);
    GF_LAUNCH_CHECK(cuda_error);
    gather_points_kernel<T><<<unsigned(blocks_of(B)), kThreads, 0, stream>>>(
        p, order, backward && p.num_channels == 1, points);
    GF_LAUNCH_CHECK(cuda_error);

    if (want_x) {
        temp_bytes = l.temp_bytes;
        st = cuda_status(
            cub::DeviceScan::ExclusiveSum(temp, temp_bytes, chunk_start, NC + 2, stream),
            cuda_error);
        if (st != GF_OK) return st;
        /* the cell lists */
        cub::DoubleBuffer<uint32_t> lkeys(reinterpret_cast<uint32_t *>(ws + l.list_keys[0]),
                                          reinterpret_cast<uint32_t *>(ws + l.list_keys[1]));
        cub::DoubleBuffer<int32_t> lent(reinterpret_cast<int32_t *>(ws + l.list_entries[0]),
                                        reinterpret_cast<int32_t *>(ws + l.list_entries[1]));
        if (L > 0) {
            fill_lists_kernel<T><<<unsigned(ceil_div(N, kThreads / kWarp)), kThreads, 0,
                                   stream>>>(p, plan, records, N, offsets, lkeys.Current(),
                                             lent.Current());
            GF_LAUNCH_CHECK(cuda_error);
            temp_bytes = l.temp_bytes;
            st = cuda_status(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, lkeys, lent, L,
                                                             0, l.bits, stream),
                             cuda_error);
            if (st != GF_OK) return st;
        }
        list_start_kernel<<<unsigned(blocks_of(NC + 1)), kThreads, 0, stream>>>(
            lkeys.Current(), L, NC, list_start);
        GF_LAUNCH_CHECK(cuda_error);
        const int32_t *list = lent.Current();
        st = launch_culled_points(p, plan, records, points, order, cell_start, chunk_start,
                                  list_start, list, backward, stream, cuda_error);
        if (st != GF_OK) return st;
    }

    if (want_gaussians) {
        /* the execution order: Gaussians by the cell of their mean */
        cub::DoubleBuffer<uint32_t> gcell(reinterpret_cast<uint32_t *>(ws + l.gauss_cell[0]),
                                          reinterpret_cast<uint32_t *>(ws + l.gauss_cell[1]));
        cub::DoubleBuffer<int32_t> gorder(reinterpret_cast<int32_t *>(ws + l.gauss_order[0]),
                                          reinterpret_cast<int32_t *>(ws + l.gauss_order[1]));
        gauss_cells_kernel<T><<<unsigned(blocks_of(N)), kThreads, 0, stream>>>(
            plan, records, N, gcell.Current(), gorder.Current());
        GF_LAUNCH_CHECK(cuda_error);
        temp_bytes = l.temp_bytes;
        st = cuda_status(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, gcell, gorder, N, 0,
                                                         l.bits, stream),
                         cuda_error);
        if (st != GF_OK) return st;
        const int32_t *gauss_order = gorder.Current();
        st = launch_culled_gaussians(p, plan, records, points, order, cell_start, gauss_order,
                                     stream, cuda_error);
        if (st != GF_OK) return st;
    }
    return GF_OK;
}

}  // namespace

namespace gf_cuda {

gf_status cull_layout(const gf_params &p, const gf_cull_plan &plan, bool backward,
                      CullLayout &l, int *cuda_error) {
    const int64_t B = p.num_points, N = p.num_gaussians, L = plan.list_length;
    const int64_t NC = plan.num_cells;
    const size_t elem = p.dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.bits = key_bits(NC);
    size_t at = 0;
    auto put = [&at](size_t bytes) {
        const size_t here = at;
        at += align256(bytes);
        return here;
    };
    for (int i = 0; i < 2; ++i) l.point_cell[i] = put(sizeof(uint32_t) * size_t(B));
    for (int i = 0; i < 2; ++i) l.point_order[i] = put(sizeof(int64_t) * size_t(B));
    l.cell_start = put(sizeof(int64_t) * size_t(NC + 2));
    l.chunk_start = put(sizeof(int64_t) * size_t(NC + 2));
    l.points = put(4 * elem * size_t(B)); /* StagedPoint<T> */
    for (int i = 0; i < 2; ++i) l.list_keys[i] = put(sizeof(uint32_t) * size_t(L));
    for (int i = 0; i < 2; ++i) l.list_entries[i] = put(sizeof(int32_t) * size_t(L));
    l.list_start = put(sizeof(int64_t) * size_t(NC + 1));
    if (backward) {
        for (int i = 0; i < 2; ++i) l.gauss_cell[i] = put(sizeof(uint32_t) * size_t(N));
        for (int i = 0; i < 2; ++i) l.gauss_order[i] = put(sizeof(int32_t) * size_t(N));
    }
    /* cub's storage: the largest of the sorts and the scan (run one after another) */
    size_t need = 0, bytes = 0;
    cudaError_t e;
    {
        cub::DoubleBuffer<uint32_t> k(nullptr, nullptr);
        cub::DoubleBuffer<int64_t> v(nullptr, nullptr);
        e = cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, B, 0, l.bits);
        if (e != cudaSuccess) return cuda_status(e, cuda_error);
        need = std::max(need, bytes);
    }
    {
        cub::DoubleBuffer<uint32_t> k(nullptr, nullptr);
        cub::DoubleBuffer<int32_t> v(nullptr, nullptr);
        bytes = 0;
        e = cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, L, 0, l.bits);
        if (e != cudaSuccess) return cuda_status(e, cuda_error);
        need = std::max(need, bytes);
        if (backward) {
            bytes = 0;
            e = cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, N, 0, l.bits);
            if (e != cudaSuccess) return cuda_status(e, cuda_error);
            need = std::max(need, bytes);
        }
    }
    {
        int64_t *null = nullptr;
        bytes = 0;
        e = cub::DeviceScan::ExclusiveSum(nullptr, bytes, null, NC + 2);
        if (e != cudaSuccess) return cuda_status(e, cuda_error);
        need = std::max(need, bytes);
    }
    l.temp_bytes = need;
    l.temp = put(need);
    l.total = at;
    return GF_OK;
}

gf_status run_culled(const gf_params &p, const gf_cull_plan &plan, bool backward,
                     const PlanLayout &pl, const unsigned char *plan_ws, const CullLayout &l,
                     unsigned char *ws, cudaStream_t stream, int *cuda_error) {
    if (p.dtype == GF_FLOAT32)
        return run_culled_t<float>(p, plan, backward, pl, plan_ws, l, ws, stream, cuda_error);
    return run_culled_t<double>(p, plan, backward, pl, plan_ws, l, ws, stream, cuda_error);
}

}  // namespace gf_cuda
