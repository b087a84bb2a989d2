/* Portable scalar kernels: the fallback on any CPU and the baseline the SIMD paths must match.
 * Integer sums are exact, so every ISA computes the same per-block integers; only the fp32
 * accumulation order differs. */
#include <math.h>

#include "ls_common.h"

static void dot_q8_0(int K, const void *w, const uint8_t *act, const ls_act_layout *lay,
                     int nt, float *out, size_t os) {
    const blk_q8_0 *b = (const blk_q8_0 *)w;
    const int nb = K / LS_QK;
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < nb; i++) {
            int32_t s = 0;
            for (int j = 0; j < 32; j++) s += (int32_t)b[i].qs[j] * xq[i * 32 + j];
            acc += ls_fp16_to_f32(b[i].d) * xd[i] * (float)s;
        }
        out[t * os] = acc;
    }
}

/* Q5_0: q in [0, 31] stored as 4 low bits + 1 high bit; value = d * (q - 16).
 * sum((q - 16) * x) = sum(q * x) - 16 * sum(x), and d_x * sum(x) is precomputed (s[]). */
static void dot_q5_0(int K, const void *w, const uint8_t *act, const ls_act_layout *lay,
                     int nt, float *out, size_t os) {
    const blk_q5_0 *b = (const blk_q5_0 *)w;
    const int nb = K / LS_QK;
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay), *xs = ls_act_s(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < nb; i++) {
            uint32_t qh;
            memcpy(&qh, b[i].qh, 4);
            int32_t s = 0;
            for (int j = 0; j < 16; j++) {
                int lo = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
                int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                s += lo * xq[i * 32 + j] + hi * xq[i * 32 + j + 16];
            }
            float dw = ls_fp16_to_f32(b[i].d);
            acc += dw * (xd[i] * (float)s - 16.0f * xs[i]);
        }
        out[t * os] = acc;
    }
}

/* Q4_K: value = d * sc_j * q - dmin * m_j per 32-element sub-block j, q in [0, 15].
 * The min term needs only sum(x) per sub-block: the activations' 16-element bsums. */
static void dot_q4_K(int K, const void *w, const uint8_t *act, const ls_act_layout *lay,
                     int nt, float *out, size_t os) {
    const blk_q4_K *b = (const blk_q4_K *)w;
    const int nb = K / LS_QK_K;
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay);
        const int16_t *bs = ls_act_bsums(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < nb; i++) {
            const int8_t *x = xq + i * 256;
            int32_t sumi = 0, summ = 0;
            for (int j = 0; j < 4; j++) {
                uint8_t sc0, m0, sc1, m1;
                ls_q4k_scale_min(2 * j, b[i].scales, &sc0, &m0);
                ls_q4k_scale_min(2 * j + 1, b[i].scales, &sc1, &m1);
                int32_t s0 = 0, s1 = 0;
                for (int l = 0; l < 32; l++) {
                    s0 += (b[i].qs[32 * j + l] & 0xF) * x[64 * j + l];
                    s1 += (b[i].qs[32 * j + l] >> 4) * x[64 * j + 32 + l];
                }
                sumi += sc0 * s0 + sc1 * s1;
                const int16_t *g = bs + i * 16 + 4 * j;
                summ += m0 * (g[0] + g[1]) + m1 * (g[2] + g[3]);
            }
            acc += xd[i] * (ls_fp16_to_f32(b[i].d) * (float)sumi -
                            ls_fp16_to_f32(b[i].dmin) * (float)summ);
        }
        out[t * os] = acc;
    }
}

/* Q6_K: value = d * sc_j * (q - 32) per 16-element sub-block, q in [0, 63]. */
static void dot_q6_K(int K, const void *w, const uint8_t *act, const ls_act_layout *lay,
                     int nt, float *out, size_t os) {
    const blk_q6_K *b = (const blk_q6_K *)w;
    const int nb = K / LS_QK_K;
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay);
        const int16_t *bs = ls_act_bsums(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < nb; i++) {
            int32_t sub[16] = {0};
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
                const int8_t *x = xq + i * 256 + 128 * h;
                for (int l = 0; l < 32; l++) {
                    int q1 = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    int is = 8 * h + l / 16;
                    sub[is + 0] += q1 * x[l];
                    sub[is + 2] += q2 * x[l + 32];
                    sub[is + 4] += q3 * x[l + 64];
                    sub[is + 6] += q4 * x[l + 96];
                }
            }
            int32_t sumi = 0;
            for (int j = 0; j < 16; j++)
                sumi += b[i].scales[j] * (sub[j] - 32 * bs[i * 16 + j]);
            acc += xd[i] * ls_fp16_to_f32(b[i].d) * (float)sumi;
        }
        out[t * os] = acc;
    }
}

#define LS_DOT_FLOAT(name, T, conv)                                                     \
    static void name(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, \
                     int nt, float *out, size_t os) {                                   \
        const T *wr = (const T *)w;                                                     \
        for (int t = 0; t < nt; t++) {                                                  \
            const float *x = (const float *)(act + (size_t)t * lay->stride);            \
            float acc = 0.0f;                                                           \
            for (int k = 0; k < K; k++) acc += conv(wr[k]) * x[k];                      \
            out[t * os] = acc;                                                          \
        }                                                                               \
    }
#define LS_ID(v) (v)
LS_DOT_FLOAT(dot_f32, float, LS_ID)
LS_DOT_FLOAT(dot_f16, uint16_t, ls_fp16_to_f32)
LS_DOT_FLOAT(dot_bf16, uint16_t, ls_bf16_to_f32)

static float vdot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static void vaxpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}
static void vscale(float *y, float a, int n) {
    for (int i = 0; i < n; i++) y[i] *= a;
}
static float vdot_f16(const float *a, const uint16_t *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * ls_fp16_to_f32(b[i]);
    return s;
}
static void vaxpy_f16(float *y, float a, const uint16_t *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * ls_fp16_to_f32(x[i]);
}

const ls_kernels ls_kernels_scalar = {
    "scalar", dot_q8_0, dot_q5_0, dot_q4_K, dot_q6_K, dot_f16, dot_bf16, dot_f32,
    {vdot, vaxpy, vscale, vdot_f16, vaxpy_f16, NULL, NULL},
    NULL, NULL, NULL,
};
