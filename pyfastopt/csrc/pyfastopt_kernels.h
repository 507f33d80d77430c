/* The boundary between Python (pyfastopt/native.py, ctypes) and the native kernels.
 *
 * Every field is a double, so the layout has no padding and ctypes.Structure mirrors it field for
 * field; native.py checks each struct's size against pfo_sizeof() when it loads the library.
 * The hypers are already combined the way the steppers combine them (e.g. Adam's step_size is
 * -lr/debias1), so a kernel only does the per-element arithmetic.
 */
#ifndef PYFASTOPT_KERNELS_H
#define PYFASTOPT_KERNELS_H

#include <stdint.h>

#define PFO_ABI_VERSION 2

/* F_DECAY/F_L2: which decay stepper runs (neither when wd is 0 or do_wd is off); F_MOM: the chain
   averages the grad; F_ADAPTIVE: the Adam-style step divides by sqrt(v) (RAdam's first steps
   do not); F_EPS: ... and adds eps; F_CLIP: Larc clips its local lr. */
enum { F_DECAY = 1, F_L2 = 2, F_MOM = 4, F_ADAPTIVE = 8, F_CLIP = 16, F_EPS = 32 };

/* A bucket: n tensors, each one contiguous array per role. M (grad_avg) and V (sqr_avg) are null
   for chains that keep no such state; out_lr and clipped are Larc's outputs (null elsewhere). */
typedef struct {
    int64_t n;
    void **p, **g, **m, **v;
    const int64_t *len;
    double *out_lr;
    int32_t *clipped;
} pfo_bucket;

/* The first stepper of every built-in chain: p *= mul (F_DECAY), or g += l2 * p (F_L2). */
typedef struct { double mul, l2; } pfo_decay;

/* The moving averages: m = mom * m + damp1 * g;  v = sqr_mom * v + damp2 * g * g. */
typedef struct { double mom, sqr_mom, damp1, damp2; } pfo_moments;

typedef struct { pfo_decay decay; double lr, mom, damp; } pfo_sgd_hypers;
typedef struct { pfo_decay decay; pfo_moments avg; double lr, eps; } pfo_rmsprop_hypers;
/* Adam and RAdam (beta 0). step_size: -lr/debias1 (RAdam: -lr*v/debias1). */
typedef struct { pfo_decay decay; pfo_moments avg; double step_size, eps, debias2; } pfo_adam_hypers;
typedef struct {
    pfo_decay decay; pfo_moments avg;
    double lr, eps, debias1, debias2, one_minus_nu_1, nu_1, one_minus_nu_2, nu_2;
} pfo_qhadam_hypers;
typedef struct { pfo_decay decay; double lr, mom, damp, lr_trust, wd, eps; } pfo_larc_hypers;
typedef struct { pfo_decay decay; pfo_moments avg; double lr, eps, debias1, debias2; } pfo_lamb_hypers;
/* Lion: u = sign(mom * m + (1 - mom) * g); p -= lr * u; m = sqr_mom * m + (1 - sqr_mom) * g */
typedef struct { pfo_decay decay; double lr, mom, sqr_mom; } pfo_lion_hypers;

#endif
