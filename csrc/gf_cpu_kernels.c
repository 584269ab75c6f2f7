// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu_kernels.c - the CPU loops, instantiated for float and double.  The build
 * compiles this file once per instruction set (GF_ISA = generic, avx2, avx512, each
 * with its own -m flags); gf_cpu.c picks one table at run time from what the
 * processor supports, as libdeflate does.
 */
#include "gf_cpu_internal.h"
#include "gf_math.h"
#include "gf_spatial.h"
#include "gf_voxel.h"

#ifndef GF_ISA
#define GF_ISA generic
#endif

#define GF_PASTE4_(a, b, c, d) a##b##c##d
#define GF_PASTE4(a, b, c, d) GF_PASTE4_(a, b, c, d)
#define GF_PASTE2_(a, b) a##b
#define GF_PASTE2(a, b) GF_PASTE2_(a, b)

#define GF_T float
#define GF_T_IS_FLOAT 1
#define GF_TYPE(name) name##_f32
#define GF_FN(name) name##_f32
#define GF_KERNEL(name) GF_PASTE4(name, _f32_, GF_ISA, )
#include "gf_cpu_kernels_template.h"
#undef GF_T
#undef GF_T_IS_FLOAT
#undef GF_TYPE
#undef GF_FN
#undef GF_KERNEL

#define GF_T double
#define GF_T_IS_FLOAT 0
#define GF_TYPE(name) name##_f64
#define GF_FN(name) name##_f64
#define GF_KERNEL(name) GF_PASTE4(name, _f64_, GF_ISA, )
#include "gf_cpu_kernels_template.h"
#undef GF_T
#undef GF_T_IS_FLOAT
#undef GF_TYPE
#undef GF_FN
#undef GF_KERNEL

#define GF_STR_(x) #x
#define GF_STR(x) GF_STR_(x)

const gf_cpu_kernels GF_PASTE2(gf_cpu_kernels_, GF_ISA) = {
    GF_STR(GF_ISA),
    {GF_PASTE4(gf_forward, _f32_, GF_ISA, ), GF_PASTE4(gf_forward, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_backward_points, _f32_, GF_ISA, ),
     GF_PASTE4(gf_backward_points, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_backward_gaussians, _f32_, GF_ISA, ),
     GF_PASTE4(gf_backward_gaussians, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_culled_forward, _f32_, GF_ISA, ), GF_PASTE4(gf_culled_forward, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_culled_backward_points, _f32_, GF_ISA, ),
     GF_PASTE4(gf_culled_backward_points, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_culled_backward_gaussians, _f32_, GF_ISA, ),
     GF_PASTE4(gf_culled_backward_gaussians, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_voxel_forward, _f32_, GF_ISA, ), GF_PASTE4(gf_voxel_forward, _f64_, GF_ISA, )},
    {GF_PASTE4(gf_voxel_backward_gaussians, _f32_, GF_ISA, ),
     GF_PASTE4(gf_voxel_backward_gaussians, _f64_, GF_ISA, )},
};
