// SPDX-License-Identifier: Apache-2.0
/*
 * gaussfield.h - the C API of gaussfield.
 *
 * gaussfield evaluates a field of N anisotropic 3D Gaussians with C feature channels
 * at B query points
 *
 *     f(x_b)_c = sum_n  w_nc * exp(-q_bn / 2) * [q_bn <= k^2],
 *     q_bn = (x_b - mu_n)^T Sigma_n^{-1} (x_b - mu_n) = |M_n (x_b - mu_n)|^2
 *
 * (M_n the whitening factor, chol(Sigma_n)^{-1}; k the cutoff, +inf by default) and the
 * vector-Jacobian product of f with respect to the points, the means, the covariance
 * parameters and the weights, without ever materialising anything of size B x N.  The
 * covariance comes in one of five parameterisations, told apart by gf_cov_mode (see
 * below), never by an array's size; the weights are raw (no normalisation constant).  With a cutoff k,
 * |f_k(x)_c - f(x)_c| <= exp(-k^2 / 2) sum_n |w_nc|.
 *
 * Conventions that hold for every function in this header:
 *
 *  - Every function returns a gf_status; GF_OK (0) is success.  Nothing here aborts,
 *    exits, prints or allocates: the caller owns every buffer, including workspaces,
 *    whose sizes the *_bytes() functions report.
 *  - All sizes and indices are int64_t; strides are in elements, not bytes.
 *  - Every floating-point pointer in one gf_params points to data of params->dtype.
 *  - The CPU functions are single-threaded and reentrant: two threads may call them at
 *    once on disjoint output ranges of one problem.  Threading policy is the caller's.
 *  - The CUDA functions enqueue work on the stream they are given and return without
 *    synchronising; every pointer they receive must be device memory of the current
 *    device.  They exist only in a build with CUDA (the gaussfield_cuda library).
 */
#ifndef GAUSSFIELD_H
#define GAUSSFIELD_H

#include <stddef.h>
#include <stdint.h>

/* The eps of GF_COV_FULL (gf_params.eps) for a caller with no reason to choose another:
 * the 1e-6 that the user's notebook adds to the diagonal of Sigma.  The torch ops'
 * schema and the C++ API (torch_ext/) take it as their default; the schema spells it as
 * written here, so it stays a plain decimal literal. */
#define GF_DEFAULT_EPS 1e-6

#ifdef __cplusplus
extern "C" {
#endif

/* Result of every call.  Use gf_status_string() for a message. */
typedef enum gf_status {
    GF_OK = 0,
    GF_ERR_NULL_POINTER = 1,  /* a pointer that the call needs was NULL */
    GF_ERR_BAD_SIZE = 2,      /* a negative size, or a range outside [0, size] */
    GF_ERR_BAD_DTYPE = 3,     /* dtype is not one of gf_dtype */
    GF_ERR_BAD_COV_MODE = 4,  /* cov_mode is not one of gf_cov_mode */
    GF_ERR_BAD_EPS = 5,       /* eps is negative or not finite */
    GF_ERR_SMALL_WORKSPACE = 6, /* the workspace is smaller than *_bytes() reported */
    GF_ERR_CUDA = 7,          /* the CUDA runtime reported an error (see cuda_error) */
    GF_ERR_BAD_CUTOFF = 8     /* cutoff is negative or NaN */
} gf_status;

/* A static, NUL-terminated English description of a status; never NULL. */
const char *gf_status_string(gf_status status);

/* Element type of every floating-point array in a problem. */
typedef enum gf_dtype {
    GF_FLOAT32 = 0,
    GF_FLOAT64 = 1
} gf_dtype;

/*
 * Covariance parameterisation.  gf_cov_num_params() gives the number of parameters per
 * Gaussian, i.e. the last dimension of the cov array (the enumerator's value for DIAG,
 * FULL and QUAT; 9 for both 3x3 modes, SIGMA and WHITENED, which only the mode tells
 * apart).
 *
 * GF_COV_FULL, cov [N, 6] ("cov_tril"):
 *     L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]],  Sigma = L L^T + eps * I
 * GF_COV_DIAG, cov [N, 3] ("log_scales"):
 *     Sigma = diag(e^{2 s0}, e^{2 s1}, e^{2 s2})            (eps is not used)
 * GF_COV_QUAT, cov [N, 7] (3D Gaussian Splatting's rotation and log-scales):
 *     (q_w, q_x, q_y, q_z, s0, s1, s2), Sigma = R(n) diag(e^{2 s}) R(n)^T with
 *     n = q / max(|q|, 1e-12) (eps is not used): the gradient is that of the normalised
 *     form, and q = 0 gives the identity rotation (never NaN)
 * GF_COV_SIGMA, cov [N, 9] (a covariance matrix): S = [[c0, c1, c2], [c3, c4, c5],
 *     [c6, c7, c8]], row-major, Sigma = (S + S^T) / 2, its symmetric part (eps is not
 *     used).  The result depends on the symmetric part alone and grad_cov is its exact
 *     gradient with respect to all 9 entries, hence symmetric: G_ij = d f / d Sigma_ij.
 *     A Sigma that is not positive definite in double (a Cholesky pivot <= 0, or NaN)
 *     gives a NaN whitening factor: that Gaussian's terms are NaN at every point (with a
 *     cutoff too), no status reports it (the CUDA stages could not report it without
 *     waiting); a caller that wants an error checks beforehand, as torch_ext does.
 * GF_COV_WHITENED, cov [N, 9] (the whitening factor itself, a caller's own
 * parameterisation): M = [[c0, 0, 0], [c3, c4, 0], [c6, c7, c8]], the row-major 3x3
 *     matrix of which the lower triangle is read, Sigma^{-1} = M^T M (eps is not used; M
 *     must be invertible).  grad_cov is the gradient with respect to all 9 entries (0
 *     above the diagonal).  The double backward stages take this mode only.
 */
typedef enum gf_cov_mode {
    GF_COV_DIAG = 3,
    GF_COV_FULL = 6,
    GF_COV_QUAT = 7,
    GF_COV_WHITENED = 0x106,
    GF_COV_SIGMA = 0x109
} gf_cov_mode;

/* Parameters per Gaussian of a cov_mode (the last dimension of cov): 3, 6, 7 or 9; 0
 * for an unknown mode. */
int64_t gf_cov_num_params(gf_cov_mode mode);

/*
 * One problem: the inputs, the requested outputs and the per-Gaussian workspace.
 * Fill it once and hand the same struct to each stage.  A stage reads only the fields
 * it documents; the rest may be anything.
 *
 * Inputs may be strided (any non-negative strides, including 0 for broadcast data).
 * Outputs are dense, row-major, and are written, never accumulated into.  In the
 * backward, an output pointer of NULL means "not wanted": it is neither computed nor
 * written, and the work that only it needs is skipped.
 */
typedef struct gf_params {
    gf_dtype dtype;
    gf_cov_mode cov_mode;
    double eps;                 /* added to the diagonal of Sigma in GF_COV_FULL only */
    double cutoff;              /* Mahalanobis radius k > 0: a pair with q > k^2 counts 0
                                 * in the value and every gradient; 0 or +inf: none */
    int64_t num_points;         /* B >= 0 */
    int64_t num_gaussians;      /* N >= 0 */
    int64_t num_channels;       /* C >= 1: weights [N, C], out [B, C] */

    const void *x;        int64_t x_stride[2];        /* [B, 3] query points */
    const void *means;    int64_t means_stride[2];    /* [N, 3] */
    const void *cov;      int64_t cov_stride[2];      /* [N, gf_cov_num_params(cov_mode)] */
    const void *weights;  int64_t weights_stride[2];  /* [N, C] */
    const void *grad_out; int64_t grad_out_stride[2]; /* [B, C], backward only */

    /* [N] per-Gaussian records (mean, weight of channel 0, whitening factor, cutoff), written by
     * gf_cpu_precompute; gf_records_bytes() bytes, aligned to 64 bytes.  The CUDA
     * functions keep their records in their own workspace and ignore this field. */
    void *records;

    void *out;            /* [B, C]  forward output */
    void *grad_x;         /* [B, 3]  backward outputs, each NULL when not wanted */
    void *grad_means;     /* [N, 3]  (the double backward writes its gradients here too) */
    void *grad_cov;       /* [N, gf_cov_num_params(cov_mode)] */
    void *grad_weights;   /* [N, C] */

    /* The double backward only (see "Second order" below): a direction of the backward's
     * outputs (or, equally, of the forward's inputs), each NULL for zero, and the
     * gradient with respect to grad_out (NULL when not wanted). */
    const void *dir_x;       int64_t dir_x_stride[2];       /* [B, 3] */
    const void *dir_means;   int64_t dir_means_stride[2];   /* [N, 3] */
    const void *dir_cov;     int64_t dir_cov_stride[2];     /* [N, 9], GF_COV_WHITENED */
    const void *dir_weights; int64_t dir_weights_stride[2]; /* [N, C] */
    void *grad_grad_out;     /* [B, C] */
} gf_params;

/* Size in bytes of the records array for N Gaussians of the given dtype
 * (0 for an unknown dtype or N < 0). */
size_t gf_records_bytes(gf_dtype dtype, int64_t num_gaussians);

/* ---------------------------------------------------------------------------------
 * CPU.  A forward is gf_cpu_precompute over all Gaussians, then gf_cpu_forward over
 * all points.  A backward is gf_cpu_precompute over all Gaussians, then (for grad_x)
 * gf_cpu_backward_points over all points and (for any Gaussian gradient)
 * gf_cpu_backward_gaussians over all Gaussians.  Each stage may be split into disjoint
 * [begin, end) ranges run on different threads; every output element is computed by
 * exactly one call, in an order that does not depend on the split, so results are
 * bitwise reproducible whatever the thread count.
 * --------------------------------------------------------------------------------- */

/* Reads means, cov, weights, eps, cutoff; writes records[begin, end). */
gf_status gf_cpu_precompute(const gf_params *params, int64_t begin, int64_t end);

/* Reads x, records (and weights when C > 1); writes rows [begin, end) of out. */
gf_status gf_cpu_forward(const gf_params *params, int64_t begin, int64_t end);

/* Reads x, grad_out, records (and weights when C > 1); writes grad_x rows [begin, end). */
gf_status gf_cpu_backward_points(const gf_params *params, int64_t begin, int64_t end);

/* Reads x, grad_out, means, cov, weights, records; writes rows [begin, end) of those of
 * grad_means, grad_cov and grad_weights that are not NULL.  The loop walks the points
 * once per GF_CPU_GAUSSIAN_BLOCK Gaussians (and, with more than GF_CPU_CHANNEL_BLOCK
 * channels, once more per further block of channels): ranges that start at multiples
 * of it run fastest (any range gives the same result). */
gf_status gf_cpu_backward_gaussians(const gf_params *params, int64_t begin, int64_t end);
#define GF_CPU_GAUSSIAN_BLOCK 16
#define GF_CPU_CHANNEL_BLOCK 16

/* ---------------------------------------------------------------------------------
 * Culling.  With a cutoff k, a pair whose point lies outside the Gaussian's k-sigma
 * ellipsoid counts 0, and in a large field most pairs do.  The culled stages compute
 * the same f_k and gradients as the dense ones (the same per-pair test decides every
 * pair they evaluate) while evaluating only the pairs of a point's cell and the
 * Gaussians that may reach that cell:
 *
 *  - the bounding box of the points with finite coordinates is cut into cubic cells,
 *    about `points_per_cell` points each if they spread evenly;
 *  - a Gaussian reaches the cells that its ellipsoid meets: those of its box (half-extent
 *    (1 + GF_CULL_MARGIN) k sqrt(Sigma_ii) around the mean, Sigma the covariance of the
 *    record's factor) that the ellipsoid itself meets, found exactly per row of cells
 *    (gf_spatial.h); the margin keeps every pair the per-pair test could keep in the
 *    working precision;
 *  - each cell lists the Gaussians that reach it, in index order, so a point's sums run
 *    over its cell's list in index order and a Gaussian's over its cells in cell order:
 *    the results do not depend on the thread count, and runs are bitwise reproducible;
 *  - points with a non-finite coordinate form one more cell (index num_cells) whose
 *    list is every Gaussian; in a backward, points with a non-finite grad_out row are
 *    also visited by every Gaussian; a Gaussian with a non-finite mean, factor or weight
 *    reaches every cell: non-finite inputs give what the dense stages give (their
 *    0 * NaN reaches every pair).
 *
 * The structure.  A forward builds a *structure* (the grid, the points sorted by cell,
 * each cell's list length, on CUDA the records and each Gaussian's offset in the lists
 * and an execution order) whose size is a function of B, N, C, the dtype and
 * points_per_cell alone (*_cull_structure_bytes), never of the data, so that a caller
 * can allocate it before seeing the data (a traced graph, a CUDA graph) and keep it
 * from a forward for the backward.  The lists themselves (O(sum of cells reached)) live
 * in a separate workspace, rebuilt by whichever stage needs them.  The structure also
 * holds the path decided for the inputs (culled, or dense where the culled pairs would
 * not pay), so that both ways are taken alike by the forward and the backward.
 * --------------------------------------------------------------------------------- */

/* What a plan found: the grid, and the size of the work. */
typedef struct gf_cull_plan {
    double lo[3];            /* corner of cell (0, 0, 0) */
    double cell_size;        /* edge of the cubic cells */
    int64_t dims[3];         /* cells along x, y and z, each >= 1 */
    int64_t num_cells;       /* dims[0] * dims[1] * dims[2] */
    int64_t finite_points;   /* points with finite coordinates (the others: cell num_cells) */
    int64_t list_length;     /* entries of the cell lists: sum over Gaussians of cells reached */
    double pairs_estimate;   /* pairs the culled stages evaluate if the finite points spread
                              * evenly over the cells (for choosing between paths) */
} gf_cull_plan;

/* How to cull. */
typedef struct gf_cull_config {
    double points_per_cell;  /* the grid's target, > 0 */
    int always;              /* the culled path whatever the plan finds, else: */
    double max_share;        /* culled iff pairs_estimate < max_share * B * N */
    int64_t list_capacity;   /* CUDA: entries the lists hold at most (>= 0); Gaussians past
                              * the last whose entries fit take an exact overflow path */
    int64_t *length_report;  /* CUDA: NULL, or memory the device may write (mapped pinned
                              * host memory) that receives list_length once the plan ran */
} gf_cull_config;

/* The structure's first bytes (in host memory on the CPU, device memory on CUDA). */
typedef struct gf_cull_header {
    gf_cull_plan plan;
    int64_t max_cells;       /* the capacity of the cell arrays: num_cells <= max_cells */
    int32_t culled;          /* 1: the culled path; 0: the dense stages do the work */
    int32_t reserved;
} gf_cull_header;

/* ---- CPU culling -------------------------------------------------------------------
 * A forward: gf_cpu_cull_plan, gf_cpu_cull_count over every Gaussian (in ranges, on
 * threads, each into its own counts), gf_cpu_cull_finish with the counts' sum; then,
 * where the header says culled, gf_cpu_cull_fill (ranges, each with its own cursors)
 * and gf_cpu_culled_forward over the cells.  A backward with the forward's structure:
 * gf_cpu_cull_backward_prepare, then gf_cpu_culled_backward_gaussians (ranges; no lists)
 * and, for grad_x, the lists again and gf_cpu_culled_backward_points. */

/* Bytes of the CPU structure (a function of B, N, the dtype and points_per_cell). */
size_t gf_cpu_cull_structure_bytes(const gf_params *params, const gf_cull_config *config);

/* The grid of the finite points' bounding box into the structure's header.  Reads x,
 * cutoff; single-threaded, O(B).  GF_ERR_BAD_CUTOFF without a cutoff; GF_ERR_BAD_SIZE
 * when N exceeds INT32_MAX (the lists hold 32-bit indices) or points_per_cell is not
 * positive; GF_ERR_SMALL_WORKSPACE for a structure smaller than reported. */
gf_status gf_cpu_cull_plan(const gf_params *params, const gf_cull_config *config,
                           void *structure, size_t structure_bytes);

/* Adds the cells that Gaussians [begin, end) reach to counts[c] (c < num_cells; the
 * caller zeroes the array, num_cells + 1 entries, counts[num_cells] unused).  Reads
 * records, weights, the plan's grid. */
gf_status gf_cpu_cull_count(const gf_params *params, const void *structure, int64_t begin,
                            int64_t end, int64_t *counts);

/* Finishes the plan from the cells' counts over every Gaussian (num_cells entries): the
 * lists' offsets and length, the path (config), and, where culled, the points sorted by
 * cell.  Reads x; single-threaded, O(B + num_cells). */
gf_status gf_cpu_cull_finish(const gf_params *params, const gf_cull_config *config,
                             void *structure, const int64_t *counts);

/* The plan the structure holds (a copy). */
gf_status gf_cpu_cull_header(const void *structure, gf_cull_header *header);

/* Bytes of the lists of a finished structure (list_length 32-bit indices). */
size_t gf_cpu_cull_lists_bytes(const void *structure);

/* Writes the list entries of Gaussians [begin, end): each cell's entries from cursor[c]
 * on, which it advances (num_cells entries).  The first range's cursors are the lists'
 * starts (gf_cpu_cull_list_starts); a later range's are those plus the counts of the
 * ranges before it, so that every list comes out in ascending Gaussian order. */
gf_status gf_cpu_cull_fill(const gf_params *params, const void *structure, int64_t begin,
                           int64_t end, int64_t *cursor, void *lists, size_t lists_bytes);

/* The lists' starts (num_cells + 1 entries) of a finished structure. */
const int64_t *gf_cpu_cull_list_starts(const void *structure);

/* The pairs the culled stages evaluate on the points' side: the sum over cells of points
 * x list length (the non-finite cell's points x N).  For measuring how tight the
 * culling is. */
gf_status gf_cpu_cull_pairs(const gf_params *params, const void *structure, double *pairs);

/* The culled forward over the points of cells [begin, end), 0 <= begin <= end <=
 * num_cells + 1 (the last is the non-finite cell): reads x, records (and weights when
 * C > 1), the structure and the lists; writes those rows of out. */
gf_status gf_cpu_culled_forward(const gf_params *params, const void *structure,
                                const void *lists, int64_t begin, int64_t end);

/* The culled backward to the points of cells [begin, end): writes those rows of grad_x. */
gf_status gf_cpu_culled_backward_points(const gf_params *params, const void *structure,
                                        const void *lists, int64_t begin, int64_t end);

/* Bytes of the backward's workspace, and its preparation: grad_out in the sorted order
 * (one channel) and the points whose grad_out row is not finite.  Reads grad_out (none:
 * a backward with no Gaussian gradient wanted). */
size_t gf_cpu_cull_backward_bytes(const gf_params *params);
gf_status gf_cpu_cull_backward_prepare(const gf_params *params, const void *structure,
                                       void *work, size_t work_bytes);

/* The culled backward to Gaussians [begin, end): each sums over the points of the cells it
 * reaches (and the points gf_cpu_cull_backward_prepare found); writes those rows of the
 * non-NULL of grad_means, grad_cov, grad_weights. */
gf_status gf_cpu_culled_backward_gaussians(const gf_params *params, const void *structure,
                                           const void *work, int64_t begin, int64_t end);

/* ---------------------------------------------------------------------------------
 * Regular grids (voxelize).  The field at the centres of a grid's voxels, without a
 * point tensor: the grid is its own spatial structure (tiles of voxels, gf_voxel.h).
 *
 * The grid spans a box (a parallelepiped: origin plus its three edge vectors) cut into
 * shape[0] x shape[1] x shape[2] voxels; voxel (i, j, k) has its centre at
 *     x_r = origin_r + (edges[r][0] (i + 1/2)) / D0 + (edges[r][1] (j + 1/2)) / D1
 *                    + (edges[r][2] (k + 1/2)) / D2          (gf_grid_centre, in double)
 * rounded once to the working type: an axis-aligned box [lo, hi] has origin lo and
 * edges diag(hi - lo); a voxel-to-world affine (A, t) of centres has edges A diag(D) and
 * origin t - A (1/2, 1/2, 1/2).  A call evaluates the subvolume of size[c] voxels from
 * offset[c] on, as B = S0 S1 S2 points in row-major order (axis 0 slowest): out is
 * [S0 S1 S2, C] and grad_out (the backward's) likewise, dense.  Exactly the point stages'
 * f_k and Gaussian gradients at those points: the same records, the same per-pair test.
 * In a gf_params for a grid, x is not read and num_points is S0 S1 S2.
 * --------------------------------------------------------------------------------- */
typedef struct gf_grid {
    int64_t shape[3];     /* D0, D1, D2 >= 1: the whole grid */
    double origin[3];     /* the box's corner */
    double edges[3][3];   /* edges[r][c]: coordinate r of the box's edge along grid axis c;
                           * finite, the matrix invertible */
    int64_t offset[3];    /* first voxel of the subvolume: 0 <= offset[c] */
    int64_t size[3];      /* its voxels per axis: size[c] >= 0, offset[c] + size[c] <= shape[c] */
} gf_grid;

/* ---- CPU voxelize ------------------------------------------------------------------
 * The subvolume is cut into tiles, cubes of `side` voxels (gf_voxel.h: the cells of a
 * gf_cull_plan in index space; side 8, doubled until the tiles number at most
 * GF_VOXEL_MAX_TILES and at most GF_CULL_MAX_DIM per axis).  The structure holds the
 * tiles' plan, the voxel-to-world map, each axis' terms of the voxel centres (so that a
 * stage forms a centre in three additions, bit for bit gf_grid_centre) and the lists'
 * starts; its size is a function of the grid's subvolume and the dtype alone.
 *
 * A forward: gf_cpu_voxel_plan; with a cutoff, gf_cpu_voxel_count over every Gaussian
 * (ranges on threads, each into its own counts), gf_cpu_voxel_finish with their sum,
 * gf_cpu_voxel_fill (ranges, each with its own cursors); then gf_cpu_voxel_forward over
 * the tiles, with the lists, or with lists NULL (every Gaussian for every tile: no
 * cutoff, or lists the caller will not hold).  A backward: gf_cpu_voxel_plan, then
 * gf_cpu_voxel_backward_gaussians over the Gaussians (no lists: with a cutoff each
 * Gaussian walks the tiles its ellipsoid reaches, without one every tile), with the
 * voxels whose grad_out row is not finite (gf_cpu_voxel_unseen) seen by every Gaussian,
 * as the dense stages' 0 * NaN sees them.  Every output element has one owner and a
 * fixed order of summation: results do not depend on the split into ranges. */
#define GF_VOXEL_MAX_TILES ((int64_t)1 << 21)

/* Whether grid is one the stages take (shape >= 1, size >= 0, offset + size <= shape,
 * edges finite and invertible, every voxel centre of the subvolume finite in dtype):
 * GF_OK, or GF_ERR_NULL_POINTER / GF_ERR_BAD_SIZE. */
gf_status gf_check_grid(const gf_grid *grid, gf_dtype dtype);

/* Bytes of the CPU voxel structure for params (dtype) and grid (0 for a bad grid). */
size_t gf_cpu_voxel_structure_bytes(const gf_params *params, const gf_grid *grid);

/* Writes the structure: the tiles, the map, the axes' terms.  Reads the grid only;
 * O(S0 + S1 + S2).  params->num_points must be S0 S1 S2; N <= INT32_MAX (the lists hold
 * 32-bit indices). */
gf_status gf_cpu_voxel_plan(const gf_params *params, const gf_grid *grid, void *structure,
                            size_t structure_bytes);

/* The tiles' plan of a structure (a copy): num_cells tiles, list_length once finished. */
gf_status gf_cpu_voxel_tiles(const void *structure, gf_cull_plan *tiles);

/* Adds the tiles that Gaussians [begin, end) reach to counts[t] (num_cells entries,
 * zeroed by the caller).  Reads records, weights; needs a cutoff. */
gf_status gf_cpu_voxel_count(const gf_params *params, const void *structure, int64_t begin,
                             int64_t end, int64_t *counts);

/* The lists' starts and length from the tiles' counts summed over every Gaussian. */
gf_status gf_cpu_voxel_finish(void *structure, const int64_t *counts);

/* The lists' starts (num_cells + 1 entries) and bytes (list_length 32-bit indices) of a
 * finished structure. */
const int64_t *gf_cpu_voxel_list_starts(const void *structure);
size_t gf_cpu_voxel_lists_bytes(const void *structure);

/* Writes the list entries of Gaussians [begin, end), as gf_cpu_cull_fill: each tile's
 * from cursor[t] on, which it advances; a range's cursors are the starts plus the counts
 * of the ranges before it, so every list comes out in ascending Gaussian order. */
gf_status gf_cpu_voxel_fill(const gf_params *params, const void *structure, int64_t begin,
                            int64_t end, int64_t *cursor, void *lists, size_t lists_bytes);

/* The forward over tiles [begin, end) (0 <= begin <= end <= num_cells): reads records
 * (and weights when C > 1), the structure and the lists (NULL: every Gaussian in index
 * order); writes the tiles' rows of out [S0 S1 S2, C]. */
gf_status gf_cpu_voxel_forward(const gf_params *params, const void *structure,
                               const void *lists, int64_t begin, int64_t end);

/* The voxels (subvolume indices b, ascending) among [begin, end) whose grad_out row is
 * not finite: *count of them, written to voxels[] where voxels is not NULL (room for
 * *count: call once without it to size the array). */
gf_status gf_cpu_voxel_unseen(const gf_params *params, int64_t begin, int64_t end,
                              int64_t *voxels, int64_t *count);

/* The backward to Gaussians [begin, end): each sums over the voxels of the tiles it
 * reaches (every tile without a cutoff; GF_CPU_GAUSSIAN_BLOCK Gaussians per pass
 * then), then over unseen[0 .. num_unseen) (gf_cpu_voxel_unseen's voxels) that its tiles
 * do not hold; reads grad_out [S0 S1 S2, C], means, cov, weights, records; writes those
 * rows of the non-NULL of grad_means, grad_cov, grad_weights. */
gf_status gf_cpu_voxel_backward_gaussians(const gf_params *params, const void *structure,
                                          const int64_t *unseen, int64_t num_unseen,
                                          int64_t begin, int64_t end);

/* ---------------------------------------------------------------------------------
 * Second order.  The backward is the vector-Jacobian product (gx, gmu, gM, gw) =
 * J^T G of f at (x, mu, M, w), G = grad_out.  Its own VJP with respect to a cotangent
 * (dir_x, dir_means, dir_cov, dir_weights) = (a_x, a_mu, A, a_w) of those four outputs
 * is the gradient of
 *
 *     Phi = sum_b a_x,b . gx_b + sum_n (a_mu,n . gmu_n + <A_n, gM_n> + a_w,n . gw_n)
 *         = sum_b,c G_bc jvp_bc,  jvp = J (a_x, a_mu, A, a_w),
 *
 * with respect to (G, x, mu, M, w).  Per pair, with d = x - mu, u = M d, g = exp(-|u|^2/2)
 * [kept], v = M (a_x - a_mu) + A d and h = -u . v, Phi's term is t g h + s g, t = G . w_n,
 * s = G . a_w,n; its gradients are written to
 *     grad_grad_out [B, C]  sum_n w_n g h + a_w,n g       (= the JVP of f: forward mode)
 *     grad_x        [B, 3]  sum_n M^T rho + A^T sigma
 *     grad_means    [N, 3]  -sum_b M^T rho + A^T sigma
 *     grad_cov      [N, 9]  sum_b tril(rho d^T + sigma (a_x - a_mu)^T)
 *     grad_weights  [N, C]  sum_b G_b g h
 * where rho = -g ((t h + s) u + t v) and sigma = -t g u.  Only GF_COV_WHITENED (cov and
 * dir_cov are whitening factors; the caller applies its parameterisation's derivatives,
 * first and second order, around it).  Pairs are decided by gf_pair_keep as everywhere
 * (the cutoff's indicator has zero derivative).  The stages evaluate every pair (no
 * culling), and like the backward: gf_cpu_precompute, then the points' stage for
 * grad_grad_out and grad_x and the Gaussians' stage for the other three, each
 * splittable into ranges with results independent of the split.
 * --------------------------------------------------------------------------------- */

/* Reads x, grad_out (for grad_x), records, weights, the dir_* (NULL: zero); writes rows
 * [begin, end) of grad_grad_out and grad_x (each NULL when not wanted). */
gf_status gf_cpu_double_backward_points(const gf_params *params, int64_t begin, int64_t end);

/* Reads x, grad_out, records, cov, weights, the dir_*; writes rows [begin, end) of
 * grad_means, grad_cov and grad_weights (each NULL when not wanted). */
gf_status gf_cpu_double_backward_gaussians(const gf_params *params, int64_t begin,
                                           int64_t end);

/* Name of the CPU instruction set the kernels use on this machine ("avx512", "avx2",
 * "generic"); chosen once, at the first call, from what the processor supports. */
const char *gf_cpu_isa(void);

/* ---------------------------------------------------------------------------------
 * CUDA.  Each call enqueues the whole stage on `stream` (a cudaStream_t) of the
 * current device and returns; results are bitwise reproducible run to run on one
 * device (fixed-order reductions, no atomics).  `workspace` is device memory of at
 * least gf_cuda_workspace_bytes() bytes, aligned to 256 bytes, which the call may
 * overwrite; it must stay allocated until the enqueued work is done.  On
 * GF_ERR_CUDA, *cuda_error (when not NULL) receives the cudaError_t.
 * --------------------------------------------------------------------------------- */

/* Workspace bytes that gf_cuda_forward (backward = 0) or gf_cuda_backward
 * (backward = 1) needs for this problem on the current device. */
gf_status gf_cuda_workspace_bytes(const gf_params *params, int backward, size_t *bytes,
                                  int *cuda_error);

/* Reads x, means, cov, weights, eps, cutoff; writes out. */
gf_status gf_cuda_forward(const gf_params *params, void *workspace, size_t workspace_bytes,
                          void *stream, int *cuda_error);

/* Reads x, grad_out, means, cov, weights, eps, cutoff; writes the non-NULL gradients. */
gf_status gf_cuda_backward(const gf_params *params, void *workspace, size_t workspace_bytes,
                           void *stream, int *cuda_error);

/* Culling on the GPU (see "Culling" above).  Nothing waits on the host: the grid, the
 * path (culled or dense) and the lists' length stay on the device, so a culled call can
 * be captured in a CUDA graph.  The lists live in the call's workspace with room for
 * config->list_capacity entries; the Gaussians whose entries do not fit (a suffix in
 * index order) are evaluated against every cell after each cell's list, in index order,
 * so the result never depends on the capacity.  The dense path, where the build decided
 * it, runs inside the same calls (its kernels gated on the device).  A forward is
 * gf_cuda_cull_build then gf_cuda_culled_forward; a backward may take the forward's
 * structure (the same inputs) or build its own. */

/* Bytes of the structure (a function of B, N, C, the dtype and points_per_cell). */
gf_status gf_cuda_cull_structure_bytes(const gf_params *params, const gf_cull_config *config,
                                       size_t *bytes);

/* Bytes of the workspace of gf_cuda_cull_build, gf_cuda_culled_forward and (backward = 1)
 * gf_cuda_culled_backward for this problem and config: the build's sorts, the lists of
 * list_capacity entries, the backward's sums, the dense path's. */
gf_status gf_cuda_culled_workspace_bytes(const gf_params *params, const gf_cull_config *config,
                                         int backward, size_t *bytes, int *cuda_error);

/* Reads x, means, cov, weights, eps, cutoff; writes the structure: the records, the grid,
 * each Gaussian's cell count and offset in the lists, the path, the points sorted by
 * cell and, for a backward (for_backward = 1), the Gaussians' execution order (and
 * *config->length_report).  The same errors as gf_cpu_cull_plan. */
gf_status gf_cuda_cull_build(const gf_params *params, const gf_cull_config *config,
                             int for_backward, void *structure, size_t structure_bytes,
                             void *workspace, size_t workspace_bytes, void *stream,
                             int *cuda_error);

/* The forward of a built structure (same params): reads x, weights and the structure;
 * writes out. */
gf_status gf_cuda_culled_forward(const gf_params *params, const gf_cull_config *config,
                                 const void *structure, size_t structure_bytes,
                                 void *workspace, size_t workspace_bytes, void *stream,
                                 int *cuda_error);

/* The backward of a built structure (same params, x, means, cov, weights as its build):
 * reads grad_out, x, means, cov, weights and the structure; writes the non-NULL
 * gradients. */
gf_status gf_cuda_culled_backward(const gf_params *params, const gf_cull_config *config,
                                  const void *structure, size_t structure_bytes,
                                  void *workspace, size_t workspace_bytes, void *stream,
                                  int *cuda_error);

/* The structure's header, copied to *header after `stream` has built it (synchronises:
 * for tests, benchmarks and a first call's list capacity). */
gf_status gf_cuda_cull_header(const void *structure, void *stream, gf_cull_header *header,
                              int *cuda_error);

/* Workspace bytes of gf_cuda_double_backward for this problem. */
gf_status gf_cuda_double_backward_workspace_bytes(const gf_params *params, size_t *bytes);

/* The double backward on the GPU (see "Second order"): reads what the two CPU stages
 * read, writes the non-NULL of grad_grad_out, grad_x, grad_means, grad_cov, grad_weights. */
gf_status gf_cuda_double_backward(const gf_params *params, void *workspace,
                                  size_t workspace_bytes, void *stream, int *cuda_error);

/* Voxelize on the GPU (see "Regular grids").  Two calls each way, the build first:
 *
 *   forward:  gf_cuda_voxel_build (backward = 0), then gf_cuda_voxel_forward with a
 *             workspace of gf_cuda_voxel_workspace_bytes(..., 0, &counts, ...);
 *   backward: gf_cuda_voxel_build (backward = 1, reads grad_out), then
 *             gf_cuda_voxel_backward with a workspace of gf_cuda_voxel_workspace_bytes(...,
 *             1, &counts, ...).
 *
 * The build waits for the stream once, to read the counts that size the workspace (the
 * tiles' lists of a forward; the work items and the voxels of non-finite grad_out of a
 * backward), so a voxel call is not captured in a CUDA graph.  The forward cuts the
 * subvolume into tiles (cubes of GF_CUDA_VOXEL_TILE voxels a side, or 8 where
 * GAUSSFIELD_CUDA_CONFIG says voxel_tile=8), lists per tile the Gaussians whose
 * ellipsoid meets it (gf_voxel_box_init: the exact row test in index space), and sums
 * each voxel over its tile's list in ascending Gaussian order; without a cutoff every
 * tile's list is every Gaussian and no list is built.  The backward builds no lists: each
 * Gaussian walks the voxels its ellipsoid reaches (the same row test on a plan of
 * one-voxel cells), split into work items of at most GF_CUDA_VOXEL_ITEM_ROWS voxel rows
 * whose sums are added in item order, and also visits every voxel whose grad_out row is
 * not finite (as the dense stages would).  Results are bitwise reproducible run to run
 * (fixed summation orders, no floating-point atomics). */
#define GF_CUDA_VOXEL_TILE 4
#define GF_CUDA_VOXEL_ITEM_ROWS 256

/* What a build found (written by gf_cuda_voxel_build). */
typedef struct gf_voxel_counts {
    int64_t list_length; /* forward: entries of the tiles' lists (0 without a cutoff) */
    int64_t work_items;  /* backward: the Gaussians' work items (>= 1 each) */
    int64_t nonfinite;   /* backward: voxels whose grad_out row is not finite */
    int32_t backward;    /* the build's kind */
    int32_t tile;        /* forward: the tiles' side in voxels */
} gf_voxel_counts;

/* Bytes of the structure of a build: the records, each Gaussian's offset in the lists or
 * first work item, the grid's per-axis centre terms and the scan's storage (a function of
 * N, C, the dtype and the grid's shape, never of the data). */
gf_status gf_cuda_voxel_structure_bytes(const gf_params *params, const gf_grid *grid,
                                        size_t *bytes, int *cuda_error);

/* Reads means, cov, weights, eps, cutoff (and, backward = 1, grad_out); writes the
 * structure and *counts, after waiting for the stream.  GF_ERR_BAD_SIZE for a grid or a
 * problem beyond the kernels' limits (N > 2^31 - 1, more than 2^32 - 1 tiles). */
gf_status gf_cuda_voxel_build(const gf_params *params, const gf_grid *grid, int backward,
                              void *structure, size_t structure_bytes,
                              gf_voxel_counts *counts, void *stream, int *cuda_error);

/* Bytes of the workspace of gf_cuda_voxel_forward (backward = 0: the lists, 16 bytes an
 * entry, their sort's storage, the tiles' starts) or gf_cuda_voxel_backward (1: the work
 * items' sums, (9 + C) doubles each, and the non-finite voxels' indices) for a build's
 * counts. */
gf_status gf_cuda_voxel_workspace_bytes(const gf_params *params, const gf_grid *grid,
                                        int backward, const gf_voxel_counts *counts,
                                        size_t *bytes, int *cuda_error);

/* Fills and sorts the tiles' lists and evaluates the subvolume: reads weights and the
 * structure of a forward build with the same params; writes out [S0 S1 S2, C]. */
gf_status gf_cuda_voxel_forward(const gf_params *params, const gf_grid *grid,
                                const void *structure, size_t structure_bytes,
                                const gf_voxel_counts *counts, void *workspace,
                                size_t workspace_bytes, void *stream, int *cuda_error);

/* The backward to the Gaussians from grad_out [S0 S1 S2, C] (strided): reads grad_out,
 * cov, weights and the structure of a backward build with the same params; writes the
 * non-NULL of grad_means, grad_cov, grad_weights. */
gf_status gf_cuda_voxel_backward(const gf_params *params, const gf_grid *grid,
                                 const void *structure, size_t structure_bytes,
                                 const gf_voxel_counts *counts, void *workspace,
                                 size_t workspace_bytes, void *stream, int *cuda_error);

/* Text of a cudaError_t value received through cuda_error; never NULL. */
const char *gf_cuda_error_string(int cuda_error);

#ifdef __cplusplus
}
#endif

#endif /* GAUSSFIELD_H */
