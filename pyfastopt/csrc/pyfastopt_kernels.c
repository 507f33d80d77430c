/* pyfastopt native CPU kernels: one function per built-in stepper chain, over a whole bucket.
 *
 * Plain C99, no Python or torch headers; loaded with ctypes (pyfastopt/native.py). The bucket
 * (data pointers of params, grads and state, and lengths) and each family's hypers are the named
 * structs of pyfastopt_kernels.h. Each element is updated in one pass, in the tensor's own
 * precision and in the order of the torch ops the steppers run, so the numbers are those of the
 * stepper chain:
 *   a.add_(b, alpha=s)        -> fma(s, b, a)          (torch's CPU add uses fmadd)
 *   a.addcmul_(b, c, value=s) -> fma(s * b, c, a)
 *   a.addcdiv_(b, c, value=s) -> a + (s * b) / c
 * Compile with -ffp-contract=off (no other contraction than the explicit fma) and never with
 * -ffast-math. Norms (Larc, Lamb) are accumulated in double.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "pyfastopt_kernels.h"

typedef int64_t i64;

#define NACC 16
#define NB 32          /* double accumulators per norm in Larc's norm pass (4 AVX-512 chains) */

/* A bucket of many small tensors is many separate allocations: the hardware prefetcher does not
   cross into the next one, so each kernel asks for the head of the next tensor's arrays (up to
   PF_BYTES each, into L1) while it works on the current one. */
#define PF_BYTES 4096
static inline void prefetch_head(const void *a, i64 bytes) {
#if defined(__GNUC__) || defined(__clang__)
    const char *c = (const char *)a;
    if (bytes > PF_BYTES) bytes = PF_BYTES;
    for (i64 o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
#else
    (void)a; (void)bytes;
#endif
}

/* Larc's norm pass reads p and g only; on a small tensor it also asks for m, which the update
   pass then finds in L1 (on a large one it would only be evicted again before that pass) */
#define PF_M_MAX 32768

/* prefetch for writing the lines of [a, a + bytes) */
static inline void prefetch_block_w(const void *a, int bytes) {
#if defined(__GNUC__) || defined(__clang__)
    for (int o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)a + o, 1, 3);
#else
    (void)a; (void)bytes;
#endif
}

/* prefetch tensor t+1 of each array the bucket has */
static inline void prefetch_next(const pfo_bucket *b, i64 t, int size) {
    if (t + 1 >= b->n) return;
    const i64 bytes = b->len[t + 1] * size;
    prefetch_head(b->p[t + 1], bytes);
    prefetch_head(b->g[t + 1], bytes);
    if (b->m) prefetch_head(b->m[t + 1], bytes);
    if (b->v) prefetch_head(b->v[t + 1], bytes);
}

#define DEFINE_KERNELS(T, SFX, FMA, SQRT)                                                          \
                                                                                                   \
/* The chain's first stepper on one element: weight_decay scales p; l2_reg adds l2 * p into the   \
   grad, which is written back (fastai's l2_reg changes p.grad). Returns the grad to use. */      \
static inline T decayed_##SFX(T p, int flags, T mul) { return (flags & F_DECAY) ? p * mul : p; }  \
static inline T grad_##SFX(T *restrict g, T p, int flags, T l2) {                                  \
    T gi = *g;                                                                                     \
    if (flags & F_L2) { gi = FMA(l2, p, gi); *g = gi; }                                            \
    return gi;                                                                                     \
}                                                                                                  \
/* average_grad and average_sqr_grad: avg * mom + damp * x (resp. damp * x * x) */                \
static inline T ema_##SFX(T avg, T mom, T damp, T x) { return FMA(damp, x, avg * mom); }          \
static inline T ema_sqr_##SFX(T avg, T mom, T damp, T x) { return FMA(damp * x, x, avg * mom); }  \
                                                                                                   \
/* SGD: [wd|l2, (average_grad), sgd_step|momentum_step] */                                        \
void pfo_sgd_##SFX(const pfo_bucket *b, const pfo_sgd_hypers *h, int flags) {                     \
    const T nlr = (T)(-h->lr), mom = (T)h->mom, mul = (T)h->decay.mul, l2 = (T)h->decay.l2,       \
            damp = (T)h->damp;                                                                     \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t];                                 \
        const i64 k = b->len[t];                                                                   \
        if (flags & F_MOM) {                                                                       \
            T *restrict m = (T *)b->m[t];                                                          \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);    \
                T mi = m[i] = ema_##SFX(m[i], mom, damp, gi);                                      \
                p[i] = FMA(nlr, mi, pi);                                                           \
            }                                                                                      \
        } else {                                                                                   \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);    \
                p[i] = FMA(nlr, gi, pi);                                                           \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Lookahead's sync (wrappers.py): slow += alpha * (fast - slow); fast = slow, in one pass over     \
   both (torch: fast.sub_(slow); slow.add_(fast, alpha); fast.copy_(slow)). */                    \
void pfo_lookahead_##SFX(i64 n, void **S, void **F, const i64 *len, double alpha) {              \
    const T a = (T)alpha;                                                                          \
    for (i64 t = 0; t < n; t++) {                                                                  \
        if (t + 1 < n) {                                                                           \
            prefetch_head(S[t + 1], len[t + 1] * (i64)sizeof(T));                                  \
            prefetch_head(F[t + 1], len[t + 1] * (i64)sizeof(T));                                  \
        }                                                                                          \
        T *restrict sl = (T *)S[t], *restrict f = (T *)F[t];                                      \
        const i64 k = len[t];                                                                      \
        for (i64 i = 0; i < k; i++) {                                                              \
            T si = FMA(a, f[i] - sl[i], sl[i]);                                                    \
            sl[i] = si;                                                                            \
            f[i] = si;                                                                             \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* RMSProp: [wd|l2, (average_grad), average_sqr_grad, rms_prop_step] */                           \
void pfo_rmsprop_##SFX(const pfo_bucket *b, const pfo_rmsprop_hypers *h, int flags) {             \
    const T nlr = (T)(-h->lr), mom = (T)h->avg.mom, sm = (T)h->avg.sqr_mom, eps = (T)h->eps,     \
            mul = (T)h->decay.mul, l2 = (T)h->decay.l2, d1 = (T)h->avg.damp1,                     \
            d2 = (T)h->avg.damp2;                                                                  \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t], *restrict v = (T *)b->v[t];    \
        const i64 k = b->len[t];                                                                   \
        if (flags & F_MOM) {                                                                       \
            T *restrict m = (T *)b->m[t];                                                          \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);    \
                T mi = m[i] = ema_##SFX(m[i], mom, d1, gi);                                        \
                T vi = v[i] = ema_sqr_##SFX(v[i], sm, d2, gi);                                     \
                p[i] = pi + (nlr * mi) / (SQRT(vi) + eps);                                         \
            }                                                                                      \
        } else {                                                                                   \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);    \
                T vi = v[i] = ema_sqr_##SFX(v[i], sm, d2, gi);                                     \
                p[i] = pi + (nlr * gi) / (SQRT(vi) + eps);                                         \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Adam and RAdam (beta 0): [wd|l2, average_grad(damp), average_sqr_grad, step_stat, step].      \
   Without F_ADAPTIVE (RAdam's first steps): p = fma(step_size, m, p). */                             \
void pfo_adam_##SFX(const pfo_bucket *b, const pfo_adam_hypers *h, int flags) {                   \
    const T ss = (T)h->step_size, mom = (T)h->avg.mom, sm = (T)h->avg.sqr_mom, eps = (T)h->eps,  \
            mul = (T)h->decay.mul, l2 = (T)h->decay.l2, d1 = (T)h->avg.damp1,                     \
            d2 = (T)h->avg.damp2, db2 = (T)h->debias2;                                             \
    const int adaptive = flags & F_ADAPTIVE, use_eps = flags & F_EPS;                                     \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t], *restrict m = (T *)b->m[t];    \
        T *restrict v = (T *)b->v[t];                                                              \
        const i64 k = b->len[t];                                                                   \
        if (adaptive) {                                                                                \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);    \
                T mi = m[i] = ema_##SFX(m[i], mom, d1, gi);                                        \
                T vi = v[i] = ema_sqr_##SFX(v[i], sm, d2, gi);                                     \
                T den = SQRT(vi / db2);                                                            \
                if (use_eps) den = den + eps;                                                      \
                p[i] = pi + (ss * mi) / den;                                                       \
            }                                                                                      \
        } else {                                                                                   \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);    \
                T mi = m[i] = ema_##SFX(m[i], mom, d1, gi);                                        \
                v[i] = ema_sqr_##SFX(v[i], sm, d2, gi);                                            \
                p[i] = FMA(ss, mi, pi);                                                            \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* QHAdam: [wd|l2, average_grad(damp), average_sqr_grad(damp), step_stat, qhadam_step] */        \
void pfo_qhadam_##SFX(const pfo_bucket *b, const pfo_qhadam_hypers *h, int flags) {               \
    const T nlr = (T)(-h->lr), mom = (T)h->avg.mom, sm = (T)h->avg.sqr_mom, eps = (T)h->eps,     \
            mul = (T)h->decay.mul, l2 = (T)h->decay.l2, d1 = (T)h->avg.damp1,                     \
            d2 = (T)h->avg.damp2, db1 = (T)h->debias1, db2 = (T)h->debias2,                       \
            a1 = (T)h->one_minus_nu_1, nu1 = (T)h->nu_1, a2 = (T)h->one_minus_nu_2,               \
            nu2 = (T)h->nu_2;                                                                      \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t], *restrict m = (T *)b->m[t];    \
        T *restrict v = (T *)b->v[t];                                                              \
        const i64 k = b->len[t];                                                                   \
        for (i64 i = 0; i < k; i++) {                                                              \
            T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);        \
            T mi = m[i] = ema_##SFX(m[i], mom, d1, gi);                                            \
            T vi = v[i] = ema_sqr_##SFX(v[i], sm, d2, gi);                                         \
            T num = FMA(nu1, mi / db1, gi * a1);                                                   \
            T den = SQRT(FMA(nu2, vi / db2, (gi * gi) * a2)) + eps;                                \
            p[i] = pi + (nlr * num) / den;                                                         \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Larc's norm pass, p and g together: sums of squares of p (after the decay) and of g (after      \
   l2) in NB double accumulators each (enough independent chains for the adders). pm: m to         \
   prefetch alongside (for the update pass), or null. */                                           \
static inline void larc_norms_##SFX(const T *restrict p, const T *restrict g, const T *pm,         \
                                    i64 k, int flags, T mul, T l2, double *sp_, double *sg_) {     \
    double ap[NB] = {0}, ag[NB] = {0};                                                             \
    i64 i = 0;                                                                                     \
    if (flags & F_L2) {                                                                            \
        for (; i + NB <= k; i += NB) {                                                             \
            if (pm) prefetch_block_w(pm + i, NB * sizeof(T));                                      \
            for (int j = 0; j < NB; j++) {                                                         \
                double y = (double)decayed_##SFX(p[i + j], flags, mul);                            \
                double z = (double)FMA(l2, p[i + j], g[i + j]);                                    \
                ap[j] += y * y; ag[j] += z * z;                                                    \
            }                                                                                      \
        }                                                                                          \
    } else if (flags & F_DECAY) {                                                                  \
        for (; i + NB <= k; i += NB) {                                                             \
            if (pm) prefetch_block_w(pm + i, NB * sizeof(T));                                      \
            for (int j = 0; j < NB; j++) {                                                         \
                double y = (double)(p[i + j] * mul), z = (double)g[i + j];                         \
                ap[j] += y * y; ag[j] += z * z;                                                    \
            }                                                                                      \
        }                                                                                          \
    } else {                                                                                       \
        for (; i + NB <= k; i += NB) {                                                             \
            if (pm) prefetch_block_w(pm + i, NB * sizeof(T));                                      \
            for (int j = 0; j < NB; j++) {                                                         \
                double y = (double)p[i + j], z = (double)g[i + j];                                 \
                ap[j] += y * y; ag[j] += z * z;                                                    \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    for (; i < k; i++) {                                                                           \
        double y = (double)decayed_##SFX(p[i], flags, mul);                                        \
        double z = (double)((flags & F_L2) ? FMA(l2, p[i], g[i]) : g[i]);                          \
        ap[0] += y * y; ag[0] += z * z;                                                            \
    }                                                                                              \
    double sp = 0, sg = 0;                                                                         \
    for (int j = 0; j < NB; j++) { sp += ap[j]; sg += ag[j]; }                                     \
    *sp_ = sp; *sg_ = sg;                                                                          \
}                                                                                                  \
                                                                                                   \
/* Larc: [wd|l2, (average_grad), larc_layer_lr(clip), larc_step].                                \
   Per tensor: norms of p (after the decay) and of g (after l2), local_lr as the steppers         \
   compute it on 0-d tensors, clipped to lr when F_CLIP and not local_lr < lr; then the step.    \
   b->out_lr[t] gets the local_lr used, b->clipped[t] whether it was clipped. */                 \
void pfo_larc_##SFX(const pfo_bucket *b, const pfo_larc_hypers *h, int flags) {                   \
    const T lr = (T)h->lr, mom = (T)h->mom, mul = (T)h->decay.mul, l2 = (T)h->decay.l2,           \
            damp = (T)h->damp, lrtc = (T)h->lr_trust, wd = (T)h->wd, eps = (T)h->eps;             \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t];                                 \
        T *restrict m = (flags & F_MOM) ? (T *)b->m[t] : 0;                                       \
        const i64 k = b->len[t];                                                                   \
        double sp, sg;                                                                             \
        const T *pm = (m && k * (i64)sizeof(T) <= PF_M_MAX) ? m : 0;                               \
        larc_norms_##SFX(p, g, pm, k, flags, mul, l2, &sp, &sg);                                   \
        const T pn = (T)sqrt(sp), gn = (T)sqrt(sg);                                                \
        const T a = pn * lrtc;                                                                     \
        const T pw = pn * wd;                                                                      \
        const T b1 = gn + pw;                                                                      \
        const T den = b1 + eps;                                                                    \
        T llr = a / den;                                                                           \
        int c = 0;                                                                                 \
        if ((flags & F_CLIP) && !(llr < lr)) { llr = lr; c = 1; }                                  \
        b->out_lr[t] = (double)llr;                                                                \
        b->clipped[t] = c;                                                                         \
        for (i64 i = 0; i < k; i++) {                                                              \
            T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);        \
            T x = gi;                                                                              \
            if (flags & F_MOM) x = m[i] = ema_##SFX(m[i], mom, damp, gi);                          \
            p[i] = pi - x * llr;                                                                   \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Lamb: [wd|l2, average_grad(damp), average_sqr_grad, step_stat, lamb_step].                    \
   Pass 1 per tensor: m, v, and the sums of squares of p (after the decay) and of the update;    \
   pass 2: p = fma(-lr, u * q, p), u recomputed from m and v, q the trust ratio. */              \
void pfo_lamb_##SFX(const pfo_bucket *b, const pfo_lamb_hypers *h, int flags) {                   \
    const T nlr = (T)(-h->lr), mom = (T)h->avg.mom, sm = (T)h->avg.sqr_mom, eps = (T)h->eps,     \
            mul = (T)h->decay.mul, l2 = (T)h->decay.l2, d1 = (T)h->avg.damp1,                     \
            d2 = (T)h->avg.damp2, db1 = (T)h->debias1, db2 = (T)h->debias2;                       \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t], *restrict m = (T *)b->m[t];    \
        T *restrict v = (T *)b->v[t];                                                              \
        const i64 k = b->len[t];                                                                   \
        double ap[NACC] = {0}, au[NACC] = {0};                                                     \
        i64 i = 0;                                                                                 \
        for (; i < k; i += NACC) {                                                                 \
            const int w = (k - i) < NACC ? (int)(k - i) : NACC;                                    \
            for (int j = 0; j < w; j++) {                                                          \
                T pi = decayed_##SFX(p[i + j], flags, mul);                                        \
                T gi = grad_##SFX(g + i + j, pi, flags, l2);                                       \
                T mi = m[i + j] = ema_##SFX(m[i + j], mom, d1, gi);                                \
                T vi = v[i + j] = ema_sqr_##SFX(v[i + j], sm, d2, gi);                             \
                T u = (mi / db1) / (SQRT(vi / db2) + eps);                                         \
                ap[j] += (double)pi * (double)pi;                                                  \
                au[j] += (double)u * (double)u;                                                    \
            }                                                                                      \
        }                                                                                          \
        double sp = 0, su = 0;                                                                     \
        for (int j = 0; j < NACC; j++) { sp += ap[j]; su += au[j]; }                               \
        const T r1 = (T)sqrt(sp / (double)k), r2 = (T)sqrt(su / (double)k);                        \
        T q = 1;                                                                                   \
        if (r1 != 0 && r2 != 0) { q = r1 / r2; if (q > (T)10) q = (T)10; }                        \
        for (i = 0; i < k; i++) {                                                                  \
            T pi = decayed_##SFX(p[i], flags, mul);                                                \
            T u = (m[i] / db1) / (SQRT(v[i] / db2) + eps);                                         \
            p[i] = FMA(nlr, u * q, pi);                                                            \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Lion: [wd|l2, lion_step]. u = sign(mom * m + (1 - mom) * g); p = fma(-lr, u, p);               \
   m = sqr_mom * m + (1 - sqr_mom) * g. As torch.sign on CPU: 1, -1, else 0 (NaN too). */         \
static inline T sign_##SFX(T x) { return x > 0 ? (T)1 : x < 0 ? (T)-1 : (T)0; }                   \
void pfo_lion_##SFX(const pfo_bucket *b, const pfo_lion_hypers *h, int flags) {                   \
    const T nlr = (T)(-h->lr), mom = (T)h->mom, sm = (T)h->sqr_mom, mul = (T)h->decay.mul,        \
            l2 = (T)h->decay.l2, d1 = (T)(1 - h->mom), d2 = (T)(1 - h->sqr_mom);                  \
    for (i64 t = 0; t < b->n; t++) {                                                               \
        prefetch_next(b, t, sizeof(T));                                                            \
        T *restrict p = (T *)b->p[t], *restrict g = (T *)b->g[t], *restrict m = (T *)b->m[t];    \
        const i64 k = b->len[t];                                                                   \
        for (i64 i = 0; i < k; i++) {                                                              \
            T pi = decayed_##SFX(p[i], flags, mul), gi = grad_##SFX(g + i, pi, flags, l2);        \
            T mi = m[i];                                                                           \
            p[i] = FMA(nlr, sign_##SFX(ema_##SFX(mi, mom, d1, gi)), pi);                           \
            m[i] = ema_##SFX(mi, sm, d2, gi);                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_KERNELS(float, f32, fmaf, sqrtf)
DEFINE_KERNELS(double, f64, fma, sqrt)

int pfo_abi_version(void) { return PFO_ABI_VERSION; }

/* The size of each struct of the header, so that the loader can check its ctypes mirrors. */
i64 pfo_sizeof(const char *name) {
#define PFO_SIZE(s) if (strcmp(name, #s) == 0) return (i64)sizeof(s);
    PFO_SIZE(pfo_bucket) PFO_SIZE(pfo_decay) PFO_SIZE(pfo_moments)
    PFO_SIZE(pfo_sgd_hypers) PFO_SIZE(pfo_rmsprop_hypers) PFO_SIZE(pfo_adam_hypers)
    PFO_SIZE(pfo_qhadam_hypers) PFO_SIZE(pfo_larc_hypers) PFO_SIZE(pfo_lamb_hypers)
    PFO_SIZE(pfo_lion_hypers)
#undef PFO_SIZE
    return -1;
}
