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

/* gf_check_params, and what the double backward's stages add: a whitening factor
 * (GF_COV_WHITENED) and non-negative strides of the directions that are given. */
gf_status gf_check_second_params(const gf_params *params);

#ifdef __cplusplus
}
#endif

#endif /* GF_COMMON_H */
