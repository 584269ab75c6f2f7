// SPDX-License-Identifier: Apache-2.0
/*
 * gf_common.c - the part of the C API that does not depend on the backend, used by the
 * CPU stages (gf_cpu.c, gf_cpu_cull.c) and the CUDA ones (cuda/) alike: status strings,
 * the records' size, and the argument checks every stage shares (dense, culled and
 * second-order).
 */
#include <math.h>

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_math.h"
#include "gf_spatial.h"
#include "gf_voxel.h"

int64_t gf_cov_num_params(gf_cov_mode mode) { return gf_cov_params(mode); }

const char *gf_status_string(gf_status status) {
    switch (status) {
    case GF_OK: return "success";
    case GF_ERR_NULL_POINTER: return "a required pointer is NULL";
    case GF_ERR_BAD_SIZE: return "a size or stride is negative, or a range is outside [0, size]";
    case GF_ERR_BAD_DTYPE: return "unknown dtype (expected GF_FLOAT32 or GF_FLOAT64)";
    case GF_ERR_BAD_COV_MODE:
        return "unknown cov_mode (expected GF_COV_FULL, GF_COV_DIAG, GF_COV_QUAT, "
               "GF_COV_SIGMA or GF_COV_WHITENED), or one the stage does not take (the "
               "double backward takes GF_COV_WHITENED only)";
    case GF_ERR_BAD_EPS: return "eps must be finite and >= 0";
    case GF_ERR_SMALL_WORKSPACE: return "workspace smaller than the reported size";
    case GF_ERR_CUDA: return "CUDA runtime error";
    case GF_ERR_BAD_CUTOFF: return "cutoff must be >= 0 and not NaN (0 or +inf: no cutoff)";
    }
    return "unknown gaussfield status";
}

size_t gf_records_bytes(gf_dtype dtype, int64_t num_gaussians) {
    if (num_gaussians < 0) return 0;
    switch (dtype) {
    case GF_FLOAT32: return (size_t)num_gaussians * sizeof(gf_record_f32);
    case GF_FLOAT64: return (size_t)num_gaussians * sizeof(gf_record_f64);
    }
    return 0;
}

gf_status gf_check_params(const gf_params *p) {
    if (!p) return GF_ERR_NULL_POINTER;
    if (p->dtype != GF_FLOAT32 && p->dtype != GF_FLOAT64) return GF_ERR_BAD_DTYPE;
    if (gf_cov_num_params(p->cov_mode) == 0) return GF_ERR_BAD_COV_MODE;
    if (!(isfinite(p->eps) && p->eps >= 0.0)) return GF_ERR_BAD_EPS;
    if (!(p->cutoff >= 0.0)) return GF_ERR_BAD_CUTOFF;
    if (p->num_points < 0 || p->num_gaussians < 0 || p->num_channels < 1)
        return GF_ERR_BAD_SIZE;
    if (p->x_stride[0] < 0 || p->x_stride[1] < 0 || p->means_stride[0] < 0 ||
        p->means_stride[1] < 0 || p->cov_stride[0] < 0 || p->cov_stride[1] < 0 ||
        p->weights_stride[0] < 0 || p->weights_stride[1] < 0 || p->grad_out_stride[0] < 0 ||
        p->grad_out_stride[1] < 0)
        return GF_ERR_BAD_SIZE;
    return GF_OK;
}

gf_status gf_check_second_params(const gf_params *p) {
    const gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (p->cov_mode != GF_COV_WHITENED) return GF_ERR_BAD_COV_MODE;
    const int64_t *strides[4] = {p->dir_x_stride, p->dir_means_stride, p->dir_cov_stride,
                                 p->dir_weights_stride};
    const void *dirs[4] = {p->dir_x, p->dir_means, p->dir_cov, p->dir_weights};
    for (int i = 0; i < 4; ++i)
        if (dirs[i] && (strides[i][0] < 0 || strides[i][1] < 0)) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

gf_status gf_check_cull_plan_args(const gf_params *p, double points_per_cell,
                                  const gf_cull_plan *plan) {
    const gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!plan) return GF_ERR_NULL_POINTER;
    if (!gf_has_cutoff(p->cutoff)) return GF_ERR_BAD_CUTOFF;
    if (p->num_gaussians > INT32_MAX || !(points_per_cell > 0.0)) return GF_ERR_BAD_SIZE;
    if (p->num_points > 0 && !p->x) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

gf_status gf_check_cull_stage(const gf_params *p, const gf_cull_plan *plan) {
    const gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!plan) return GF_ERR_NULL_POINTER;
    if (!gf_has_cutoff(p->cutoff)) return GF_ERR_BAD_CUTOFF;
    if (p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    return gf_check_cull_plan(plan);
}

gf_status gf_check_cull_plan(const gf_cull_plan *plan) {
    if (!plan) return GF_ERR_NULL_POINTER;
    if (plan->num_cells < 1 || plan->num_cells > GF_CULL_MAX_CELLS || plan->list_length < 0 ||
        plan->dims[0] < 1 || plan->dims[1] < 1 || plan->dims[2] < 1 ||
        plan->dims[0] > GF_CULL_MAX_CELLS || plan->dims[1] > GF_CULL_MAX_CELLS ||
        plan->dims[2] > GF_CULL_MAX_CELLS ||
        plan->dims[0] * plan->dims[1] * plan->dims[2] != plan->num_cells ||
        !(plan->cell_size > 0.0))
        return GF_ERR_BAD_SIZE;
    return GF_OK;
}

/* Shared by the CPU and CUDA voxel stages (gaussfield.h, "CPU voxelize"). */
gf_status gf_check_grid(const gf_grid *g, gf_dtype dtype) {
    if (!g) return GF_ERR_NULL_POINTER;
    if (dtype != GF_FLOAT32 && dtype != GF_FLOAT64) return GF_ERR_BAD_DTYPE;
    for (int c = 0; c < 3; ++c) {
        if (g->shape[c] < 1 || g->offset[c] < 0 || g->size[c] < 0 ||
            g->offset[c] > g->shape[c] - g->size[c])
            return GF_ERR_BAD_SIZE;
        if (!isfinite(g->origin[c])) return GF_ERR_BAD_SIZE;
        for (int r = 0; r < 3; ++r)
            if (!isfinite(g->edges[r][c])) return GF_ERR_BAD_SIZE;
    }
    gf_grid_map map;
    if (!gf_grid_map_init(g, dtype, &map)) return GF_ERR_BAD_SIZE;
    /* the centres' coordinates are extreme at the corners (affine in the indices): a
     * corner finite in the dtype keeps every centre finite */
    if (g->size[0] > 0 && g->size[1] > 0 && g->size[2] > 0) {
        const double big = dtype == GF_FLOAT32 ? (double)FLT_MAX : DBL_MAX;
        for (int corner = 0; corner < 8; ++corner) {
            double x[3];
            gf_grid_centre(g, g->offset[0] + ((corner & 1) ? g->size[0] - 1 : 0),
                           g->offset[1] + ((corner & 2) ? g->size[1] - 1 : 0),
                           g->offset[2] + ((corner & 4) ? g->size[2] - 1 : 0), x);
            for (int r = 0; r < 3; ++r)
                if (!(fabs(x[r]) <= big)) return GF_ERR_BAD_SIZE;
        }
    }
    return GF_OK;
}
