// SPDX-License-Identifier: Apache-2.0
// cuda.cpp - the CUDA implementations of the gaussfield ops: validation (shared with
// the CPU), allocation through torch's caching allocator (outputs and the kernels'
// workspace), and the C core's CUDA stages enqueued on the current stream of the
// inputs' device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <optional>
#include <tuple>

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
// 256 of a cell, two a thread, so a cell is one block), plan from 2^26 pairs (below, the
// dense kernels take tens of microseconds, what a plan's dozen launches cost), culled
// when the plan's pairs are under a third of B x N (a culled pair costs more than a
// dense one: gathered records, partial chunks).  The last is decided on the device.
constexpr CullPolicy kCudaPolicy{128.0, double(1 << 26), 1.0 / 3.0};

// ---- the lists' capacity -------------------------------------------------------------
// The lists' length is known on the device only.  Each problem shape (device, B, N, C,
// dtype) keeps a slot of mapped pinned host memory that every build of that shape writes
// the length into (gf_cull_config.length_report); the next call sizes the lists from it
// (1.125 times, within the budget) without waiting for anything.  The first call of a
// shape, eagerly, reads its plan's length once (a synchronisation); under CUDA graph
// capture, with no length seen yet, it takes a default of 64 entries a Gaussian.  A
// capacity that proves short only sends the Gaussians past it to the exact overflow path:
// the result never depends on it.

struct LengthSlot {
  int64_t* host = nullptr;    // mapped pinned: the device writes, the host reads
  int64_t* device = nullptr;  // its device address
};

std::mutex length_mutex;

bool capturing();

// The slot of p's shape on `device`; none (the default capacity) where it does not exist
// yet and the stream is being captured (no allocation there).
LengthSlot length_slot(const gf_params& p, int device) {
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int>;
  static std::map<Key, LengthSlot> slots;
  const Key key{device, p.num_points, p.num_gaussians, p.num_channels, int(p.dtype)};
  std::lock_guard<std::mutex> lock(length_mutex);
  auto it = slots.find(key);
  if (it != slots.end()) return it->second;
  LengthSlot slot;
  if (capturing()) return slot;
  void* host = nullptr;
  if (slots.size() < 4096 &&
      cudaHostAlloc(&host, sizeof(int64_t), cudaHostAllocMapped) == cudaSuccess) {
    *static_cast<volatile int64_t*>(host) = -1;  // no length seen yet
    void* dev = nullptr;
    if (cudaHostGetDevicePointer(&dev, host, 0) == cudaSuccess) {
      slot.host = static_cast<int64_t*>(host);
      slot.device = static_cast<int64_t*>(dev);
    } else {
      cudaFreeHost(host);
    }
  }
  (void)cudaGetLastError();
  slots.emplace(key, slot);  // a failed allocation: no slot, the default every call
  return slot;
}

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

gf_cull_config cuda_config(Culling mode) {
  gf_cull_config c{};
  c.points_per_cell = points_per_cell_setting(kCudaPolicy.points_per_cell);
  c.always = mode == Culling::kAlways;
  c.max_share = kCudaPolicy.max_share;
  return c;
}

int64_t structure_bytes_cuda(const gf_params& p, const gf_cull_config& c) {
  size_t bytes = 0;
  check_cuda(gf_cuda_cull_structure_bytes(&p, &c, &bytes), 0, "culling structure size");
  return static_cast<int64_t>(bytes);
}

at::Tensor culled_workspace(const gf_params& p, gf_cull_config& c, bool backward,
                            const at::Tensor& like, size_t* bytes) {
  int cuda_error = 0;
  check_cuda(gf_cuda_culled_workspace_bytes(&p, &c, backward ? 1 : 0, bytes, &cuda_error),
             cuda_error, "culling workspace size");
  return at::empty({static_cast<int64_t>(*bytes)}, like.options().dtype(at::kByte));
}

// The lists' capacity for a call on p's shape, within the budget left beside the
// structure and the rest of the workspace; `exact`: a length read from this call's plan.
int64_t list_capacity(const gf_params& p, gf_cull_config c, int64_t structure_bytes,
                      bool backward, std::optional<int64_t> exact, const LengthSlot& slot) {
  int64_t length = exact ? *exact : -1;
  if (!exact && slot.host) length = *static_cast<volatile int64_t*>(slot.host);
  int64_t cap = length >= 0 ? length + length / 8 + 1024
                            : 64 * p.num_gaussians + 1024;  // nothing seen: a default
  c.list_capacity = 0;
  size_t rest = 0;
  int cuda_error = 0;
  check_cuda(gf_cuda_culled_workspace_bytes(&p, &c, backward ? 1 : 0, &rest, &cuda_error),
             cuda_error, "culling workspace size");
  const double budget = double(culling_budget_bytes(p.num_points, p.num_gaussians));
  const double room = budget - double(rest) - double(structure_bytes);
  const int64_t most = room > 0 ? int64_t(room / (4.0 * sizeof(uint32_t))) : 0;  // 16 B an entry
  return std::max<int64_t>(0, std::min(cap, most));
}

// Whether p is culled at all: a cutoff, and a problem large enough (shapes and the
// switch only, so that eager calls and a captured graph decide alike; whether the culled
// pairs pay is then the device's decision, in the structure).
bool plans(const gf_params& p, Culling mode) { return should_plan(p, mode, kCudaPolicy); }

// Builds p's structure (allocated here: zeros where it is an op's output, so that every
// byte of it is a function of the inputs) on the current stream, with the Gaussians'
// execution order where a backward will read it; c's capacity set for a following
// forward.
at::Tensor build(const gf_params& p, gf_cull_config& c, const at::Tensor& like,
                 bool for_backward, bool as_output) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const LengthSlot slot = length_slot(p, like.get_device());
  c.length_report = slot.device;
  const int64_t sbytes = structure_bytes_cuda(p, c);
  at::Tensor structure = as_output ? at::zeros({sbytes}, like.options().dtype(at::kByte))
                                   : at::empty({sbytes}, like.options().dtype(at::kByte));
  c.list_capacity = 0;
  size_t wbytes = 0;
  at::Tensor ws = culled_workspace(p, c, false, like, &wbytes);
  int cuda_error = 0;
  check_cuda(gf_cuda_cull_build(&p, &c, for_backward ? 1 : 0, structure.data_ptr(), sbytes,
                                ws.data_ptr(), wbytes, stream, &cuda_error),
             cuda_error, "culling build");
  std::optional<int64_t> exact;
  const bool seen = slot.host && *static_cast<volatile int64_t*>(slot.host) >= 0;
  if (!seen && !capturing()) {
    gf_cull_header h{};
    check_cuda(gf_cuda_cull_header(structure.data_ptr(), stream, &h, &cuda_error), cuda_error,
               "culling plan");
    exact = h.plan.list_length;
  }
  c.list_capacity = list_capacity(p, c, sbytes, false, exact, slot);
  return structure;
}

void culled_forward(const gf_params& p, gf_cull_config& c, const at::Tensor& structure,
                    const at::Tensor& like) {
  size_t bytes = 0;
  at::Tensor ws = culled_workspace(p, c, false, like, &bytes);
  int cuda_error = 0;
  check_cuda(gf_cuda_culled_forward(&p, &c, structure.data_ptr(), structure.numel(),
                                    ws.data_ptr(), bytes,
                                    c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
             cuda_error, "culled forward");
}

void culled_backward(const gf_params& p, gf_cull_config c, const at::Tensor& structure,
                     const at::Tensor& like) {
  const LengthSlot slot = length_slot(p, like.get_device());
  c.length_report = nullptr;
  c.list_capacity = p.grad_x ? list_capacity(p, c, structure.numel(), true, std::nullopt, slot) : 0;
  size_t bytes = 0;
  at::Tensor ws = culled_workspace(p, c, true, like, &bytes);
  int cuda_error = 0;
  check_cuda(gf_cuda_culled_backward(&p, &c, structure.data_ptr(), structure.numel(),
                                     ws.data_ptr(), bytes,
                                     c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
             cuda_error, "culled backward");
}

void dense_forward(const gf_params& p, const at::Tensor& like) {
  size_t bytes = 0;
  at::Tensor workspace = workspace_for(p, false, like, &bytes);
  int cuda_error = 0;
  check_cuda(gf_cuda_forward(&p, workspace.data_ptr(), bytes,
                             c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
             cuda_error, "forward");
}

void dense_backward(const gf_params& p, const at::Tensor& like) {
  size_t bytes = 0;
  at::Tensor workspace = workspace_for(p, true, like, &bytes);
  int cuda_error = 0;
  check_cuda(gf_cuda_backward(&p, workspace.data_ptr(), bytes,
                              c10::cuda::getCurrentCUDAStream().stream(), &cuda_error),
             cuda_error, "backward");
}

// A covariance matrix Sigma's check (problem.h): eagerly, with a synchronisation; while
// the stream is captured, none (a Gaussian that is not positive definite gives NaN).
void check_sigma(const gf_params& p, const at::Tensor& x, const at::Tensor& cov) {
  if (p.cov_mode != GF_COV_SIGMA) return;
  const c10::cuda::CUDAGuard guard(x.device());
  if (!capturing()) check_covariance_matrices(cov);
}

at::Tensor gaussian_field_cuda(const at::Tensor& x, const at::Tensor& means,
                               const at::Tensor& cov, const at::Tensor& weights, double eps,
                               std::optional<double> cutoff, bool whitened) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, whitened);
  gf_params& p = prob.params;
  check_sigma(p, x, cov);
  at::Tensor out = allocate_output(x, weights, p);
  if (p.num_points == 0 || p.num_gaussians == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  p.out = out.data_ptr();
  const Culling mode = culling_mode();
  if (plans(p, mode)) {
    gf_cull_config c = cuda_config(mode);
    const at::Tensor structure = build(p, c, x, false, false);
    culled_forward(p, c, structure, x);
    return out;
  }
  dense_forward(p, x);
  return out;
}

// The forward of the culled pair: the result and the structure, which the backward of
// the pair takes instead of building its own.  The structure is empty where the
// problem is not culled at all (plans(): shapes and the switch, as the fake knows).
std::tuple<at::Tensor, at::Tensor> gaussian_field_culled_cuda(
    const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
    const at::Tensor& weights, double eps, double cutoff, bool whitened) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, whitened);
  gf_params& p = prob.params;
  check_sigma(p, x, cov);
  at::Tensor out = allocate_output(x, weights, p);
  const Culling mode = culling_mode();
  if (!plans(p, mode)) {
    if (p.num_points > 0 && p.num_gaussians > 0) {
      const c10::cuda::CUDAGuard guard(x.device());
      p.out = out.data_ptr();
      dense_forward(p, x);
    }
    return {out, at::empty({0}, x.options().dtype(at::kByte))};
  }
  const c10::cuda::CUDAGuard guard(x.device());
  p.out = out.data_ptr();
  gf_cull_config c = cuda_config(mode);
  at::Tensor structure = build(p, c, x, true, true);
  culled_forward(p, c, structure, x);
  return {out, structure};
}

BackwardResult gaussian_field_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& means, const at::Tensor& cov,
                                            const at::Tensor& weights, double eps,
                                            std::optional<double> cutoff,
                                            std::array<bool, 4> output_mask, bool whitened) {
  BackwardProblem bp = make_backward_problem(grad_out, x, means, cov, weights, eps, cutoff,
                                             whitened, output_mask);
  gf_params& p = bp.prob.params;
  if (!bp.has_work) return bp.result();
  const c10::cuda::CUDAGuard guard(x.device());
  const Culling mode = culling_mode();
  if (plans(p, mode)) {
    gf_cull_config c = cuda_config(mode);
    // the build reads no grad_out: the structure is the forward's for the same inputs
    gf_params q = p;
    q.grad_out = nullptr;
    const at::Tensor structure = build(q, c, x, true, false);
    culled_backward(p, c, structure, x);
    return bp.result();
  }
  dense_backward(p, x);
  return bp.result();
}

BackwardResult gaussian_field_culled_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& means,
    const at::Tensor& cov, const at::Tensor& weights, double eps, double cutoff,
    const at::Tensor& structure, std::array<bool, 4> output_mask, bool whitened) {
  BackwardProblem bp = make_backward_problem(grad_out, x, means, cov, weights, eps, cutoff,
                                             whitened, output_mask);
  gf_params& p = bp.prob.params;
  const gf_cull_config c = cuda_config(culling_mode());
  const bool culled = structure.numel() > 0;
  check_structure_tensor(structure, culled ? structure_bytes_cuda(p, c) : 0, x);
  if (!bp.has_work) return bp.result();
  const c10::cuda::CUDAGuard guard(x.device());
  if (culled) culled_backward(p, c, structure, x);
  else dense_backward(p, x);
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
  m.impl("_gaussian_field_culled", &gaussfield::gaussian_field_culled_cuda);
  m.impl("_gaussian_field_culled_backward", &gaussfield::gaussian_field_culled_backward_cuda);
}
