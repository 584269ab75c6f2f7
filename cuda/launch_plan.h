// SPDX-License-Identifier: Apache-2.0
/*
 * launch_plan.h - the launch plan and workspace layout of the dense stages
 * (dense_points.cu, dense_gaussians.cu), chosen on the host by launch_plan.cu.
 */
#pragma once

#include <cstddef>
#include <cstdint>

#include "gaussfield.h"

namespace gf_cuda {

constexpr int kMaxWarps = 8; /* warps a dense block has at most */

/* ---- launch plan ---------------------------------------------------------------------
 * Chosen from the problem size and the multiprocessor count; the same inputs always
 * give the same plan, so the workspace size and the summation order are reproducible.
 * GAUSSFIELD_CUDA_CONFIG ("points_r=8,points_warps=8,gauss_k=2,gauss_warps=8,chunks=4,
 * channel_block=8", any subset) overrides the heuristic; the benchmark uses it to sweep
 * configurations.  Its key cull_warps (1 or 4) sets the culled points kernel's block
 * shape instead (culled_points.cu, points_warps).
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

/* Byte layout of the workspace: records, then (backward) the partial sums,
 * [chunks][9 + C][N]. */
struct Layout {
    size_t records = 0;  /* offset 0 */
    size_t partial = 0;  /* offset of the partial sums */
    size_t total = 0;
};

/* The plan of gf_cuda_forward (backward = false) or gf_cuda_backward (true) on a device
 * of sm_count multiprocessors. */
Plan make_plan(const gf_params &p, bool backward, int sm_count);

/* Its workspace: records, then (backward) the partial sums. */
Layout make_layout(const gf_params &p, const Plan &plan, bool backward);

/* The value of key in spec ("key=value,..." as GAUSSFIELD_CUDA_CONFIG), or fallback where
 * spec is NULL, lacks the key or gives no positive integer. */
int parse_override(const char *spec, const char *key, int fallback);

/* The multiprocessor count of the current device. */
gf_status sm_count_of_current_device(int *sm_count, int *cuda_error);

}  // namespace gf_cuda
