// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu_voxel.c - the CPU half of voxelize in the C API (gaussfield.h, "Regular grids"
 * and "CPU voxelize"): the structure (the tiles' plan, the voxel-to-world map, the axes'
 * terms of the centres, the lists' starts), the tiles' lists (count, finish, fill, as
 * the culling's cells have them), the unseen voxels of a backward, and the stages, whose
 * loops live with the point loops in gf_cpu_kernels_template.h (the same pair loops,
 * their points the voxel centres).  The serial parts are O(S0 + S1 + S2 + tiles); the
 * Gaussians' walks and the stages split into ranges for threads.
 */
#include <math.h>
#include <string.h>

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_cpu_internal.h"
#include "gf_math.h"
#include "gf_spatial.h"
#include "gf_voxel.h"

static size_t align64(size_t v) { return (v + 63) & ~(size_t)63; }

/* The voxels per tile edge to start from: a tile of 8^3 voxels is one GF_BTILE chunk of
 * the backward and eight GF_TILE chunks of the forward. */
#define GF_VOXEL_SIDE 8

/* The structure's first bytes. */
typedef struct voxel_header {
    gf_cull_plan tiles;  /* list_length set by gf_cpu_voxel_finish */
    gf_grid grid;
    gf_grid_map map;
    int64_t side;
    int64_t finished;    /* gf_cpu_voxel_finish has run */
    int64_t dtype;
} voxel_header;

/* The layout (bytes at each array's start), a function of the subvolume alone:
 *   header      voxel_header
 *   list_start  [num_tiles + 1]
 *   terms       [S0 + S1 + S2, 3] doubles: axis 0's rows, then axis 1's, then axis 2's */
typedef struct voxel_layout {
    size_t list_start, terms, total;
} voxel_layout;

static int64_t tiles_along(int64_t size, int64_t side) {
    const int64_t n = (size + side - 1) / side;
    return n > 0 ? n : 1;
}

/* GF_VOXEL_SIDE, doubled until the tiles fit GF_VOXEL_MAX_TILES and GF_CULL_MAX_DIM. */
static int64_t side_of(const int64_t size[3]) {
    int64_t side = GF_VOXEL_SIDE;
    for (;;) {
        const int64_t a = tiles_along(size[0], side), b = tiles_along(size[1], side),
                      c = tiles_along(size[2], side);
        if (a <= GF_CULL_MAX_DIM && b <= GF_CULL_MAX_DIM && c <= GF_CULL_MAX_DIM &&
            a * b * c <= GF_VOXEL_MAX_TILES)
            return side;
        side *= 2;
    }
}

static voxel_layout layout_of(const gf_grid *g) {
    const int64_t side = side_of(g->size);
    const int64_t tiles = tiles_along(g->size[0], side) * tiles_along(g->size[1], side) *
                          tiles_along(g->size[2], side);
    voxel_layout l;
    l.list_start = align64(sizeof(voxel_header));
    l.terms = align64(l.list_start + (size_t)(tiles + 1) * sizeof(int64_t));
    l.total = align64(l.terms + (size_t)(g->size[0] + g->size[1] + g->size[2]) * 3 * sizeof(double));
    return l;
}

static const voxel_header *header_of(const void *structure) {
    return (const voxel_header *)structure;
}

size_t gf_cpu_voxel_structure_bytes(const gf_params *p, const gf_grid *g) {
    if (!p || gf_check_grid(g, p->dtype) != GF_OK) return 0;
    return layout_of(g).total;
}

/* params and grid agree, and the structure was planned for this grid. */
static gf_status check_voxel_params(const gf_params *p, const gf_grid *g) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if ((st = gf_check_grid(g, p->dtype)) != GF_OK) return st;
    if (p->num_points != g->size[0] * g->size[1] * g->size[2]) return GF_ERR_BAD_SIZE;
    if (p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

static gf_status check_structure(const gf_params *p, const void *structure) {
    if (!structure) return GF_ERR_NULL_POINTER;
    const voxel_header *h = header_of(structure);
    gf_status st = check_voxel_params(p, &h->grid);
    if (st != GF_OK) return st;
    if (h->dtype != (int64_t)p->dtype) return GF_ERR_BAD_DTYPE;
    return gf_check_cull_plan(&h->tiles);
}

gf_status gf_cpu_voxel_plan(const gf_params *p, const gf_grid *g, void *structure,
                            size_t structure_bytes) {
    gf_status st = check_voxel_params(p, g);
    if (st != GF_OK) return st;
    if (!structure) return GF_ERR_NULL_POINTER;
    const voxel_layout l = layout_of(g);
    if (structure_bytes < l.total) return GF_ERR_SMALL_WORKSPACE;
    voxel_header *h = (voxel_header *)structure;
    memset(h, 0, sizeof *h);
    h->grid = *g;
    h->side = side_of(g->size);
    h->dtype = p->dtype;
    gf_grid_map_init(g, p->dtype, &h->map);
    gf_voxel_plan(g, h->side, &h->tiles);
    int64_t *list_start = (int64_t *)((char *)structure + l.list_start);
    memset(list_start, 0, (size_t)(h->tiles.num_cells + 1) * sizeof(int64_t));
    /* edges[r][c] (index + 1/2) / D_c, as gf_grid_centre forms each term */
    double *terms = (double *)((char *)structure + l.terms);
    for (int c = 0; c < 3; ++c) {
        for (int64_t s = 0; s < g->size[c]; ++s) {
            const double t = (double)(g->offset[c] + s) + 0.5;
            for (int r = 0; r < 3; ++r) terms[3 * s + r] = g->edges[r][c] * t / (double)g->shape[c];
        }
        terms += 3 * g->size[c];
    }
    return GF_OK;
}

gf_status gf_cpu_voxel_tiles(const void *structure, gf_cull_plan *tiles) {
    if (!structure || !tiles) return GF_ERR_NULL_POINTER;
    *tiles = header_of(structure)->tiles;
    return GF_OK;
}

static gf_voxel_view view_of(const void *structure, const void *lists) {
    const voxel_header *h = header_of(structure);
    const voxel_layout l = layout_of(&h->grid);
    const char *base = (const char *)structure;
    gf_voxel_view v;
    v.tiles = &h->tiles;
    v.map = &h->map;
    v.side = h->side;
    for (int c = 0; c < 3; ++c) v.size[c] = h->grid.size[c];
    v.origin = h->grid.origin;
    const double *terms = (const double *)(base + l.terms);
    v.terms[0] = terms;
    v.terms[1] = terms + 3 * v.size[0];
    v.terms[2] = terms + 3 * (v.size[0] + v.size[1]);
    v.list_start = (const int64_t *)(base + l.list_start);
    v.list = (const int32_t *)lists;
    v.unseen = 0;
    v.num_unseen = 0;
    return v;
}

/* Gaussian g's tile box (its record's values in double, whatever the dtype). */
static void box_of(const gf_params *p, const voxel_header *h, int64_t g, gf_cull_box *box) {
    double mean[3], m[6], nkq;
    if (p->dtype == GF_FLOAT32) {
        const gf_record_f32 *r = (const gf_record_f32 *)p->records + g;
        mean[0] = r->mx, mean[1] = r->my, mean[2] = r->mz;
        m[0] = r->m00, m[1] = r->m10, m[2] = r->m11, m[3] = r->m20, m[4] = r->m21, m[5] = r->m22;
        nkq = r->nkq;
    } else {
        const gf_record_f64 *r = (const gf_record_f64 *)p->records + g;
        mean[0] = r->mx, mean[1] = r->my, mean[2] = r->mz;
        m[0] = r->m00, m[1] = r->m10, m[2] = r->m11, m[3] = r->m20, m[4] = r->m21, m[5] = r->m22;
        nkq = r->nkq;
    }
    gf_voxel_box_init(&h->tiles, &h->map, mean, m, nkq, gf_cull_reaches_all(p, g), box);
}

/* The checks of count and fill: a structure, a cutoff, the range, the records. */
static gf_status check_walk(const gf_params *p, const void *structure, int64_t begin,
                            int64_t end) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!gf_has_cutoff(p->cutoff)) return GF_ERR_BAD_CUTOFF;
    if (!(begin >= 0 && begin <= end && end <= p->num_gaussians)) return GF_ERR_BAD_SIZE;
    if (begin < end && (!p->records || !p->weights)) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

gf_status gf_cpu_voxel_count(const gf_params *p, const void *structure, int64_t begin,
                             int64_t end, int64_t *counts) {
    gf_status st = check_walk(p, structure, begin, end);
    if (st != GF_OK || begin == end) return st;
    if (!counts) return GF_ERR_NULL_POINTER;
    const voxel_header *h = header_of(structure);
    for (int64_t g = begin; g < end; ++g) {
        gf_cull_box box;
        box_of(p, h, g, &box);
        gf_cull_rows it;
        gf_cull_rows_begin(&box, &it);
        for (int64_t first, last; gf_cull_rows_next(&h->tiles, &box, &it, &first, &last);)
            for (int64_t t = first; t <= last; ++t) ++counts[t];
    }
    return GF_OK;
}

gf_status gf_cpu_voxel_finish(void *structure, const int64_t *counts) {
    if (!structure || !counts) return GF_ERR_NULL_POINTER;
    voxel_header *h = (voxel_header *)structure;
    int64_t *list_start = (int64_t *)((char *)structure + layout_of(&h->grid).list_start);
    list_start[0] = 0;
    for (int64_t t = 0; t < h->tiles.num_cells; ++t) {
        if (counts[t] < 0) return GF_ERR_BAD_SIZE;
        list_start[t + 1] = list_start[t] + counts[t];
    }
    h->tiles.list_length = list_start[h->tiles.num_cells];
    h->finished = 1;
    return GF_OK;
}

const int64_t *gf_cpu_voxel_list_starts(const void *structure) {
    if (!structure) return 0;
    return (const int64_t *)((const char *)structure +
                             layout_of(&header_of(structure)->grid).list_start);
}

size_t gf_cpu_voxel_lists_bytes(const void *structure) {
    if (!structure || !header_of(structure)->finished) return 0;
    return (size_t)header_of(structure)->tiles.list_length * sizeof(int32_t);
}

gf_status gf_cpu_voxel_fill(const gf_params *p, const void *structure, int64_t begin,
                            int64_t end, int64_t *cursor, void *lists, size_t lists_bytes) {
    gf_status st = check_walk(p, structure, begin, end);
    if (st != GF_OK || begin == end) return st;
    if (!cursor || !lists) return GF_ERR_NULL_POINTER;
    const voxel_header *h = header_of(structure);
    if (!h->finished) return GF_ERR_BAD_SIZE;
    if (lists_bytes < gf_cpu_voxel_lists_bytes(structure)) return GF_ERR_SMALL_WORKSPACE;
    const int64_t *list_start = gf_cpu_voxel_list_starts(structure);
    int32_t *list = (int32_t *)lists;
    for (int64_t g = begin; g < end; ++g) {
        gf_cull_box box;
        box_of(p, h, g, &box);
        gf_cull_rows it;
        gf_cull_rows_begin(&box, &it);
        for (int64_t first, last; gf_cull_rows_next(&h->tiles, &box, &it, &first, &last);)
            for (int64_t t = first; t <= last; ++t) {
                /* a cursor past its list: counts of other inputs than this fill's */
                if (cursor[t] >= list_start[t + 1]) return GF_ERR_BAD_SIZE;
                list[cursor[t]++] = (int32_t)g;
            }
    }
    return GF_OK;
}

gf_status gf_cpu_voxel_forward(const gf_params *p, const void *structure, const void *lists,
                               int64_t begin, int64_t end) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    const voxel_header *h = header_of(structure);
    if (!(begin >= 0 && begin <= end && end <= h->tiles.num_cells)) return GF_ERR_BAD_SIZE;
    if (begin == end || p->num_points == 0) return GF_OK;
    if (!p->out || (p->num_gaussians > 0 && !p->records)) return GF_ERR_NULL_POINTER;
    if (p->num_channels > 1 && p->num_gaussians > 0 && !p->weights) return GF_ERR_NULL_POINTER;
    /* lists given: those of a finished structure, of this cutoff's records */
    if (lists && !h->finished) return GF_ERR_BAD_SIZE;
    if (lists && !gf_has_cutoff(p->cutoff)) return GF_ERR_BAD_CUTOFF;
    const gf_voxel_view v = view_of(structure, lists);
    gf_cpu_kernels_current()->voxel_forward[p->dtype](p, &v, begin, end);
    return GF_OK;
}

gf_status gf_cpu_voxel_unseen(const gf_params *p, int64_t begin, int64_t end, int64_t *voxels,
                              int64_t *count) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!count) return GF_ERR_NULL_POINTER;
    if (!(begin >= 0 && begin <= end && end <= p->num_points)) return GF_ERR_BAD_SIZE;
    if (begin < end && !p->grad_out) return GF_ERR_NULL_POINTER;
    int64_t n = 0;
    for (int64_t b = begin; b < end; ++b) {
        if (!gf_cull_point_seen_by_all(p, b)) continue;
        if (voxels) voxels[n] = b;
        ++n;
    }
    *count = n;
    return GF_OK;
}

gf_status gf_cpu_voxel_backward_gaussians(const gf_params *p, const void *structure,
                                          const int64_t *unseen, int64_t num_unseen,
                                          int64_t begin, int64_t end) {
    gf_status st = check_structure(p, structure);
    if (st != GF_OK) return st;
    if (!(begin >= 0 && begin <= end && end <= p->num_gaussians) || num_unseen < 0 ||
        num_unseen > p->num_points)
        return GF_ERR_BAD_SIZE;
    if (begin == end || (!p->grad_means && !p->grad_cov && !p->grad_weights)) return GF_OK;
    if (!p->means || !p->cov || !p->weights || !p->records) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && !p->grad_out) return GF_ERR_NULL_POINTER;
    if (num_unseen > 0 && !unseen) return GF_ERR_NULL_POINTER;
    gf_voxel_view v = view_of(structure, 0);
    v.unseen = unseen;
    v.num_unseen = num_unseen;
    gf_cpu_kernels_current()->voxel_backward_gaussians[p->dtype](p, &v, begin, end);
    return GF_OK;
}
