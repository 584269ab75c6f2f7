/*
 * gf_cpu_cull.c - the CPU half of culling in the C API: the plan (grid and the lists'
 * length), the build (points sorted by cell, the cell lists) and the culled stages,
 * whose loops live with the dense ones in gf_cpu_kernels_template.h.  The plan and the
 * build are serial (O(B + N + the lists)); the stages split over cells or Gaussians.
 */
#include <math.h>
#include <string.h>

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_cpu_internal.h"
#include "gf_math.h"
#include "gf_spatial.h"

static size_t align64(size_t v) { return (v + 63) & ~(size_t)63; }

/* The workspace's layout (see gf_cull_view); bytes at each array's start. */
typedef struct cull_layout {
    size_t cell_start, point_order, list_start, list, point_cell, sorted, total;
} cull_layout;

static cull_layout layout_of(const gf_params *p, const gf_cull_plan *plan) {
    cull_layout l;
    const size_t cells = (size_t)plan->num_cells;
    const size_t b = (size_t)p->num_points;
    l.cell_start = 0;
    l.point_order = align64(l.cell_start + (cells + 2) * sizeof(int64_t));
    l.list_start = align64(l.point_order + b * sizeof(int64_t));
    l.list = align64(l.list_start + (cells + 1) * sizeof(int64_t));
    l.point_cell = align64(l.list + (size_t)plan->list_length * sizeof(int32_t));
    l.sorted = align64(l.point_cell + b * sizeof(int64_t));
    const size_t es = p->dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.total = align64(l.sorted + 4 * b * es);
    return l;
}

static gf_cull_view view_of(const gf_params *p, const gf_cull_plan *plan, const void *ws) {
    const cull_layout l = layout_of(p, plan);
    const char *base = (const char *)ws;
    gf_cull_view v;
    v.cell_start = (const int64_t *)(base + l.cell_start);
    v.point_order = (const int64_t *)(base + l.point_order);
    v.list_start = (const int64_t *)(base + l.list_start);
    v.list = (const int32_t *)(base + l.list);
    v.sorted = base + l.sorted;
    return v;
}

/* A record's values in double, whatever its dtype. */
static void record_values(const gf_params *p, int64_t g, double mean[3], double m[6],
                          double *nkq) {
    if (p->dtype == GF_FLOAT32) {
        const gf_record_f32 *r = (const gf_record_f32 *)p->records + g;
        mean[0] = r->mx, mean[1] = r->my, mean[2] = r->mz;
        m[0] = r->m00, m[1] = r->m10, m[2] = r->m11, m[3] = r->m20, m[4] = r->m21, m[5] = r->m22;
        *nkq = r->nkq;
    } else {
        const gf_record_f64 *r = (const gf_record_f64 *)p->records + g;
        mean[0] = r->mx, mean[1] = r->my, mean[2] = r->mz;
        m[0] = r->m00, m[1] = r->m10, m[2] = r->m11, m[3] = r->m20, m[4] = r->m21, m[5] = r->m22;
        *nkq = r->nkq;
    }
}

static void point_values(const gf_params *p, int64_t b, double x[3]) {
    const int64_t s0 = p->x_stride[0], s1 = p->x_stride[1];
    for (int i = 0; i < 3; ++i)
        x[i] = p->dtype == GF_FLOAT32 ? (double)((const float *)p->x)[b * s0 + i * s1]
                                      : ((const double *)p->x)[b * s0 + i * s1];
}

static void box_of(const gf_params *p, const gf_cull_plan *plan, int64_t g, gf_cull_box *box) {
    double mean[3], m[6], nkq;
    record_values(p, g, mean, m, &nkq);
    gf_cull_box_init(plan, mean, m, nkq, gf_cull_reaches_all(p, g), box);
}

gf_status gf_cpu_cull_plan(const gf_params *p, double points_per_cell, gf_cull_plan *plan) {
    const gf_status st = gf_check_cull_plan_args(p, points_per_cell, plan);
    if (st != GF_OK) return st;
    if (p->num_gaussians > 0 && (!p->records || !p->weights)) return GF_ERR_NULL_POINTER;
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    int64_t finite = 0;
    for (int64_t b = 0; b < p->num_points; ++b) {
        double x[3];
        point_values(p, b, x);
        if (!(isfinite(x[0]) && isfinite(x[1]) && isfinite(x[2]))) continue;
        ++finite;
        for (int i = 0; i < 3; ++i) {
            lo[i] = x[i] < lo[i] ? x[i] : lo[i];
            hi[i] = x[i] > hi[i] ? x[i] : hi[i];
        }
    }
    gf_grid_choose(lo, hi, finite, points_per_cell, plan);
    plan->finite_points = finite;
    int64_t length = 0;
    for (int64_t g = 0; g < p->num_gaussians; ++g) {
        gf_cull_box box;
        box_of(p, plan, g, &box);
        length += gf_cull_box_count(plan, &box);
    }
    plan->list_length = length;
    plan->pairs_estimate = (double)finite * (double)length / (double)plan->num_cells +
                           (double)(p->num_points - finite) * (double)p->num_gaussians;
    return GF_OK;
}

size_t gf_cpu_cull_workspace_bytes(const gf_params *p, const gf_cull_plan *plan) {
    if (!p || !plan || plan->num_cells < 1 || plan->list_length < 0 || p->num_points < 0)
        return 0;
    return layout_of(p, plan).total;
}

/* Counts in start[1..n] to offsets in start[0..n]. */
static void counts_to_offsets(int64_t *start, int64_t n) {
    start[0] = 0;
    for (int64_t c = 0; c < n; ++c) start[c + 1] += start[c];
}

gf_status gf_cpu_cull_build(const gf_params *p, const gf_cull_plan *plan, void *workspace,
                            size_t workspace_bytes) {
    gf_status st = gf_check_cull_stage(p, plan);
    if (st != GF_OK) return st;
    if (!workspace) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && !p->x) return GF_ERR_NULL_POINTER;
    if (p->num_gaussians > 0 && (!p->records || !p->weights)) return GF_ERR_NULL_POINTER;
    const cull_layout l = layout_of(p, plan);
    if (workspace_bytes < l.total) return GF_ERR_SMALL_WORKSPACE;
    char *base = (char *)workspace;
    int64_t *cell_start = (int64_t *)(base + l.cell_start);
    int64_t *point_order = (int64_t *)(base + l.point_order);
    int64_t *list_start = (int64_t *)(base + l.list_start);
    int32_t *list = (int32_t *)(base + l.list);
    int64_t *point_cell = (int64_t *)(base + l.point_cell);
    const int64_t cells = plan->num_cells; /* + 1: the non-finite cell */

    /* points: counting sort by cell, stable (index order within a cell) */
    memset(cell_start, 0, (size_t)(cells + 2) * sizeof(int64_t));
    for (int64_t b = 0; b < p->num_points; ++b) {
        double x[3];
        point_values(p, b, x);
        point_cell[b] = gf_cull_point_seen_by_all(p, b) ? cells
                                                        : gf_grid_cell(plan, x[0], x[1], x[2]);
        ++cell_start[point_cell[b] + 1];
    }
    counts_to_offsets(cell_start, cells + 1);
    /* cell_start[c] runs forward as cell c fills, ending at c + 1's start; shift back */
    for (int64_t b = 0; b < p->num_points; ++b) point_order[cell_start[point_cell[b]]++] = b;
    memmove(cell_start + 1, cell_start, (size_t)(cells + 1) * sizeof(int64_t));
    cell_start[0] = 0;

    /* the points in that order, SoA, and with one channel their grad_out (when given),
     * for the Gaussians' contiguous runs */
    const int64_t B = p->num_points;
    if (p->dtype == GF_FLOAT32) {
        float *xs = (float *)(base + l.sorted);
        const float *x = (const float *)p->x, *go = (const float *)p->grad_out;
        for (int64_t i = 0; i < B; ++i) {
            const int64_t b = point_order[i];
            for (int k = 0; k < 3; ++k) xs[k * B + i] = x[b * p->x_stride[0] + k * p->x_stride[1]];
            xs[3 * B + i] = go && p->num_channels == 1 ? go[b * p->grad_out_stride[0]] : 0.0f;
        }
    } else {
        double *xs = (double *)(base + l.sorted);
        const double *x = (const double *)p->x, *go = (const double *)p->grad_out;
        for (int64_t i = 0; i < B; ++i) {
            const int64_t b = point_order[i];
            for (int k = 0; k < 3; ++k) xs[k * B + i] = x[b * p->x_stride[0] + k * p->x_stride[1]];
            xs[3 * B + i] = go && p->num_channels == 1 ? go[b * p->grad_out_stride[0]] : 0.0;
        }
    }

    /* lists: Gaussians in index order, so each cell's list is ascending */
    memset(list_start, 0, (size_t)(cells + 1) * sizeof(int64_t));
    for (int pass = 0; pass < 2; ++pass) {
        for (int64_t g = 0; g < p->num_gaussians; ++g) {
            gf_cull_box box;
            box_of(p, plan, g, &box);
            gf_cull_rows it;
            gf_cull_rows_begin(&box, &it);
            for (int64_t first, last; gf_cull_rows_next(plan, &box, &it, &first, &last);)
                for (int64_t c = first; c <= last; ++c) {
                    if (pass == 0) {
                        ++list_start[c + 1];
                    } else {
                        list[list_start[c]++] = (int32_t)g;
                    }
                }
        }
        if (pass == 0) {
            counts_to_offsets(list_start, cells);
            /* the plan counted the same walk; a mismatch means a plan of other inputs */
            if (list_start[cells] != plan->list_length) return GF_ERR_BAD_SIZE;
        }
    }
    memmove(list_start + 1, list_start, (size_t)cells * sizeof(int64_t));
    list_start[0] = 0;
    return GF_OK;
}

static gf_status check_stage(const gf_params *p, const gf_cull_plan *plan, const void *ws,
                             int64_t begin, int64_t end, int64_t size) {
    gf_status st = gf_check_cull_stage(p, plan);
    if (st != GF_OK) return st;
    if (!(begin >= 0 && begin <= end && end <= size)) return GF_ERR_BAD_SIZE;
    if (begin == end) return GF_OK;
    if (!ws) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

gf_status gf_cpu_cull_pairs(const gf_params *p, const gf_cull_plan *plan, const void *workspace,
                            double *pairs) {
    gf_status st = gf_check_cull_stage(p, plan);
    if (st != GF_OK) return st;
    if (!workspace || !pairs) return GF_ERR_NULL_POINTER;
    const gf_cull_view v = view_of(p, plan, workspace);
    double total = 0.0;
    for (int64_t c = 0; c <= plan->num_cells; ++c) {
        const int64_t list = c == plan->num_cells ? p->num_gaussians
                                                  : v.list_start[c + 1] - v.list_start[c];
        total += (double)(v.cell_start[c + 1] - v.cell_start[c]) * (double)list;
    }
    *pairs = total;
    return GF_OK;
}

gf_status gf_cpu_culled_forward(const gf_params *p, const gf_cull_plan *plan,
                                const void *workspace, int64_t begin, int64_t end) {
    gf_status st = check_stage(p, plan, workspace, begin, end, plan ? plan->num_cells + 1 : 0);
    if (st != GF_OK || begin == end) return st;
    if (p->num_points == 0) return GF_OK; /* every cell is empty */
    if (!p->out || !p->x || (p->num_gaussians > 0 && !p->records)) return GF_ERR_NULL_POINTER;
    if (p->num_channels > 1 && p->num_gaussians > 0 && !p->weights) return GF_ERR_NULL_POINTER;
    const gf_cull_view v = view_of(p, plan, workspace);
    gf_cpu_kernels_current()->culled_forward[p->dtype](p, plan, &v, begin, end);
    return GF_OK;
}

gf_status gf_cpu_culled_backward_points(const gf_params *p, const gf_cull_plan *plan,
                                        const void *workspace, int64_t begin, int64_t end) {
    gf_status st = check_stage(p, plan, workspace, begin, end, plan ? plan->num_cells + 1 : 0);
    if (st != GF_OK || begin == end || !p->grad_x) return st;
    if (p->num_points == 0) return GF_OK; /* every cell is empty */
    if (!p->x || !p->grad_out || (p->num_gaussians > 0 && !p->records))
        return GF_ERR_NULL_POINTER;
    if (p->num_channels > 1 && p->num_gaussians > 0 && !p->weights) return GF_ERR_NULL_POINTER;
    const gf_cull_view v = view_of(p, plan, workspace);
    gf_cpu_kernels_current()->culled_backward_points[p->dtype](p, plan, &v, begin, end);
    return GF_OK;
}

gf_status gf_cpu_culled_backward_gaussians(const gf_params *p, const gf_cull_plan *plan,
                                           const void *workspace, int64_t begin, int64_t end) {
    gf_status st = check_stage(p, plan, workspace, begin, end, p ? p->num_gaussians : 0);
    if (st != GF_OK || begin == end) return st;
    if (!p->grad_means && !p->grad_cov && !p->grad_weights) return GF_OK;
    if (!p->means || !p->cov || !p->weights || !p->records) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && (!p->x || !p->grad_out)) return GF_ERR_NULL_POINTER;
    const gf_cull_view v = view_of(p, plan, workspace);
    gf_cpu_kernels_current()->culled_backward_gaussians[p->dtype](p, plan, &v, begin, end);
    return GF_OK;
}
