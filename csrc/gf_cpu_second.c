// SPDX-License-Identifier: Apache-2.0
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

/* What both stages check: gf_check_second_params and a range within [0, size]. */
static gf_status check_second(const gf_params *p, int64_t begin, int64_t end, int64_t size) {
    const gf_status st = gf_check_second_params(p);
    if (st != GF_OK) return st;
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
