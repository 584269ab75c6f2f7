// SPDX-License-Identifier: Apache-2.0
// cpu.cpp - the CPU implementations of the gaussfield ops: allocation, then the C
// core's stages spread over torch's own thread pool (at::parallel_for honours
// torch.set_num_threads).  Each stage writes disjoint ranges, so the split does not
// change a single bit of the result.
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

// Pairs of work below which a range is not worth handing to another thread.
constexpr int64_t kPairsPerTask = 1 << 15;

int64_t grain(int64_t other_dim) {
  return std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(1, other_dim));
}

at::Tensor records_for(const gf_params& p, const at::Tensor& like) {
  at::Tensor records = at::empty({static_cast<int64_t>(gf_records_bytes(p.dtype, p.num_gaussians))},
                                 like.options().dtype(at::kByte));
  gf_params q = p;
  q.records = records.data_ptr();
  at::parallel_for(0, p.num_gaussians, 256, [&](int64_t begin, int64_t end) {
    check_status(gf_cpu_precompute(&q, begin, end), "precompute");
  });
  return records;
}

// The CPU's culling policy: cells of about 64 points (a point tile), plan from 2^22 pairs
// (a few ms of dense work; the plan's serial parts are O(B + cells)), culled when the
// plan's pairs are under half of B x N.
constexpr CullPolicy kCpuPolicy{64.0, double(1 << 22), 0.5};

gf_cull_config cpu_config(Culling mode, double points_per_cell) {
  gf_cull_config c{};
  c.points_per_cell = points_per_cell;
  c.always = mode == Culling::kAlways;
  c.max_share = kCpuPolicy.max_share;
  return c;
}

// The structure's size for p's shapes (the culled ops' second output; see
// python/gaussfield/autograd.py's _structure_bytes, which mirrors it for the fakes).
int64_t structure_bytes_cpu(const gf_params& p) {
  const gf_cull_config c = cpu_config(Culling::kAuto, points_per_cell_setting(kCpuPolicy.points_per_cell));
  return static_cast<int64_t>(gf_cpu_cull_structure_bytes(&p, &c));
}

// Gaussians [bounds[t], bounds[t + 1]) are the t-th range of the count and fill stages,
// counts[t] its cells' counts; the lists do not depend on the split.
struct CellCounts {
  std::vector<int64_t> bounds;
  std::vector<std::vector<int64_t>> counts;
};

CellCounts count_cells(const gf_params& p, const void* structure) {
  gf_cull_header h{};
  check_status(gf_cpu_cull_header(structure, &h), "culling header");
  const int64_t N = p.num_gaussians;
  const int64_t ranges = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / 256));
  CellCounts cc;
  for (int64_t t = 0; t <= ranges; ++t) cc.bounds.push_back(N * t / ranges);
  cc.counts.assign(ranges, std::vector<int64_t>(h.plan.num_cells + 1, 0));
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      check_status(gf_cpu_cull_count(&p, structure, cc.bounds[t], cc.bounds[t + 1],
                                     cc.counts[t].data()),
                   "culling count");
  });
  return cc;
}

// Plans and finishes p's culling structure (records set) into `structure` (bytes of
// structure_bytes_cpu), or leaves its header saying dense: a problem too small to plan,
// GAUSSFIELD_CULLING=never, or lists over the budget at every cell size.  Where the
// lists exceed the budget, cells of 8 times the points make them shorter.
void build_structure(const gf_params& p, Culling mode, at::Tensor& structure) {
  if (!should_plan(p, mode, kCpuPolicy)) return;
  void* s = structure.data_ptr();
  const size_t bytes = static_cast<size_t>(structure.numel());
  const size_t budget = culling_budget_bytes(p.num_points, p.num_gaussians);
  double per_cell = points_per_cell_setting(kCpuPolicy.points_per_cell);
  for (int attempt = 0; attempt < 8; ++attempt, per_cell *= 8.0) {
    gf_cull_config c = cpu_config(mode, per_cell);
    check_status(gf_cpu_cull_plan(&p, &c, s, bytes), "culling plan");
    CellCounts cc = count_cells(p, s);
    gf_cull_header h{};
    check_status(gf_cpu_cull_header(s, &h), "culling header");
    std::vector<int64_t> total(h.plan.num_cells + 1, 0);
    for (const auto& row : cc.counts)
      for (int64_t c2 = 0; c2 < h.plan.num_cells; ++c2) total[c2] += row[c2];
    int64_t length = 0;
    for (int64_t c2 = 0; c2 < h.plan.num_cells; ++c2) length += total[c2];
    const bool fits = bytes + static_cast<size_t>(length) * sizeof(int32_t) <= budget;
    if (fits || h.plan.num_cells == 1) {
      if (!fits) c.always = 0, c.max_share = 0.0;  // no plan within the budget: dense
      check_status(gf_cpu_cull_finish(&p, &c, s, total.data()), "culling finish");
      return;
    }
  }
}

bool is_culled(const at::Tensor& structure) {
  return structure.numel() >= static_cast<int64_t>(sizeof(gf_cull_header)) &&
         reinterpret_cast<const gf_cull_header*>(structure.data_ptr())->culled;
}

// The cell lists of a culled structure: its Gaussians' walk again, in ranges whose
// cursors start where the ranges before them end.
at::Tensor lists_of(const gf_params& p, const at::Tensor& structure) {
  const void* s = structure.data_ptr();
  const size_t bytes = gf_cpu_cull_lists_bytes(s);
  at::Tensor lists = at::empty({static_cast<int64_t>(bytes)}, structure.options());
  if (bytes == 0) return lists;
  CellCounts cc = count_cells(p, s);
  const int64_t* starts = gf_cpu_cull_list_starts(s);
  const int64_t cells = static_cast<int64_t>(cc.counts[0].size()) - 1;
  std::vector<std::vector<int64_t>> cursor(cc.counts.size());
  for (size_t t = 0; t < cc.counts.size(); ++t) {
    cursor[t].resize(cells);
    for (int64_t c = 0; c < cells; ++c)
      cursor[t][c] = t == 0 ? starts[c] : cursor[t - 1][c] + cc.counts[t - 1][c];
  }
  at::parallel_for(0, static_cast<int64_t>(cc.counts.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      check_status(gf_cpu_cull_fill(&p, s, cc.bounds[t], cc.bounds[t + 1], cursor[t].data(),
                                    lists.data_ptr(), bytes),
                   "culling lists");
  });
  return lists;
}

int64_t cells_of(const at::Tensor& structure) {
  gf_cull_header h{};
  check_status(gf_cpu_cull_header(structure.data_ptr(), &h), "culling header");
  return h.plan.num_cells;
}

// p's forward into p.out (records set), culled where the structure says so.
void forward_with(const gf_params& p, const at::Tensor& structure) {
  if (structure.defined() && structure.numel() > 0 && is_culled(structure)) {
    const at::Tensor lists = lists_of(p, structure);
    const void* s = structure.data_ptr();
    // a cell is a tile or two of points over its list
    at::parallel_for(0, cells_of(structure) + 1, 1, [&](int64_t begin, int64_t end) {
      check_status(gf_cpu_culled_forward(&p, s, lists.data_ptr(), begin, end), "culled forward");
    });
    return;
  }
  at::parallel_for(0, p.num_points, grain(p.num_gaussians), [&](int64_t begin, int64_t end) {
    check_status(gf_cpu_forward(&p, begin, end), "forward");
  });
}

// p's backward into its gradients (records set), culled where the structure says so.
void backward_with(const gf_params& p, const at::Tensor& structure) {
  if (structure.defined() && structure.numel() > 0 && is_culled(structure)) {
    const void* s = structure.data_ptr();
    if (p.grad_x) {
      const at::Tensor lists = lists_of(p, structure);
      at::parallel_for(0, cells_of(structure) + 1, 1, [&](int64_t begin, int64_t end) {
        check_status(gf_cpu_culled_backward_points(&p, s, lists.data_ptr(), begin, end),
                     "culled backward (points)");
      });
    }
    if (p.grad_means || p.grad_cov || p.grad_weights) {
      const size_t wb = gf_cpu_cull_backward_bytes(&p);
      at::Tensor work = at::empty({static_cast<int64_t>(wb)}, structure.options());
      check_status(gf_cpu_cull_backward_prepare(&p, s, work.data_ptr(), wb), "culled backward");
      at::parallel_for(0, p.num_gaussians, 16, [&](int64_t begin, int64_t end) {
        check_status(gf_cpu_culled_backward_gaussians(&p, s, work.data_ptr(), begin, end),
                     "culled backward (gaussians)");
      });
    }
    return;
  }
  if (p.grad_x) {
    at::parallel_for(0, p.num_points, grain(p.num_gaussians), [&](int64_t begin, int64_t end) {
      check_status(gf_cpu_backward_points(&p, begin, end), "backward (points)");
    });
  }
  if (p.grad_means || p.grad_cov || p.grad_weights) {
    // Split at the C core's block of Gaussians.
    constexpr int64_t kBlock = GF_CPU_GAUSSIAN_BLOCK;
    const int64_t blocks = (p.num_gaussians + kBlock - 1) / kBlock;
    at::parallel_for(0, blocks, std::max<int64_t>(1, grain(p.num_points) / kBlock),
                     [&](int64_t begin, int64_t end) {
                       check_status(gf_cpu_backward_gaussians(
                                        &p, begin * kBlock, std::min(end * kBlock, p.num_gaussians)),
                                    "backward (gaussians)");
                     });
  }
}

// A new structure for p (records set), built where the policy plans; undefined where it
// does not (the dense path, no allocation).
at::Tensor structure_for(const gf_params& p, const at::Tensor& like, Culling mode) {
  if (!should_plan(p, mode, kCpuPolicy)) return at::Tensor();
  at::Tensor s = at::zeros({structure_bytes_cpu(p)}, like.options().dtype(at::kByte));
  build_structure(p, mode, s);
  return s;
}

at::Tensor gaussian_field_cpu(const at::Tensor& x, const at::Tensor& means,
                              const at::Tensor& cov, const at::Tensor& weights, double eps,
                              std::optional<double> cutoff, bool whitened) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, whitened);
  gf_params& p = prob.params;
  if (p.cov_mode == GF_COV_SIGMA) check_covariance_matrices(cov);
  at::Tensor out = allocate_output(x, weights, p);
  if (p.num_points == 0 || p.num_gaussians == 0) return out;
  at::Tensor records = records_for(p, x);
  p.records = records.data_ptr();
  p.out = out.data_ptr();
  forward_with(p, structure_for(p, x, culling_mode()));
  return out;
}

// The forward of the culled pair of ops: the result and the structure, which
// gaussian_field_culled_backward takes instead of building its own.  Its size is a
// function of the shapes alone (and the switch: empty where the problem is not culled at
// all, should_plan); where it is planned, its header says which path the build took.
std::tuple<at::Tensor, at::Tensor> gaussian_field_culled_cpu(
    const at::Tensor& x, const at::Tensor& means, const at::Tensor& cov,
    const at::Tensor& weights, double eps, double cutoff, bool whitened) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, whitened);
  gf_params& p = prob.params;
  if (p.cov_mode == GF_COV_SIGMA) check_covariance_matrices(cov);
  at::Tensor out = allocate_output(x, weights, p);
  if (p.num_points == 0 || p.num_gaussians == 0)
    return {out, at::empty({0}, x.options().dtype(at::kByte))};
  at::Tensor records = records_for(p, x);
  p.records = records.data_ptr();
  p.out = out.data_ptr();
  at::Tensor structure = structure_for(p, x, culling_mode());
  forward_with(p, structure);
  if (!structure.defined()) structure = at::empty({0}, x.options().dtype(at::kByte));
  return {out, structure};
}

BackwardResult gaussian_field_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                           const at::Tensor& means, const at::Tensor& cov,
                                           const at::Tensor& weights, double eps,
                                           std::optional<double> cutoff,
                                           std::array<bool, 4> output_mask, bool whitened) {
  BackwardProblem bp = make_backward_problem(grad_out, x, means, cov, weights, eps, cutoff,
                                             whitened, output_mask);
  gf_params& p = bp.prob.params;
  if (bp.has_work) {
    at::Tensor records = records_for(p, x);
    p.records = records.data_ptr();
    backward_with(p, structure_for(p, x, culling_mode()));
  }
  return bp.result();
}

BackwardResult gaussian_field_culled_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& means,
    const at::Tensor& cov, const at::Tensor& weights, double eps, double cutoff,
    const at::Tensor& structure, std::array<bool, 4> output_mask, bool whitened) {
  BackwardProblem bp = make_backward_problem(grad_out, x, means, cov, weights, eps, cutoff,
                                             whitened, output_mask);
  gf_params& p = bp.prob.params;
  check_structure_tensor(structure, structure.numel() > 0 ? structure_bytes_cpu(p) : 0, x);
  if (bp.has_work) {
    at::Tensor records = records_for(p, x);
    p.records = records.data_ptr();
    backward_with(p, structure);
  }
  return bp.result();
}

SecondResult gaussian_field_double_backward_cpu(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& x, const at::Tensor& means,
    const at::Tensor& cov, const at::Tensor& weights, double eps, std::optional<double> cutoff,
    const std::optional<at::Tensor>& dir_x, const std::optional<at::Tensor>& dir_means,
    const std::optional<at::Tensor>& dir_cov, const std::optional<at::Tensor>& dir_weights,
    std::array<bool, 5> output_mask) {
  SecondProblem sp = make_second_problem(grad_out, x, means, cov, weights, eps, cutoff, dir_x,
                                         dir_means, dir_cov, dir_weights, output_mask);
  gf_params& p = sp.prob.params;
  if (!sp.has_work) return sp.result;
  at::Tensor records = records_for(p, x);
  p.records = records.data_ptr();
  if (p.grad_grad_out || p.grad_x) {
    at::parallel_for(0, p.num_points, grain(p.num_gaussians), [&](int64_t begin, int64_t end) {
      check_status(gf_cpu_double_backward_points(&p, begin, end), "double backward (points)");
    });
  }
  if (p.grad_means || p.grad_cov || p.grad_weights) {
    at::parallel_for(0, p.num_gaussians, grain(p.num_points), [&](int64_t begin, int64_t end) {
      check_status(gf_cpu_double_backward_gaussians(&p, begin, end),
                   "double backward (gaussians)");
    });
  }
  return sp.result;
}

// [cells x, y, z, cell size, list length, pairs estimate, pairs evaluated, structure
// bytes + lists bytes] of the structure that the culled path would build for these
// inputs with this many points per cell (whatever GAUSSFIELD_CULLING says), or [] when
// it would not cull (no plan within the budget).  For benchmarks: how tight the culling is.
std::vector<double> culling_stats_cpu(const at::Tensor& x, const at::Tensor& means,
                                      const at::Tensor& cov, const at::Tensor& weights,
                                      double eps, double cutoff, double points_per_cell,
                                      bool whitened) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff, whitened);
  gf_params& p = prob.params;
  if (p.num_points == 0 || p.num_gaussians == 0) return {};
  at::Tensor records = records_for(p, x);
  p.records = records.data_ptr();
  gf_cull_config c = cpu_config(Culling::kAlways, points_per_cell);
  at::Tensor s = at::zeros({static_cast<int64_t>(gf_cpu_cull_structure_bytes(&p, &c))},
                           x.options().dtype(at::kByte));
  check_status(gf_cpu_cull_plan(&p, &c, s.data_ptr(), s.numel()), "culling plan");
  CellCounts cc = count_cells(p, s.data_ptr());
  const int64_t cells = static_cast<int64_t>(cc.counts[0].size()) - 1;
  std::vector<int64_t> total(cells + 1, 0);
  for (const auto& row : cc.counts)
    for (int64_t k = 0; k < cells; ++k) total[k] += row[k];
  check_status(gf_cpu_cull_finish(&p, &c, s.data_ptr(), total.data()), "culling finish");
  gf_cull_header h{};
  check_status(gf_cpu_cull_header(s.data_ptr(), &h), "culling header");
  double pairs = 0;
  check_status(gf_cpu_cull_pairs(&p, s.data_ptr(), &pairs), "culling pairs");
  const gf_cull_plan& plan = h.plan;
  return {double(plan.dims[0]), double(plan.dims[1]), double(plan.dims[2]), plan.cell_size,
          double(plan.list_length), plan.pairs_estimate, pairs,
          double(s.numel()) + double(gf_cpu_cull_lists_bytes(s.data_ptr()))};
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, CPU, m) {
  m.impl("gaussian_field",
         &gaussfield::forward_promoted<&gaussfield::gaussian_field_cpu>);
  m.impl("gaussian_field_backward",
         &gaussfield::backward_promoted<&gaussfield::gaussian_field_backward_cpu>);
  m.impl("_culling_stats", &gaussfield::culling_stats_cpu);
  m.impl("_gaussian_field_culled", &gaussfield::gaussian_field_culled_cpu);
  m.impl("_gaussian_field_culled_backward", &gaussfield::gaussian_field_culled_backward_cpu);
  m.impl("gaussian_field_double_backward", &gaussfield::gaussian_field_double_backward_cpu);
}
