// SPDX-License-Identifier: Apache-2.0
// gaussfield.hpp - the C++ (LibTorch) entry point of gaussfield, with autograd.
//
// Link libgaussfield_ops (which registers the ops with the dispatcher) and call
// gaussfield::gaussian_field like any differentiable torch function: loss.backward()
// then reaches x, means, cov and weights, with no Python anywhere.  Python programs use
// the op itself (torch.ops.gaussfield.gaussian_field), whose Autograd kernel is
// registered from Python; this function does not go through that kernel, so the two
// never meet.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../csrc/gaussfield.h"  // GF_DEFAULT_EPS

namespace gaussfield {

// f(x) = sum_n w_n exp(-q_n(x) / 2) [q_n(x) <= cutoff^2] for points x [..., 3], means
// [N, 3], cov and weights [N] or [N, C]; the same contract as the Python
// gaussfield.gaussian_field.  What cov means is said by `whitened`, never by its shape
// alone: with whitened = false, cov is [N, 6] (cov_tril), [N, 3] (log_scales), [N, 7]
// (quaternion and log-scales, as 3D Gaussian Splatting) or a covariance matrix Sigma
// [N, 3, 3] (its symmetric part (S + S^T) / 2 read, eps not used, the gradient symmetric;
// one that is not positive definite throws a c10::ValueError naming the Gaussian, except
// under CUDA graph capture, where it gives NaN); with whitened = true it is the
// whitening factor M [N, 3, 3] (lower triangular, Sigma^-1 = M^T M, the entries above
// the diagonal ignored).  Differentiable to first order with respect to all four tensors
// (only the gradients autograd asks for are computed); the backward recomputes every
// pair term, so memory stays O(B + N).  Thread-safe as any torch function.
at::Tensor gaussian_field(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                          const at::Tensor& weights, double eps = GF_DEFAULT_EPS,
                          std::optional<double> cutoff = std::nullopt, bool whitened = false);

}  // namespace gaussfield
