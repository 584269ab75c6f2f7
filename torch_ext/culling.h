// SPDX-License-Identifier: Apache-2.0
// culling.h - when the ops take the culled path, shared by the CPU and CUDA
// implementations: the GAUSSFIELD_CULLING switch, the memory budget, the cells' size.
//
//   GAUSSFIELD_CULLING=auto (default)  culled when there is a cutoff, the problem is large
//                                      enough to repay the plan (shapes: should_plan), and
//                                      the plan's pairs are few enough against B x N (the
//                                      plan's decision: on the host on the CPU, on the
//                                      device on CUDA, so that a CUDA graph decides alike)
//                      always          culled whenever there is a cutoff
//                      never           the dense masked path
//   GAUSSFIELD_CULLING_BUDGET_MB       the culling's memory cap (default: 1024 MiB plus
//                                      512 bytes a point and a Gaussian, so that it grows
//                                      with the problem).  On the CPU, where the lists
//                                      would pass it, cells of 8 times the points make them
//                                      shorter (and at one cell, the dense path); on CUDA
//                                      it caps the lists' capacity, past which Gaussians
//                                      take the exact overflow path (cuda.cpp)
//   GAUSSFIELD_CULLING_POINTS_PER_CELL the grid's target of points per cell (default: the
//                                      device's policy, 64 on the CPU, 128 on CUDA), a
//                                      documented override for tuning; it also sizes the
//                                      culling structure (python/gaussfield/autograd.py's
//                                      fakes read it too)
//
// The culled and dense paths compute the same pairs' sums (gf_pair_keep decides both);
// only the summation order differs.
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace gaussfield
