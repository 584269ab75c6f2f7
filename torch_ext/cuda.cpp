// cuda.cpp - the CUDA implementations of the gaussfield ops: validation (shared with
// the CPU), allocation through torch's caching allocator (outputs and the kernels'
// workspace), and the C core's CUDA stages enqueued on the current stream of the
// inputs' device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "culling.h"
#include "problem.h"

namespace gaussfield {
namespace {

#ifndef GF_CUDA_ARCHITECTURES
#define GF_CUDA_ARCHITECTURES "unknown"
#endif

void check_cuda(gf_status status, int cuda_error, const char* what) {
  if (status == GF_ERR_CUDA && cuda_error == int(cudaErrorNoKernelImageForDevice)) {
    cudaDeviceProp prop{};
    (void)cudaGetDeviceProperties(&prop, c10::cuda::current_device());
    TORCH_CHECK(false, "gaussfield: the CUDA kernels were not built for this GPU (",
                prop.name, ", compute capability ", prop.major, ".", prop.minor,
                "; built for: ", GF_CUDA_ARCHITECTURES, "). Rebuild with "
                "TORCH_CUDA_ARCH_LIST=", prop.major, ".", prop.minor,
                " (or on a machine where this GPU is visible, or with the default list)");
  }
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

// The GPU's culling policy: cells of about 128 points (a culled points block holds up to
// 256 of a cell, two a thread, so a cell is one block), plan from 2^26
// pairs (below, the dense kernels take tens of microseconds, what the plan's
// synchronisation costs), culled when the plan's pairs are under a third of B x N (a
// culled pair costs more than a dense one: gathered records, partial chunks).
constexpr CullPolicy kCudaPolicy{128.0, double(1 << 26), 1.0 / 3.0};

// A culling plan and the workspaces of the culled stages.
struct CudaCulled {
  gf_cull_plan plan;
  at::Tensor plan_workspace;
  at::Tensor workspace;
};

// The culled structure for p, or nullopt for the dense path.  The plan synchronises
// the stream (it needs the lists' length on the host), which a CUDA graph capture
// cannot do: under capture auto takes the dense path and always is an error.
std::optional<CudaCulled> cull_for(const gf_params& p, const at::Tensor& like, bool backward) {
  const Culling mode = culling_mode();
  if (!should_plan(p, mode, kCudaPolicy)) return std::nullopt;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    TORCH_CHECK(mode != Culling::kAlways,
                "gaussfield: GAUSSFIELD_CULLING=always cannot be captured in a CUDA graph: the "
                "culled path's plan reads the size of its lists on the host. Capture with "
                "GAUSSFIELD_CULLING=auto (the dense path under capture, the same result) or never.");
    return std::nullopt;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int cuda_error = 0;
  size_t plan_bytes = 0;
  check_cuda(gf_cuda_cull_plan_bytes(&p, &plan_bytes, &cuda_error), cuda_error,
             "culling plan size");
  at::Tensor plan_ws =
      at::empty({static_cast<int64_t>(plan_bytes)}, like.options().dtype(at::kByte));
  auto plan = choose_plan(
      p, mode, kCudaPolicy,
      [&](double per_cell) {
        gf_cull_plan plan{};
        check_cuda(gf_cuda_cull_plan(&p, per_cell, plan_ws.data_ptr(), plan_bytes, stream,
                                     &plan, &cuda_error),
                   cuda_error, "culling plan");
        return plan;
      },
      [&](const gf_cull_plan& plan) {
        size_t bytes = 0;
        check_cuda(gf_cuda_culled_workspace_bytes(&p, &plan, backward ? 1 : 0, &bytes,
                                                  &cuda_error),
                   cuda_error, "culling workspace size");
        return bytes + plan_bytes;
      });
  if (!plan) return std::nullopt;
  size_t bytes = 0;
  check_cuda(gf_cuda_culled_workspace_bytes(&p, &*plan, backward ? 1 : 0, &bytes, &cuda_error),
             cuda_error, "culling workspace size");
  at::Tensor ws = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  return CudaCulled{*plan, plan_ws, ws};
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
  if (auto culled = cull_for(p, x, false)) {
    int cuda_error = 0;
    check_cuda(gf_cuda_culled_forward(&p, &culled->plan, culled->plan_workspace.data_ptr(),
                                      culled->plan_workspace.numel(),
                                      culled->workspace.data_ptr(), culled->workspace.numel(),
                                      c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
               cuda_error, "culled forward");
    return out;
  }
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
  BackwardProblem bp =
      make_backward_problem(grad_out, x, means, cov, weights, eps, cutoff, output_mask);
  gf_params& p = bp.prob.params;
  if (bp.has_work) {
    const c10::cuda::CUDAGuard guard(x.device());
    int cuda_error = 0;
    if (auto culled = cull_for(p, x, true)) {
      check_cuda(gf_cuda_culled_backward(&p, &culled->plan, culled->plan_workspace.data_ptr(),
                                         culled->plan_workspace.numel(),
                                         culled->workspace.data_ptr(),
                                         culled->workspace.numel(),
                                         c10::cuda::getCurrentCUDAStream().stream(),
                                         &cuda_error),
                 cuda_error, "culled backward");
      return bp.result();
    }
    size_t bytes = 0;
    at::Tensor workspace = workspace_for(p, true, x, &bytes);
    check_cuda(gf_cuda_backward(&p, workspace.data_ptr(), bytes,
                                c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
               cuda_error, "backward");
  }
  return bp.result();
}

SecondResult gaussian_field_double_backward_cuda(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& x, const at::Tensor& means,
    const at::Tensor& cov, const at::Tensor& weights, double eps, std::optional<double> cutoff,
    const std::optional<at::Tensor>& dir_x, const std::optional<at::Tensor>& dir_means,
    const std::optional<at::Tensor>& dir_cov, const std::optional<at::Tensor>& dir_weights,
    std::array<bool, 5> output_mask) {
  SecondProblem sp = make_second_problem(grad_out, x, means, cov, weights, eps, cutoff, dir_x,
                                         dir_means, dir_cov, dir_weights, output_mask);
  gf_params& p = sp.prob.params;
  if (!sp.has_work) return sp.result;
  const c10::cuda::CUDAGuard guard(x.device());
  size_t bytes = 0;
  check_cuda(gf_cuda_double_backward_workspace_bytes(&p, &bytes), 0, "workspace size");
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  int cuda_error = 0;
  check_cuda(gf_cuda_double_backward(&p, workspace.data_ptr(), bytes,
                                     c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
             cuda_error, "double backward");
  return sp.result;
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, CUDA, m) {
  m.impl("gaussian_field",
         &gaussfield::forward_promoted<&gaussfield::gaussian_field_cuda>);
  m.impl("gaussian_field_backward",
         &gaussfield::backward_promoted<&gaussfield::gaussian_field_backward_cuda>);
  m.impl("gaussian_field_double_backward", &gaussfield::gaussian_field_double_backward_cuda);
}
