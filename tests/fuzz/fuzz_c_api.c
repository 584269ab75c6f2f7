// SPDX-License-Identifier: Apache-2.0
/*
 * fuzz_c_api.c - a fuzz target for the CPU half of the C API (libFuzzer entry point;
 * standalone_main.c drives it where libFuzzer is not available).
 *
 * The input bytes choose a problem: dtype and cov_mode (valid or not, a covariance
 * matrix GF_COV_SIGMA among them, positive definite or not), eps (any bits),
 * the cutoff (none as 0 or +inf, usual radii, tiny and huge ones, negative, NaN, or any
 * bits), sizes (also negative) and the number of channels (also 0 and negative, and
 * beyond GF_CPU_CHANNEL_BLOCK), a layout per input (dense, transposed, padded, broadcast
 * rows or columns, or a negative stride), which pointers are NULL, the ranges of each
 * stage (also invalid), and the values of every input (any bits: NaN, Inf, subnormals,
 * huge).  Every buffer
 * is allocated with exactly the size its layout reaches, so AddressSanitizer sees any
 * access outside it.  Checked, besides "no crash, no undefined behaviour":
 *   - a call returns GF_OK exactly when its arguments are valid, else one of the
 *     documented error statuses;
 *   - the results do not depend on how the ranges are split (bit for bit);
 *   - with a cutoff, the culling stages (plan, build, culled forward and backward, with
 *     any points per cell and split ranges) return GF_OK on a valid problem, refuse a
 *     short workspace, a bad range or a bad points_per_cell, and stay inside every buffer;
 *   - with a whitening factor (GF_COV_WHITENED), the double backward's two stages, with
 *     any directions (or NULL) and outputs, give the same bits for split ranges.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gaussfield.h"

#define REQUIRE(c)                                                              \
    do {                                                                        \
        if (!(c)) {                                                             \
            fprintf(stderr, "fuzz_c_api.c:%d: REQUIRE(%s) failed\n", __LINE__, #c); \
            __builtin_trap();                                                   \
        }                                                                       \
    } while (0)

typedef struct {
    const uint8_t *p;
    size_t n;
} bytes;

static uint64_t take(bytes *in, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; ++i) {
        v = (v << 8) | (in->n ? *in->p : 0);
        if (in->n) {
            ++in->p;
            --in->n;
        }
    }
    return v;
}

/* An input array [rows, cols] in one of six layouts; `elems` is how far it reaches. */
typedef struct {
    int64_t stride[2];
    size_t elems;
    int valid;
} layout;

static layout make_layout(int code, int64_t rows, int64_t cols) {
    layout l = {{cols, 1}, 0, 1};
    switch (code % 6) {
    case 0: break;                                    /* dense */
    case 1: l.stride[0] = 1; l.stride[1] = rows; break; /* transposed */
    case 2: l.stride[0] = 2 * cols + 1; break;         /* padded rows */
    case 3: l.stride[0] = 0; break;                    /* broadcast rows */
    case 4: l.stride[0] = -1; l.valid = 0; break;      /* negative: invalid */
    case 5: l.stride[0] = 1; l.stride[1] = 0; break;   /* broadcast columns */
    }
    if (rows > 0 && cols > 0 && l.valid)
        l.elems = (size_t)((rows - 1) * l.stride[0] + (cols - 1) * l.stride[1] + 1);
    return l;
}

static void *fill(bytes *in, size_t elems, size_t size) {
    unsigned char *buf = malloc(elems * size + 1);
    for (size_t i = 0; i < elems * size; ++i) buf[i] = (unsigned char)take(in, 1);
    return buf;
}

/* Runs the four stages over [0, B) and [0, N) cut at b_cut and n_cut; returns the
 * status of the first call that fails, or GF_OK. */
static gf_status run(gf_params *p, int64_t b_cut, int64_t n_cut) {
    const int64_t B = p->num_points, N = p->num_gaussians;
    const int64_t bs[3] = {0, b_cut, B}, ns[3] = {0, n_cut, N};
    gf_status st;
    for (int k = 0; k < 2; ++k)
        if ((st = gf_cpu_precompute(p, ns[k], ns[k + 1])) != GF_OK) return st;
    for (int k = 0; k < 2; ++k) {
        if ((st = gf_cpu_forward(p, bs[k], bs[k + 1])) != GF_OK) return st;
        if ((st = gf_cpu_backward_points(p, bs[k], bs[k + 1])) != GF_OK) return st;
        if ((st = gf_cpu_backward_gaussians(p, ns[k], ns[k + 1])) != GF_OK) return st;
    }
    return GF_OK;
}

/* The culling stages on a valid problem with a cutoff whose records are computed (p's
 * outputs are overwritten). */
static void run_culled(gf_params *p, bytes *in, size_t out_bytes, int64_t Bp, int64_t Cp) {
    static const double per_cell[4] = {0.5, 1.0, 3.0, 64.0};
    const uint64_t code = take(in, 2);
    gf_cull_config cfg = {per_cell[code % 4], 1, 0.0, 0, NULL};
    const size_t sb = gf_cpu_cull_structure_bytes(p, &cfg);
    unsigned char *sws = aligned_alloc(64, (sb + 63) / 64 * 64 + 64);
    gf_cull_config bad = cfg;
    bad.points_per_cell = 0.0;
    REQUIRE(gf_cpu_cull_plan(p, &bad, sws, sb) == GF_ERR_BAD_SIZE);
    if (sb > 0) REQUIRE(gf_cpu_cull_plan(p, &cfg, sws, sb - 1) == GF_ERR_SMALL_WORKSPACE);
    REQUIRE(gf_cpu_cull_plan(p, &cfg, sws, sb) == GF_OK);
    gf_cull_header h;
    REQUIRE(gf_cpu_cull_header(sws, &h) == GF_OK);
    REQUIRE(h.plan.num_cells >= 1 && h.plan.num_cells <= h.max_cells && h.plan.finite_points <= Bp);
    const int64_t N = p->num_gaussians, cells = h.plan.num_cells;
    const int64_t n_cut = N ? (int64_t)((code >> 8) % (uint64_t)(N + 1)) : 0;
    /* counts in two ranges, summed; then the lists from two ranges' cursors */
    int64_t *c0 = calloc((size_t)cells + 1, sizeof(int64_t)), *c1 = calloc((size_t)cells + 1, sizeof(int64_t));
    REQUIRE(gf_cpu_cull_count(p, sws, -1, N, c0) == GF_ERR_BAD_SIZE);
    REQUIRE(gf_cpu_cull_count(p, sws, 0, n_cut, c0) == GF_OK);
    REQUIRE(gf_cpu_cull_count(p, sws, n_cut, N, c1) == GF_OK);
    int64_t *total = calloc((size_t)cells + 1, sizeof(int64_t));
    for (int64_t c = 0; c < cells; ++c) total[c] = c0[c] + c1[c];
    REQUIRE(gf_cpu_cull_finish(p, &cfg, sws, total) == GF_OK);
    REQUIRE(gf_cpu_cull_header(sws, &h) == GF_OK && h.culled && h.plan.list_length >= 0);
    double pairs = -1;
    REQUIRE(gf_cpu_cull_pairs(p, sws, &pairs) == GF_OK && pairs >= 0);
    const size_t lb = gf_cpu_cull_lists_bytes(sws);
    unsigned char *lists = malloc(lb + 4);
    const int64_t *starts = gf_cpu_cull_list_starts(sws);
    for (int64_t c = 0; c < cells; ++c) c1[c] = starts[c] + c0[c], c0[c] = starts[c];
    REQUIRE(gf_cpu_cull_fill(p, sws, 0, n_cut, c0, lists, lb) == GF_OK);
    REQUIRE(gf_cpu_cull_fill(p, sws, n_cut, N, c1, lists, lb) == GF_OK);
    for (int64_t c = 0; c < cells; ++c) REQUIRE(c1[c] == starts[c + 1]);
    unsigned char *o = calloc(out_bytes + 1, 1);
    const size_t es = p->dtype == GF_FLOAT32 ? 4 : 8;
    /* the outputs that the dense run had, in a fresh buffer of the same layout */
    if (p->out) p->out = o;
    if (p->grad_x) p->grad_x = o + es * (size_t)(Bp * Cp);
    const int64_t c_cut = (int64_t)((code >> 2) % (uint64_t)(cells + 2));
    REQUIRE(gf_cpu_culled_forward(p, sws, lists, 0, cells + 2) == GF_ERR_BAD_SIZE || Bp == 0);
    REQUIRE(gf_cpu_culled_backward_gaussians(p, sws, NULL, -1, N) == GF_ERR_BAD_SIZE);
    REQUIRE(gf_cpu_culled_forward(p, sws, lists, 0, c_cut) == GF_OK);
    REQUIRE(gf_cpu_culled_forward(p, sws, lists, c_cut, cells + 1) == GF_OK);
    REQUIRE(gf_cpu_culled_backward_points(p, sws, lists, 0, c_cut) == GF_OK);
    REQUIRE(gf_cpu_culled_backward_points(p, sws, lists, c_cut, cells + 1) == GF_OK);
    const size_t wb = gf_cpu_cull_backward_bytes(p);
    unsigned char *work = aligned_alloc(64, (wb + 63) / 64 * 64 + 64);
    REQUIRE(gf_cpu_cull_backward_prepare(p, sws, work, wb) == GF_OK);
    REQUIRE(gf_cpu_culled_backward_gaussians(p, sws, work, 0, n_cut) == GF_OK);
    REQUIRE(gf_cpu_culled_backward_gaussians(p, sws, work, n_cut, N) == GF_OK);
    free(o);
    free(work);
    free(lists);
    free(total);
    free(c0);
    free(c1);
    free(sws);
}

/* The double backward's stages on a valid whitened problem whose records are computed:
 * directions (each dense or NULL) filled from the input, whole ranges against cut ones
 * bit for bit, and a range outside [0, size] refused. */
static void run_second(gf_params *p, bytes *in, int64_t Bp, int64_t Np, int64_t Cp,
                       int64_t b_cut, int64_t n_cut) {
    const size_t es = p->dtype == GF_FLOAT32 ? 4 : 8;
    const uint64_t which = take(in, 1);
    void *dx = fill(in, (size_t)(3 * Bp), es), *dm = fill(in, (size_t)(3 * Np), es),
         *dc = fill(in, (size_t)(9 * Np), es), *dw = fill(in, (size_t)(Np * Cp), es);
    p->dir_x = (which & 1) ? NULL : dx;
    p->dir_means = (which & 2) ? NULL : dm;
    p->dir_cov = (which & 4) ? NULL : dc;
    p->dir_weights = (which & 8) ? NULL : dw;
    p->dir_x_stride[0] = 3, p->dir_x_stride[1] = 1;
    p->dir_means_stride[0] = 3, p->dir_means_stride[1] = 1;
    p->dir_cov_stride[0] = 9, p->dir_cov_stride[1] = 1;
    p->dir_weights_stride[0] = Cp, p->dir_weights_stride[1] = 1;
    /* grad_grad_out [B, C], grad_x [B, 3], grad_means [N, 3], grad_cov [N, 9], grad_weights [N, C] */
    const size_t elems = (size_t)(Bp * (Cp + 3) + Np * (3 + 9 + Cp));
    unsigned char *o[2];
    for (int pass = 0; pass < 2; ++pass) {
        o[pass] = calloc(elems * es + 1, 1);
        p->grad_grad_out = (which & 16) ? NULL : o[pass];
        p->grad_x = (which & 32) || !p->grad_out ? NULL : o[pass] + es * (size_t)(Bp * Cp);
        p->grad_means = (which & 64) || !p->grad_out ? NULL : o[pass] + es * (size_t)(Bp * (Cp + 3));
        p->grad_cov = (which & 128) || !p->grad_out
                          ? NULL
                          : o[pass] + es * (size_t)(Bp * (Cp + 3) + 3 * Np);
        p->grad_weights = !p->grad_out ? NULL : o[pass] + es * (size_t)(Bp * (Cp + 3) + 12 * Np);
        const int64_t bs[3] = {0, pass ? b_cut : Bp, Bp}, ns[3] = {0, pass ? n_cut : Np, Np};
        for (int k = 0; k < 2; ++k) {
            REQUIRE(gf_cpu_double_backward_points(p, bs[k], bs[k + 1]) == GF_OK);
            REQUIRE(gf_cpu_double_backward_gaussians(p, ns[k], ns[k + 1]) == GF_OK);
        }
    }
    REQUIRE(memcmp(o[0], o[1], elems * es) == 0);
    REQUIRE(gf_cpu_double_backward_points(p, 0, Bp + 1) == GF_ERR_BAD_SIZE);
    REQUIRE(gf_cpu_double_backward_gaussians(p, -1, Np) == GF_ERR_BAD_SIZE);
    gf_params q = *p;
    q.cov_mode = GF_COV_FULL;
    REQUIRE(gf_cpu_double_backward_points(&q, 0, Bp) == GF_ERR_BAD_COV_MODE);
    free(o[0]);
    free(o[1]);
    free(dx);
    free(dm);
    free(dc);
    free(dw);
    p->dir_x = p->dir_means = p->dir_cov = p->dir_weights = NULL;
    p->grad_grad_out = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    bytes in = {data, size};
    const uint64_t flags = take(&in, 4);
    gf_params p;
    memset(&p, 0, sizeof p);
    const int dtype_code = (int)(flags % 3), mode_code = (int)((flags >> 2) % 6);
    p.dtype = dtype_code == 2 ? (gf_dtype)7 : (gf_dtype)dtype_code;
    p.cov_mode = mode_code == 0   ? GF_COV_DIAG
                 : mode_code == 1 ? GF_COV_FULL
                 : mode_code == 3 ? GF_COV_WHITENED
                 : mode_code == 4 ? GF_COV_QUAT
                 : mode_code == 5 ? GF_COV_SIGMA
                                  : (gf_cov_mode)5;
    if ((flags >> 4) & 1) {
        uint64_t bits = take(&in, 8);
        memcpy(&p.eps, &bits, sizeof p.eps);
    } else {
        p.eps = 1e-6;
    }
    /* the cutoff: a radius k > 0, 0 or +inf for none; negative or NaN is an error */
    static const double cutoffs[10] = {0.0, 1.0 / 0.0, 1.5, 3.0, 0.05, 1e-300, 1e200, -1.0,
                                       -1.0 / 0.0, 0.0 / 0.0};
    const int cutoff_code = (int)((flags >> 5) % 11);
    if (cutoff_code == 10) {
        uint64_t bits = take(&in, 8);
        memcpy(&p.cutoff, &bits, sizeof p.cutoff);
    } else {
        p.cutoff = cutoffs[cutoff_code];
    }
    const int64_t B = (int64_t)(take(&in, 1) % 40) - 2; /* -2 .. 37 */
    const int64_t N = (int64_t)(take(&in, 1) % 24) - 2; /* -2 .. 21 */
    const int64_t C = (int64_t)(take(&in, 1) % 24) - 2; /* -2 .. 21 channels */
    p.num_points = B;
    p.num_gaussians = N;
    p.num_channels = C;
    const int64_t Bp = B > 0 ? B : 0, Np = N > 0 ? N : 0, Cp = C > 0 ? C : 0;
    const int cov_cols = mode_code == 3 || mode_code == 5 ? 9
                         : mode_code == 4                ? 7
                         : p.cov_mode == GF_COV_FULL     ? 6
                                                         : 3;
    const int layouts = (int)take(&in, 2);
    const layout lx = make_layout(layouts, Bp, 3), lm = make_layout(layouts / 6, Np, 3),
                 lc = make_layout(layouts / 36, Np, cov_cols),
                 lw = make_layout(layouts / 216, Np, Cp), lg = make_layout(layouts / 1296, Bp, Cp);
    p.x_stride[0] = lx.stride[0];
    p.x_stride[1] = lx.stride[1];
    p.means_stride[0] = lm.stride[0];
    p.means_stride[1] = lm.stride[1];
    p.cov_stride[0] = lc.stride[0];
    p.cov_stride[1] = lc.stride[1];
    p.weights_stride[0] = lw.stride[0];
    p.weights_stride[1] = lw.stride[1];
    p.grad_out_stride[0] = lg.stride[0];
    p.grad_out_stride[1] = lg.stride[1];

    const size_t es = p.dtype == GF_FLOAT32 ? 4 : 8; /* an unknown dtype reads nothing */
    void *x = fill(&in, lx.elems, es), *mu = fill(&in, lm.elems, es), *cov = fill(&in, lc.elems, es),
         *w = fill(&in, lw.elems, es), *g = fill(&in, lg.elems, es);
    const uint64_t nulls = take(&in, 2);
    p.x = (nulls & 1) ? NULL : x;
    p.means = (nulls & 2) ? NULL : mu;
    p.cov = (nulls & 4) ? NULL : cov;
    p.weights = (nulls & 8) ? NULL : w;
    p.grad_out = (nulls & 16) ? NULL : g;

    /* out [B, C], grad_x [B, 3], grad_means [N, 3], grad_cov [N, cov], grad_weights [N, C] */
    const size_t out_elems = (size_t)(Bp * (Cp + 3) + Np * (3 + cov_cols + Cp));
    unsigned char *outs[2];
    void *recs[2];
    const int64_t b_cut = Bp ? (int64_t)(take(&in, 1) % (uint64_t)(Bp + 1)) : 0;
    const int64_t n_cut = Np ? (int64_t)(take(&in, 1) % (uint64_t)(Np + 1)) : 0;
    gf_status st[2];
    for (int pass = 0; pass < 2; ++pass) {
        outs[pass] = calloc(out_elems * es + 1, 1);
        const size_t rb = gf_records_bytes(p.dtype, N);
        recs[pass] = aligned_alloc(64, (rb + 63) / 64 * 64 + 64);
        unsigned char *o = outs[pass];
        p.records = (nulls & 32) ? NULL : recs[pass];
        p.out = (nulls & 64) ? NULL : o;
        p.grad_x = (nulls & 128) ? NULL : o + es * (size_t)(Bp * Cp);
        p.grad_means = (nulls & 256) ? NULL : o + es * (size_t)(Bp * (Cp + 3));
        p.grad_cov = (nulls & 512) ? NULL : o + es * (size_t)(Bp * (Cp + 3) + 3 * Np);
        p.grad_weights = (nulls & 1024) ? NULL : o + es * (size_t)(Bp * (Cp + 3) + (3 + cov_cols) * Np);
        /* pass 0 runs whole ranges, pass 1 the cut ones */
        st[pass] = pass == 0 ? run(&p, Bp, Np) : run(&p, b_cut, n_cut);
    }

    /* GF_OK exactly when the problem is valid (NULL outputs of the backward are
     * allowed; a NULL input or output that a non-empty stage needs is not). */
    const int valid_but_cutoff = dtype_code != 2 && mode_code != 2 && p.eps >= 0.0 &&
                                 p.eps <= 1.7976931348623157e308 && B >= 0 && N >= 0 &&
                                 C >= 1 && lx.valid && lm.valid && lc.valid && lw.valid &&
                                 lg.valid;
    const int valid_common = valid_but_cutoff && p.cutoff >= 0.0; /* +inf included, NaN not */
    int needs_ok = 1;
    if (N > 0 && (!p.means || !p.cov || !p.weights || !p.records)) needs_ok = 0;
    if (B > 0 && (!p.x || !p.out)) needs_ok = 0;
    if (B > 0 && N >= 0 && p.grad_x && !p.grad_out) needs_ok = 0;
    if (B > 0 && N > 0 && (p.grad_means || p.grad_cov || p.grad_weights) && !p.grad_out) needs_ok = 0;
    const int expect_ok = valid_common && needs_ok;
    for (int pass = 0; pass < 2; ++pass) {
        REQUIRE((st[pass] == GF_OK) == expect_ok);
        REQUIRE((st[pass] >= GF_OK && st[pass] <= GF_ERR_SMALL_WORKSPACE) ||
                st[pass] == GF_ERR_BAD_CUTOFF);
        /* the cutoff's own status when the cutoff alone is wrong */
        if (valid_but_cutoff && needs_ok && !(p.cutoff >= 0.0))
            REQUIRE(st[pass] == GF_ERR_BAD_CUTOFF);
    }
    REQUIRE(st[0] == st[1]);
    if (expect_ok) REQUIRE(memcmp(outs[0], outs[1], out_elems * es) == 0);

    if (expect_ok && p.cutoff > 0.0 && p.cutoff <= 1.7976931348623157e308)
        run_culled(&p, &in, out_elems * es, Bp, Cp);
    if (expect_ok && mode_code == 3) run_second(&p, &in, Bp, Np, Cp, b_cut, n_cut);

    for (int pass = 0; pass < 2; ++pass) {
        free(outs[pass]);
        free(recs[pass]);
    }
    free(x);
    free(mu);
    free(cov);
    free(w);
    free(g);
    return 0;
}
