// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu_cull.c - the CPU half of culling in the C API (gaussfield.h, "Culling"): the
 * structure (plan, counts, finish: the grid, the lists' offsets, the path, the points
 * sorted by cell), the lists (fill), and the culled stages, whose loops live with the
 * dense ones in gf_cpu_kernels_template.h.  The serial parts are O(B + cells); the
 * Gaussians' walks (count, fill) and the stages split into ranges for threads.
 */
#include <math.h>
#include <string.h>

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_cpu_internal.h"
#include "gf_math.h"
#include "gf_spatial.h"

static size_t align64(size_t v) { return (v + 63) & ~(size_t)63; }

/* The structure's layout (bytes at each array's start), a function of B, the cells'
 * capacity and the dtype:
 *   header       gf_cull_header
 *   cell_start   [max_cells + 2]  points of cell c: point_order[cell_start[c] ..
 *                                 cell_start[c + 1]) (cell num_cells: non-finite points)
 *   list_start   [max_cells + 1]  Gaussians of cell c: lists[list_start[c] .. [c + 1])
 *   point_order  [B]              point indices sorted by cell, in index order in a cell
 *   point_cell   [B]              scratch of the sort: each point's cell
 *   sorted       [3, B]           x, y, z of the points in point_order's order */
typedef struct cull_layout {
    size_t cell_start, list_start, point_order, point_cell, sorted, total;
} cull_layout;

static cull_layout layout_of(int64_t num_points, int64_t max_cells, gf_dtype dtype) {
    cull_layout l;
    const size_t cells = (size_t)max_cells, b = (size_t)num_points;
    l.cell_start = align64(sizeof(gf_cull_header));
    l.list_start = align64(l.cell_start + (cells + 2) * sizeof(int64_t));
    l.point_order = align64(l.list_start + (cells + 1) * sizeof(int64_t));
    l.point_cell = align64(l.point_order + b * sizeof(int64_t));
    l.sorted = align64(l.point_cell + b * sizeof(int64_t));
    const size_t es = dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    l.total = align64(l.sorted + 3 * b * es);
    return l;
}

static const gf_cull_header *header_of(const void *structure) {
    return (const gf_cull_header *)structure;
}

static cull_layout layout_of_structure(const gf_params *p, const void *structure) {
    return layout_of(p->num_points, header_of(structure)->max_cells, p->dtype);
}

static gf_cull_view view_of(const gf_params *p, const void *structure, const void *lists,
                            const void *work) {
    const cull_layout l = layout_of_structure(p, structure);
    const char *base = (const char *)structure;
    gf_cull_view v;
    v.cell_start = (const int64_t *)(base + l.cell_start);
    v.point_order = (const int64_t *)(base + l.point_order);
    v.list_start = (const int64_t *)(base + l.list_start);
    v.list = (const int32_t *)lists;
    v.sorted = base + l.sorted;
    v.sorted_g = 0;
    v.extra = 0;
    v.extra_cell = 0;
    v.num_extra = 0;
    if (work) {
        /* the backward's work: [B] grad_out sorted (one channel), then the count and
         * the positions (in the sorted order) of the points with a non-finite grad_out */
        const char *w = (const char *)work;
        const size_t es = p->dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
        const size_t extra_at = align64((size_t)p->num_points * es);
        v.sorted_g = w;
        v.num_extra = *(const int64_t *)(w + extra_at);
        v.extra = (const int64_t *)(w + extra_at + 64);
        v.extra_cell = v.extra + p->num_points;
    }
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

size_t gf_cpu_cull_structure_bytes(const gf_params *p, const gf_cull_config *config) {
    if (!p || !config || p->num_points < 0 || !(config->points_per_cell > 0.0)) return 0;
    return layout_of(p->num_points, gf_grid_max_cells(p->num_points, config->points_per_cell),
                     p->dtype)
        .total;
}

/* A structure of at least its layout's size whose plan passes gf_check_cull_stage. */
static gf_status check_structure(const gf_params *p, const void *structure) {
    if (!structure) return GF_ERR_NULL_POINTER;
    const gf_cull_header *h = header_of(structure);
    const gf_status st = gf_check_cull_stage(p, &h->plan);
    if (st != GF_OK) return st;
    if (h->max_cells < h->plan.num_cells) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

gf_status gf_cpu_cull_plan(const gf_params *p, const gf_cull_config *config, void *structure,
                           size_t structure_bytes) {
    if (!config) return GF_ERR_NULL_POINTER;
    if (!structure) return GF_ERR_NULL_POINTER;
    gf_cull_header *h = (gf_cull_header *)structure;
    gf_status st = gf_check_cull_plan_args(p, config->points_per_cell, &h->plan);
    if (st != GF_OK) return st;
    const int64_t max_cells = gf_grid_max_cells(p->num_points, config->points_per_cell);
    if (structure_bytes < layout_of(p->num_points, max_cells, p->dtype).total)
        return GF_ERR_SMALL_WORKSPACE;
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
    memset(h, 0, sizeof *h);
    gf_grid_choose(lo, hi, finite, config->points_per_cell, &h->plan);
    h->plan.finite_points = finite;
    h->max_cells = max_cells;
    return GF_OK;
}

gf_status gf_cpu_cull_count(const gf_params *p, const void *structure, int64_t begin,
                            int64_t end, int64_t *counts) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!(begin >= 0 && begin <= end && end <= p->num_gaussians)) return GF_ERR_BAD_SIZE;
    if (begin == end) return GF_OK;
    if (!counts || !p->records || !p->weights) return GF_ERR_NULL_POINTER;
    const gf_cull_plan *plan = &header_of(structure)->plan;
    for (int64_t g = begin; g < end; ++g) {
        gf_cull_box box;
        box_of(p, plan, g, &box);
        gf_cull_rows it;
        gf_cull_rows_begin(&box, &it);
        for (int64_t first, last; gf_cull_rows_next(plan, &box, &it, &first, &last);)
            for (int64_t c = first; c <= last; ++c) ++counts[c];
    }
    return GF_OK;
}

gf_status gf_cpu_cull_finish(const gf_params *p, const gf_cull_config *config, void *structure,
                             const int64_t *counts) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!config) return GF_ERR_NULL_POINTER;
    if (!counts && p->num_gaussians > 0) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && !p->x) return GF_ERR_NULL_POINTER;
    gf_cull_header *h = (gf_cull_header *)structure;
    const cull_layout l = layout_of_structure(p, structure);
    char *base = (char *)structure;
    int64_t *cell_start = (int64_t *)(base + l.cell_start);
    int64_t *list_start = (int64_t *)(base + l.list_start);
    int64_t *point_order = (int64_t *)(base + l.point_order);
    int64_t *point_cell = (int64_t *)(base + l.point_cell);
    const int64_t cells = h->plan.num_cells; /* + 1: the non-finite cell */
    const int64_t B = p->num_points;

    /* the lists' starts from the counts */
    list_start[0] = 0;
    for (int64_t c = 0; c < cells; ++c)
        list_start[c + 1] = list_start[c] + (p->num_gaussians > 0 ? counts[c] : 0);
    h->plan.list_length = list_start[cells];
    h->plan.pairs_estimate =
        (double)h->plan.finite_points * (double)h->plan.list_length / (double)cells +
        (double)(B - h->plan.finite_points) * (double)p->num_gaussians;
    h->culled = config->always ||
                h->plan.pairs_estimate < config->max_share * (double)B * (double)p->num_gaussians;
    if (!h->culled) return GF_OK;

    /* the points: counting sort by cell, stable (index order within a cell) */
    memset(cell_start, 0, (size_t)(cells + 2) * sizeof(int64_t));
    for (int64_t b = 0; b < B; ++b) {
        double x[3];
        point_values(p, b, x);
        point_cell[b] = gf_grid_cell(&h->plan, x[0], x[1], x[2]);
        ++cell_start[point_cell[b] + 1];
    }
    for (int64_t c = 0; c <= cells; ++c) cell_start[c + 1] += cell_start[c];
    /* cell_start[c] runs forward as cell c fills, ending at c + 1's start; shift back */
    for (int64_t b = 0; b < B; ++b) point_order[cell_start[point_cell[b]]++] = b;
    memmove(cell_start + 1, cell_start, (size_t)(cells + 1) * sizeof(int64_t));
    cell_start[0] = 0;

    /* the points in that order, SoA, for the Gaussians' contiguous runs */
    if (p->dtype == GF_FLOAT32) {
        float *xs = (float *)(base + l.sorted);
        const float *x = (const float *)p->x;
        for (int64_t i = 0; i < B; ++i) {
            const int64_t b = point_order[i];
            for (int k = 0; k < 3; ++k) xs[k * B + i] = x[b * p->x_stride[0] + k * p->x_stride[1]];
        }
    } else {
        double *xs = (double *)(base + l.sorted);
        const double *x = (const double *)p->x;
        for (int64_t i = 0; i < B; ++i) {
            const int64_t b = point_order[i];
            for (int k = 0; k < 3; ++k) xs[k * B + i] = x[b * p->x_stride[0] + k * p->x_stride[1]];
        }
    }
    return GF_OK;
}

gf_status gf_cpu_cull_header(const void *structure, gf_cull_header *header) {
    if (!structure || !header) return GF_ERR_NULL_POINTER;
    *header = *header_of(structure);
    return GF_OK;
}

size_t gf_cpu_cull_lists_bytes(const void *structure) {
    if (!structure) return 0;
    const int64_t length = header_of(structure)->plan.list_length;
    return length > 0 ? (size_t)length * sizeof(int32_t) : 0;
}

const int64_t *gf_cpu_cull_list_starts(const void *structure) {
    if (!structure) return 0;
    const gf_cull_header *h = header_of(structure);
    return (const int64_t *)((const char *)structure +
                             layout_of(0, h->max_cells, GF_FLOAT32).list_start);
}

gf_status gf_cpu_cull_fill(const gf_params *p, const void *structure, int64_t begin,
                           int64_t end, int64_t *cursor, void *lists, size_t lists_bytes) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!(begin >= 0 && begin <= end && end <= p->num_gaussians)) return GF_ERR_BAD_SIZE;
    if (begin == end) return GF_OK;
    if (!cursor || !lists || !p->records || !p->weights) return GF_ERR_NULL_POINTER;
    if (lists_bytes < gf_cpu_cull_lists_bytes(structure)) return GF_ERR_SMALL_WORKSPACE;
    const gf_cull_plan *plan = &header_of(structure)->plan;
    const int64_t *list_start = gf_cpu_cull_list_starts(structure);
    int32_t *list = (int32_t *)lists;
    for (int64_t g = begin; g < end; ++g) {
        gf_cull_box box;
        box_of(p, plan, g, &box);
        gf_cull_rows it;
        gf_cull_rows_begin(&box, &it);
        for (int64_t first, last; gf_cull_rows_next(plan, &box, &it, &first, &last);)
            for (int64_t c = first; c <= last; ++c) {
                /* a cursor past its list: counts of other inputs than this fill's */
                if (cursor[c] >= list_start[c + 1]) return GF_ERR_BAD_SIZE;
                list[cursor[c]++] = (int32_t)g;
            }
    }
    return GF_OK;
}

static gf_status check_stage(const gf_params *p, const void *structure, int64_t begin,
                             int64_t end, int64_t size) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!(begin >= 0 && begin <= end && end <= size)) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

gf_status gf_cpu_cull_pairs(const gf_params *p, const void *structure, double *pairs) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!pairs) return GF_ERR_NULL_POINTER;
    const gf_cull_plan *plan = &header_of(structure)->plan;
    const gf_cull_view v = view_of(p, structure, 0, 0);
    double total = 0.0;
    for (int64_t c = 0; c <= plan->num_cells; ++c) {
        const int64_t list = c == plan->num_cells ? p->num_gaussians
                                                  : v.list_start[c + 1] - v.list_start[c];
        total += (double)(v.cell_start[c + 1] - v.cell_start[c]) * (double)list;
    }
    *pairs = total;
    return GF_OK;
}

/* The points' stages' shared checks: the range over cells, the lists, the inputs. */
static gf_status check_points_stage(const gf_params *p, const void *structure, const void *lists,
                                    int64_t begin, int64_t end, int backward) {
    gf_status st = check_stage(p, structure, begin, end,
                               structure ? header_of(structure)->plan.num_cells + 1 : 0);
    if (st != GF_OK || begin == end) return st;
    if (!header_of(structure)->culled) return GF_ERR_BAD_SIZE; /* not built: the dense path */
    if (!lists && header_of(structure)->plan.list_length > 0) return GF_ERR_NULL_POINTER;
    if (!p->x || (p->num_gaussians > 0 && !p->records)) return GF_ERR_NULL_POINTER;
    if (backward && !p->grad_out) return GF_ERR_NULL_POINTER;
    if (p->num_channels > 1 && p->num_gaussians > 0 && !p->weights) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

gf_status gf_cpu_culled_forward(const gf_params *p, const void *structure, const void *lists,
                                int64_t begin, int64_t end) {
    if (p && p->num_points == 0) return check_stage(p, structure, 0, 0, 0); /* no cells */
    gf_status st = check_points_stage(p, structure, lists, begin, end, 0);
    if (st != GF_OK || begin == end) return st;
    if (!p->out) return GF_ERR_NULL_POINTER;
    const gf_cull_view v = view_of(p, structure, lists, 0);
    gf_cpu_kernels_current()->culled_forward[p->dtype](p, &header_of(structure)->plan, &v,
                                                        begin, end);
    return GF_OK;
}

gf_status gf_cpu_culled_backward_points(const gf_params *p, const void *structure,
                                        const void *lists, int64_t begin, int64_t end) {
    if (p && (p->num_points == 0 || !p->grad_x)) return check_stage(p, structure, 0, 0, 0);
    gf_status st = check_points_stage(p, structure, lists, begin, end, 1);
    if (st != GF_OK || begin == end) return st;
    const gf_cull_view v = view_of(p, structure, lists, 0);
    gf_cpu_kernels_current()->culled_backward_points[p->dtype](p, &header_of(structure)->plan,
                                                                &v, begin, end);
    return GF_OK;
}

size_t gf_cpu_cull_backward_bytes(const gf_params *p) {
    if (!p || p->num_points < 0) return 0;
    const size_t es = p->dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    return align64((size_t)p->num_points * es) + 64 + 2 * (size_t)p->num_points * sizeof(int64_t);
}

gf_status gf_cpu_cull_backward_prepare(const gf_params *p, const void *structure, void *work,
                                       size_t work_bytes) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!work) return GF_ERR_NULL_POINTER;
    if (work_bytes < gf_cpu_cull_backward_bytes(p)) return GF_ERR_SMALL_WORKSPACE;
    const gf_cull_view v = view_of(p, structure, 0, 0);
    const int64_t B = p->grad_out ? p->num_points : 0, C = p->num_channels;
    const size_t es = p->dtype == GF_FLOAT32 ? sizeof(float) : sizeof(double);
    char *w = (char *)work;
    int64_t *num_extra = (int64_t *)(w + align64((size_t)B * es));
    int64_t *extra = num_extra + 8, *extra_cell = extra + p->num_points;
    int64_t n = 0, cell = 0; /* the sorted order runs cell by cell */
    for (int64_t i = 0; i < B; ++i) {
        const int64_t b = v.point_order[i];
        if (C == 1) {
            const int64_t at = b * p->grad_out_stride[0];
            if (p->dtype == GF_FLOAT32) ((float *)w)[i] = ((const float *)p->grad_out)[at];
            else ((double *)w)[i] = ((const double *)p->grad_out)[at];
        }
        while (v.cell_start[cell + 1] <= i) ++cell; /* the cell of sorted position i */
        if (gf_cull_point_seen_by_all(p, b)) extra[n] = i, extra_cell[n++] = cell;
    }
    *num_extra = n;
    return GF_OK;
}

gf_status gf_cpu_culled_backward_gaussians(const gf_params *p, const void *structure,
                                           const void *work, int64_t begin, int64_t end) {
    gf_status st = check_stage(p, structure, begin, end, p ? p->num_gaussians : 0);
    if (st != GF_OK || begin == end) return st;
    if (!p->grad_means && !p->grad_cov && !p->grad_weights) return GF_OK;
    if (!header_of(structure)->culled) return GF_ERR_BAD_SIZE;
    if (!p->means || !p->cov || !p->weights || !p->records) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && (!p->x || !p->grad_out || !work)) return GF_ERR_NULL_POINTER;
    const gf_cull_view v = view_of(p, structure, 0, work);
    gf_cpu_kernels_current()->culled_backward_gaussians[p->dtype](
        p, &header_of(structure)->plan, &v, begin, end);
    return GF_OK;
}
