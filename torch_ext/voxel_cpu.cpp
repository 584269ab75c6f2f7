// SPDX-License-Identifier: Apache-2.0
// voxel_cpu.cpp - the CPU implementations of voxelize and voxelize_backward: the C core's
// voxel stages (csrc/gaussfield.h, "CPU voxelize") spread over torch's thread pool
// (at::parallel_for honours torch.set_num_threads).  Each stage writes disjoint ranges
// (tiles of voxels, Gaussians) in an order that does not depend on the split, so the
// thread count does not change a bit of the result.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "culling.h"
#include "problem.h"

namespace gaussfield {
namespace {

// gf_params.cutoff: 0 for none (make_problem), else the finite radius.
bool has_cutoff(const gf_params& p) { return p.cutoff > 0.0; }

at::Tensor voxel_records(const gf_params& p, const at::Tensor& like) {
  at::Tensor records =
      at::empty({static_cast<int64_t>(gf_records_bytes(p.dtype, p.num_gaussians))},
                like.options().dtype(at::kByte));
  gf_params q = p;
  q.records = records.data_ptr();
  at::parallel_for(0, p.num_gaussians, 256, [&](int64_t begin, int64_t end) {
    check_status(gf_cpu_precompute(&q, begin, end), "precompute");
  });
  return records;
}

at::Tensor voxel_structure(const gf_params& p, const gf_grid& g, const at::Tensor& like) {
  const size_t bytes = gf_cpu_voxel_structure_bytes(&p, &g);
  at::Tensor s = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  check_status(gf_cpu_voxel_plan(&p, &g, s.data_ptr(), bytes), "voxel plan");
  return s;
}

// The tiles' lists of p's Gaussians (a cutoff), or an undefined tensor where they would
// pass the culling budget (the forward then gives every tile every Gaussian: a superset,
// the per-pair test still decides).  Gaussians [bounds[t], bounds[t + 1]) are the t-th
// range of the count and fill, whose cursors start where the ranges before end.
at::Tensor voxel_lists(const gf_params& p, void* structure) {
  gf_cull_plan tiles{};
  check_status(gf_cpu_voxel_tiles(structure, &tiles), "voxel tiles");
  const int64_t N = p.num_gaussians, T = tiles.num_cells;
  const int64_t ranges = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / 256));
  std::vector<int64_t> bounds;
  for (int64_t t = 0; t <= ranges; ++t) bounds.push_back(N * t / ranges);
  std::vector<std::vector<int64_t>> counts(ranges, std::vector<int64_t>(T, 0));
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      check_status(gf_cpu_voxel_count(&p, structure, bounds[t], bounds[t + 1], counts[t].data()),
                   "voxel count");
  });
  std::vector<int64_t> total(T, 0);
  int64_t length = 0;
  for (const auto& row : counts)
    for (int64_t c = 0; c < T; ++c) total[c] += row[c];
  for (int64_t c = 0; c < T; ++c) length += total[c];
  if (static_cast<size_t>(length) * sizeof(int32_t) >
      culling_budget_bytes(p.num_points, p.num_gaussians))
    return at::Tensor();
  check_status(gf_cpu_voxel_finish(structure, total.data()), "voxel finish");
  const size_t bytes = gf_cpu_voxel_lists_bytes(structure);
  at::Tensor lists = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 4))},
                               at::TensorOptions().dtype(at::kByte));
  const int64_t* starts = gf_cpu_voxel_list_starts(structure);
  std::vector<std::vector<int64_t>> cursor(ranges, std::vector<int64_t>(T));
  for (int64_t r = 0; r < ranges; ++r)
    for (int64_t c = 0; c < T; ++c)
      cursor[r][c] = r == 0 ? starts[c] : cursor[r - 1][c] + counts[r - 1][c];
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      check_status(gf_cpu_voxel_fill(&p, structure, bounds[r], bounds[r + 1], cursor[r].data(),
                                     lists.data_ptr(), lists.numel()),
                   "voxel lists");
  });
  return lists;
}

at::Tensor voxelize_cpu(const at::Tensor& means, const at::Tensor& cov, const at::Tensor& weights,
                        c10::IntArrayRef shape, c10::ArrayRef<double> origin,
                        c10::ArrayRef<double> edges, c10::IntArrayRef offset,
                        c10::IntArrayRef size, double eps, std::optional<double> cutoff,
                        bool whitened) {
  VoxelProblem vp = make_voxel_problem(means, cov, weights, shape, origin, edges, offset, size,
                                       eps, cutoff, whitened);
  gf_params& p = vp.prob.params;
  if (p.cov_mode == GF_COV_SIGMA) check_covariance_matrices(cov);
  if (p.num_points == 0 || p.num_gaussians == 0) return at::zeros(vp.out_shape, means.options());
  at::Tensor out = at::empty(vp.out_shape, means.options());
  at::Tensor records = voxel_records(p, means);
  p.records = records.data_ptr();
  p.out = out.data_ptr();
  at::Tensor structure = voxel_structure(p, vp.grid, means);
  void* s = structure.data_ptr();
  at::Tensor lists;
  if (has_cutoff(p)) lists = voxel_lists(p, s);
  const void* l = lists.defined() ? lists.data_ptr() : nullptr;
  gf_cull_plan tiles{};
  check_status(gf_cpu_voxel_tiles(s, &tiles), "voxel tiles");
  at::parallel_for(0, tiles.num_cells, 1, [&](int64_t begin, int64_t end) {
    check_status(gf_cpu_voxel_forward(&p, s, l, begin, end), "voxel forward");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxelize_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& means, const at::Tensor& cov,
    const at::Tensor& weights, c10::IntArrayRef shape, c10::ArrayRef<double> origin,
    c10::ArrayRef<double> edges, c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
    std::optional<double> cutoff, std::array<bool, 3> output_mask, bool whitened) {
  VoxelProblem vp = make_voxel_problem(means, cov, weights, shape, origin, edges, offset, size,
                                       eps, cutoff, whitened, grad_out);
  gf_params& p = vp.prob.params;
  const bool empty_sum = p.num_points == 0 || p.num_gaussians == 0;
  const at::Tensor* inputs[3] = {&means, &cov, &weights};
  at::Tensor grads[3];
  for (int i = 0; i < 3; ++i)
    if (output_mask[i])
      grads[i] = empty_sum ? at::zeros(inputs[i]->sizes(), inputs[i]->options())
                           : at::empty(inputs[i]->sizes(), inputs[i]->options());
  if (empty_sum || !(output_mask[0] || output_mask[1] || output_mask[2]))
    return {grads[0], grads[1], grads[2]};
  p.grad_means = grads[0].defined() ? grads[0].data_ptr() : nullptr;
  p.grad_cov = grads[1].defined() ? grads[1].data_ptr() : nullptr;
  p.grad_weights = grads[2].defined() ? grads[2].data_ptr() : nullptr;
  at::Tensor records = voxel_records(p, means);
  p.records = records.data_ptr();
  at::Tensor structure = voxel_structure(p, vp.grid, means);
  // the voxels every Gaussian sees (non-finite grad_out rows): counted, then listed
  int64_t num_unseen = 0;
  check_status(gf_cpu_voxel_unseen(&p, 0, p.num_points, nullptr, &num_unseen), "voxel unseen");
  at::Tensor unseen = at::empty({std::max<int64_t>(num_unseen, 1)}, at::kLong);
  if (num_unseen > 0)
    check_status(gf_cpu_voxel_unseen(&p, 0, p.num_points, unseen.data_ptr<int64_t>(), &num_unseen),
                 "voxel unseen");
  const void* s = structure.data_ptr();
  const int64_t* u = unseen.data_ptr<int64_t>();
  // without a cutoff the C core walks every voxel once per block of Gaussians
  const int64_t block = has_cutoff(p) ? 1 : GF_CPU_GAUSSIAN_BLOCK;
  const int64_t blocks = (p.num_gaussians + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    check_status(gf_cpu_voxel_backward_gaussians(&p, s, u, num_unseen, begin * block,
                                                 std::min(end * block, p.num_gaussians)),
                 "voxel backward (gaussians)");
  });
  return {grads[0], grads[1], grads[2]};
}

// Low-precision inputs compute in float32 (float64 beside a float64 input); the result
// comes back in means' dtype, each gradient in its input's.
at::Tensor voxelize_promoted(const at::Tensor& means, const at::Tensor& cov,
                             const at::Tensor& weights, c10::IntArrayRef shape,
                             c10::ArrayRef<double> origin, c10::ArrayRef<double> edges,
                             c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
                             std::optional<double> cutoff, bool whitened) {
  const auto dt = promoted_dtype({{"means", &means}, {"cov", &cov}, {"weights", &weights}});
  if (!dt)
    return voxelize_cpu(means, cov, weights, shape, origin, edges, offset, size, eps, cutoff,
                        whitened);
  return voxelize_cpu(means.to(*dt), cov.to(*dt), weights.to(*dt), shape, origin, edges, offset,
                      size, eps, cutoff, whitened)
      .to(means.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxelize_backward_promoted(
    const at::Tensor& grad_out, const at::Tensor& means, const at::Tensor& cov,
    const at::Tensor& weights, c10::IntArrayRef shape, c10::ArrayRef<double> origin,
    c10::ArrayRef<double> edges, c10::IntArrayRef offset, c10::IntArrayRef size, double eps,
    std::optional<double> cutoff, std::array<bool, 3> output_mask, bool whitened) {
  const auto dt = promoted_dtype(
      {{"grad_out", &grad_out}, {"means", &means}, {"cov", &cov}, {"weights", &weights}});
  if (!dt)
    return voxelize_backward_cpu(grad_out, means, cov, weights, shape, origin, edges, offset, size,
                                 eps, cutoff, output_mask, whitened);
  auto g = voxelize_backward_cpu(grad_out.to(*dt), means.to(*dt), cov.to(*dt), weights.to(*dt),
                                 shape, origin, edges, offset, size, eps, cutoff, output_mask,
                                 whitened);
  auto back = [](const at::Tensor& t, const at::Tensor& like) {
    return t.defined() ? t.to(like.scalar_type()) : t;
  };
  return {back(std::get<0>(g), means), back(std::get<1>(g), cov), back(std::get<2>(g), weights)};
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, CPU, m) {
  m.impl("voxelize", &gaussfield::voxelize_promoted);
  m.impl("voxelize_backward", &gaussfield::voxelize_backward_promoted);
}
