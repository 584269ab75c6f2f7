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
 * covariance comes in one of two parameterisations, told apart by gf_cov_mode (see
 * below); the weights are raw (no normalisation constant).  With a cutoff k,
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
 * Covariance parameterisation.  The enumerator's value is the number of parameters per
 * Gaussian, i.e. the last dimension of the cov array.
 *
 * GF_COV_FULL, cov [N, 6] ("cov_tril"):
 *     L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]],  Sigma = L L^T + eps * I
 * GF_COV_DIAG, cov [N, 3] ("log_scales"):
 *     Sigma = diag(e^{2 s0}, e^{2 s1}, e^{2 s2})            (eps is not used)
 */
typedef enum gf_cov_mode {
    GF_COV_DIAG = 3,
    GF_COV_FULL = 6
} gf_cov_mode;

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
    const void *cov;      int64_t cov_stride[2];      /* [N, cov_mode] */
    const void *weights;  int64_t weights_stride[2];  /* [N, C] */
    const void *grad_out; int64_t grad_out_stride[2]; /* [B, C], backward only */

    /* [N] per-Gaussian records (mean, weight of channel 0, whitening factor, cutoff), written by
     * gf_cpu_precompute; gf_records_bytes() bytes, aligned to 64 bytes.  The CUDA
     * functions keep their records in their own workspace and ignore this field. */
    void *records;

    void *out;            /* [B, C]  forward output */
    void *grad_x;         /* [B, 3]  backward outputs, each NULL when not wanted */
    void *grad_means;     /* [N, 3] */
    void *grad_cov;       /* [N, cov_mode] */
    void *grad_weights;   /* [N, C] */
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

/* Text of a cudaError_t value received through cuda_error; never NULL. */
const char *gf_cuda_error_string(int cuda_error);

#ifdef __cplusplus
}
#endif

#endif /* GAUSSFIELD_H */
