// SPDX-License-Identifier: Apache-2.0
// cpp_api.cpp - the C++ (LibTorch) API, gaussfield::gaussian_field (gaussfield.hpp): a
// torch::autograd::Function over the two ops, the pattern of torchvision's C++
// roi_align autograd.  (The ops' Autograd kernels for Python are registered by
// python/gaussfield/autograd.py; this function does not go through them.)  Forward runs the op below autograd; backward runs the backward
// op with the mask of the gradients autograd wants.  Only the inputs are saved.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include "gaussfield.hpp"

namespace gaussfield {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                      const at::Tensor& weights, double eps, std::optional<double> cutoff,
                      bool whitened) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gaussfield::gaussian_field", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, double, std::optional<double>,
                                         bool)>();
  return op.call(x, means, cov, weights, eps, cutoff, whitened);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& means,
    const at::Tensor& cov, const at::Tensor& weights, double eps, std::optional<double> cutoff,
    std::array<bool, 4> mask, bool whitened) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gaussfield::gaussian_field_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, double, std::optional<double>, std::array<bool, 4>, bool)>();
  return op.call(grad_out, x, means, cov, weights, eps, cutoff, mask, whitened);
}

class GaussianFieldFunction : public torch::autograd::Function<GaussianFieldFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& means,
                            const at::Tensor& cov, const at::Tensor& weights, double eps,
                            std::optional<double> cutoff, bool whitened) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({x, means, cov, weights});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["cutoff"] = cutoff;
    ctx->saved_data["whitened"] = whitened;
    return forward_op(x, means, cov, weights, eps, cutoff, whitened);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    // This C++ entry point is first order: the second-order rules (the front-ends'
    // derivatives around gaussian_field_double_backward) live in the Python layer.
    // Refuse create_graph rather than hand back gradients whose own gradient would
    // silently be missing.
    TORCH_CHECK(!at::GradMode::is_enabled() ||
                    !(grad_outputs[0].requires_grad() || saved[0].requires_grad() ||
                      saved[1].requires_grad() || saved[2].requires_grad() ||
                      saved[3].requires_grad()),
                "gaussfield: gaussfield::gaussian_field (C++) is differentiable to first order "
                "only: double backward (create_graph=true) is not supported from C++ (it is "
                "from Python)");
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    const c10::IValue cut = ctx->saved_data["cutoff"];
    auto grads = backward_op(grad_outputs[0], saved[0], saved[1], saved[2], saved[3],
                             ctx->saved_data["eps"].toDouble(),
                             cut.isNone() ? std::nullopt : std::optional<double>(cut.toDouble()),
                             mask, ctx->saved_data["whitened"].toBool());
    return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), std::get<3>(grads),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor gaussian_field(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                          const at::Tensor& weights, double eps, std::optional<double> cutoff,
                          bool whitened) {
  return GaussianFieldFunction::apply(x, means, cov, weights, eps, cutoff, whitened);
}

}  // namespace gaussfield
