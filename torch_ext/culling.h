// culling.h - when the ops take the culled path, shared by the CPU and CUDA
// implementations: the GAUSSFIELD_CULLING switch, the memory budget, and the choice of
// a plan within it.
//
//   GAUSSFIELD_CULLING=auto (default)  culled when there is a cutoff, the problem is large
//                                      enough to repay the plan, and the plan's pairs are
//                                      few enough against B x N
//                      always          culled whenever there is a cutoff (and the lists fit
//                                      the budget at some cell size)
//                      never           the dense masked path
//   GAUSSFIELD_CULLING_BUDGET_MB       the culling workspace's cap (default: 1024 MiB plus
//                                      512 bytes a point and a Gaussian, so that it grows
//                                      with the problem: the workspace's own floor is about
//                                      100 bytes a Gaussian, for the records and lists)
//   GAUSSFIELD_CULLING_POINTS_PER_CELL the grid's target of points per cell (default: the
//                                      device's policy, 64 on the CPU, 128 on CUDA); a
//                                      tuning knob for benchmarks/profile_cull.py
//
// The culled and dense paths compute the same pairs' sums (gf_pair_keep decides both);
// only the summation order differs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "gaussfield.h"

namespace gaussfield {

enum class Culling { kAuto, kAlways, kNever };

// The GAUSSFIELD_CULLING setting, read at each call; throws for an unknown value.
Culling culling_mode();

// The culling workspace's cap in bytes for B points and N Gaussians:
// GAUSSFIELD_CULLING_BUDGET_MB when set (throws for a value that is not a positive
// number), else kBudgetBaseBytes + kBudgetBytesPerItem * (B + N).
constexpr size_t kBudgetBaseBytes = size_t(1024) << 20;
constexpr size_t kBudgetBytesPerItem = 512;
size_t culling_budget_bytes(int64_t num_points, int64_t num_gaussians);

// GAUSSFIELD_CULLING_POINTS_PER_CELL, or `fallback` when unset (throws for a value that is
// not a positive number).
double points_per_cell_setting(double fallback);

// What a device's path choice needs to know.
struct CullPolicy {
  double points_per_cell;  // the plan's target
  double min_pairs;        // auto: below B x N = min_pairs the dense path, without a plan
  double max_share;        // auto: culled when the plan's pairs < max_share * B x N
};

// Whether to plan at all.
inline bool should_plan(const gf_params& p, Culling mode, const CullPolicy& policy) {
  if (mode == Culling::kNever || !(p.cutoff > 0.0 && p.cutoff <= 1.7976931348623157e308))
    return false;
  if (p.num_points == 0 || p.num_gaussians == 0 || p.num_gaussians > INT32_MAX) return false;
  return mode == Culling::kAlways ||
         static_cast<double>(p.num_points) * static_cast<double>(p.num_gaussians) >=
             policy.min_pairs;
}

// The plan to run, or nullopt for the dense path.  plan(points_per_cell, &plan) makes a
// plan and bytes(plan) sizes its workspace; when that exceeds the budget, cells of 8
// times the points (twice the side) make shorter lists, up to one cell; a plan that
// still does not fit leaves the dense path (which needs no lists) to do the work.
template <class PlanFn, class BytesFn>
std::optional<gf_cull_plan> choose_plan(const gf_params& p, Culling mode,
                                        const CullPolicy& policy, PlanFn plan_fn,
                                        BytesFn bytes_fn) {
  if (!should_plan(p, mode, policy)) return std::nullopt;
  const size_t budget = culling_budget_bytes(p.num_points, p.num_gaussians);
  double per_cell = points_per_cell_setting(policy.points_per_cell);
  for (int attempt = 0; attempt < 8; ++attempt, per_cell *= 8.0) {
    gf_cull_plan plan = plan_fn(per_cell);
    if (bytes_fn(plan) <= budget) {
      const double pairs =
          static_cast<double>(p.num_points) * static_cast<double>(p.num_gaussians);
      if (mode == Culling::kAuto && !(plan.pairs_estimate < policy.max_share * pairs))
        return std::nullopt;
      return plan;
    }
    if (plan.num_cells == 1) break;
  }
  return std::nullopt;
}

}  // namespace gaussfield
