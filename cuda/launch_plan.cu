// SPDX-License-Identifier: Apache-2.0
/*
 * launch_plan.cu - the dense stages' launch plan (launch_plan.h): from the problem's
 * size and the multiprocessor count, or GAUSSFIELD_CUDA_CONFIG.
 */
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "launch_plan.h"

namespace gf_cuda {

int parse_override(const char *spec, const char *key, int fallback) {
    if (!spec) return fallback;
    const char *hit = std::strstr(spec, key);
    if (!hit || hit[std::strlen(key)] != '=') return fallback;
    const int v = std::atoi(hit + std::strlen(key) + 1);
    return v > 0 ? v : fallback;
}

Plan make_plan(const gf_params &p, bool backward, int sm_count) {
    const int64_t B = p.num_points, N = p.num_gaussians, C = p.num_channels;
    const char *spec = std::getenv("GAUSSFIELD_CUDA_CONFIG");
    Plan plan;
    if (C > 1) {
        plan.channel_block = channel_block_for(C);
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

}  // namespace gf_cuda
