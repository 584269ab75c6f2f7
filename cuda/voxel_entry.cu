// SPDX-License-Identifier: Apache-2.0
/*
 * voxel_entry.cu - the extern "C" voxel functions of gaussfield.h's CUDA half: argument
 * checks, the structure's and workspaces' sizes, the geometry, and the stages of the
 * voxel files, each enqueued on the caller's stream.
 */
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "gf_common.h"
#include "launch_plan.h"
#include "voxel.cuh"

namespace {

using namespace gf_cuda;

/* The grid's checks: shape >= 1, 0 <= offset, 0 <= size, offset + size <= shape, finite
 * origin and edges with an invertible matrix, num_points = S0 S1 S2. */
gf_status check_grid(const gf_params &p, const gf_grid *g) {
    if (!g) return GF_ERR_NULL_POINTER;
    int64_t points = 1;
    for (int c = 0; c < 3; ++c) {
        if (g->shape[c] < 1 || g->offset[c] < 0 || g->size[c] < 0 ||
            g->offset[c] > g->shape[c] - g->size[c])
            return GF_ERR_BAD_SIZE;
        if (g->size[c] > 0 && points > INT64_MAX / g->size[c]) return GF_ERR_BAD_SIZE;
        points *= g->size[c];
        if (!std::isfinite(g->origin[c])) return GF_ERR_BAD_SIZE;
        for (int r = 0; r < 3; ++r)
            if (!std::isfinite(g->edges[r][c])) return GF_ERR_BAD_SIZE;
    }
    if (points != p.num_points) return GF_ERR_BAD_SIZE;
    gf_grid_map m;
    if (!gf_grid_map_init(g, p.dtype, &m)) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

/* gf_check_params, the grid's checks, N within the lists' 32-bit entries. */
gf_status check_voxel(const gf_params *p, const gf_grid *g) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if ((st = check_grid(*p, g)) != GF_OK) return st;
    if (p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

/* The inputs' pointers of a non-empty problem. */
gf_status check_inputs(const gf_params &p, bool backward) {
    if (p.num_gaussians > 0 && (!p.means || !p.cov || !p.weights)) return GF_ERR_NULL_POINTER;
    if (backward && p.num_points > 0 && !p.grad_out) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

/* The forward's tile side: GAUSSFIELD_CUDA_CONFIG's voxel_tile (4 or 8) where set, else
 * GF_CUDA_VOXEL_TILE (voxel_forward.cu says why). */
int tile_side() {
    const int v =
        parse_override(std::getenv("GAUSSFIELD_CUDA_CONFIG"), "voxel_tile", GF_CUDA_VOXEL_TILE);
    return v == 8 ? 8 : 4;
}

VoxelGeom make_geom(const gf_params &p, const gf_grid &g, bool backward, int tile,
                    const unsigned char *structure, const VoxelStructure &sl) {
    VoxelGeom geom;
    geom.grid = g;
    geom.perm = permuted_grid(g);
    gf_grid_map_init(&geom.perm, p.dtype, &geom.map); /* checked by check_grid */
    gf_voxel_plan(&geom.perm, backward ? 1 : tile, &geom.plan);
    geom.aligned = grid_aligned(g);
    geom.terms = reinterpret_cast<const double *>(structure + sl.terms);
    geom.centres = structure + sl.centres;
    return geom;
}

/* The structure's checks and layout. */
gf_status structure_of(const gf_params &p, const gf_grid &g, const void *structure,
                       size_t structure_bytes, VoxelStructure &sl, int *cuda_error) {
    const gf_status st = voxel_structure_layout(p, g, sl, cuda_error);
    if (st != GF_OK) return st;
    if (!structure) return GF_ERR_NULL_POINTER;
    if (structure_bytes < sl.total) return GF_ERR_SMALL_WORKSPACE;
    return GF_OK;
}

/* The workspace's checks and layout for a build's counts of the given kind. */
gf_status workspace_of(const gf_params &p, const gf_grid &g, bool backward,
                       const gf_voxel_counts *c, const void *workspace, size_t workspace_bytes,
                       VoxelWorkspace &wl, int *cuda_error) {
    if (!c) return GF_ERR_NULL_POINTER;
    if ((c->backward != 0) != backward || c->list_length < 0 || c->work_items < 0 ||
        c->nonfinite < 0 || (!backward && c->tile != 4 && c->tile != 8))
        return GF_ERR_BAD_SIZE;
    const gf_status st = voxel_workspace_layout(p, g, backward, *c, wl, cuda_error);
    if (st != GF_OK) return st;
    if (!workspace) return GF_ERR_NULL_POINTER;
    if (workspace_bytes < wl.total) return GF_ERR_SMALL_WORKSPACE;
    return GF_OK;
}

}  // namespace

extern "C" {

gf_status gf_cuda_voxel_structure_bytes(const gf_params *p, const gf_grid *grid, size_t *bytes,
                                        int *cuda_error) {
    const gf_status st = check_voxel(p, grid);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    VoxelStructure sl;
    const gf_status s2 = voxel_structure_layout(*p, *grid, sl, cuda_error);
    if (s2 == GF_OK) *bytes = sl.total;
    return s2;
}

gf_status gf_cuda_voxel_build(const gf_params *p, const gf_grid *grid, int backward,
                              void *structure, size_t structure_bytes, gf_voxel_counts *counts,
                              void *stream, int *cuda_error) {
    gf_status st = check_voxel(p, grid);
    if (st != GF_OK) return st;
    if (!counts) return GF_ERR_NULL_POINTER;
    if ((st = check_inputs(*p, backward != 0)) != GF_OK) return st;
    VoxelStructure sl;
    if ((st = structure_of(*p, *grid, structure, structure_bytes, sl, cuda_error)) != GF_OK)
        return st;
    const int tile = tile_side();
    if (!backward && voxel_tiles(*grid, tile).num_cells > INT32_MAX) return GF_ERR_BAD_SIZE;
    *counts = gf_voxel_counts{0, 0, 0, backward ? 1 : 0, tile};
    if (p->num_points == 0 || p->num_gaussians == 0) return GF_OK; /* nothing to build */
    auto *s = static_cast<unsigned char *>(structure);
    const VoxelGeom geom = make_geom(*p, *grid, backward != 0, tile, s, sl);
    return launch_voxel_build(*p, geom, backward != 0, s, sl, counts,
                              static_cast<cudaStream_t>(stream), cuda_error);
}

gf_status gf_cuda_voxel_workspace_bytes(const gf_params *p, const gf_grid *grid, int backward,
                                        const gf_voxel_counts *counts, size_t *bytes,
                                        int *cuda_error) {
    gf_status st = check_voxel(p, grid);
    if (st != GF_OK) return st;
    if (!counts || !bytes) return GF_ERR_NULL_POINTER;
    VoxelWorkspace wl;
    if ((st = workspace_of(*p, *grid, backward != 0, counts, reinterpret_cast<void *>(1),
                           ~size_t(0), wl, cuda_error)) != GF_OK)
        return st;
    *bytes = wl.total;
    return GF_OK;
}

gf_status gf_cuda_voxel_forward(const gf_params *p, const gf_grid *grid, const void *structure,
                                size_t structure_bytes, const gf_voxel_counts *counts,
                                void *workspace, size_t workspace_bytes, void *stream,
                                int *cuda_error) {
    gf_status st = check_voxel(p, grid);
    if (st != GF_OK) return st;
    if ((st = check_inputs(*p, false)) != GF_OK) return st;
    if (p->num_points > 0 && !p->out) return GF_ERR_NULL_POINTER;
    VoxelStructure sl;
    if ((st = structure_of(*p, *grid, structure, structure_bytes, sl, cuda_error)) != GF_OK)
        return st;
    VoxelWorkspace wl;
    if ((st = workspace_of(*p, *grid, false, counts, workspace, workspace_bytes, wl, cuda_error)) !=
        GF_OK)
        return st;
    auto s = static_cast<cudaStream_t>(stream);
    if (p->num_points == 0) return GF_OK;
    if (p->num_gaussians == 0) return zero_outputs_of(*p, false, s, cuda_error);
    const auto *sp = static_cast<const unsigned char *>(structure);
    const VoxelGeom geom = make_geom(*p, *grid, false, counts->tile, sp, sl);
    return launch_voxel_forward(*p, geom, sp, sl, *counts, static_cast<unsigned char *>(workspace),
                                wl, s, cuda_error);
}

gf_status gf_cuda_voxel_backward(const gf_params *p, const gf_grid *grid, const void *structure,
                                 size_t structure_bytes, const gf_voxel_counts *counts,
                                 void *workspace, size_t workspace_bytes, void *stream,
                                 int *cuda_error) {
    gf_status st = check_voxel(p, grid);
    if (st != GF_OK) return st;
    if ((st = check_inputs(*p, true)) != GF_OK) return st;
    VoxelStructure sl;
    if ((st = structure_of(*p, *grid, structure, structure_bytes, sl, cuda_error)) != GF_OK)
        return st;
    VoxelWorkspace wl;
    if ((st = workspace_of(*p, *grid, true, counts, workspace, workspace_bytes, wl, cuda_error)) !=
        GF_OK)
        return st;
    auto s = static_cast<cudaStream_t>(stream);
    gf_params q = *p;
    q.grad_x = nullptr; /* a grid has no point gradient */
    if (q.num_points == 0 || q.num_gaussians == 0) return zero_outputs_of(q, true, s, cuda_error);
    if (!q.grad_means && !q.grad_cov && !q.grad_weights) return GF_OK;
    const auto *sp = static_cast<const unsigned char *>(structure);
    const VoxelGeom geom = make_geom(q, *grid, true, 4, sp, sl);
    return launch_voxel_backward(q, geom, sp, sl, *counts, static_cast<unsigned char *>(workspace),
                                 wl, s, cuda_error);
}

}  // extern "C"
