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
    return launch_dense_points(p, plan, records, false, stream, cuda_error);
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
        st = launch_dense_points(p, plan, records, true, stream, cuda_error);
        if (st != GF_OK) return st;
    }
    if (want_gaussians)
        st = launch_dense_gaussians(p, plan, records, ws + layout.partial, stream, cuda_error);
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

gf_status dispatch_culled(const gf_params *p, const gf_cull_plan *plan, bool backward,
                          const void *plan_workspace, size_t plan_workspace_bytes,
                          void *workspace, size_t workspace_bytes, void *stream,
                          int *cuda_error) {
    gf_status st = check_problem(p, backward);
    if (st != GF_OK) return st;
    if ((st = gf_check_cull_stage(p, plan)) != GF_OK) return st;
    PlanLayout pl;
    if ((st = plan_layout(*p, pl, cuda_error)) != GF_OK) return st;
    CullLayout l;
    if ((st = cull_layout(*p, *plan, backward, l, cuda_error)) != GF_OK) return st;
    if (plan_workspace_bytes < pl.total || workspace_bytes < l.total)
        return GF_ERR_SMALL_WORKSPACE;
    if (!plan_workspace || !workspace) return GF_ERR_NULL_POINTER;
    return run_culled(*p, *plan, backward, pl, static_cast<const unsigned char *>(plan_workspace),
                      l, static_cast<unsigned char *>(workspace),
                      static_cast<cudaStream_t>(stream), cuda_error);
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

gf_status gf_cuda_cull_plan_bytes(const gf_params *p, size_t *bytes, int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    if (p->num_gaussians > INT32_MAX) return GF_ERR_BAD_SIZE;
    PlanLayout l;
    if ((st = plan_layout(*p, l, cuda_error)) != GF_OK) return st;
    *bytes = l.total;
    return GF_OK;
}

gf_status gf_cuda_cull_plan(const gf_params *p, double points_per_cell, void *plan_workspace,
                            size_t plan_workspace_bytes, void *stream, gf_cull_plan *plan,
                            int *cuda_error) {
    gf_status st = gf_check_cull_plan_args(p, points_per_cell, plan);
    if (st != GF_OK) return st;
    if (p->num_gaussians > 0 && (!p->means || !p->cov || !p->weights))
        return GF_ERR_NULL_POINTER;
    PlanLayout l;
    if ((st = plan_layout(*p, l, cuda_error)) != GF_OK) return st;
    if (plan_workspace_bytes < l.total) return GF_ERR_SMALL_WORKSPACE;
    if (!plan_workspace) return GF_ERR_NULL_POINTER;
    return run_cull_plan(*p, points_per_cell, l, static_cast<unsigned char *>(plan_workspace),
                         static_cast<cudaStream_t>(stream), plan, cuda_error);
}

gf_status gf_cuda_culled_workspace_bytes(const gf_params *p, const gf_cull_plan *plan,
                                         int backward, size_t *bytes, int *cuda_error) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (!bytes) return GF_ERR_NULL_POINTER;
    if ((st = gf_check_cull_plan(plan)) != GF_OK) return st;
    CullLayout l;
    if ((st = cull_layout(*p, *plan, backward != 0, l, cuda_error)) != GF_OK) return st;
    *bytes = l.total;
    return GF_OK;
}

gf_status gf_cuda_culled_forward(const gf_params *p, const gf_cull_plan *plan,
                                 const void *plan_workspace, size_t plan_workspace_bytes,
                                 void *workspace, size_t workspace_bytes, void *stream,
                                 int *cuda_error) {
    return dispatch_culled(p, plan, false, plan_workspace, plan_workspace_bytes, workspace,
                           workspace_bytes, stream, cuda_error);
}

gf_status gf_cuda_culled_backward(const gf_params *p, const gf_cull_plan *plan,
                                  const void *plan_workspace, size_t plan_workspace_bytes,
                                  void *workspace, size_t workspace_bytes, void *stream,
                                  int *cuda_error) {
    return dispatch_culled(p, plan, true, plan_workspace, plan_workspace_bytes, workspace,
                           workspace_bytes, stream, cuda_error);
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
