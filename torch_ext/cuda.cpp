// cuda.cpp - the CUDA implementations of the gaussfield ops: validation (shared with
// the CPU), allocation through torch's caching allocator (outputs and the kernels'
// workspace), and the C core's CUDA stages enqueued on the current stream of the
// inputs' device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "gaussfield_ext.h"

namespace gaussfield {
namespace {

void check_cuda(gf_status status, int cuda_error, const char* what) {
  TORCH_CHECK(status == GF_OK, "gaussfield: CUDA ", what, " failed: ",
              gf_status_string(status),
              status == GF_ERR_CUDA ? std::string(" (") + gf_cuda_error_string(cuda_error) + ")"
                                    : std::string());
}

at::Tensor workspace_for(const gf_params& p, bool backward, const at::Tensor& like,
                         size_t* bytes) {
  int cuda_error = 0;
  check_cuda(gf_cuda_workspace_bytes(&p, backward ? 1 : 0, bytes, &cuda_error), cuda_error,
             "workspace size");
  return at::empty({static_cast<int64_t>(*bytes)}, like.options().dtype(at::kByte));
}

at::Tensor gaussian_field_cuda(const at::Tensor& x, const at::Tensor& means,
                               const at::Tensor& cov, const at::Tensor& weights, double eps,
                              std::optional<double> cutoff) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff);
  gf_params& p = prob.params;
  at::Tensor out = allocate_output(x, weights, p);
  if (p.num_points == 0 || p.num_gaussians == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  p.out = out.data_ptr();
  size_t bytes = 0;
  at::Tensor workspace = workspace_for(p, false, x, &bytes);
  int cuda_error = 0;
  check_cuda(gf_cuda_forward(&p, workspace.data_ptr(), bytes,
                             c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
             cuda_error, "forward");
  return out;
}

BackwardResult gaussian_field_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& means, const at::Tensor& cov,
                                            const at::Tensor& weights, double eps,
                                            std::optional<double> cutoff,
                                            std::array<bool, 4> output_mask) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, grad_out);
  gf_params& p = prob.params;
  std::array<at::Tensor, 4> grads = allocate_grads(x, means, cov, weights, p, output_mask);
  set_grad_outputs(p, grads);
  const bool any_wanted = p.grad_x || p.grad_means || p.grad_cov || p.grad_weights;
  if (p.num_points > 0 && p.num_gaussians > 0 && any_wanted) {
    const c10::cuda::CUDAGuard guard(x.device());
    size_t bytes = 0;
    at::Tensor workspace = workspace_for(p, true, x, &bytes);
    int cuda_error = 0;
    check_cuda(gf_cuda_backward(&p, workspace.data_ptr(), bytes,
                                c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
               cuda_error, "backward");
  }
  return {grads[0], grads[1], grads[2], grads[3]};
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, CUDA, m) {
  m.impl("gaussian_field",
         &gaussfield::forward_promoted<&gaussfield::gaussian_field_cuda>);
  m.impl("gaussian_field_backward",
         &gaussfield::backward_promoted<&gaussfield::gaussian_field_backward_cuda>);
}
