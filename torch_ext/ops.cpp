// ops.cpp - the schemas of the gaussfield ops, and the validation that both the CPU
// and the CUDA implementations call before touching data.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

#include "gaussfield_ext.h"

namespace gaussfield {

namespace {

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

bool is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name,
              " must have the same dtype as x (", x.scalar_type(), "), got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), name, " must be on the same device as x (",
              x.device(), "), got ", t.device());
}

gf_dtype to_gf_dtype(at::ScalarType t) {
  return t == at::kFloat ? GF_FLOAT32 : GF_FLOAT64;
}

}  // namespace

std::optional<at::ScalarType> promoted_dtype(std::initializer_list<NamedTensor> inputs) {
  bool low = false, wide = false;
  for (const auto& [name, t] : inputs) {
    if (!t->defined()) continue;
    const at::ScalarType s = t->scalar_type();
    TORCH_CHECK(is_low_precision(s) || s == at::kFloat || s == at::kDouble, name,
                " must be float16, bfloat16, float32 or float64, got ", s);
    low = low || is_low_precision(s);
    wide = wide || s == at::kDouble;
  }
  if (!low) return std::nullopt;  // make_problem checks that they share one dtype
  return wide ? at::kDouble : at::kFloat;
}

at::DimVector output_shape(const at::Tensor& x, const at::Tensor& weights) {
  at::DimVector shape(x.sizes().slice(0, x.dim() - 1));
  if (weights.dim() == 2) shape.push_back(weights.size(1));
  return shape;
}

Problem make_problem(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                     const at::Tensor& weights, double eps, std::optional<double> cutoff,
                     const at::Tensor& grad_out) {
  TORCH_CHECK(x.defined() && means.defined() && cov.defined() && weights.defined(),
              "gaussfield: x, means, cov and weights must all be tensors");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == 3, "x must have shape [..., 3], got ",
              x.sizes());
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must have shape [N, 3], got ",
              means.sizes());
  const int64_t n = means.size(0);
  TORCH_CHECK(cov.dim() == 2 && (cov.size(1) == 6 || cov.size(1) == 3),
              "cov must have shape [N, 6] (full covariance, cov_tril) or [N, 3] (diagonal, "
              "log_scales), got ",
              cov.sizes());
  TORCH_CHECK(cov.size(0) == n, "cov must have shape [N, ", cov.size(1), "] with N = ", n,
              " as in means, got ", cov.sizes());
  TORCH_CHECK((weights.dim() == 1 || weights.dim() == 2) && weights.size(0) == n,
              "weights must have shape [N] or [N, C] with N = ", n, " as in means, got ",
              weights.sizes());
  TORCH_CHECK(weights.dim() == 1 || weights.size(1) >= 1,
              "weights must have at least one channel ([N, C] with C >= 1), got ",
              weights.sizes());
  check_floating(x, "x");
  check_like_x(means, "means", x);
  check_like_x(cov, "cov", x);
  check_like_x(weights, "weights", x);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be a finite number >= 0, got ",
              eps);
  TORCH_CHECK(!cutoff.has_value() || (std::isfinite(*cutoff) && *cutoff > 0.0),
              "cutoff must be None or a finite number > 0 (a Mahalanobis radius), got ",
              cutoff.has_value() ? *cutoff : 0.0);
  const at::DimVector out_shape = output_shape(x, weights);
  if (grad_out.defined()) {
    TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape),
                "grad_out must have the shape of the result (x.shape[:-1]",
                weights.dim() == 2 ? " + (C,)" : "", ") = ", at::IntArrayRef(out_shape),
                ", got ", grad_out.sizes());
    check_like_x(grad_out, "grad_out", x);
  }
  const int64_t channels = weights.dim() == 2 ? weights.size(1) : 1;

  Problem prob;
  prob.x2d = x.reshape({-1, 3});
  gf_params& p = prob.params;
  p = gf_params{};
  p.dtype = to_gf_dtype(x.scalar_type());
  p.cov_mode = cov.size(1) == 6 ? GF_COV_FULL : GF_COV_DIAG;
  p.eps = eps;
  p.cutoff = cutoff.has_value() ? *cutoff : 0.0;  // 0: no cutoff
  p.num_points = prob.x2d.size(0);
  p.num_gaussians = n;
  p.num_channels = channels;
  p.x = prob.x2d.data_ptr();
  p.x_stride[0] = prob.x2d.stride(0);
  p.x_stride[1] = prob.x2d.stride(1);
  p.means = means.data_ptr();
  p.means_stride[0] = means.stride(0);
  p.means_stride[1] = means.stride(1);
  p.cov = cov.data_ptr();
  p.cov_stride[0] = cov.stride(0);
  p.cov_stride[1] = cov.stride(1);
  p.weights = weights.data_ptr();
  p.weights_stride[0] = weights.stride(0);
  p.weights_stride[1] = weights.dim() == 2 ? weights.stride(1) : 0;
  if (grad_out.defined()) {
    // grad_out has the result's shape; a view as [B, C] exists for the common layouts
    // (dense, or an expanded scalar from .sum()), otherwise reshape copies.
    at::Tensor g = weights.dim() == 2 ? grad_out.reshape({-1, channels})
                                      : grad_out.reshape({-1, 1});
    p.grad_out = g.data_ptr();
    p.grad_out_stride[0] = g.stride(0);
    p.grad_out_stride[1] = g.stride(1);
    prob.grad_out_flat = g;
  }
  return prob;
}

at::Tensor allocate_output(const at::Tensor& x, const at::Tensor& weights, const gf_params& p) {
  const at::DimVector shape = output_shape(x, weights);
  if (p.num_points == 0 || p.num_gaussians == 0) return at::zeros(shape, x.options());
  return at::empty(shape, x.options());
}

std::array<at::Tensor, 4> allocate_grads(const at::Tensor& x, const at::Tensor& means,
                                         const at::Tensor& cov, const at::Tensor& weights,
                                         const gf_params& p,
                                         std::array<bool, 4> output_mask) {
  const bool empty_sum = p.num_points == 0 || p.num_gaussians == 0;
  const at::Tensor* inputs[4] = {&x, &means, &cov, &weights};
  std::array<at::Tensor, 4> grads;
  for (int i = 0; i < 4; ++i) {
    if (!output_mask[i]) continue;
    const at::Tensor& in = *inputs[i];
    grads[i] = empty_sum ? at::zeros(in.sizes(), in.options())
                         : at::empty(in.sizes(), in.options());
  }
  return grads;
}

void set_grad_outputs(gf_params& p, const std::array<at::Tensor, 4>& grads) {
  p.grad_x = grads[0].defined() ? grads[0].data_ptr() : nullptr;
  p.grad_means = grads[1].defined() ? grads[1].data_ptr() : nullptr;
  p.grad_cov = grads[2].defined() ? grads[2].data_ptr() : nullptr;
  p.grad_weights = grads[3].defined() ? grads[3].data_ptr() : nullptr;
}

void check_status(gf_status status, const char* what) {
  TORCH_CHECK(status == GF_OK, "gaussfield: ", what, " failed: ", gf_status_string(status));
}

}  // namespace gaussfield

TORCH_LIBRARY(gaussfield, m) {
  m.def(
      "gaussian_field(Tensor x, Tensor means, Tensor cov, Tensor weights, float eps=1e-6, "
      "float? cutoff=None) -> Tensor");
  m.def(
      "gaussian_field_backward(Tensor grad_out, Tensor x, Tensor means, Tensor cov, "
      "Tensor weights, float eps, float? cutoff, bool[4] output_mask) -> (Tensor, Tensor, "
      "Tensor, Tensor)");
  // Benchmarks' view of the culling plan (CPU tensors; see cpu.cpp): not part of the
  // differentiable API.
  m.def(
      "_culling_stats(Tensor x, Tensor means, Tensor cov, Tensor weights, float eps, "
      "float cutoff, float points_per_cell) -> float[]");
}
