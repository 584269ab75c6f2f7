// SPDX-License-Identifier: Apache-2.0
// autocast.cpp - the Autocast kernels of gaussian_field (CPU and CUDA).  Under
// torch.autocast the op runs in float32, as autocast's "float32" ops do: float16 and
// bfloat16 inputs are cast to float32, float64 inputs are left alone (autocast never
// narrows them), and where one input is float64 the others are promoted to float64.
// The result is float32 (float64 where promoted).  The casts are ordinary dispatcher
// calls, so autograd records them and gradients arrive in each input's own dtype.
// The backward op needs no Autocast kernel: it receives what the forward saved.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>

namespace gaussfield {
namespace {

at::Tensor gaussian_field_autocast(const at::Tensor& x, const at::Tensor& means,
                                   const at::Tensor& cov, const at::Tensor& weights, double eps,
                                   std::optional<double> cutoff, bool whitened) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const bool wide = x.scalar_type() == at::kDouble || means.scalar_type() == at::kDouble ||
                    cov.scalar_type() == at::kDouble || weights.scalar_type() == at::kDouble;
  const at::ScalarType dt = wide ? at::kDouble : at::kFloat;
  auto cast = [dt](const at::Tensor& t) { return t.is_floating_point() ? t.to(dt) : t; };
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gaussfield::gaussian_field", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, double, std::optional<double>,
                                         bool)>();
  return op.call(cast(x), cast(means), cast(cov), cast(weights), eps, cutoff, whitened);
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, AutocastCPU, m) {
  m.impl("gaussian_field", &gaussfield::gaussian_field_autocast);
}

TORCH_LIBRARY_IMPL(gaussfield, AutocastCUDA, m) {
  m.impl("gaussian_field", &gaussfield::gaussian_field_autocast);
}
