/*
 * gf_cpu_internal.h - what the CPU API (gf_cpu.c) needs from the loops
 * (gf_cpu_kernels.c), which are compiled once per instruction set.  Not installed.
 */
#ifndef GF_CPU_INTERNAL_H
#define GF_CPU_INTERNAL_H

#include "gaussfield.h"
#include "gf_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*gf_range_fn)(const gf_params *params, int64_t begin, int64_t end);

/* The culling workspace that gf_cpu_cull_build fills, as typed arrays (gf_cpu_cull.c
 * lays it out):
 *   cell_start  [num_cells + 2]  points of cell c: point_order[cell_start[c] .. cell_start[c + 1])
 *                                (cell num_cells: the points with a non-finite coordinate)
 *   point_order [B]              point indices sorted by cell, in index order within a cell
 *   list_start  [num_cells + 1]  Gaussians of cell c: list[list_start[c] .. list_start[c + 1])
 *   list        [list_length]    Gaussian indices, ascending within a cell
 *   point_cell  [B]              the cell of each point (scratch of the build)
 *   sorted      [4, B]           x, y, z and (one channel, backward) grad_out of the points
 *                                in point_order's order, in the problem's dtype */
typedef struct gf_cull_view {
    const int64_t *cell_start;
    const int64_t *point_order;
    const int64_t *list_start;
    const int32_t *list;
    const void *sorted;
} gf_cull_view;

typedef void (*gf_cull_range_fn)(const gf_params *params, const gf_cull_plan *plan,
                                 const gf_cull_view *view, int64_t begin, int64_t end);

/* The loops of one instruction set, indexed by gf_dtype. */
typedef struct gf_cpu_kernels {
    const char *isa;
    gf_range_fn forward[2];
    gf_range_fn backward_points[2];
    gf_range_fn backward_gaussians[2];
    gf_cull_range_fn culled_forward[2];          /* over cells */
    gf_cull_range_fn culled_backward_points[2];  /* over cells */
    gf_cull_range_fn culled_backward_gaussians[2]; /* over Gaussians */
} gf_cpu_kernels;

/* The loops chosen for this processor (at the first call). */
const gf_cpu_kernels *gf_cpu_kernels_current(void);

extern const gf_cpu_kernels gf_cpu_kernels_generic;
#if defined(GF_HAVE_X86_VARIANTS)
extern const gf_cpu_kernels gf_cpu_kernels_avx2;
extern const gf_cpu_kernels gf_cpu_kernels_avx512;
#endif

#ifdef __cplusplus
}
#endif

#endif /* GF_CPU_INTERNAL_H */
