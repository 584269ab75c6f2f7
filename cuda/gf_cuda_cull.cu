/*
 * gf_cuda_cull.cu - the culled CUDA stages of the C API (gaussfield.h, "Culling"):
 * the plan, the build of the sorted points and the cell lists, and the culled kernels.
 * The pair maths is gf_math.h and the grid and the Gaussians' cells are gf_spatial.h,
 * as on the CPU; which pairs count is gf_pair_keep's decision alone (kCut = true in
 * every pair call), the grid only chooses a superset of pairs to evaluate.  No
 * floating-point atomics: every output has one owner and a fixed summation order, so
 * results are bitwise reproducible run to run on one device.  Kernels never allocate.
 *
 * Plan (gf_cuda_cull_plan; synchronises once):
 *   records      one thread per Gaussian: gf_record_init (gf_cuda_common.cuh)
 *   bbox         a fixed grid of blocks, each thread a strided set of points: min, max and
 *                count of the finite points; each block reduces its threads in a fixed
 *                tree and writes one partial
 *   grid         one thread: the partials in block order, then gf_grid_choose
 *   count        one thread per Gaussian: gf_cull_box_init + gf_cull_box_count (a
 *                non-finite weight: every cell)
 *   scan         cub::DeviceScan of the counts: each Gaussian's offset in the lists
 *   finish       one thread: list_length; the plan is copied to the host
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
 *
 * points_kernel (forward, backward to x): a block of 128 threads owns one chunk of one
 * cell, at most 256 points (a cell's points split into ceil(n / 256) chunks of whole
 * groups of 32): thread t holds point t and, where the chunk has more than 128, point
 * t + 128, so that a warp with two slots evaluates each record it reads from shared
 * memory against two points.  The block walks the cell's list (cell num_cells: every
 * Gaussian) in list order, 128 records at a time gathered into shared memory, so each
 * point's sum runs over its cell's Gaussians in ascending index order: one owner per
 * output row, no reduction.  Channels as in gf_cuda.cu: CB = 1 uses the record's weight;
 * C > 1 stages the weights of a block of CB = 4 or 8 channels beside the records; the
 * forward spreads the channel blocks over grid.y, the backward to x loops over them in
 * order.
 *
 * gaussians_kernel (backward to means, cov, weights): a warp owns one Gaussian; blocks
 * take 8 Gaussians consecutive in gauss_order, so the warps of a multiprocessor read
 * neighbouring cells and mostly hit L1.  The warp walks the rows (z, y) of its box; in
 * each row it solves the row's interval of reached cells (gf_cull_row, warp-uniform), and
 * the lanes stride over the points of those cells, contiguous in the sorted points.
 * (Skipping groups of 32 pairs that the test drops entirely, behind a warp vote in a loop
 * all lanes run, measured 1.6x slower on the H200: 4.46 -> 7.03 ms at B = 10^6, N = 10^5.)
 * Last, the non-finite cell's
 * points, which every Gaussian sees.  A lane sums its pairs' terms in T over a row and
 * adds the row into double; at the end the 32 lanes' doubles are added by a fixed
 * shuffle tree and lane 0 applies the chain rule (gf_gaussian_vjp_store) and writes
 * grad_weights.  No block barrier: warps run independently.  With C > 1 the warp walks
 * once per channel block, as the dense gaussians_kernel does (the 9 geometric sums are
 * linear in t and carry across blocks), reading G through the point order.
 *
 * Workspaces (each sub-buffer 256-byte aligned):
 *   plan:    records [N], the device plan, bbox partials, offsets [N + 1] (int64), cub
 *            scan storage
 *   culled:  point cells [2][B] (uint32), point order [2][B] (int64), cell_start
 *            [num_cells + 2], chunk_start [num_cells + 2], sorted points [B], list keys
 *            [2][L] (uint32), list entries [2][L] (int32), list_start [num_cells + 1],
 *            backward: Gaussian keys and order [2][N] each; cub storage (the largest of
 *            its sorts and scans, which share it one after another).  [2][..] pairs are
 *            the ping-pong buffers of cub's DoubleBuffer sorts.
 */
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "gf_cuda_common.cuh"
#include "gf_spatial.h"

namespace {

constexpr int kChunkWarps = 4;
constexpr int kChunkThreads = kChunkWarps * kWarp; /* threads of a points_kernel block */
constexpr int kChunk = 2 * kChunkThreads;  /* its points at most: two slots a thread */
constexpr int kBatch = kChunkThreads;      /* records staged per batch (one per thread) */
constexpr int kGaussWarps = 8;              /* Gaussians of a gaussians_kernel block */
constexpr int kThreads = 256;               /* threads of the one-per-item kernels */
constexpr int kBBoxThreads = 256;
constexpr int kMaxBBoxBlocks = 128; /* grid_kernel merges them in one thread */
/* The record values the pair functions read (mx .. nkq): 3 vectors (float), 6 (double). */
constexpr int kPairVals = 12;

/* ---- small device helpers ------------------------------------------------------- */

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

/* The culling box of Gaussian n, from its record's values in double (as the CPU does) and
 * its weights' finiteness. */
template <typename T>
__device__ __forceinline__ void box_of(const gf_cull_plan &g, const gf_params &p, int64_t n,
                                       const typename Types<T>::rec &r, gf_cull_box *b) {
    const double mean[3] = {double(r.mx), double(r.my), double(r.mz)};
    const double m[6] = {double(r.m00), double(r.m10), double(r.m11),
                         double(r.m20), double(r.m21), double(r.m22)};
    gf_cull_box_init(&g, mean, m, double(r.nkq), gf_cull_reaches_all(&p, n), b);
}

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

/* ---- plan kernels ---------------------------------------------------------------- */

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

/* ---- build kernels --------------------------------------------------------------- */

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

/* ---- points_kernel: forward (kGradX = false) and backward to x ------------------ */

/* One staged batch of `count` records against a warp's R point slots (R = 2 when the
 * warp holds a second slot of points: each record loaded from shared memory then serves
 * two pairs).  Sums in the list's order, per slot. */
template <typename T, int CB, bool kGradX, int R>
__device__ __forceinline__ void points_batch(const T *s_rec, const T *s_w, int count,
                                             const StagedPoint<T> (&sp)[2],
                                             const T (&grad)[2][CB], T (&acc)[2][CB],
                                             T (&gx)[2][3]) {
    using rec_t = typename Types<T>::rec;
    constexpr int kUnroll = CB == 1 && R == 1 ? 2 : 1;
#pragma unroll kUnroll
    for (int e = 0; e < count; ++e) {
        const rec_t r = load_pair_values<T>(s_rec + e * kPairVals);
        T w[CB];
        if constexpr (CB == 1)
            w[0] = r.w;
        else
            load_channels<T, CB>(s_w + e * CB, w);
#pragma unroll
        for (int q = 0; q < R; ++q) {
            if constexpr (kGradX) {
                T t = w[0];
                if constexpr (CB > 1) {
                    t = T(0);
#pragma unroll
                    for (int a = 0; a < CB; ++a) t += grad[q][a] * w[a];
                }
                const typename Types<T>::point_terms v =
                    gf_pair_vjp_point(&r, sp[q].x, sp[q].y, sp[q].z, 1);
                const T tg = t * v.g;
                gx[q][0] += tg * v.vx;
                gx[q][1] += tg * v.vy;
                gx[q][2] += tg * v.vz;
            } else {
                const T g = gf_pair_value(&r, sp[q].x, sp[q].y, sp[q].z, 1);
#pragma unroll
                for (int a = 0; a < CB; ++a) acc[q][a] += w[a] * g;
            }
        }
    }
}

template <typename T, int CB, bool kGradX>
__global__ void __launch_bounds__(kChunkThreads)
    points_kernel(gf_params p, int64_t num_cells, const typename Types<T>::rec *records,
                  const StagedPoint<T> *points, const int64_t *order,
                  const int64_t *cell_start, const int64_t *chunk_start,
                  const int64_t *list_start, const int32_t *list) {
    __shared__ __align__(16) T s_rec[kBatch * kPairVals];
    __shared__ __align__(16) T s_w[CB > 1 ? kBatch * CB : 1];

    const int64_t j = blockIdx.x;
    if (j >= chunk_start[num_cells + 1]) return; /* the grid is an upper bound */
    /* the chunk's cell: the last c with chunk_start[c] <= j */
    int64_t lo = 0, hi = num_cells;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (chunk_start[mid] <= j) lo = mid;
        else hi = mid - 1;
    }
    const int64_t c = lo;
    /* chunk k of m: whole groups of 32 of the cell's points, near-equal shares, at most
     * kChunk / 32 groups; warp w holds group w in slot 0 and group w + kChunkWarps in
     * slot 1 */
    const int64_t k = j - chunk_start[c], m = chunk_start[c + 1] - chunk_start[c];
    const int64_t s = cell_start[c], n = cell_start[c + 1] - s;
    const int64_t groups = ceil_div(n, kWarp);
    const int64_t p0 = s + kWarp * (groups * k / m);
    const int64_t p1 = min(s + n, s + kWarp * (groups * (k + 1) / m));
    const int warp = threadIdx.x / kWarp;
    const bool warp_active = p0 + int64_t(warp) * kWarp < p1;
    const bool warp_two = p0 + int64_t(warp + kChunkWarps) * kWarp < p1;
    const int64_t idx[2] = {p0 + threadIdx.x, p0 + kChunkThreads + threadIdx.x};
    bool active[2];
    StagedPoint<T> sp[2];
    int64_t b[2] = {0, 0};
#pragma unroll
    for (int q = 0; q < 2; ++q) {
        active[q] = idx[q] < p1;
        sp[q] = {T(0), T(0), T(0), T(0)};
        if (active[q]) {
            sp[q] = points[idx[q]];
            b[q] = order[idx[q]];
        }
    }
    const bool implicit = c == num_cells; /* the non-finite cell: every Gaussian */
    const int64_t list_begin = implicit ? 0 : list_start[c];
    const int64_t len = implicit ? p.num_gaussians : list_start[c + 1] - list_begin;

    const int64_t C = p.num_channels;
    const int64_t num_cb = channel_blocks(C, CB);
    const T *weights = static_cast<const T *>(p.weights);
    const T *grad_out = static_cast<const T *>(p.grad_out);
    T gx[2][3] = {{T(0), T(0), T(0)}, {T(0), T(0), T(0)}}; /* backward to x: all blocks */

    for (int64_t cb = kGradX ? 0 : blockIdx.y; cb < num_cb; cb += kGradX ? 1 : gridDim.y) {
        const int64_t c0 = cb * CB;
        T acc[2][CB]; /* forward: out[b, c0 .. c0 + CB) per slot */
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
            for (int a = 0; a < CB; ++a) acc[q][a] = T(0);
        T grad[2][CB]; /* backward to x with C > 1: G of the slot's point, this block */
        if constexpr (kGradX && CB > 1) {
#pragma unroll
            for (int q = 0; q < 2; ++q)
                load_channels_global<T, CB>(grad_out, p.grad_out_stride,
                                            active[q] ? p.num_points : 0, C, b[q], c0, grad[q]);
        }
        for (int64_t base = 0; base < len; base += kBatch) {
            const int count = int(min(int64_t(kBatch), len - base));
            __syncthreads(); /* the last batch is read */
            for (int e = threadIdx.x; e < count; e += kChunkThreads) {
                const int64_t gi = implicit ? base + e : int64_t(list[list_begin + base + e]);
                stage_pair_values<T>(records + gi, s_rec + e * kPairVals);
                if constexpr (CB > 1) {
#pragma unroll
                    for (int a = 0; a < CB; ++a)
                        s_w[e * CB + a] =
                            c0 + a < C ? weights[gi * p.weights_stride[0] +
                                                 (c0 + a) * p.weights_stride[1]]
                                       : T(0);
                }
            }
            __syncthreads();
            if (!warp_active) continue;
            if (warp_two)
                points_batch<T, CB, kGradX, 2>(s_rec, s_w, count, sp, grad, acc, gx);
            else
                points_batch<T, CB, kGradX, 1>(s_rec, s_w, count, sp, grad, acc, gx);
        }
        if (!kGradX) {
            T *out = static_cast<T *>(p.out);
#pragma unroll
            for (int q = 0; q < 2; ++q)
                if (active[q]) {
#pragma unroll
                    for (int a = 0; a < CB; ++a)
                        if (c0 + a < C) out[b[q] * C + c0 + a] = acc[q][a];
                }
        }
    }
    if constexpr (kGradX) {
        T *grad_x = static_cast<T *>(p.grad_x);
#pragma unroll
        for (int q = 0; q < 2; ++q)
            if (active[q]) {
                T scale = T(-GF_TWO_LN2);
                if constexpr (CB == 1) scale *= sp[q].g; /* t = G w: G applied once here */
#pragma unroll
                for (int a = 0; a < 3; ++a) grad_x[3 * b[q] + a] = scale * gx[q][a];
            }
    }
}

/* ---- gaussians_kernel: backward to means, cov and weights ------------------------
 * At most 80 registers (3 blocks of 8 warps a multiprocessor): the loop waits on its
 * point loads, and on an H100 more warps in flight beat the spills outside the pair
 * loop that the bound costs (unbounded, 144 registers: 1.7x slower; 64: slower too). */
template <typename T, int CB, bool kGeom>
__global__ void __launch_bounds__(kGaussWarps *kWarp, 3)
    gaussians_kernel(gf_params p, gf_cull_plan g, const typename Types<T>::rec *records,
                     const StagedPoint<T> *points, const int64_t *order,
                     const int64_t *cell_start, const int32_t *gauss_order) {
    using rec_t = typename Types<T>::rec;
    __shared__ gf_cull_box s_box[kGaussWarps];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int64_t N = p.num_gaussians, C = p.num_channels, NC = g.num_cells;
    const int64_t slot = int64_t(blockIdx.x) * kGaussWarps + warp;
    if (slot >= N) return; /* whole warps; no block barrier below */
    const int64_t n = int64_t(gauss_order[slot]);
    const rec_t rec = load_record<T>(records + n);
    if (lane == 0) box_of<T>(g, p, n, rec, &s_box[warp]);
    __syncwarp();
    const gf_cull_box &box = s_box[warp];
    const bool box_empty = box.lo[0] > box.hi[0];
    const T *grad_out = static_cast<const T *>(p.grad_out);
    const T *weights = static_cast<const T *>(p.weights);
    T *grad_weights = static_cast<T *>(p.grad_weights);
    const bool want_w = grad_weights != nullptr;
    const int64_t num_cb = channel_blocks(C, CB);
    double acc[GF_NUM_SUMS];
#pragma unroll
    for (int q = 0; q < GF_NUM_SUMS; ++q) acc[q] = 0.0;
    for (int64_t cb = 0; cb < num_cb; ++cb) {
        const int64_t c0 = cb * CB;
        T w[CB];
        if constexpr (CB > 1)
            load_channels_global<T, CB>(weights, p.weights_stride, N, C, n, c0, w);
        double accw[CB];
#pragma unroll
        for (int a = 0; a < CB; ++a) accw[a] = 0.0;
        auto run_range = [&](int64_t ws, int64_t we) {
            T part[GF_NUM_SUMS];
#pragma unroll
            for (int q = 0; q < GF_NUM_SUMS; ++q) part[q] = T(0);
            T pw[CB];
#pragma unroll
            for (int a = 0; a < CB; ++a) pw[a] = T(0);
            for (int64_t i = ws + lane; i < we; i += kWarp) {
                const StagedPoint<T> sp = points[i];
                if constexpr (CB == 1) {
                    const typename Types<T>::terms c =
                        gf_pair_vjp_gaussian(&rec, sp.x, sp.y, sp.z, sp.g, sp.g, 1);
                    if constexpr (kGeom) gf_pair_terms_add(part, &c);
                    pw[0] += c.gg;
                } else {
                    T gr[CB];
                    load_channels_global<T, CB>(grad_out, p.grad_out_stride, p.num_points, C,
                                                order[i], c0, gr);
                    T t = T(0);
#pragma unroll
                    for (int a = 0; a < CB; ++a) t += gr[a] * w[a];
                    const typename Types<T>::terms c =
                        gf_pair_vjp_gaussian(&rec, sp.x, sp.y, sp.z, T(1), t, 1);
                    if constexpr (kGeom) gf_pair_terms_add(part, &c);
                    if (want_w) {
#pragma unroll
                        for (int a = 0; a < CB; ++a) pw[a] += gr[a] * c.gg;
                    }
                }
            }
#pragma unroll
            for (int q = 0; q < GF_NUM_SUMS; ++q) acc[q] += double(part[q]);
#pragma unroll
            for (int a = 0; a < CB; ++a) accw[a] += double(pw[a]);
        };
        if (!box_empty) {
            for (int64_t iz = box.lo[2]; iz <= box.hi[2]; ++iz) {
                for (int64_t iy = box.lo[1]; iy <= box.hi[1]; ++iy) {
                    /* the row's reached cells: one interval (warp-uniform) */
                    int64_t first, last;
                    gf_cull_row(&g, &box, iy, iz, &first, &last);
                    if (first > last) continue;
                    const int64_t row = g.dims[0] * (iy + g.dims[1] * iz);
                    run_range(cell_start[row + first], cell_start[row + last + 1]);
                }
            }
        }
        run_range(cell_start[NC], cell_start[NC + 1]); /* non-finite points, G */
        if (want_w) {
#pragma unroll
            for (int a = 0; a < CB; ++a) {
                const double total = warp_sum(accw[a]);
                if (lane == 0 && c0 + a < C) grad_weights[n * C + c0 + a] = T(total);
            }
        }
    }
    if constexpr (kGeom) {
        double sums[GF_NUM_SUMS];
#pragma unroll
        for (int q = 0; q < GF_NUM_SUMS; ++q) sums[q] = warp_sum(acc[q]);
        if (lane == 0) {
            const double scale = C == 1 ? double(weights[n * p.weights_stride[0]]) : 1.0;
            const T *cov = static_cast<const T *>(p.cov);
            T *gm = static_cast<T *>(p.grad_means);
            T *gc = static_cast<T *>(p.grad_cov);
            const int ncov = gf_cov_params(p.cov_mode);
            gf_gaussian_vjp_store(sums, scale, cov + n * p.cov_stride[0], p.cov_stride[1],
                                  p.cov_mode, p.eps, gm ? gm + 3 * n : nullptr,
                                  gc ? gc + ncov * n : nullptr);
        }
    }
}

/* ---- workspaces ------------------------------------------------------------------ */

struct PlanLayout {
    size_t records = 0, plan = 0, bbox = 0, offsets = 0, temp = 0;
    size_t temp_bytes = 0, total = 0;
    int bbox_blocks = 1;
};

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

/* Bits of the cell keys, which lie in [0, num_cells]. */
int key_bits(int64_t num_cells) {
    int bits = 1;
    while ((int64_t(1) << bits) <= num_cells) ++bits;
    return bits;
}

struct CullLayout {
    size_t point_cell[2] = {0, 0}, point_order[2] = {0, 0}, cell_start = 0, chunk_start = 0,
           points = 0, list_keys[2] = {0, 0}, list_entries[2] = {0, 0}, list_start = 0,
           gauss_cell[2] = {0, 0}, gauss_order[2] = {0, 0}, temp = 0;
    size_t temp_bytes = 0, total = 0;
    int bits = 1;
};

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

/* ---- plan ------------------------------------------------------------------------ */

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
    if (N > 0 && (st = launch_records<T>(p, records, stream, cuda_error)) != GF_OK) return st;
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

/* ---- culled forward and backward ------------------------------------------------- */

template <typename T, int CB>
gf_status launch_gaussians_cb(const gf_params &p, const gf_cull_plan &plan,
                              const typename Types<T>::rec *records,
                              const StagedPoint<T> *points, const int64_t *order,
                              const int64_t *cell_start, const int32_t *gauss_order,
                              cudaStream_t stream, int *cuda_error) {
    const int64_t blocks = ceil_div(p.num_gaussians, kGaussWarps);
    if (!grid_fits(blocks)) return GF_ERR_BAD_SIZE;
    if (p.grad_means || p.grad_cov)
        gaussians_kernel<T, CB, true><<<unsigned(blocks), kGaussWarps * kWarp, 0, stream>>>(
            p, plan, records, points, order, cell_start, gauss_order);
    else
        gaussians_kernel<T, CB, false><<<unsigned(blocks), kGaussWarps * kWarp, 0, stream>>>(
            p, plan, records, points, order, cell_start, gauss_order);
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

template <typename T, int CB, bool kGradX>
gf_status launch_points_cb(const gf_params &p, const gf_cull_plan &plan,
                           const typename Types<T>::rec *records, const StagedPoint<T> *points,
                           const int64_t *order, const int64_t *cell_start,
                           const int64_t *chunk_start, const int64_t *list_start,
                           const int32_t *list, cudaStream_t stream, int *cuda_error) {
    /* at most ceil(B / kChunk) + num_cells + 1 chunks; the blocks past the last exit */
    const int64_t blocks = ceil_div(p.num_points, kChunk) + plan.num_cells + 1;
    if (!grid_fits(blocks)) return GF_ERR_BAD_SIZE;
    const int64_t num_cb = kGradX ? 1 : channel_blocks(p.num_channels, CB);
    const dim3 grid(unsigned(blocks), unsigned(std::min<int64_t>(num_cb, 65535)));
    points_kernel<T, CB, kGradX><<<grid, kChunkThreads, 0, stream>>>(
        p, plan.num_cells, records, points, order, cell_start, chunk_start, list_start, list);
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

/* CB: 1 for one channel, 4 for C <= 4, else 8 (as the dense kernels choose). */
int channel_block_of(int64_t num_channels) {
    return num_channels == 1 ? 1 : num_channels <= 4 ? 4 : 8;
}

template <typename T>
gf_status run_culled(const gf_params &p, const gf_cull_plan &plan, bool backward,
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
    const int CB = channel_block_of(p.num_channels);

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
#define GF_POINTS(CBV, GX)                                                                  \
    launch_points_cb<T, CBV, GX>(p, plan, records, points, order, cell_start, chunk_start, \
                                 list_start, list, stream, cuda_error)
        if (backward)
            st = CB == 1 ? GF_POINTS(1, true) : CB == 4 ? GF_POINTS(4, true) : GF_POINTS(8, true);
        else
            st = CB == 1 ? GF_POINTS(1, false)
                         : CB == 4 ? GF_POINTS(4, false) : GF_POINTS(8, false);
#undef GF_POINTS
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
#define GF_GAUSS(CBV)                                                                   \
    launch_gaussians_cb<T, CBV>(p, plan, records, points, order, cell_start, gauss_order, \
                                stream, cuda_error)
        st = CB == 1 ? GF_GAUSS(1) : CB == 4 ? GF_GAUSS(4) : GF_GAUSS(8);
#undef GF_GAUSS
        if (st != GF_OK) return st;
    }
    return GF_OK;
}

/* The checks of a culled problem: the dense ones, a cutoff, N within 32-bit indices. */
gf_status check_cull_problem(const gf_params *p, bool backward) {
    const gf_status st = check_problem(p, backward);
    if (st != GF_OK) return st;
    if (!gf_has_cutoff(p->cutoff)) return GF_ERR_BAD_CUTOFF;
    if (p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

/* A plan that gf_cuda_cull_plan could have written. */
gf_status check_plan(const gf_cull_plan *plan) {
    if (!plan) return GF_ERR_NULL_POINTER;
    if (plan->num_cells < 1 || plan->num_cells > GF_CULL_MAX_CELLS || plan->list_length < 0 ||
        plan->dims[0] < 1 || plan->dims[1] < 1 || plan->dims[2] < 1 ||
        plan->dims[0] * plan->dims[1] * plan->dims[2] != plan->num_cells ||
        !(plan->cell_size > 0.0))
        return GF_ERR_BAD_SIZE;
    return GF_OK;
}

gf_status dispatch_culled(const gf_params *p, const gf_cull_plan *plan, bool backward,
                          const void *plan_workspace, size_t plan_workspace_bytes,
                          void *workspace, size_t workspace_bytes, void *stream,
                          int *cuda_error) {
    gf_status st = check_cull_problem(p, backward);
    if (st != GF_OK) return st;
    if ((st = check_plan(plan)) != GF_OK) return st;
    PlanLayout pl;
    if ((st = plan_layout(*p, pl, cuda_error)) != GF_OK) return st;
    CullLayout l;
    if ((st = cull_layout(*p, *plan, backward, l, cuda_error)) != GF_OK) return st;
    if (plan_workspace_bytes < pl.total || workspace_bytes < l.total)
        return GF_ERR_SMALL_WORKSPACE;
    if (!plan_workspace || !workspace) return GF_ERR_NULL_POINTER;
    const auto *pws = static_cast<const unsigned char *>(plan_workspace);
    auto *ws = static_cast<unsigned char *>(workspace);
    auto s = static_cast<cudaStream_t>(stream);
    if (p->dtype == GF_FLOAT32)
        return run_culled<float>(*p, *plan, backward, pl, pws, l, ws, s, cuda_error);
    return run_culled<double>(*p, *plan, backward, pl, pws, l, ws, s, cuda_error);
}

}  // namespace

extern "C" {

gf_status gf_cuda_cull_plan_bytes(const gf_params *p, size_t *bytes, int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    if (p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    PlanLayout l;
    if ((st = plan_layout(*p, l, cuda_error)) != GF_OK) return st;
    *bytes = l.total;
    return GF_OK;
}

gf_status gf_cuda_cull_plan(const gf_params *p, double points_per_cell, void *plan_workspace,
                            size_t plan_workspace_bytes, void *stream, gf_cull_plan *plan,
                            int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!plan) return GF_ERR_NULL_POINTER;
    if (!gf_has_cutoff(p->cutoff)) return GF_ERR_BAD_CUTOFF;
    if (p->num_gaussians > INT32_MAX || !(points_per_cell > 0.0)) return GF_ERR_BAD_SIZE;
    if (p->num_points > 0 && !p->x) return GF_ERR_NULL_POINTER;
    if (p->num_gaussians > 0 && (!p->means || !p->cov || !p->weights))
        return GF_ERR_NULL_POINTER;
    PlanLayout l;
    if ((st = plan_layout(*p, l, cuda_error)) != GF_OK) return st;
    if (plan_workspace_bytes < l.total) return GF_ERR_SMALL_WORKSPACE;
    if (!plan_workspace) return GF_ERR_NULL_POINTER;
    auto *ws = static_cast<unsigned char *>(plan_workspace);
    auto s = static_cast<cudaStream_t>(stream);
    return p->dtype == GF_FLOAT32
               ? run_plan<float>(*p, points_per_cell, l, ws, s, plan, cuda_error)
               : run_plan<double>(*p, points_per_cell, l, ws, s, plan, cuda_error);
}

gf_status gf_cuda_culled_workspace_bytes(const gf_params *p, const gf_cull_plan *plan,
                                         int backward, size_t *bytes, int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    if ((st = check_plan(plan)) != GF_OK) return st;
    CullLayout l;
    if ((st = cull_layout(*p, *plan, backward != 0, l, cuda_error)) != GF_OK) return st;
    *bytes = l.total;
    return GF_OK;
}

gf_status gf_cuda_culled_forward(const gf_params *p, const gf_cull_plan *plan,
                                 const void *plan_workspace, size_t plan_workspace_bytes,
                                 void *workspace, size_t workspace_bytes, void *stream,
                                 int *cuda_error) {
    return dispatch_culled(p, plan, false, plan_workspace, plan_workspace_bytes, workspace,
                           workspace_bytes, stream, cuda_error);
}

gf_status gf_cuda_culled_backward(const gf_params *p, const gf_cull_plan *plan,
                                  const void *plan_workspace, size_t plan_workspace_bytes,
                                  void *workspace, size_t workspace_bytes, void *stream,
                                  int *cuda_error) {
    return dispatch_culled(p, plan, true, plan_workspace, plan_workspace_bytes, workspace,
                           workspace_bytes, stream, cuda_error);
}

}  // extern "C"
