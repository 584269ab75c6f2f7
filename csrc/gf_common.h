// SPDX-License-Identifier: Apache-2.0
/*
 * gf_common.h - what the CPU and CUDA halves of the C API share beyond the public
 * header (gf_common.c).  Not installed.
 */
#ifndef GF_COMMON_H
#define GF_COMMON_H

#include "gaussfield.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The checks every stage shares: dtype, cov_mode, eps, cutoff, sizes and strides. */
gf_status gf_check_params(const gf_params *params);

/* gf_check_params, and what the double backward's stages add: a whitening factor
 * (GF_COV_WHITENED) and non-negative strides of the directions that are given. */
gf_status gf_check_second_params(const gf_params *params);

/* What the culling plans (CPU and CUDA) check: gf_check_params, an output plan, a
 * cutoff, N within the lists' 32-bit indices, points_per_cell > 0 and x where there are
 * points.  The backend checks the Gaussians' inputs it reads. */
gf_status gf_check_cull_plan_args(const gf_params *params, double points_per_cell,
                                  const gf_cull_plan *plan);

/* Whether plan is one that a *_cull_plan could have written: a grid of at most
 * GF_CULL_MAX_CELLS cells whose dims multiply to num_cells, a positive cell size, a list
 * length >= 0 (GF_ERR_NULL_POINTER, GF_ERR_BAD_SIZE otherwise). */
gf_status gf_check_cull_plan(const gf_cull_plan *plan);

/* What the stages after a plan check: gf_check_params, a cutoff, N within 32-bit
 * indices, and gf_check_cull_plan. */
gf_status gf_check_cull_stage(const gf_params *params, const gf_cull_plan *plan);

#ifdef __cplusplus
}
#endif

#endif /* GF_COMMON_H */
