// SPDX-License-Identifier: Apache-2.0
/*
 * dense.cuh - what the dense kernels share (dense_points.cu, dense_gaussians.cu): warp
 * staging of records and channels, and the launchers of the dense files (with
 * dense_second.cu's) that entry.cu calls.
 */
#pragma once

#include "common.cuh"
#include "launch_plan.h"

namespace gf_cuda {

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

/* Copy channels [c0, c0 + CB) of rows [first, first + count) (count <= 32) of an
 * [rows, C] array (weights or grad_out, strided) into a warp's shared buffer [32][CB],
 * row-major; channels past C are 0.  Consecutive lanes read consecutive channels of a
 * row, so dense rows load coalesced. */
template <typename T, int CB>
__device__ __forceinline__ void stage_channels(const T *src, const int64_t stride[2],
                                               int64_t num_channels, int64_t first, int count,
                                               int64_t c0, T *buf, int lane) {
    for (int k = lane; k < kWarp * CB; k += kWarp) {
        const int j = k / CB, c = k % CB;
        buf[k] = (j < count && c0 + c < num_channels)
                     ? src[(first + j) * stride[0] + (c0 + c) * stride[1]]
                     : T(0);
    }
}

/* The range [begin, end) of part `i` when `total` is split into `parts` near-equal parts. */
__device__ __forceinline__ void split_range(int64_t total, int64_t parts, int64_t i,
                                            int64_t &begin, int64_t &end) {
    begin = total * i / parts;
    end = total * (i + 1) / parts;
}

/* The dense forward (grad_x false: out) or backward to the points (grad_x) of the
 * plan, from the records.  `gate`: NULL, or a culling structure's header on the device,
 * where the kernels exit at once if the build chose the culled path. */
gf_status launch_dense_points(const gf_params &p, const Plan &plan, const void *records,
                              bool grad_x, const gf_cull_header *gate, cudaStream_t stream,
                              int *cuda_error);

/* The dense backward to the Gaussians (the wanted of grad_means, grad_cov,
 * grad_weights): the chunks' partial sums into `partial` (Layout::partial), then their
 * finalize. */
gf_status launch_dense_gaussians(const gf_params &p, const Plan &plan, const void *records,
                                 void *partial, const gf_cull_header *gate, cudaStream_t stream,
                                 int *cuda_error);

/* The double backward (dense_second.cu): its workspace, and its stages (records and
 * directions, then the points' and the Gaussians' kernels), with its argument checks. */
size_t second_workspace_bytes(const gf_params &p);
gf_status launch_dense_second(const gf_params *p, void *workspace, size_t workspace_bytes,
                              cudaStream_t stream, int *cuda_error);

}  // namespace gf_cuda
