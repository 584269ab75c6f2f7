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
// (a few ms of dense work; the serial plan and build are O(B + N + the lists)), culled
// when the plan's pairs are under half of B x N.
constexpr CullPolicy kCpuPolicy{64.0, double(1 << 22), 0.5};

// A built culling structure: the plan and its workspace.
struct Culled {
  gf_cull_plan plan;
  at::Tensor workspace;
};

// The culled structure for p (records set), or nullopt for the dense path.
std::optional<Culled> cull_for(const gf_params& p, const at::Tensor& like, Culling mode,
                               const CullPolicy& policy = kCpuPolicy) {
  if (!should_plan(p, mode, policy)) return std::nullopt;
  auto plan = choose_plan(
      p, mode, policy,
      [&](double per_cell) {
        gf_cull_plan plan{};
        check_status(gf_cpu_cull_plan(&p, per_cell, &plan), "culling plan");
        return plan;
      },
      [&](const gf_cull_plan& plan) { return gf_cpu_cull_workspace_bytes(&p, &plan); });
  if (!plan) return std::nullopt;
  const size_t bytes = gf_cpu_cull_workspace_bytes(&p, &*plan);
  at::Tensor ws = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  check_status(gf_cpu_cull_build(&p, &*plan, ws.data_ptr(), bytes), "culling build");
  return Culled{*plan, ws};
}

at::Tensor gaussian_field_cpu(const at::Tensor& x, const at::Tensor& means,
                              const at::Tensor& cov, const at::Tensor& weights, double eps,
                              std::optional<double> cutoff) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff);
  gf_params& p = prob.params;
  at::Tensor out = allocate_output(x, weights, p);
  if (p.num_points == 0 || p.num_gaussians == 0) return out;
  at::Tensor records = records_for(p, x);
  p.records = records.data_ptr();
  p.out = out.data_ptr();
  if (auto culled = cull_for(p, x, culling_mode())) {
    // a cell is a tile or two of points over its list
    const gf_cull_plan& plan = culled->plan;
    const void* ws = culled->workspace.data_ptr();
    at::parallel_for(0, plan.num_cells + 1, 1, [&](int64_t begin, int64_t end) {
      check_status(gf_cpu_culled_forward(&p, &plan, ws, begin, end), "culled forward");
    });
    return out;
  }
  at::parallel_for(0, p.num_points, grain(p.num_gaussians), [&](int64_t begin, int64_t end) {
    check_status(gf_cpu_forward(&p, begin, end), "forward");
  });
  return out;
}

BackwardResult gaussian_field_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                           const at::Tensor& means, const at::Tensor& cov,
                                           const at::Tensor& weights, double eps,
                                           std::optional<double> cutoff,
                                           std::array<bool, 4> output_mask) {
  BackwardProblem bp =
      make_backward_problem(grad_out, x, means, cov, weights, eps, cutoff, output_mask);
  gf_params& p = bp.prob.params;
  if (bp.has_work) {
    at::Tensor records = records_for(p, x);
    p.records = records.data_ptr();
    if (auto culled = cull_for(p, x, culling_mode())) {
      const gf_cull_plan& plan = culled->plan;
      const void* ws = culled->workspace.data_ptr();
      if (p.grad_x) {
        at::parallel_for(0, plan.num_cells + 1, 1, [&](int64_t begin, int64_t end) {
          check_status(gf_cpu_culled_backward_points(&p, &plan, ws, begin, end),
                       "culled backward (points)");
        });
      }
      at::parallel_for(0, p.num_gaussians, 16, [&](int64_t begin, int64_t end) {
        check_status(gf_cpu_culled_backward_gaussians(&p, &plan, ws, begin, end),
                     "culled backward (gaussians)");
      });
      return bp.result();
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
                                          &p, begin * kBlock,
                                          std::min(end * kBlock, p.num_gaussians)),
                                      "backward (gaussians)");
                       });
    }
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

// [cells x, y, z, cell size, list length, pairs estimate, pairs evaluated, workspace
// bytes] of the plan that the culled path would build for these inputs with this many
// points per cell (whatever GAUSSFIELD_CULLING says), or [] when it would not cull
// (no cutoff, or no plan within the budget).  For benchmarks: how tight the culling is.
std::vector<double> culling_stats_cpu(const at::Tensor& x, const at::Tensor& means,
                                      const at::Tensor& cov, const at::Tensor& weights,
                                      double eps, double cutoff, double points_per_cell) {
  Problem prob = make_problem(x, means, cov, weights, eps, cutoff);
  gf_params& p = prob.params;
  if (p.num_points == 0 || p.num_gaussians == 0) return {};
  at::Tensor records = records_for(p, x);
  p.records = records.data_ptr();
  CullPolicy policy = kCpuPolicy;
  policy.points_per_cell = points_per_cell;
  auto culled = cull_for(p, x, Culling::kAlways, policy);
  if (!culled) return {};
  const gf_cull_plan& plan = culled->plan;
  double pairs = 0;
  check_status(gf_cpu_cull_pairs(&p, &plan, culled->workspace.data_ptr(), &pairs),
               "culling pairs");
  return {double(plan.dims[0]), double(plan.dims[1]), double(plan.dims[2]), plan.cell_size,
          double(plan.list_length), plan.pairs_estimate, pairs,
          double(culled->workspace.numel())};
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, CPU, m) {
  m.impl("gaussian_field",
         &gaussfield::forward_promoted<&gaussfield::gaussian_field_cpu>);
  m.impl("gaussian_field_backward",
         &gaussfield::backward_promoted<&gaussfield::gaussian_field_backward_cpu>);
  m.impl("_culling_stats", &gaussfield::culling_stats_cpu);
  m.impl("gaussian_field_double_backward", &gaussfield::gaussian_field_double_backward_cpu);
}
