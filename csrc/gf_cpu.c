// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu.c - the CPU half of the C API: the per-Gaussian precompute, the stages' range
 * checks, and the choice of loops for this processor.  The loops live in
 * gf_cpu_kernels.c; what CPU and CUDA share (status strings, sizes, the common argument
 * checks) in gf_common.c.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "gaussfield.h"
#include "gf_common.h"
#include "gf_cpu_internal.h"
#include "gf_math.h"

static gf_status check_range(int64_t begin, int64_t end, int64_t size) {
    return (begin >= 0 && begin <= end && end <= size) ? GF_OK : GF_ERR_BAD_SIZE;
}

/* ---- choice of loops ---------------------------------------------------------- */

static const gf_cpu_kernels *detect_kernels(void) {
    const char *forced = getenv("GAUSSFIELD_CPU_ISA");
#if defined(GF_HAVE_X86_VARIANTS)
    __builtin_cpu_init();
    const int has_avx512 = __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512vl") &&
                           __builtin_cpu_supports("avx512bw");
    const int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    /* A forced choice is honoured only where the processor supports it. */
    if (forced && strcmp(forced, "generic") == 0) return &gf_cpu_kernels_generic;
    if (forced && strcmp(forced, "avx2") == 0 && has_avx2) return &gf_cpu_kernels_avx2;
    if (has_avx512 && !(forced && strcmp(forced, "avx2") == 0)) return &gf_cpu_kernels_avx512;
    if (has_avx2) return &gf_cpu_kernels_avx2;
#else
    (void)forced;
#endif
    return &gf_cpu_kernels_generic;
}

const gf_cpu_kernels *gf_cpu_kernels_current(void) {
    /* Every thread that races here computes the same answer; the atomic makes the
     * race well-defined. */
    static _Atomic(const gf_cpu_kernels *) chosen = NULL;
    const gf_cpu_kernels *k = atomic_load_explicit(&chosen, memory_order_acquire);
    if (!k) {
        k = detect_kernels();
        atomic_store_explicit(&chosen, k, memory_order_release);
    }
    return k;
}

const char *gf_cpu_isa(void) { return gf_cpu_kernels_current()->isa; }

/* ---- stages ------------------------------------------------------------------- */

gf_status gf_cpu_precompute(const gf_params *p, int64_t begin, int64_t end) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if ((st = check_range(begin, end, p->num_gaussians)) != GF_OK) return st;
    if (begin == end) return GF_OK;
    if (!p->means || !p->cov || !p->weights || !p->records) return GF_ERR_NULL_POINTER;
    const int64_t ms0 = p->means_stride[0], ms1 = p->means_stride[1];
    const int64_t cs0 = p->cov_stride[0], cs1 = p->cov_stride[1];
    const int64_t ws = p->weights_stride[0];
    if (p->dtype == GF_FLOAT32) {
        const float *m = (const float *)p->means, *c = (const float *)p->cov,
                    *w = (const float *)p->weights;
        gf_record_f32 *r = (gf_record_f32 *)p->records;
        for (int64_t g = begin; g < end; ++g)
            gf_record_init_f32(r + g, m + g * ms0, ms1, c + g * cs0, cs1, w[g * ws],
                               p->cov_mode, p->eps, p->cutoff);
    } else {
        const double *m = (const double *)p->means, *c = (const double *)p->cov,
                     *w = (const double *)p->weights;
        gf_record_f64 *r = (gf_record_f64 *)p->records;
        for (int64_t g = begin; g < end; ++g)
            gf_record_init_f64(r + g, m + g * ms0, ms1, c + g * cs0, cs1, w[g * ws],
                               p->cov_mode, p->eps, p->cutoff);
    }
    return GF_OK;
}

gf_status gf_cpu_forward(const gf_params *p, int64_t begin, int64_t end) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if ((st = check_range(begin, end, p->num_points)) != GF_OK) return st;
    if (begin == end) return GF_OK;
    if (!p->out || !p->x || (p->num_gaussians > 0 && !p->records)) return GF_ERR_NULL_POINTER;
    if (p->num_channels > 1 && p->num_gaussians > 0 && !p->weights) return GF_ERR_NULL_POINTER;
    gf_cpu_kernels_current()->forward[p->dtype](p, begin, end);
    return GF_OK;
}

gf_status gf_cpu_backward_points(const gf_params *p, int64_t begin, int64_t end) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if ((st = check_range(begin, end, p->num_points)) != GF_OK) return st;
    if (begin == end || !p->grad_x) return GF_OK;
    if (!p->x || !p->grad_out || (p->num_gaussians > 0 && !p->records))
        return GF_ERR_NULL_POINTER;
    if (p->num_channels > 1 && p->num_gaussians > 0 && !p->weights) return GF_ERR_NULL_POINTER;
    gf_cpu_kernels_current()->backward_points[p->dtype](p, begin, end);
    return GF_OK;
}

gf_status gf_cpu_backward_gaussians(const gf_params *p, int64_t begin, int64_t end) {
    gf_status st = gf_check_params(p);
    if (st != GF_OK) return st;
    if ((st = check_range(begin, end, p->num_gaussians)) != GF_OK) return st;
    if (begin == end || (!p->grad_means && !p->grad_cov && !p->grad_weights)) return GF_OK;
    if (!p->means || !p->cov || !p->weights || !p->records) return GF_ERR_NULL_POINTER;
    if (p->num_points > 0 && (!p->x || !p->grad_out)) return GF_ERR_NULL_POINTER;
    gf_cpu_kernels_current()->backward_gaussians[p->dtype](p, begin, end);
    return GF_OK;
}
