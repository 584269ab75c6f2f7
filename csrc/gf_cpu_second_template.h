// SPDX-License-Identifier: Apache-2.0
/*
 * gf_cpu_second_template.h - the CPU loops of the double backward (gaussfield.h,
 * "Second order"), written once and included by gf_cpu_second.c for float and double
 * with GF_T, GF_TYPE and GF_FN defined as gf_math.h does.  Plain scalar loops over
 * every pair, each output row owned by one iteration and summed in double in a fixed
 * order, so any split into ranges gives the same bits.
 */
#ifndef GF_T
#error "include gf_cpu_second.c's instantiation, not this file"
#endif

/* Row i of an [rows, 3] strided array, or zeros for NULL. */
static void GF_FN(second_row3)(const void *a, const int64_t stride[2], int64_t i, GF_T v[3]) {
    const GF_T *t = (const GF_T *)a;
    for (int k = 0; k < 3; ++k) v[k] = t ? t[i * stride[0] + k * stride[1]] : (GF_T)0;
}

/* Element (i, c) of an [rows, C] strided array, or 0 for NULL. */
static GF_T GF_FN(second_at)(const void *a, const int64_t stride[2], int64_t i, int64_t c) {
    const GF_T *t = (const GF_T *)a;
    return t ? t[i * stride[0] + c * stride[1]] : (GF_T)0;
}

/* The direction's share of Gaussian n. */
static GF_TYPE(gf_dir_record) GF_FN(second_dir)(const gf_params *p, int64_t n) {
    GF_TYPE(gf_dir_record) a;
    const GF_T *dm = (const GF_T *)p->dir_means, *dc = (const GF_T *)p->dir_cov;
    GF_FN(gf_dir_record_init)(&a, dm ? dm + n * p->dir_means_stride[0] : 0,
                              p->dir_means_stride[1], dc ? dc + n * p->dir_cov_stride[0] : 0,
                              p->dir_cov_stride[1]);
    return a;
}

/* t = G_b . w_n and s = G_b . a_w,n over every channel. */
static void GF_FN(second_ts)(const gf_params *p, int64_t b, int64_t n, GF_T *t, GF_T *s) {
    GF_T tt = 0, ss = 0;
    for (int64_t c = 0; c < p->num_channels; ++c) {
        const GF_T g = GF_FN(second_at)(p->grad_out, p->grad_out_stride, b, c);
        tt += g * GF_FN(second_at)(p->weights, p->weights_stride, n, c);
        ss += g * GF_FN(second_at)(p->dir_weights, p->dir_weights_stride, n, c);
    }
    *t = tt;
    *s = ss;
}

/* The channel blocks of a stage: one pass per GF_CPU_CHANNEL_BLOCK channels where the
 * per-channel output is wanted (one pass otherwise), and the channels of the pass from
 * c0 (0 where it is not wanted). */
static int64_t GF_FN(second_passes)(int64_t C, int wanted) {
    return wanted ? (C + GF_CPU_CHANNEL_BLOCK - 1) / GF_CPU_CHANNEL_BLOCK : 1;
}
static int64_t GF_FN(second_width)(int64_t C, int64_t c0, int wanted) {
    return wanted ? (C - c0 < GF_CPU_CHANNEL_BLOCK ? C - c0 : GF_CPU_CHANNEL_BLOCK) : 0;
}

static void GF_FN(second_points)(const gf_params *p, int64_t begin, int64_t end) {
    const GF_TYPE(gf_record) *rec = (const GF_TYPE(gf_record) *)p->records;
    const int64_t N = p->num_gaussians, C = p->num_channels;
    const int cut = gf_has_cutoff(p->cutoff);
    GF_T *ggo = (GF_T *)p->grad_grad_out, *gx = (GF_T *)p->grad_x;
    for (int64_t b = begin; b < end; ++b) {
        GF_T x[3], ax[3];
        GF_FN(second_row3)(p->x, p->x_stride, b, x);
        GF_FN(second_row3)(p->dir_x, p->dir_x_stride, b, ax);
        /* grad_grad_out a block of channels a pass; grad_x in the first pass */
        const int64_t passes = GF_FN(second_passes)(C, ggo != 0);
        for (int64_t pass = 0; pass < passes; ++pass) {
            const int64_t c0 = pass * GF_CPU_CHANNEL_BLOCK;
            const int64_t nc = GF_FN(second_width)(C, c0, ggo != 0);
            const int point_grad = gx && pass == 0;
            double acc[GF_CPU_CHANNEL_BLOCK] = {0};
            double ps[3] = {0.0, 0.0, 0.0};
            for (int64_t n = 0; n < N; ++n) {
                const GF_TYPE(gf_dir_record) a = GF_FN(second_dir)(p, n);
                const GF_TYPE(gf_pair_dir) q = GF_FN(gf_pair_along)(
                    rec + n, &a, x[0], x[1], x[2], ax[0], ax[1], ax[2], cut);
                for (int64_t c = 0; c < nc; ++c)
                    acc[c] += (double)(GF_FN(second_at)(p->weights, p->weights_stride, n,
                                                        c0 + c) * q.g * q.h +
                                       GF_FN(second_at)(p->dir_weights, p->dir_weights_stride,
                                                        n, c0 + c) * q.g);
                if (point_grad) {
                    GF_T t, s, v[3] = {0, 0, 0};
                    GF_FN(second_ts)(p, b, n, &t, &s);
                    const GF_TYPE(gf_pair_rho) o = GF_FN(gf_pair_rho_of)(&q, t, s);
                    GF_FN(gf_pair_second_point_add)(rec + n, &a, &o, v);
                    for (int k = 0; k < 3; ++k) ps[k] += (double)v[k];
                }
            }
            for (int64_t c = 0; c < nc; ++c) ggo[b * C + c0 + c] = (GF_T)acc[c];
            if (point_grad)
                for (int k = 0; k < 3; ++k) gx[3 * b + k] = (GF_T)(GF_TWO_LN2 * ps[k]);
        }
    }
}

static void GF_FN(second_gaussians)(const gf_params *p, int64_t begin, int64_t end) {
    const GF_TYPE(gf_record) *rec = (const GF_TYPE(gf_record) *)p->records;
    const int64_t B = p->num_points, C = p->num_channels;
    const int cut = gf_has_cutoff(p->cutoff);
    GF_T *gm = (GF_T *)p->grad_means, *gc = (GF_T *)p->grad_cov, *gw = (GF_T *)p->grad_weights;
    const int geometry = gm || gc;
    for (int64_t n = begin; n < end; ++n) {
        const GF_TYPE(gf_dir_record) a = GF_FN(second_dir)(p, n);
        /* grad_weights a block of channels a pass; the geometric sums in the first */
        const int64_t passes = GF_FN(second_passes)(C, gw != 0);
        double sums[GF_NUM_SUMS2] = {0};
        for (int64_t pass = 0; pass < passes; ++pass) {
            const int64_t c0 = pass * GF_CPU_CHANNEL_BLOCK;
            const int64_t nc = GF_FN(second_width)(C, c0, gw != 0);
            const int geo = geometry && pass == 0;
            double wsum[GF_CPU_CHANNEL_BLOCK] = {0};
            for (int64_t b = 0; b < B; ++b) {
                GF_T x[3], ax[3];
                GF_FN(second_row3)(p->x, p->x_stride, b, x);
                GF_FN(second_row3)(p->dir_x, p->dir_x_stride, b, ax);
                const GF_TYPE(gf_pair_dir) q = GF_FN(gf_pair_along)(
                    rec + n, &a, x[0], x[1], x[2], ax[0], ax[1], ax[2], cut);
                for (int64_t c = 0; c < nc; ++c)
                    wsum[c] += (double)(GF_FN(second_at)(p->grad_out, p->grad_out_stride, b,
                                                         c0 + c) * q.g * q.h);
                if (geo) {
                    GF_T t, s, v[GF_NUM_SUMS2] = {0};
                    GF_FN(second_ts)(p, b, n, &t, &s);
                    const GF_TYPE(gf_pair_rho) o = GF_FN(gf_pair_rho_of)(&q, t, s);
                    GF_FN(gf_pair_second_sums_add)(&q, &o, ax[0], ax[1], ax[2], v);
                    for (int k = 0; k < GF_NUM_SUMS2; ++k) sums[k] += (double)v[k];
                }
            }
            for (int64_t c = 0; c < nc; ++c) gw[n * C + c0 + c] = (GF_T)wsum[c];
        }
        if (geometry)
            GF_FN(gf_second_gaussian_store)(sums, rec + n, &a, gm ? gm + 3 * n : 0,
                                            gc ? gc + 9 * n : 0);
    }
}
