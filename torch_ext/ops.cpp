// SPDX-License-Identifier: Apache-2.0
// ops.cpp - the schemas of the gaussfield ops, and the validation that both the CPU
// and the CUDA implementations call before touching data.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "problem.h"

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

void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// An input's data and its [rows, cols] strides into a gf_params (cols' stride 0 for a
// 1-D tensor: one column, weights [N] as [N, 1]).
void set_input(const at::Tensor& t, const void** data, int64_t stride[2]) {
  *data = t.data_ptr();
  stride[0] = t.stride(0);
  stride[1] = t.dim() >= 2 ? t.stride(1) : 0;
}

}  // namespace

bool is_matrix_shape(const at::Tensor& cov) {
  return cov.dim() == 3 && cov.size(1) == 3 && cov.size(2) == 3;
}

gf_cov_mode cov_mode_of(const at::Tensor& cov, bool whitened) {
  if (whitened) {
    TORCH_CHECK(is_matrix_shape(cov),
                "with whitened=True, cov must be the whitening factor M [N, 3, 3] (lower "
                "triangular, Sigma^-1 = M^T M), got ", cov.sizes());
    return GF_COV_WHITENED;
  }
  if (is_matrix_shape(cov)) return GF_COV_SIGMA;
  TORCH_CHECK(cov.dim() == 2 && (cov.size(1) == 6 || cov.size(1) == 3 || cov.size(1) == 7),
              "cov must have shape [N, 6] (full covariance, cov_tril), [N, 3] (diagonal, "
              "log_scales), [N, 7] (rotation quaternion and log-scales, as 3D Gaussian "
              "Splatting), [N, 3, 3] (a covariance matrix Sigma), or [N, 3, 3] with "
              "whitened=True (the whitening factor M), got ",
              cov.sizes());
  return cov.size(1) == 6 ? GF_COV_FULL : cov.size(1) == 7 ? GF_COV_QUAT : GF_COV_DIAG;
}

namespace {

// Whether Sigma = (S + S^T) / 2 of one row-major 3x3 S has finite entries and a pivot of
// its Cholesky factor <= 0 (or NaN): csrc/gf_frontends.h's gf_whitening_of_covariance,
// in the same double arithmetic, so that exactly the Gaussians the front-end makes NaN
// are refused.
bool refused(const double s[9]) {
  for (int k = 0; k < 9; ++k)
    if (!std::isfinite(s[k])) return false;
  const double xx = s[0], yy = s[4], zz = s[8];
  const double xy = 0.5 * (s[1] + s[3]), xz = 0.5 * (s[2] + s[6]), yz = 0.5 * (s[5] + s[7]);
  const double k00 = std::sqrt(xx);
  const double k10 = xy / k00, k20 = xz / k00;
  const double p1 = yy - k10 * k10;
  const double k21 = (yz - k20 * k10) / std::sqrt(p1);
  const double p2 = zz - k20 * k20 - k21 * k21;
  return !(xx > 0.0 && p1 > 0.0 && p2 > 0.0);
}

// The first refused Gaussian of a CPU cov, or -1: one pass, on torch's threads.
int64_t first_refused_cpu(const at::Tensor& cov) {
  const int64_t n = cov.size(0);
  int64_t first = -1;
  std::mutex mutex;
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "check_covariance_matrices", [&] {
    const scalar_t* base = cov.const_data_ptr<scalar_t>();
    const int64_t s0 = cov.stride(0), s1 = cov.stride(1), s2 = cov.stride(2);
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        double v[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) v[3 * i + j] = double(base[g * s0 + i * s1 + j * s2]);
        if (!refused(v)) continue;
        std::lock_guard<std::mutex> lock(mutex);
        if (first < 0 || g < first) first = g;
        return;  // the rest of this range cannot come first
      }
    });
  });
  return first;
}

// The same on another device, in ATen (one synchronisation, for the answer).
int64_t first_refused_device(const at::Tensor& cov) {
  const at::Tensor s = cov.to(at::kDouble);
  auto at_ = [&](int i, int j) { return s.select(1, i).select(1, j); };
  const at::Tensor xx = at_(0, 0), yy = at_(1, 1), zz = at_(2, 2);
  const at::Tensor xy = 0.5 * (at_(0, 1) + at_(1, 0));
  const at::Tensor xz = 0.5 * (at_(0, 2) + at_(2, 0));
  const at::Tensor yz = 0.5 * (at_(1, 2) + at_(2, 1));
  const at::Tensor k00 = xx.sqrt();
  const at::Tensor k10 = xy / k00, k20 = xz / k00;
  const at::Tensor p1 = yy - k10 * k10;
  const at::Tensor k21 = (yz - k20 * k10) / p1.sqrt();
  const at::Tensor p2 = zz - k20 * k20 - k21 * k21;
  const at::Tensor positive = xx.gt(0) & p1.gt(0) & p2.gt(0);
  const at::Tensor bad = positive.logical_not() & s.isfinite().flatten(1).all(1);
  // the first bad index, or -1, in one value: one synchronisation
  const at::Tensor index = at::arange(s.size(0), bad.options().dtype(at::kLong));
  const at::Tensor masked = at::where(bad, index, at::full_like(index, s.size(0)));
  const int64_t first = masked.min().item<int64_t>();
  return first < s.size(0) ? first : -1;
}

}  // namespace

void check_covariance_matrices(const at::Tensor& cov) {
  if (cov.size(0) == 0) return;
  at::NoGradGuard no_grad;
  const at::Tensor c = cov.detach();
  const int64_t n = c.is_cpu() ? first_refused_cpu(c) : first_refused_device(c);
  if (n < 0) return;
  const at::Tensor row = c.select(0, n).to(at::kCPU, at::kDouble).contiguous();
  const double* v = row.const_data_ptr<double>();
  TORCH_CHECK_VALUE(false, "cov: the covariance matrix Sigma of Gaussian ", n,
                    " is not positive definite (its symmetric part has no Cholesky factor in "
                    "float64): [[", v[0], ", ", v[1], ", ", v[2], "], [", v[3], ", ", v[4], ", ",
                    v[5], "], [", v[6], ", ", v[7], ", ", v[8],
                    "]]. If cov is a whitening factor M, pass whitened=True (gaussfield 0.2 "
                    "reads an unnamed [N, 3, 3] as Sigma)");
}

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
                     bool whitened, const at::Tensor& grad_out) {
  TORCH_CHECK(x.defined() && means.defined() && cov.defined() && weights.defined(),
              "gaussfield: x, means, cov and weights must all be tensors");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == 3, "x must have shape [..., 3], got ",
              x.sizes());
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must have shape [N, 3], got ",
              means.sizes());
  const int64_t n = means.size(0);
  const gf_cov_mode mode = cov_mode_of(cov, whitened);
  TORCH_CHECK(cov.size(0) == n, "cov must have N = ", n, " rows as in means, got ",
              cov.sizes());
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
  p.cov_mode = mode;
  p.eps = eps;
  p.cutoff = cutoff.has_value() ? *cutoff : 0.0;  // 0: no cutoff
  p.num_points = prob.x2d.size(0);
  p.num_gaussians = n;
  p.num_channels = channels;
  set_input(prob.x2d, &p.x, p.x_stride);
  set_input(means, &p.means, p.means_stride);
  // a 3x3 matrix per Gaussian as rows of 9 (a view wherever one exists)
  prob.cov2d = cov.dim() == 3 ? cov.reshape({n, 9}) : cov;
  set_input(prob.cov2d, &p.cov, p.cov_stride);
  set_input(weights, &p.weights, p.weights_stride);
  if (grad_out.defined()) {
    // grad_out has the result's shape; a view as [B, C] exists for the common layouts
    // (dense, or an expanded scalar from .sum()), otherwise reshape copies.
    at::Tensor g = weights.dim() == 2 ? grad_out.reshape({-1, channels})
                                      : grad_out.reshape({-1, 1});
    set_input(g, &p.grad_out, p.grad_out_stride);
    prob.grad_out_flat = g;
  }
  return prob;
}

namespace {

// The double backward's wanted outputs (zeros for empty sums), and p's output pointers
// at them.
SecondResult allocate_second(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                             const at::Tensor& weights, gf_params& p,
                             std::array<bool, 5> output_mask);

}  // namespace

SecondProblem make_second_problem(const std::optional<at::Tensor>& grad_out, const at::Tensor& x,
                                  const at::Tensor& means, const at::Tensor& cov,
                                  const at::Tensor& weights, double eps,
                                  std::optional<double> cutoff,
                                  const std::optional<at::Tensor>& dir_x,
                                  const std::optional<at::Tensor>& dir_means,
                                  const std::optional<at::Tensor>& dir_cov,
                                  const std::optional<at::Tensor>& dir_weights,
                                  std::array<bool, 5> output_mask) {
  TORCH_CHECK(is_matrix_shape(cov),
              "gaussian_field_double_backward: cov must be a whitening factor [N, 3, 3] (the "
              "op takes factors only; the parameterisations' own derivatives are applied "
              "around it), got ",
              cov.sizes());
  const bool needs_grad_out =
      output_mask[1] || output_mask[2] || output_mask[3] || output_mask[4];
  TORCH_CHECK(grad_out.has_value() || !needs_grad_out,
              "gaussian_field_double_backward: grad_out is needed for the gradients of x, "
              "means, cov and weights");
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, /*whitened=*/true,
                              grad_out.has_value() ? *grad_out : at::Tensor());
  gf_params& p = prob.params;
  auto check_dir = [&](const std::optional<at::Tensor>& d, const at::Tensor& like,
                       const char* name) {
    if (!d.has_value()) return;
    TORCH_CHECK(d->sizes() == like.sizes(), name, " must have the shape of ",
                name + 4, " (", like.sizes(), "), got ", d->sizes());
    check_like_x(*d, name, x);
  };
  check_dir(dir_x, x, "dir_x");
  check_dir(dir_means, means, "dir_means");
  check_dir(dir_cov, cov, "dir_cov");
  check_dir(dir_weights, weights, "dir_weights");
  if (dir_x.has_value()) {
    prob.dir_x2d = dir_x->reshape({-1, 3});
    set_input(prob.dir_x2d, &p.dir_x, p.dir_x_stride);
  }
  if (dir_means.has_value()) set_input(*dir_means, &p.dir_means, p.dir_means_stride);
  if (dir_cov.has_value()) {
    prob.dir_cov2d = dir_cov->reshape({cov.size(0), 9});
    set_input(prob.dir_cov2d, &p.dir_cov, p.dir_cov_stride);
  }
  if (dir_weights.has_value()) set_input(*dir_weights, &p.dir_weights, p.dir_weights_stride);
  SecondResult result = allocate_second(x, means, cov, weights, p, output_mask);
  const bool has_work = p.num_points > 0 && p.num_gaussians > 0;
  return {std::move(prob), std::move(result), has_work};
}

namespace {

SecondResult allocate_second(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                             const at::Tensor& weights, gf_params& p,
                             std::array<bool, 5> output_mask) {
  const bool empty_sum = p.num_points == 0 || p.num_gaussians == 0;
  auto make = [&](bool wanted, at::IntArrayRef shape) {
    if (!wanted) return at::Tensor();
    return empty_sum ? at::zeros(shape, x.options()) : at::empty(shape, x.options());
  };
  const at::DimVector out_shape = output_shape(x, weights);
  SecondResult r{make(output_mask[0], out_shape), make(output_mask[1], x.sizes()),
                 make(output_mask[2], means.sizes()), make(output_mask[3], cov.sizes()),
                 make(output_mask[4], weights.sizes())};
  p.grad_grad_out = data_or_null(std::get<0>(r));
  p.grad_x = data_or_null(std::get<1>(r));
  p.grad_means = data_or_null(std::get<2>(r));
  p.grad_cov = data_or_null(std::get<3>(r));
  p.grad_weights = data_or_null(std::get<4>(r));
  return r;
}

}  // namespace

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
  p.grad_x = data_or_null(grads[0]);
  p.grad_means = data_or_null(grads[1]);
  p.grad_cov = data_or_null(grads[2]);
  p.grad_weights = data_or_null(grads[3]);
}

BackwardProblem make_backward_problem(const at::Tensor& grad_out, const at::Tensor& x,
                                      const at::Tensor& means, const at::Tensor& cov,
                                      const at::Tensor& weights, double eps,
                                      std::optional<double> cutoff, bool whitened,
                                      std::array<bool, 4> output_mask) {
  BackwardProblem b{make_problem(x, means, cov, weights, eps, cutoff, whitened, grad_out), {},
                    false};
  gf_params& p = b.prob.params;
  b.grads = allocate_grads(x, means, cov, weights, p, output_mask);
  set_grad_outputs(p, b.grads);
  const bool any_wanted = p.grad_x || p.grad_means || p.grad_cov || p.grad_weights;
  b.has_work = p.num_points > 0 && p.num_gaussians > 0 && any_wanted;
  return b;
}

VoxelProblem make_voxel_problem(const at::Tensor& means, const at::Tensor& cov,
                                const at::Tensor& weights, c10::IntArrayRef shape,
                                c10::ArrayRef<double> origin, c10::ArrayRef<double> edges,
                                c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
                                std::optional<double> cutoff, bool whitened,
                                const at::Tensor& grad_out) {
  TORCH_CHECK(means.defined() && cov.defined() && weights.defined(),
              "gaussfield: means, cov and weights must all be tensors");
  TORCH_CHECK(shape.size() == 3, "shape must have 3 entries (D0, D1, D2), got ", shape);
  TORCH_CHECK(offset.size() == 3, "offset must have 3 entries, got ", offset);
  TORCH_CHECK(size.size() == 3, "size must have 3 entries, got ", size);
  TORCH_CHECK(origin.size() == 3, "origin must have 3 values, got ", origin.size());
  TORCH_CHECK(edges.size() == 9, "edges must have 9 values (a 3x3 matrix, row-major), got ",
              edges.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(shape[c] >= 1, "shape must have entries >= 1, got ", shape);
    TORCH_CHECK(offset[c] >= 0, "offset must have entries >= 0, got ", offset);
    TORCH_CHECK(size[c] >= 0, "size must have entries >= 0, got ", size);
    TORCH_CHECK(offset[c] + size[c] <= shape[c], "offset + size must be <= shape on every "
                "axis, got offset ", offset, ", size ", size, ", shape ", shape);
    TORCH_CHECK(std::isfinite(origin[c]), "origin must be finite, got ", origin);
  }
  for (double e : edges) TORCH_CHECK(std::isfinite(e), "edges must be finite, got ", edges);
  // (there is no x: the inputs are held to means, before make_problem holds them to x)
  check_floating(means, "means");
  for (const auto& [t, name] : {std::pair{&cov, "cov"}, std::pair{&weights, "weights"}}) {
    TORCH_CHECK(t->scalar_type() == means.scalar_type(), name, " must have the same dtype as "
                "means (", means.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == means.device(), name, " must be on the same device as means (",
                means.device(), "), got ", t->device());
  }
  // the voxel centres as points: make_problem's checks of the Gaussians' inputs
  const at::Tensor x = at::empty({0, 3}, means.options());
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, whitened);
  gf_grid g{};
  for (int c = 0; c < 3; ++c) {
    g.shape[c] = shape[c];
    g.offset[c] = offset[c];
    g.size[c] = size[c];
    g.origin[c] = origin[c];
    for (int r = 0; r < 3; ++r) g.edges[r][c] = edges[3 * r + c];
  }
  const gf_status st = gf_check_grid(&g, prob.params.dtype);
  TORCH_CHECK(st == GF_OK, "edges must be an invertible 3x3 matrix whose voxel centres are "
              "finite in ", means.scalar_type(), " (the box's edge vectors, edges[r][c] = "
              "coordinate r of the edge along grid axis c), got ", edges, " with origin ",
              origin);
  std::vector<int64_t> out_shape{size[0], size[1], size[2]};
  if (weights.dim() == 2) out_shape.push_back(weights.size(1));
  gf_params& p = prob.params;
  p.x = nullptr;
  p.x_stride[0] = p.x_stride[1] = 0;
  p.num_points = size[0] * size[1] * size[2];
  if (grad_out.defined()) {
    TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape),
                "grad_out must have the shape of the result (size",
                weights.dim() == 2 ? " + (C,)" : "", ") = ", at::IntArrayRef(out_shape),
                ", got ", grad_out.sizes());
    TORCH_CHECK(grad_out.scalar_type() == means.scalar_type(),
                "grad_out must have the same dtype as means (", means.scalar_type(), "), got ",
                grad_out.scalar_type());
    TORCH_CHECK(grad_out.device() == means.device(), "grad_out must be on the same device as "
                "means (", means.device(), "), got ", grad_out.device());
    at::Tensor flat = grad_out.reshape({-1, p.num_channels});
    set_input(flat, &p.grad_out, p.grad_out_stride);
    prob.grad_out_flat = flat;
  }
  return {std::move(prob), g, std::move(out_shape)};
}

void check_structure_tensor(const at::Tensor& structure, int64_t bytes, const at::Tensor& x) {
  TORCH_CHECK(structure.scalar_type() == at::kByte && structure.dim() == 1 &&
                  structure.numel() == bytes && structure.is_contiguous(),
              "structure must be the culling structure of _gaussian_field_culled for these "
              "inputs (uint8 [", bytes, "], contiguous), got ", structure.scalar_type(), " ",
              structure.sizes());
  TORCH_CHECK(structure.device() == x.device(), "structure must be on the device of x (",
              x.device(), "), got ", structure.device());
}

void check_status(gf_status status, const char* what) {
  TORCH_CHECK(status == GF_OK, "gaussfield: ", what, " failed: ", gf_status_string(status));
}

}  // namespace gaussfield

// GF_DEFAULT_EPS (csrc/gaussfield.h) as the schema's text
#define GF_STR_(x) #x
#define GF_STR(x) GF_STR_(x)

TORCH_LIBRARY(gaussfield, m) {
  // What cov means is said by the schema, never by its shape alone: `whitened` (keyword
  // only) names the whitening factor M [N, 3, 3]; without it cov is one of the
  // parameterisations (csrc/gaussfield.h, gf_cov_mode).
  m.def(
      "gaussian_field(Tensor x, Tensor means, Tensor cov, Tensor weights, "
      "float eps=" GF_STR(GF_DEFAULT_EPS) ", float? cutoff=None, *, bool whitened=False) -> "
      "Tensor");
  m.def(
      "gaussian_field_backward(Tensor grad_out, Tensor x, Tensor means, Tensor cov, "
      "Tensor weights, float eps, float? cutoff, bool[4] output_mask, *, "
      "bool whitened=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // The derivative of gaussian_field_backward at a whitening factor (and, through its
  // first output, forward mode): see csrc/gaussfield.h, "Second order".  It takes
  // factors only: cov is always the whitening factor M [N, 3, 3] (what
  // gaussian_field_backward takes with whitened=True), dir_cov a direction of it; a
  // direction that is None counts as zero; outputs not in output_mask are None.
  m.def(
      "gaussian_field_double_backward(Tensor? grad_out, Tensor x, Tensor means, Tensor cov, "
      "Tensor weights, float eps, float? cutoff, Tensor? dir_x, Tensor? dir_means, "
      "Tensor? dir_cov, Tensor? dir_weights, bool[5] output_mask) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor)");
  // The culled pair of ops: the forward returns, beside the result, the culling structure
  // (uint8, its size a function of the shapes alone) that the backward takes instead of
  // planning again.  Private: the Autograd kernel of gaussian_field uses them on its
  // first-order path (python/gaussfield/autograd.py); gaussian_field_backward, the C++
  // API and direct calls keep planning their own.
  m.def(
      "_gaussian_field_culled(Tensor x, Tensor means, Tensor cov, Tensor weights, float eps, "
      "float cutoff, *, bool whitened=False) -> (Tensor, Tensor)");
  m.def(
      "_gaussian_field_culled_backward(Tensor grad_out, Tensor x, Tensor means, Tensor cov, "
      "Tensor weights, float eps, float cutoff, Tensor structure, bool[4] output_mask, *, "
      "bool whitened=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // The field at the centres of a regular grid's voxels (csrc/gaussfield.h, "Regular
  // grids"): the box is origin [3] + edges [9] (row-major, edges[r][c] = coordinate r of
  // the box's edge along grid axis c); offset and size the subvolume evaluated (SymInts,
  // so that torch.compile does not specialise on them).  -> [S0, S1, S2] (+ [C]).
  m.def(
      "voxelize(Tensor means, Tensor cov, Tensor weights, SymInt[3] shape, float[] origin, "
      "float[] edges, SymInt[3] offset, SymInt[3] size, float eps, float? cutoff, *, "
      "bool whitened=False) -> Tensor");
  m.def(
      "voxelize_backward(Tensor grad_out, Tensor means, Tensor cov, Tensor weights, "
      "SymInt[3] shape, float[] origin, float[] edges, SymInt[3] offset, SymInt[3] size, "
      "float eps, float? cutoff, bool[3] output_mask, *, bool whitened=False) -> (Tensor, "
      "Tensor, Tensor)");
  // Benchmarks' view of the culling plan (CPU tensors; see cpu.cpp): not part of the
  // differentiable API.
  m.def(
      "_culling_stats(Tensor x, Tensor means, Tensor cov, Tensor weights, float eps, "
      "float cutoff, float points_per_cell, *, bool whitened=False) -> float[]");
}
