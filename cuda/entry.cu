// SPDX-License-Identifier: Apache-2.0
/*
 * entry.cu - the extern "C" functions of gaussfield.h's CUDA half: argument checks,
 * workspace sizes and layouts, and the order of the stages (records, then the dense or
 * culled kernels of the other files), each enqueued on the caller's stream.
 */
#include <cstdint>

#include "common.cuh"
#include "cull.cuh"
#include "dense.cuh"
#include "launch_plan.h"
#include "static_switch.h"

namespace {

using namespace gf_cuda;

gf_status run_forward(const gf_params &p, const Plan &plan, const Layout &layout,
                      unsigned char *ws, cudaStream_t stream, int *cuda_error) {
    if (p.num_gaussians == 0) return zero_outputs_of(p, false, stream, cuda_error);
    void *records = ws + layout.records;
    const gf_status st = launch_records(p, records, stream, cuda_error);
    if (st != GF_OK) return st;
    return launch_dense_points(p, plan, records, false, nullptr, stream, cuda_error);
}

gf_status run_backward(const gf_params &p, const Plan &plan, const Layout &layout,
                       unsigned char *ws, cudaStream_t stream, int *cuda_error) {
    const bool want_gaussians = p.grad_means || p.grad_cov || p.grad_weights;
    const int64_t B = p.num_points, N = p.num_gaussians;
    /* empty sums: every wanted gradient is 0 */
    if (N == 0 || B == 0) return zero_outputs_of(p, true, stream, cuda_error);
    if (!p.grad_x && !want_gaussians) return GF_OK;
    void *records = ws + layout.records;
    gf_status st = launch_records(p, records, stream, cuda_error);
    if (st != GF_OK) return st;
    if (p.grad_x) {
        st = launch_dense_points(p, plan, records, true, nullptr, stream, cuda_error);
        if (st != GF_OK) return st;
    }
    if (want_gaussians)
        st = launch_dense_gaussians(p, plan, records, ws + layout.partial, nullptr, stream,
                                    cuda_error);
    return st;
}

gf_status dispatch(const gf_params *p, bool backward, void *workspace, size_t workspace_bytes,
                   void *stream, int *cuda_error) {
    gf_status st = check_problem(p, backward);
    if (st != GF_OK) return st;
    int sm_count = 0;
    if ((st = sm_count_of_current_device(&sm_count, cuda_error)) != GF_OK) return st;
    const Plan plan = make_plan(*p, backward, sm_count);
    const Layout layout = make_layout(*p, plan, backward);
    if (workspace_bytes < layout.total) return GF_ERR_SMALL_WORKSPACE;
    if (layout.total > 0 && !workspace) return GF_ERR_NULL_POINTER;
    if (!backward && p->num_points == 0) return GF_OK;
    auto *ws = static_cast<unsigned char *>(workspace);
    auto s = static_cast<cudaStream_t>(stream);
    return backward ? run_backward(*p, plan, layout, ws, s, cuda_error)
                    : run_forward(*p, plan, layout, ws, s, cuda_error);
}

/* The checks of a culling call: the problem's, the config's, the structure's size. */
gf_status check_culled(const gf_params *p, const gf_cull_config *config, bool backward,
                       const void *structure, size_t structure_bytes) {
    gf_status st = check_problem(p, backward);
    if (st != GF_OK) return st;
    if (!config) return GF_ERR_NULL_POINTER;
    gf_cull_plan unused;
    if ((st = gf_check_cull_plan_args(p, config->points_per_cell, &unused)) != GF_OK) return st;
    if (config->list_capacity < 0) return GF_ERR_BAD_SIZE;
    if (!structure) return GF_ERR_NULL_POINTER;
    if (structure_bytes < structure_layout(*p, *config).total) return GF_ERR_SMALL_WORKSPACE;
    return GF_OK;
}

/* The workspace of a culling call, checked against the caller's. */
gf_status culled_workspace(const gf_params *p, const gf_cull_config *config, bool backward,
                           void *workspace, size_t workspace_bytes, WorkspaceLayout &l,
                           int *cuda_error) {
    gf_status st = workspace_layout(*p, *config, backward, l, cuda_error);
    if (st != GF_OK) return st;
    if (workspace_bytes < l.total) return GF_ERR_SMALL_WORKSPACE;
    if (!workspace) return GF_ERR_NULL_POINTER;
    return GF_OK;
}

gf_status dense_plan(const gf_params &p, bool backward, Plan &plan, int *cuda_error) {
    int sm_count = 0;
    const gf_status st = sm_count_of_current_device(&sm_count, cuda_error);
    if (st == GF_OK) plan = make_plan(p, backward, sm_count);
    return st;
}

}  // namespace

extern "C" {

gf_status gf_cuda_workspace_bytes(const gf_params *p, int backward, size_t *bytes,
                                  int *cuda_error) {
    gf_status st = check_problem(p, backward != 0);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    int sm_count = 0;
    if ((st = sm_count_of_current_device(&sm_count, cuda_error)) != GF_OK) return st;
    const Plan plan = make_plan(*p, backward != 0, sm_count);
    *bytes = make_layout(*p, plan, backward != 0).total;
    return GF_OK;
}

gf_status gf_cuda_forward(const gf_params *p, void *workspace, size_t workspace_bytes,
                          void *stream, int *cuda_error) {
    return dispatch(p, false, workspace, workspace_bytes, stream, cuda_error);
}

gf_status gf_cuda_backward(const gf_params *p, void *workspace, size_t workspace_bytes,
                           void *stream, int *cuda_error) {
    return dispatch(p, true, workspace, workspace_bytes, stream, cuda_error);
}

const char *gf_cuda_error_string(int cuda_error) {
    return cudaGetErrorString(static_cast<cudaError_t>(cuda_error));
}

gf_status gf_cuda_cull_structure_bytes(const gf_params *p, const gf_cull_config *config,
                                       size_t *bytes) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!config || !bytes) return GF_ERR_NULL_POINTER;
    if (!(config->points_per_cell > 0.0) || p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    *bytes = structure_layout(*p, *config).total;
    return GF_OK;
}

gf_status gf_cuda_culled_workspace_bytes(const gf_params *p, const gf_cull_config *config,
                                         int backward, size_t *bytes, int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!config || !bytes) return GF_ERR_NULL_POINTER;
    if (!(config->points_per_cell > 0.0) || config->list_capacity < 0 ||
        p->num_gaussians > INT32_MAX)
        return GF_ERR_BAD_SIZE;
    WorkspaceLayout l;
    if ((st = workspace_layout(*p, *config, backward != 0, l, cuda_error)) != GF_OK) return st;
    *bytes = l.total;
    return GF_OK;
}

gf_status gf_cuda_cull_build(const gf_params *p, const gf_cull_config *config, int for_backward,
                             void *structure, size_t structure_bytes, void *workspace,
                             size_t workspace_bytes, void *stream, int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!config) return GF_ERR_NULL_POINTER;
    gf_cull_plan unused;
    if ((st = gf_check_cull_plan_args(p, config->points_per_cell, &unused)) != GF_OK) return st;
    if (config->list_capacity < 0) return GF_ERR_BAD_SIZE;
    if (p->num_gaussians > 0 && (!p->means || !p->cov || !p->weights)) return GF_ERR_NULL_POINTER;
    if (!structure) return GF_ERR_NULL_POINTER;
    if (structure_bytes < structure_layout(*p, *config).total) return GF_ERR_SMALL_WORKSPACE;
    WorkspaceLayout l;
    if ((st = culled_workspace(p, config, false, workspace, workspace_bytes, l, cuda_error)) != GF_OK)
        return st;
    const StructureView sv = structure_view(*p, *config, structure);
    auto *ws = static_cast<unsigned char *>(workspace);
    auto s = static_cast<cudaStream_t>(stream);
    if ((st = launch_cull_plan(*p, *config, sv, l, ws, s, cuda_error)) != GF_OK) return st;
    return launch_cull_points(*p, sv, l, ws, for_backward != 0, s, cuda_error);
}

gf_status gf_cuda_culled_forward(const gf_params *p, const gf_cull_config *config,
                                 const void *structure, size_t structure_bytes, void *workspace,
                                 size_t workspace_bytes, void *stream, int *cuda_error) {
    gf_status st = check_culled(p, config, false, structure, structure_bytes);
    if (st != GF_OK) return st;
    WorkspaceLayout l;
    if ((st = culled_workspace(p, config, false, workspace, workspace_bytes, l, cuda_error)) != GF_OK)
        return st;
    auto s = static_cast<cudaStream_t>(stream);
    if (p->num_points == 0) return GF_OK;
    if (p->num_gaussians == 0) return zero_outputs_of(*p, false, s, cuda_error);
    const StructureView sv = structure_view(*p, *config, const_cast<void *>(structure));
    auto *ws = static_cast<unsigned char *>(workspace);
    const int32_t *list = nullptr;
    if ((st = launch_cull_lists(*p, sv, l, ws, &list, s, cuda_error)) != GF_OK) return st;
    st = launch_culled_points(*p, sv, l, ws, list, false, s, cuda_error);
    if (st != GF_OK) return st;
    Plan plan;
    if ((st = dense_plan(*p, false, plan, cuda_error)) != GF_OK) return st;
    return launch_dense_points(*p, plan, sv.records, false, sv.header, s, cuda_error);
}

gf_status gf_cuda_culled_backward(const gf_params *p, const gf_cull_config *config,
                                  const void *structure, size_t structure_bytes, void *workspace,
                                  size_t workspace_bytes, void *stream, int *cuda_error) {
    gf_status st = check_culled(p, config, true, structure, structure_bytes);
    if (st != GF_OK) return st;
    WorkspaceLayout l;
    if ((st = culled_workspace(p, config, true, workspace, workspace_bytes, l, cuda_error)) != GF_OK)
        return st;
    auto s = static_cast<cudaStream_t>(stream);
    const bool want_gaussians = p->grad_means || p->grad_cov || p->grad_weights;
    if (p->num_points == 0 || p->num_gaussians == 0) return zero_outputs_of(*p, true, s, cuda_error);
    if (!p->grad_x && !want_gaussians) return GF_OK;
    const StructureView sv = structure_view(*p, *config, const_cast<void *>(structure));
    auto *ws = static_cast<unsigned char *>(workspace);
    Plan plan;
    if ((st = dense_plan(*p, true, plan, cuda_error)) != GF_OK) return st;
    if (p->grad_x) {
        const int32_t *list = nullptr;
        if ((st = launch_cull_lists(*p, sv, l, ws, &list, s, cuda_error)) != GF_OK) return st;
        st = launch_culled_points(*p, sv, l, ws, list, true, s, cuda_error);
        if (st != GF_OK) return st;
        if ((st = launch_dense_points(*p, plan, sv.records, true, sv.header, s, cuda_error)) != GF_OK)
            return st;
    }
    if (!want_gaussians) return GF_OK;
    if ((st = launch_cull_backward_prepare(*p, sv, l, ws, s, cuda_error)) != GF_OK) return st;
    if ((st = launch_culled_gaussians(*p, sv, l, ws, s, cuda_error)) != GF_OK) return st;
    return launch_dense_gaussians(*p, plan, sv.records, ws + l.dense, sv.header, s, cuda_error);
}

gf_status gf_cuda_cull_header(const void *structure, void *stream, gf_cull_header *header,
                              int *cuda_error) {
    if (!structure || !header) return GF_ERR_NULL_POINTER;
    auto s = static_cast<cudaStream_t>(stream);
    gf_status st = cuda_status(
        cudaMemcpyAsync(header, structure, sizeof *header, cudaMemcpyDeviceToHost, s), cuda_error);
    if (st != GF_OK) return st;
    return cuda_status(cudaStreamSynchronize(s), cuda_error);
}

gf_status gf_cuda_double_backward_workspace_bytes(const gf_params *p, size_t *bytes) {
    const gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    *bytes = second_workspace_bytes(*p);
    return GF_OK;
}

gf_status gf_cuda_double_backward(const gf_params *p, void *workspace, size_t workspace_bytes,
                                  void *stream, int *cuda_error) {
    return launch_dense_second(p, workspace, workspace_bytes, static_cast<cudaStream_t>(stream),
                               cuda_error);
}

}  // extern "C"
