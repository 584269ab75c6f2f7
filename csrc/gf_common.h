/*
 * gf_common.h - what the CPU and CUDA halves of the C API share beyond the public
 * header (gf_common.c).  Not installed.
 */
#ifndef GF_COMMON_H
#define GF_COMMON_H

#include "gaussfield.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The checks every stage shares: dtype, cov_mode, eps, cutoff, sizes and strides. */
gf_status gf_check_params(const gf_params *params);

#ifdef __cplusplus
}
#endif

#endif /* GF_COMMON_H */
