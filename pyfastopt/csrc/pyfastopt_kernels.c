/* pyfastopt native CPU kernels: one function per built-in stepper chain, over a whole bucket.
 *
 * Plain C99, no Python or torch headers; loaded with ctypes (pyfastopt/native.py). Every
 * function takes the bucket as arrays of data pointers (params P, grads G, state M = grad_avg,
 * V = sqr_avg) and lengths, the hypers as doubles (already combined in Python the way the
 * steppers combine them, e.g. -lr/debias1) and flags. Each element is updated in one pass, in
 * the tensor's own precision and in the order of the torch ops the steppers run, so the numbers
 * are those of the stepper chain:
 *   a.add_(b, alpha=s)        -> fma(s, b, a)          (torch's CPU add uses fmadd)
 *   a.addcmul_(b, c, value=s) -> fma(s * b, c, a)
 *   a.addcdiv_(b, c, value=s) -> a + (s * b) / c
 * Compile with -ffp-contract=off (no other contraction than the explicit fma) and never with
 * -ffast-math. Norms (Larc, Lamb) are accumulated in double.
 */
#include <math.h>
#include <stdint.h>

typedef int64_t i64;

enum { F_DECAY = 1, F_L2 = 2, F_MOM = 4, F_RECT = 8, F_CLIP = 16, F_EPS = 32 };

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

/* prefetch tensor t+1 of each non-null array list */
static inline void prefetch_next(int t, int n, void **A, void **B, void **C, void **D,
                                 const i64 *len, int size) {
    if (t + 1 >= n) return;
    const i64 b = len[t + 1] * size;
    if (A) prefetch_head(A[t + 1], b);
    if (B) prefetch_head(B[t + 1], b);
    if (C) prefetch_head(C[t + 1], b);
    if (D) prefetch_head(D[t + 1], b);
}

#define DEFINE_KERNELS(T, SFX, FMA, SQRT)                                                          \
                                                                                                   \
/* decoupled weight decay and L2 reg of one element: p *= dm; g = fma(l2, p, g) */              \
static inline T decay_##SFX(T p, int flags, T dm) { return (flags & F_DECAY) ? p * dm : p; }     \
                                                                                                   \
/* SGD: [wd|l2, (average_grad), sgd_step|momentum_step].                                          \
   h: lr, mom, decay_mul, l2_wd, damp */                                                          \
void pfo_sgd_##SFX(int n, void **P, void **G, void **M, const i64 *len, const double *h,        \
                   int flags) {                                                                    \
    const T nlr = (T)(-h[0]), mom = (T)h[1], dm = (T)h[2], l2 = (T)h[3], damp = (T)h[4];        \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, P, G, (flags & F_MOM) ? M : 0, 0, len, sizeof(T));                     \
        T *restrict p = (T *)P[t], *restrict g = (T *)G[t];                                       \
        T *restrict m = (flags & F_MOM) ? (T *)M[t] : 0;                                          \
        const i64 k = len[t];                                                                      \
        if (flags & F_MOM) {                                                                       \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                    \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                             \
                T mi = m[i] * mom;                                                                 \
                mi = FMA(damp, gi, mi);                                                            \
                m[i] = mi;                                                                         \
                p[i] = FMA(nlr, mi, pi);                                                           \
            }                                                                                      \
        } else {                                                                                   \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                    \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                             \
                p[i] = FMA(nlr, gi, pi);                                                           \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Lookahead's sync (wrappers.py): slow += alpha * (fast - slow); fast = slow, in one pass over     \
   both (torch: fast.sub_(slow); slow.add_(fast, alpha); fast.copy_(slow)). */                    \
void pfo_lookahead_##SFX(int n, void **S, void **F, const i64 *len, double alpha) {              \
    const T a = (T)alpha;                                                                          \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, S, F, 0, 0, len, sizeof(T));                                           \
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
/* RMSProp: [wd|l2, (average_grad), average_sqr_grad, rms_prop_step].                             \
   h: lr, mom, sqr_mom, eps, decay_mul, l2_wd, damp1, damp2 */                                    \
void pfo_rmsprop_##SFX(int n, void **P, void **G, void **M, void **V, const i64 *len,           \
                       const double *h, int flags) {                                               \
    const T nlr = (T)(-h[0]), mom = (T)h[1], sm = (T)h[2], eps = (T)h[3], dm = (T)h[4],         \
            l2 = (T)h[5], d1 = (T)h[6], d2 = (T)h[7];                                              \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, P, G, V, (flags & F_MOM) ? M : 0, len, sizeof(T));                     \
        T *restrict p = (T *)P[t], *restrict g = (T *)G[t], *restrict v = (T *)V[t];              \
        T *restrict m = (flags & F_MOM) ? (T *)M[t] : 0;                                          \
        const i64 k = len[t];                                                                      \
        if (flags & F_MOM) {                                                                       \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                    \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                             \
                T mi = FMA(d1, gi, m[i] * mom);                                                    \
                m[i] = mi;                                                                         \
                T vi = FMA(d2 * gi, gi, v[i] * sm);                                                \
                v[i] = vi;                                                                         \
                p[i] = pi + (nlr * mi) / (SQRT(vi) + eps);                                         \
            }                                                                                      \
        } else {                                                                                   \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                    \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                             \
                T vi = FMA(d2 * gi, gi, v[i] * sm);                                                \
                v[i] = vi;                                                                         \
                p[i] = pi + (nlr * gi) / (SQRT(vi) + eps);                                         \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Adam and RAdam (beta 0): [wd|l2, average_grad(damp), average_sqr_grad, step_stat, step].      \
   h: step_size (-lr/debias1, RAdam -lr*v/debias1), mom, sqr_mom, eps, decay_mul, l2_wd, damp1,  \
   damp2, debias2. Without F_RECT (RAdam's first steps): p = fma(step_size, m, p). */             \
void pfo_adam_##SFX(int n, void **P, void **G, void **M, void **V, const i64 *len,              \
                    const double *h, int flags) {                                                  \
    const T ss = (T)h[0], mom = (T)h[1], sm = (T)h[2], eps = (T)h[3], dm = (T)h[4],             \
            l2 = (T)h[5], d1 = (T)h[6], d2 = (T)h[7], db2 = (T)h[8];                               \
    const int rect = flags & F_RECT, use_eps = flags & F_EPS;                                     \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, P, G, M, V, len, sizeof(T));                                           \
        T *restrict p = (T *)P[t], *restrict g = (T *)G[t], *restrict m = (T *)M[t];              \
        T *restrict v = (T *)V[t];                                                                 \
        const i64 k = len[t];                                                                      \
        if (rect) {                                                                                \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                    \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                             \
                T mi = FMA(d1, gi, m[i] * mom);                                                    \
                m[i] = mi;                                                                         \
                T vi = FMA(d2 * gi, gi, v[i] * sm);                                                \
                v[i] = vi;                                                                         \
                T den = SQRT(vi / db2);                                                            \
                if (use_eps) den = den + eps;                                                      \
                p[i] = pi + (ss * mi) / den;                                                       \
            }                                                                                      \
        } else {                                                                                   \
            for (i64 i = 0; i < k; i++) {                                                          \
                T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                    \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                             \
                T mi = FMA(d1, gi, m[i] * mom);                                                    \
                m[i] = mi;                                                                         \
                v[i] = FMA(d2 * gi, gi, v[i] * sm);                                                \
                p[i] = FMA(ss, mi, pi);                                                            \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* QHAdam: [wd|l2, average_grad(damp), average_sqr_grad(damp), step_stat, qhadam_step].          \
   h: lr, mom, sqr_mom, eps, decay_mul, l2_wd, damp1, damp2, debias1, debias2,                   \
      1-nu_1, nu_1, 1-nu_2, nu_2 */                                                               \
void pfo_qhadam_##SFX(int n, void **P, void **G, void **M, void **V, const i64 *len,            \
                      const double *h, int flags) {                                                \
    const T nlr = (T)(-h[0]), mom = (T)h[1], sm = (T)h[2], eps = (T)h[3], dm = (T)h[4],         \
            l2 = (T)h[5], d1 = (T)h[6], d2 = (T)h[7], db1 = (T)h[8], db2 = (T)h[9],               \
            a1 = (T)h[10], nu1 = (T)h[11], a2 = (T)h[12], nu2 = (T)h[13];                          \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, P, G, M, V, len, sizeof(T));                                           \
        T *restrict p = (T *)P[t], *restrict g = (T *)G[t], *restrict m = (T *)M[t];              \
        T *restrict v = (T *)V[t];                                                                 \
        const i64 k = len[t];                                                                      \
        for (i64 i = 0; i < k; i++) {                                                              \
            T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                        \
            if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                                 \
            T mi = FMA(d1, gi, m[i] * mom);                                                        \
            m[i] = mi;                                                                             \
            T vi = FMA(d2 * gi, gi, v[i] * sm);                                                    \
            v[i] = vi;                                                                             \
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
                                    i64 k, int flags, T dm, T l2, double *sp_, double *sg_) {      \
    double ap[NB] = {0}, ag[NB] = {0};                                                             \
    i64 i = 0;                                                                                     \
    if (flags & F_L2) {                                                                            \
        for (; i + NB <= k; i += NB) {                                                             \
            if (pm) prefetch_block_w(pm + i, NB * sizeof(T));                                      \
            for (int j = 0; j < NB; j++) {                                                         \
                double y = (double)decay_##SFX(p[i + j], flags, dm);                               \
                double z = (double)FMA(l2, p[i + j], g[i + j]);                                    \
                ap[j] += y * y; ag[j] += z * z;                                                    \
            }                                                                                      \
        }                                                                                          \
    } else if (flags & F_DECAY) {                                                                  \
        for (; i + NB <= k; i += NB) {                                                             \
            if (pm) prefetch_block_w(pm + i, NB * sizeof(T));                                      \
            for (int j = 0; j < NB; j++) {                                                         \
                double y = (double)(p[i + j] * dm), z = (double)g[i + j];                          \
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
        double y = (double)decay_##SFX(p[i], flags, dm);                                           \
        double z = (double)((flags & F_L2) ? FMA(l2, p[i], g[i]) : g[i]);                          \
        ap[0] += y * y; ag[0] += z * z;                                                            \
    }                                                                                              \
    double sp = 0, sg = 0;                                                                         \
    for (int j = 0; j < NB; j++) { sp += ap[j]; sg += ag[j]; }                                     \
    *sp_ = sp; *sg_ = sg;                                                                          \
}                                                                                                  \
                                                                                                   \
/* Larc: [wd|l2, (average_grad), larc_layer_lr(clip), larc_step].                                \
   h: lr, mom, decay_mul, l2_wd, damp, lr*trust_coeff, wd, eps.                                  \
   Per tensor: norms of p (after the decay) and of g (after l2), local_lr as the steppers         \
   compute it on 0-d tensors, clipped to lr when F_CLIP and not local_lr < lr; then the step.    \
   out_lr[t] gets the local_lr used, clipped[t] whether it was clipped. */                       \
void pfo_larc_##SFX(int n, void **P, void **G, void **M, const i64 *len, const double *h,       \
                    int flags, double *out_lr, int32_t *clipped) {                                 \
    const T lr = (T)h[0], mom = (T)h[1], dm = (T)h[2], l2 = (T)h[3], damp = (T)h[4],            \
            lrtc = (T)h[5], wd = (T)h[6], eps = (T)h[7];                                           \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, P, G, (flags & F_MOM) ? M : 0, 0, len, sizeof(T));                     \
        T *restrict p = (T *)P[t], *restrict g = (T *)G[t];                                       \
        T *restrict m = (flags & F_MOM) ? (T *)M[t] : 0;                                          \
        const i64 k = len[t];                                                                      \
        double sp, sg;                                                                             \
        const T *pm = (m && k * (i64)sizeof(T) <= PF_M_MAX) ? m : 0;                               \
        larc_norms_##SFX(p, g, pm, k, flags, dm, l2, &sp, &sg);                                        \
        const T pn = (T)sqrt(sp), gn = (T)sqrt(sg);                                                \
        const T a = pn * lrtc;                                                                     \
        const T pw = pn * wd;                                                                      \
        const T b1 = gn + pw;                                                                      \
        const T b = b1 + eps;                                                                      \
        T llr = a / b;                                                                             \
        int c = 0;                                                                                 \
        if ((flags & F_CLIP) && !(llr < lr)) { llr = lr; c = 1; }                                  \
        out_lr[t] = (double)llr;                                                                   \
        clipped[t] = c;                                                                            \
        for (i64 i = 0; i < k; i++) {                                                              \
            T pi = decay_##SFX(p[i], flags, dm), gi = g[i];                                        \
            if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i] = gi; }                                 \
            T x = gi;                                                                              \
            if (flags & F_MOM) { x = FMA(damp, gi, m[i] * mom); m[i] = x; }                        \
            p[i] = pi - x * llr;                                                                   \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Lamb: [wd|l2, average_grad(damp), average_sqr_grad, step_stat, lamb_step].                    \
   h: lr, mom, sqr_mom, eps, decay_mul, l2_wd, damp1, damp2, debias1, debias2.                   \
   Pass 1 per tensor: m, v, and the sums of squares of p (after the decay) and of the update;    \
   pass 2: p = fma(-lr, u * q, p), u recomputed from m and v, q the trust ratio. */              \
void pfo_lamb_##SFX(int n, void **P, void **G, void **M, void **V, const i64 *len,              \
                    const double *h, int flags) {                                                  \
    const T nlr = (T)(-h[0]), mom = (T)h[1], sm = (T)h[2], eps = (T)h[3], dm = (T)h[4],         \
            l2 = (T)h[5], d1 = (T)h[6], d2 = (T)h[7], db1 = (T)h[8], db2 = (T)h[9];               \
    for (int t = 0; t < n; t++) {                                                                  \
        prefetch_next(t, n, P, G, M, V, len, sizeof(T));                                           \
        T *restrict p = (T *)P[t], *restrict g = (T *)G[t], *restrict m = (T *)M[t];              \
        T *restrict v = (T *)V[t];                                                                 \
        const i64 k = len[t];                                                                      \
        double ap[NACC] = {0}, au[NACC] = {0};                                                     \
        i64 i = 0;                                                                                 \
        for (; i < k; i += NACC) {                                                                 \
            const int w = (k - i) < NACC ? (int)(k - i) : NACC;                                    \
            for (int j = 0; j < w; j++) {                                                          \
                T pi = decay_##SFX(p[i + j], flags, dm), gi = g[i + j];                            \
                if (flags & F_L2) { gi = FMA(l2, pi, gi); g[i + j] = gi; }                         \
                T mi = FMA(d1, gi, m[i + j] * mom);                                                \
                m[i + j] = mi;                                                                     \
                T vi = FMA(d2 * gi, gi, v[i + j] * sm);                                            \
                v[i + j] = vi;                                                                     \
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
            T pi = decay_##SFX(p[i], flags, dm);                                                   \
            T u = (m[i] / db1) / (SQRT(v[i] / db2) + eps);                                         \
            p[i] = FMA(nlr, u * q, pi);                                                            \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_KERNELS(float, f32, fmaf, sqrtf)
DEFINE_KERNELS(double, f64, fma, sqrt)

int pfo_abi_version(void) { return 1; }
