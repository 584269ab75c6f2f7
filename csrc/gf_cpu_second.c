/*
 * gf_cpu_second.c - the CPU stages of the double backward (gaussfield.h, "Second
 * order"): argument checks, and the loops of gf_cpu_second_template.h for each dtype.
 */
#include "gaussfield.h"
#include "gf_common.h"
#include "gf_math.h"

#define GF_T float
#define GF_TYPE(name) name##_f32
#define GF_FN(name) name##_f32
#include "gf_cpu_second_template.h"
#undef GF_T
#undef GF_TYPE
#undef GF_FN

#define GF_T double
#define GF_TYPE(name) name##_f64
#define GF_FN(name) name##_f64
#include "gf_cpu_second_template.h"
#undef GF_T
#undef GF_TYPE
#undef GF_FN

/* What both stages check: the common checks, the whitened mode, the direction's strides
 * and a range within [0, size). */
static gf_status check_second(const gf_params *p, int64_t begin, int64_t end, int64_t size) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if (p->cov_mode != GF_COV_WHITENED) return GF_ERR_BAD_COV_MODE;
    const int64_t *strides[4] = {p->dir_x_stride, p->dir_means_stride, p->dir_cov_stride,
                                 p->dir_weights_stride};
    const void *dirs[4] = {p->dir_x, p->dir_means, p->dir_cov, p->dir_weights};
    for (int i = 0; i < 4; ++i)
        if (dirs[i] && (strides[i][0] < 0 || strides[i][1] < 0)) return GF_ERR_BAD_SIZE;
    if (!(begin >= 0 && begin <= end && end <= size)) return GF_ERR_BAD_SIZE;
    return GF_OK;
}

gf_status gf_cpu_double_backward_points(const gf_params *p, int64_t begin, int64_t end) {
    gf_status st = check_second(p, begin, end, p ? p->num_points : 0);
    if (st != GF_OK) return st;
    if (begin == end || (!p->grad_grad_out && !p->grad_x)) return GF_OK;
    if (!p->x || (p->num_gaussians > 0 && (!p->records || !p->weights)))
        return GF_ERR_NULL_POINTER;
    if (p->grad_x && !p->grad_out) return GF_ERR_NULL_POINTER;
    if (p->dtype == GF_FLOAT32)
        second_points_f32(p, begin, end);
    else
        second_points_f64(p, begin, end);
    return GF_OK;
}

gf_status gf_cpu_double_backward_gaussians(const gf_params *p, int64_t begin, int64_t end) {
    gf_status st = check_second(p, begin, end, p ? p->num_gaussians : 0);
    if (st != GF_OK) return st;
    if (begin == end || (!p->grad_means && !p->grad_cov && !p->grad_weights)) return GF_OK;
    if (!p->records || !p->weights) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && (!p->x || !p->grad_out)) return GF_ERR_NULL_POINTER;
    if (p->dtype == GF_FLOAT32)
        second_gaussians_f32(p, begin, end);
    else
        second_gaussians_f64(p, begin, end);
    return GF_OK;
}
