// SPDX-License-Identifier: Apache-2.0
// voxel_cuda.cpp - the CUDA implementations of voxelize and voxelize_backward: the C
// core's CUDA voxel stages (csrc/gaussfield.h, "Voxelize on the GPU") on the current
// stream of the inputs' device, their structure and workspace from torch's caching
// allocator.  Each call's build waits for the stream once (the lists' length, the
// backward's work items), so these ops are not captured in CUDA graphs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "problem.h"

namespace gaussfield {
namespace {

void check_voxel_cuda(gf_status status, int cuda_error, const char* what) {
  TORCH_CHECK(status == GF_OK, "gaussfield: CUDA voxelize ", what, " failed: ",
              gf_status_string(status),
              status == GF_ERR_CUDA ? std::string(" (") + gf_cuda_error_string(cuda_error) + ")"
                                    : std::string());
}

at::Tensor bytes_like(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

// The build of a forward (backward = false) or backward and its counts; the structure is
// returned for the stage that follows.
at::Tensor voxel_build(const gf_params& p, const gf_grid& g, bool backward, const at::Tensor& like,
                       gf_voxel_counts* counts, cudaStream_t stream) {
  int cuda_error = 0;
  size_t sbytes = 0;
  check_voxel_cuda(gf_cuda_voxel_structure_bytes(&p, &g, &sbytes, &cuda_error), cuda_error,
                   "structure size");
  at::Tensor structure = bytes_like(sbytes, like);
  check_voxel_cuda(gf_cuda_voxel_build(&p, &g, backward ? 1 : 0, structure.data_ptr(), sbytes,
                                       counts, stream, &cuda_error),
                   cuda_error, "build");
  return structure;
}

at::Tensor voxel_workspace(const gf_params& p, const gf_grid& g, bool backward,
                           const gf_voxel_counts& counts, const at::Tensor& like, size_t* bytes) {
  int cuda_error = 0;
  check_voxel_cuda(gf_cuda_voxel_workspace_bytes(&p, &g, backward ? 1 : 0, &counts, bytes,
                                                 &cuda_error),
                   cuda_error, "workspace size");
  return bytes_like(*bytes, like);
}

at::Tensor voxelize_cuda(const at::Tensor& means, const at::Tensor& cov, const at::Tensor& weights,
                         c10::IntArrayRef shape, c10::ArrayRef<double> origin,
                         c10::ArrayRef<double> edges, c10::IntArrayRef offset,
                         c10::IntArrayRef size, double eps, std::optional<double> cutoff,
                         bool whitened) {
  VoxelProblem vp = make_voxel_problem(means, cov, weights, shape, origin, edges, offset, size,
                                       eps, cutoff, whitened);
  gf_params& p = vp.prob.params;
  const c10::cuda::CUDAGuard guard(means.device());
  if (p.cov_mode == GF_COV_SIGMA) check_covariance_matrices(cov);
  if (p.num_points == 0 || p.num_gaussians == 0) return at::zeros(vp.out_shape, means.options());
  at::Tensor out = at::empty(vp.out_shape, means.options());
  p.out = out.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  gf_voxel_counts counts{};
  const at::Tensor structure = voxel_build(p, vp.grid, false, means, &counts, stream);
  size_t wbytes = 0;
  at::Tensor ws = voxel_workspace(p, vp.grid, false, counts, means, &wbytes);
  int cuda_error = 0;
  check_voxel_cuda(gf_cuda_voxel_forward(&p, &vp.grid, structure.data_ptr(), structure.numel(),
                                         &counts, ws.data_ptr(), wbytes, stream, &cuda_error),
                   cuda_error, "forward");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxelize_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& means, const at::Tensor& cov,
    const at::Tensor& weights, c10::IntArrayRef shape, c10::ArrayRef<double> origin,
    c10::ArrayRef<double> edges, c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
    std::optional<double> cutoff, std::array<bool, 3> output_mask, bool whitened) {
  VoxelProblem vp = make_voxel_problem(means, cov, weights, shape, origin, edges, offset, size,
                                       eps, cutoff, whitened, grad_out);
  gf_params& p = vp.prob.params;
  const c10::cuda::CUDAGuard guard(means.device());
  const bool empty_sum = p.num_points == 0 || p.num_gaussians == 0;
  const at::Tensor* inputs[3] = {&means, &cov, &weights};
  at::Tensor grads[3];
  for (int i = 0; i < 3; ++i)
    if (output_mask[i])
      grads[i] = empty_sum ? at::zeros(inputs[i]->sizes(), inputs[i]->options())
                           : at::empty(inputs[i]->sizes(), inputs[i]->options());
  if (empty_sum || !(output_mask[0] || output_mask[1] || output_mask[2]))
    return {grads[0], grads[1], grads[2]};
  p.grad_means = grads[0].defined() ? grads[0].data_ptr() : nullptr;
  p.grad_cov = grads[1].defined() ? grads[1].data_ptr() : nullptr;
  p.grad_weights = grads[2].defined() ? grads[2].data_ptr() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  gf_voxel_counts counts{};
  const at::Tensor structure = voxel_build(p, vp.grid, true, means, &counts, stream);
  size_t wbytes = 0;
  at::Tensor ws = voxel_workspace(p, vp.grid, true, counts, means, &wbytes);
  int cuda_error = 0;
  check_voxel_cuda(gf_cuda_voxel_backward(&p, &vp.grid, structure.data_ptr(), structure.numel(),
                                          &counts, ws.data_ptr(), wbytes, stream, &cuda_error),
                   cuda_error, "backward");
  return {grads[0], grads[1], grads[2]};
}

// Low-precision inputs as on the CPU (voxel_cpu.cpp): computed in float32 (float64 beside
// a float64 input); the result in means' dtype, each gradient in its input's.
at::Tensor voxelize_cuda_promoted(const at::Tensor& means, const at::Tensor& cov,
                                  const at::Tensor& weights, c10::IntArrayRef shape,
                                  c10::ArrayRef<double> origin, c10::ArrayRef<double> edges,
                                  c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
                                  std::optional<double> cutoff, bool whitened) {
  const auto dt = promoted_dtype({{"means", &means}, {"cov", &cov}, {"weights", &weights}});
  if (!dt)
    return voxelize_cuda(means, cov, weights, shape, origin, edges, offset, size, eps, cutoff,
                         whitened);
  return voxelize_cuda(means.to(*dt), cov.to(*dt), weights.to(*dt), shape, origin, edges, offset,
                       size, eps, cutoff, whitened)
      .to(means.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxelize_backward_cuda_promoted(
    const at::Tensor& grad_out, const at::Tensor& means, const at::Tensor& cov,
    const at::Tensor& weights, c10::IntArrayRef shape, c10::ArrayRef<double> origin,
    c10::ArrayRef<double> edges, c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
    std::optional<double> cutoff, std::array<bool, 3> output_mask, bool whitened) {
  const auto dt = promoted_dtype(
      {{"grad_out", &grad_out}, {"means", &means}, {"cov", &cov}, {"weights", &weights}});
  if (!dt)
    return voxelize_backward_cuda(grad_out, means, cov, weights, shape, origin, edges, offset,
                                  size, eps, cutoff, output_mask, whitened);
  auto g = voxelize_backward_cuda(grad_out.to(*dt), means.to(*dt), cov.to(*dt), weights.to(*dt),
                                  shape, origin, edges, offset, size, eps, cutoff, output_mask,
                                  whitened);
  auto back = [](const at::Tensor& t, const at::Tensor& like) {
    return t.defined() ? t.to(like.scalar_type()) : t;
  };
  return {back(std::get<0>(g), means), back(std::get<1>(g), cov), back(std::get<2>(g), weights)};
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, CUDA, m) {
  m.impl("voxelize", &gaussfield::voxelize_cuda_promoted);
  m.impl("voxelize_backward", &gaussfield::voxelize_backward_cuda_promoted);
}
