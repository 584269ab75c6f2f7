/*
 * gf_cpu_internal.h - what the CPU API (gf_cpu.c) needs from the loops
 * (gf_cpu_kernels.c), which are compiled once per instruction set.  Not installed.
 */
#ifndef GF_CPU_INTERNAL_H
#define GF_CPU_INTERNAL_H

#include "gaussfield.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The checks every stage shares (the CUDA half uses them too): dtype, cov_mode, eps,
 * sizes and strides. */
gf_status gf_check_params(const gf_params *params);

typedef void (*gf_range_fn)(const gf_params *params, int64_t begin, int64_t end);

/* The loops of one instruction set, indexed by gf_dtype. */
typedef struct gf_cpu_kernels {
    const char *isa;
    gf_range_fn forward[2];
    gf_range_fn backward_points[2];
    gf_range_fn backward_gaussians[2];
} gf_cpu_kernels;

extern const gf_cpu_kernels gf_cpu_kernels_generic;
#if defined(GF_HAVE_X86_VARIANTS)
extern const gf_cpu_kernels gf_cpu_kernels_avx2;
extern const gf_cpu_kernels gf_cpu_kernels_avx512;
#endif

#ifdef __cplusplus
}
#endif

#endif /* GF_CPU_INTERNAL_H */
