// A LibTorch program using the gaussfield ops, without Python.
//
// The ops live in libgaussfield_ops.so; linking it registers them with the dispatcher,
// which finds them by name.  Autograd for gaussian_field is attached from Python, so a
// C++ caller runs the backward op itself.  The result is checked against the closed form
// written with torch ops (and its gradients against LibTorch's autograd).
#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <optional>
#include <tuple>

namespace {

using ForwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, double, std::optional<double>);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double, std::optional<double>, std::array<bool, 4>);

// f(x) in closed form, full covariance (cov_tril) parameterisation.
at::Tensor closed_form(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                       const at::Tensor& weights, double eps) {
  auto zero = torch::zeros_like(cov.select(1, 0));
  auto L = torch::stack({torch::stack({cov.select(1, 0).exp(), zero, zero}, -1),
                         torch::stack({cov.select(1, 1), cov.select(1, 2).exp(), zero}, -1),
                         torch::stack({cov.select(1, 3), cov.select(1, 4), cov.select(1, 5).exp()}, -1)},
                        -2);
  auto sigma = L.matmul(L.transpose(-2, -1)) + eps * torch::eye(3, cov.options());
  auto p = torch::linalg_inv(sigma);                         // [N, 3, 3]
  auto d = x.unsqueeze(-2) - means;                          // [B, N, 3]
  auto q = (d.unsqueeze(-1) * p * d.unsqueeze(-2)).sum({-1, -2});
  return (weights * torch::exp(-0.5 * q)).sum(-1);
}

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

}  // namespace

int main() {
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("gaussfield::gaussian_field", "")
                     .typed<ForwardFn>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("gaussfield::gaussian_field_backward", "")
                      .typed<BackwardFn>();

  torch::manual_seed(0);
  const auto opts = torch::dtype(torch::kFloat64);
  const int64_t B = 300, N = 40;
  auto x = torch::rand({B, 3}, opts) * 10;
  auto means = (torch::rand({N, 3}, opts) * 10).requires_grad_();
  auto cov = torch::cat({torch::full({N, 1}, 0.5, opts), 0.2 * torch::randn({N, 1}, opts),
                         torch::full({N, 1}, 0.4, opts), 0.2 * torch::randn({N, 2}, opts),
                         torch::full({N, 1}, 0.6, opts)}, 1).requires_grad_();
  auto weights = torch::randn({N}, opts).requires_grad_();
  const double eps = 1e-6;

  at::Tensor f;
  {
    torch::NoGradGuard no_grad;
    f = forward.call(x, means, cov, weights, eps, std::nullopt);
  }
  auto ref = closed_form(x, means, cov, weights, eps);
  auto grad_out = torch::randn({B}, opts);
  auto grads = backward.call(grad_out, x, means.detach(), cov.detach(), weights.detach(), eps,
                             std::nullopt, {false, true, true, true});
  auto ref_grads = torch::autograd::grad({ref}, {means, cov, weights}, {grad_out});

  const double errs[4] = {rel_err(f, ref.detach()), rel_err(std::get<1>(grads), ref_grads[0]),
                          rel_err(std::get<2>(grads), ref_grads[1]),
                          rel_err(std::get<3>(grads), ref_grads[2])};
  std::printf("gaussian_field on %lld points x %lld Gaussians: value error %.1e, gradient "
              "errors (means, cov, weights) %.1e %.1e %.1e\n",
              static_cast<long long>(B), static_cast<long long>(N), errs[0], errs[1], errs[2],
              errs[3]);
  std::printf("grad_x not requested: %s\n", std::get<0>(grads).defined() ? "computed" : "skipped");
  for (double e : errs)
    if (!(e < 1e-10)) {
      std::printf("FAILED\n");
      return 1;
    }
  std::printf("ok\n");
  return 0;
}
