// SPDX-License-Identifier: Apache-2.0
// problem.h - what the CPU and CUDA implementations of the ops share: the one place
// inputs are validated (ops.cpp), the translation of tensors into a gf_params, the
// allocation of outputs, and the dtype promotion of low-precision inputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "gaussfield.h"

namespace gaussfield {

// The validated problem.  x2d is x viewed (or, where no view exists, copied) as
// [B, 3], grad_out_flat likewise as [B, C]; they keep those buffers alive for params.  The
// other tensors are the caller's, strides and all.
struct Problem {
  at::Tensor x2d;
  at::Tensor grad_out_flat;
  at::Tensor cov2d;  // cov, or a 3x3 matrix per Gaussian viewed as [N, 9]
  at::Tensor dir_x2d, dir_cov2d;  // the double backward's directions, likewise
  gf_params params;  // inputs filled in, outputs NULL
};

// Whether cov has the shape of a 3x3 matrix per Gaussian, [N, 3, 3].
bool is_matrix_shape(const at::Tensor& cov);

// The parameterisation of cov, as the ops' `whitened` argument and cov's shape say it
// (throws a c10::Error naming cov otherwise): with whitened, cov must be the whitening
// factor M [N, 3, 3] (GF_COV_WHITENED, read by the C core as rows of 9; the entries
// above the diagonal are not read and their gradient is 0); without it, [N, 6], [N, 3],
// [N, 7] or a covariance matrix Sigma [N, 3, 3] (GF_COV_SIGMA, rows of 9, its symmetric
// part read).  No shape is read two ways.
gf_cov_mode cov_mode_of(const at::Tensor& cov, bool whitened);

// For cov a covariance matrix Sigma [N, 3, 3] (GF_COV_SIGMA): throws a c10::ValueError
// (Python's ValueError) naming the first Gaussian whose Sigma has finite entries and is
// not positive definite in float64, by the C front-end's own criterion (a Cholesky pivot
// of the symmetric part <= 0), which would give it a NaN whitening factor.  NaN and
// infinite entries pass (the front-end's arithmetic decides: NaN gives NaN).  A pass
// over N on cov's device and, on CUDA, one synchronisation: the forward ops call it in
// eager use, never while a CUDA graph is captured (cuda.cpp), where such a Gaussian
// gives NaN values; the backward ops do not call it.
void check_covariance_matrices(const at::Tensor& cov);

// Checks shapes, dtypes, devices, eps and cutoff of the forward's inputs and throws a
// c10::Error naming the argument otherwise.  weights are [N] (one channel) or [N, C];
// `whitened` as in cov_mode_of.  `grad_out`, when defined, is checked against the
// result's shape too (the backward).
Problem make_problem(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                     const at::Tensor& weights, double eps, std::optional<double> cutoff,
                     bool whitened, const at::Tensor& grad_out = at::Tensor());

// Outputs of the forward and the backward, allocated on x's device: the forward's
// result has shape x.shape[:-1] (+ [C] for weights [N, C]); each wanted gradient has
// its input's shape.  Filled with zeros where B = 0 or N = 0 (empty sums), so a caller
// may return them at once.
at::Tensor allocate_output(const at::Tensor& x, const at::Tensor& weights, const gf_params& p);
std::array<at::Tensor, 4> allocate_grads(const at::Tensor& x, const at::Tensor& means,
                                         const at::Tensor& cov, const at::Tensor& weights,
                                         const gf_params& p,
                                         std::array<bool, 4> output_mask);

// Points the output fields of p at the defined tensors among these.
void set_grad_outputs(gf_params& p, const std::array<at::Tensor, 4>& grads);

using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The backward's problem: make_problem's, its wanted gradients allocated (zeros for
// empty sums) and p's outputs pointed at them.  has_work is false where nothing is left
// to compute (an empty sum, or no gradient wanted): return result() at once.
struct BackwardProblem {
  Problem prob;
  std::array<at::Tensor, 4> grads;
  bool has_work;
  BackwardResult result() const { return {grads[0], grads[1], grads[2], grads[3]}; }
};
BackwardProblem make_backward_problem(const at::Tensor& grad_out, const at::Tensor& x,
                                      const at::Tensor& means, const at::Tensor& cov,
                                      const at::Tensor& weights, double eps,
                                      std::optional<double> cutoff, bool whitened,
                                      std::array<bool, 4> output_mask);

// Throws a c10::Error naming `structure` unless it is a culling structure of `bytes`
// bytes on x's device (what _gaussian_field_culled returned for inputs of these shapes).
void check_structure_tensor(const at::Tensor& structure, int64_t bytes, const at::Tensor& x);

// Throws a c10::Error carrying gf_status_string(status) when status != GF_OK.
void check_status(gf_status status, const char* what);

using SecondResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The double backward's problem: make_problem's checks, cov a whitening factor (the op
// takes factors only: whitened, always), each
// direction shaped like its input, and grad_out wherever an output but the first is
// wanted; the directions' pointers filled in (NULL for None), the wanted outputs
// allocated (zeros for empty sums: then has_work is false) and p's output pointers at
// them: grad_grad_out shaped like the result, the others like their inputs.
struct SecondProblem {
  Problem prob;
  SecondResult result;
  bool has_work;
};
SecondProblem make_second_problem(const std::optional<at::Tensor>& grad_out, const at::Tensor& x,
                                  const at::Tensor& means, const at::Tensor& cov,
                                  const at::Tensor& weights, double eps,
                                  std::optional<double> cutoff,
                                  const std::optional<at::Tensor>& dir_x,
                                  const std::optional<at::Tensor>& dir_means,
                                  const std::optional<at::Tensor>& dir_cov,
                                  const std::optional<at::Tensor>& dir_weights,
                                  std::array<bool, 5> output_mask);

// A voxelize problem (the grid's ops): make_problem's checks of means, cov, weights, eps,
// cutoff and whitened, with no x: shape (each >= 1), origin [3] and edges [9] (row-major,
// edges[r][c]; finite, the 3x3 matrix invertible), offset and size (>= 0, offset + size <=
// shape), grad_out (when defined) [S0, S1, S2] or [S0, S1, S2, C] as the result.  params
// has x NULL, num_points S0 S1 S2, and grid's address is what the C API's voxel
// functions take beside it.  out_shape is the result's shape.
struct VoxelProblem {
  Problem prob;
  gf_grid grid;
  std::vector<int64_t> out_shape;
};
VoxelProblem make_voxel_problem(const at::Tensor& means, const at::Tensor& cov,
                                const at::Tensor& weights, c10::IntArrayRef shape,
                                c10::ArrayRef<double> origin, c10::ArrayRef<double> edges,
                                c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
                                std::optional<double> cutoff, bool whitened,
                                const at::Tensor& grad_out = at::Tensor());

// Low-precision inputs.  The C core computes in float32 or float64; an op that receives
// a float16 or bfloat16 input computes in float32, or in float64 where another input is
// float64, and returns its result in x's dtype and each gradient in its input's dtype
// (so autograd sees the dtypes it expects).  Without a low-precision input nothing is
// converted, and inputs of different dtypes stay an error.
using NamedTensor = std::pair<const char*, const at::Tensor*>;

// The dtype to compute in, or nullopt when no input is of low precision.  Throws, naming
// the argument, for a dtype that is not floating point of one of these four.
std::optional<at::ScalarType> promoted_dtype(std::initializer_list<NamedTensor> inputs);

// The forward implementation Impl (CPU or CUDA), through promoted_dtype: what the ops
// register, as forward_promoted<&impl>.
template <auto Impl>
at::Tensor forward_promoted(const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
                            const at::Tensor& weights, double eps, std::optional<double> cutoff,
                            bool whitened) {
  const auto dt = promoted_dtype({{"x", &x}, {"means", &means}, {"cov", &cov}, {"weights", &weights}});
  if (!dt) return Impl(x, means, cov, weights, eps, cutoff, whitened);
  return Impl(x.to(*dt), means.to(*dt), cov.to(*dt), weights.to(*dt), eps, cutoff, whitened)
      .to(x.scalar_type());
}

// The backward implementation Impl, through promoted_dtype.
template <auto Impl>
BackwardResult backward_promoted(const at::Tensor& grad_out, const at::Tensor& x,
                                 const at::Tensor& means, const at::Tensor& cov,
                                 const at::Tensor& weights, double eps,
                                 std::optional<double> cutoff, std::array<bool, 4> output_mask,
                                 bool whitened) {
  const auto dt = promoted_dtype({{"grad_out", &grad_out}, {"x", &x}, {"means", &means},
                                  {"cov", &cov}, {"weights", &weights}});
  auto grads = dt ? Impl(grad_out.to(*dt), x.to(*dt), means.to(*dt), cov.to(*dt),
                         weights.to(*dt), eps, cutoff, output_mask, whitened)
                  : Impl(grad_out, x, means, cov, weights, eps, cutoff, output_mask, whitened);
  auto back = [](const at::Tensor& g, const at::Tensor& like) {
    return g.defined() ? g.to(like.scalar_type()) : g;
  };
  return {back(std::get<0>(grads), x), back(std::get<1>(grads), means),
          back(std::get<2>(grads), cov), back(std::get<3>(grads), weights)};
}

}  // namespace gaussfield
