// SPDX-License-Identifier: Apache-2.0
/*
 * records.cu - the per-Gaussian records that every pair kernel reads (gf_math.h's
 * gf_record_init: mean, weight of channel 0, the folded whitening factor M' from the
 * covariance front-end, the cutoff threshold), one thread per Gaussian, in double
 * inside and rounded once to the record's type.  Used by the dense stages and the
 * culling plan alike.
 */
#include "common.cuh"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

template <typename T>
__global__ void __launch_bounds__(256)
    records_kernel(gf_params p, typename Types<T>::rec *records) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= p.num_gaussians) return;
    record_of<T>(p, n, records + n);
}

}  // namespace

namespace gf_cuda {

gf_status launch_records(const gf_params &p, void *records, cudaStream_t stream,
                         int *cuda_error) {
    const int threads = 256;
    if (!grid_fits(ceil_div(p.num_gaussians, threads))) return GF_ERR_BAD_SIZE;
    const unsigned blocks = unsigned(ceil_div(p.num_gaussians, threads));
    GF_DTYPE_SWITCH(p.dtype, T, [&] {
        records_kernel<T><<<blocks, threads, 0, stream>>>(
            p, static_cast<typename Types<T>::rec *>(records));
    });
    GF_LAUNCH_CHECK(cuda_error);
    return GF_OK;
}

}  // namespace gf_cuda
