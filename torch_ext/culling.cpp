// SPDX-License-Identifier: Apache-2.0
// culling.cpp - the GAUSSFIELD_CULLING switch and budget (see culling.h).
#include "culling.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace gaussfield {

Culling culling_mode() {
  const char* v = std::getenv("GAUSSFIELD_CULLING");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return Culling::kAuto;
  if (std::strcmp(v, "always") == 0) return Culling::kAlways;
  if (std::strcmp(v, "never") == 0) return Culling::kNever;
  TORCH_CHECK(false, "GAUSSFIELD_CULLING must be auto, always or never, got '", v, "'");
}

size_t culling_budget_bytes(int64_t num_points, int64_t num_gaussians) {
  const char* v = std::getenv("GAUSSFIELD_CULLING_BUDGET_MB");
  if (!v || !*v) {
    // a fixed cap would refuse every field past about 10^7 Gaussians (the records and
    // lists alone take about 100 bytes a Gaussian) and leave them the dense path
    const double items = static_cast<double>(std::max<int64_t>(num_points, 0)) +
                         static_cast<double>(std::max<int64_t>(num_gaussians, 0));
    const double bytes = static_cast<double>(kBudgetBaseBytes) +
                         static_cast<double>(kBudgetBytesPerItem) * items;
    return bytes >= 1.8e19 ? SIZE_MAX : static_cast<size_t>(bytes);
  }
  char* end = nullptr;
  const double mb = std::strtod(v, &end);
  TORCH_CHECK(end && *end == '\0' && mb > 0 && mb < 1e12,
              "GAUSSFIELD_CULLING_BUDGET_MB must be a positive number of MiB, got '", v, "'");
  return static_cast<size_t>(mb * 1048576.0);
}

double points_per_cell_setting(double fallback) {
  const char* v = std::getenv("GAUSSFIELD_CULLING_POINTS_PER_CELL");
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double n = std::strtod(v, &end);
  TORCH_CHECK(end && *end == '\0' && n >= 1 && n < 1e12,
              "GAUSSFIELD_CULLING_POINTS_PER_CELL must be a number of points >= 1, got '", v, "'");
  return n;
}

}  // namespace gaussfield
