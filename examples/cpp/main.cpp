// SPDX-License-Identifier: Apache-2.0
// A LibTorch program using gaussfield, without Python.
//
// The ops live in libgaussfield_ops.so; linking it registers them with the dispatcher.
// Part 1 calls the two ops by name through the dispatcher and checks them against the
// closed form written with torch ops (its gradients from LibTorch's autograd).  Part 2
// trains a field with loss.backward() through gaussfield::gaussian_field, the C++
// autograd entry point (gaussfield.hpp), and checks its gradients the same way.  Part 3
// passes the same Gaussians as covariance matrices and as whitening factors.
#include <torch/torch.h>

#include "gaussfield.hpp"

#include <array>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>

namespace {

using ForwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, double, std::optional<double>,
                             bool /* whitened */);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double, std::optional<double>, std::array<bool, 4>,
    bool /* whitened */);

// Sigma [N, 3, 3] of the full covariance (cov_tril) parameterisation: L L^T + eps I.
at::Tensor covariance(const at::Tensor& cov, double eps) {
  auto zero = torch::zeros_like(cov.select(1, 0));
  auto L = torch::stack({torch::stack({cov.select(1, 0).exp(), zero, zero}, -1),
                         torch::stack({cov.select(1, 1), cov.select(1, 2).exp(), zero}, -1),
                         torch::stack({cov.select(1, 3), cov.select(1, 4), cov.select(1, 5).exp()}, -1)},
                        -2);
  return L.matmul(L.transpose(-2, -1)) + eps * torch::eye(3, cov.options());
}

// f(x) in closed form, full covariance (cov_tril) parameterisation.
at::Tensor closed_form(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                       const at::Tensor& weights, double eps) {
  auto sigma = covariance(cov, eps);
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
    f = forward.call(x, means, cov, weights, eps, std::nullopt, /*whitened=*/false);
  }
  auto ref = closed_form(x, means, cov, weights, eps);
  auto grad_out = torch::randn({B}, opts);
  auto grads = backward.call(grad_out, x, means.detach(), cov.detach(), weights.detach(), eps,
                             std::nullopt, {false, true, true, true}, /*whitened=*/false);
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

  // Part 2: autograd.  One backward through gaussfield::gaussian_field against the closed
  // form's, then a short fit with Adam and loss.backward().
  {
    auto xr = x.clone().requires_grad_();
    auto loss = (gaussfield::gaussian_field(xr, means, cov, weights, eps) * grad_out).sum();
    loss.backward();
    auto xc = x.clone().requires_grad_();
    auto ref_loss = (closed_form(xc, means, cov, weights, eps) * grad_out).sum();
    auto ref = torch::autograd::grad({ref_loss}, {xc, means, cov, weights});
    const at::Tensor got[4] = {xr.grad(), means.grad(), cov.grad(), weights.grad()};
    for (int i = 0; i < 4; ++i) {
      const double e = rel_err(got[i], ref[i]);
      if (!(e < 1e-10)) {
        std::printf("autograd gradient %d error %.1e: FAILED\n", i, e);
        return 1;
      }
    }
    std::printf("loss.backward() through gaussfield::gaussian_field: gradients match\n");
  }
  {
    torch::NoGradGuard no_grad;
    means.grad().zero_();
    cov.grad().zero_();
    weights.grad().zero_();
  }
  auto target = torch::sin(x.select(1, 0)) * torch::cos(x.select(1, 1));
  torch::optim::Adam opt({means, cov, weights}, torch::optim::AdamOptions(0.02));
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 100; ++step) {
    opt.zero_grad();
    auto loss = torch::mse_loss(gaussfield::gaussian_field(x, means, cov, weights, eps, 6.0),
                                target);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::printf("100 Adam steps with a cutoff of 6: loss %.4f -> %.4f\n", first, last);
  if (!(last < 0.7 * first)) {
    std::printf("FAILED: the loss did not fall\n");
    return 1;
  }

  // Part 3: the same Gaussians as covariance matrices Sigma [N, 3, 3] and as whitening
  // factors M (whitened = true): what cov means is said by name, never by its shape.
  {
    torch::NoGradGuard no_grad;
    auto sigma = covariance(cov, eps);
    auto M = torch::linalg_inv(torch::linalg_cholesky(sigma));
    auto want = gaussfield::gaussian_field(x, means, cov, weights, eps);
    const double e_sigma = rel_err(gaussfield::gaussian_field(x, means, sigma, weights), want);
    const double e_factor = rel_err(
        gaussfield::gaussian_field(x, means, M, weights, eps, std::nullopt, /*whitened=*/true), want);
    std::printf("Sigma [N, 3, 3]: error %.1e; the factor with whitened = true: error %.1e\n",
                e_sigma, e_factor);
    if (!(e_sigma < 1e-10 && e_factor < 1e-10)) {
      std::printf("FAILED\n");
      return 1;
    }
    bool refused = false;
    try {  // a Sigma that is not positive definite is refused, naming the Gaussian
      gaussfield::gaussian_field(x, means, -sigma, weights);
    } catch (const c10::ValueError& e) {
      refused = std::string(e.what()).find("is not positive definite") != std::string::npos;
    }
    if (!refused) {
      std::printf("FAILED: a Sigma that is not positive definite was not refused\n");
      return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}
