/* NEON kernels, compiled only for AArch64 (where NEON is baseline). They use plain ARMv8.0
 * widening multiplies (vmull_s8 + vpadalq_s16) so they run on every AArch64 core; an SDOT
 * (dotprod) variant for ARMv8.2+ would be about twice as fast and is future work.
 * Not runnable on the x86 development machines: tests/kernels/test_cpu_neon.py cross-compiles
 * kernels/cpu/selftest.c and runs it under qemu-aarch64 when both tools are installed, which
 * checks every NEON kernel against the scalar one; otherwise it is untested. */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "ls_common.h"

/* acc += pairwise sums of a * b over 16 int8 lanes (products fit int16: |a|,|b| <= 128). */
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}

static inline int32_t dot32(const int8_t *a, const int8_t *b) {
    int32x4_t acc = dot16(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
    return vaddvq_s32(dot16(acc, vld1q_s8(a + 16), vld1q_s8(b + 16)));
}

static void dot_q8_0(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                     float *out, size_t os) {
    const blk_q8_0 *b = (const blk_q8_0 *)w;
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < K / LS_QK; i++)
            acc += ls_fp16_to_f32(b[i].d) * xd[i] * (float)dot32(b[i].qs, xq + 32 * i);
        out[t * os] = acc;
    }
}

/* 16 bits of qh -> 16 bytes of 0x10 (bit set) or 0. */
static inline uint8x16_t high_bits(uint32_t bits) {
    static const uint8_t sel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)(bits & 0xFF)),
                               vdup_n_u8((uint8_t)((bits >> 8) & 0xFF)));
    return vandq_u8(vtstq_u8(v, vld1q_u8(sel)), vdupq_n_u8(0x10));
}

static void dot_q5_0(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                     float *out, size_t os) {
    const blk_q5_0 *b = (const blk_q5_0 *)w;
    const uint8x16_t m4 = vdupq_n_u8(0xF);
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay), *xs = ls_act_s(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < K / LS_QK; i++) {
            uint32_t qh;
            memcpy(&qh, b[i].qh, 4);
            uint8x16_t q = vld1q_u8(b[i].qs);
            int8x16_t lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, m4), high_bits(qh)));
            int8x16_t hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), high_bits(qh >> 16)));
            int32x4_t s = dot16(vdupq_n_s32(0), lo, vld1q_s8(xq + 32 * i));
            s = dot16(s, hi, vld1q_s8(xq + 32 * i + 16));
            acc += ls_fp16_to_f32(b[i].d) * (xd[i] * (float)vaddvq_s32(s) - 16.0f * xs[i]);
        }
        out[t * os] = acc;
    }
}

static void dot_q4_K(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                     float *out, size_t os) {
    const blk_q4_K *b = (const blk_q4_K *)w;
    const uint8x16_t m4 = vdupq_n_u8(0xF);
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay);
        const int16_t *bs = ls_act_bsums(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < K / LS_QK_K; i++) {
            uint8_t sc[8], mn[8];
            ls_q4k_unpack(b[i].scales, sc, mn);
            const int8_t *x = xq + 256 * i;
            int32_t sumi = 0, summ = 0;
            for (int j = 0; j < 4; j++) {
                uint8x16_t q0 = vld1q_u8(b[i].qs + 32 * j), q1 = vld1q_u8(b[i].qs + 32 * j + 16);
                int32x4_t lo = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(q0, m4)),
                                     vld1q_s8(x + 64 * j));
                lo = dot16(lo, vreinterpretq_s8_u8(vandq_u8(q1, m4)), vld1q_s8(x + 64 * j + 16));
                int32x4_t hi = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)),
                                     vld1q_s8(x + 64 * j + 32));
                hi = dot16(hi, vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), vld1q_s8(x + 64 * j + 48));
                sumi += sc[2 * j] * vaddvq_s32(lo) + sc[2 * j + 1] * vaddvq_s32(hi);
            }
            const int16_t *g = bs + 16 * i;
            for (int j = 0; j < 8; j++) summ += mn[j] * (g[2 * j] + g[2 * j + 1]);
            acc += xd[i] * (ls_fp16_to_f32(b[i].d) * (float)sumi -
                            ls_fp16_to_f32(b[i].dmin) * (float)summ);
        }
        out[t * os] = acc;
    }
}

static void dot_q6_K(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                     float *out, size_t os) {
    const blk_q6_K *b = (const blk_q6_K *)w;
    const uint8x16_t m4 = vdupq_n_u8(0xF), m3 = vdupq_n_u8(0x30);
    for (int t = 0; t < nt; t++) {
        const uint8_t *a = act + (size_t)t * lay->stride;
        const int8_t *xq = ls_act_qs(a);
        const float *xd = ls_act_d(a, lay);
        const int16_t *bs = ls_act_bsums(a, lay);
        float acc = 0.0f;
        for (int i = 0; i < K / LS_QK_K; i++) {
            int32_t sumi = 0;
            for (int h = 0; h < 2; h++) {
                for (int half = 0; half < 2; half++) {  /* l in [16*half, 16*half + 16) */
                    const int o = 16 * half;
                    uint8x16_t l0 = vld1q_u8(b[i].ql + 64 * h + o);
                    uint8x16_t l1 = vld1q_u8(b[i].ql + 64 * h + 32 + o);
                    uint8x16_t qh = vld1q_u8(b[i].qh + 32 * h + o);
                    uint8x16_t q[4] = {
                        vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(qh, 4), m3)),
                        vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(qh, 2), m3)),
                        vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(qh, m3)),
                        vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(qh, 2), m3)),
                    };
                    for (int k = 0; k < 4; k++) {  /* group 8h + 2k + half: 16 elements */
                        const int8_t *x = xq + 256 * i + 128 * h + 32 * k + o;
                        int32x4_t s = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(q[k]), vld1q_s8(x));
                        sumi += b[i].scales[8 * h + 2 * k + half] * vaddvq_s32(s);
                    }
                }
            }
            for (int j = 0; j < 16; j++) sumi -= 32 * b[i].scales[j] * bs[16 * i + j];
            acc += xd[i] * ls_fp16_to_f32(b[i].d) * (float)sumi;
        }
        out[t * os] = acc;
    }
}

static inline float32x4_t load4(const void *w, int type, int k) {
    if (type == LS_F32) return vld1q_f32((const float *)w + k);
    uint16x4_t h = vld1_u16((const uint16_t *)w + k);
    if (type == LS_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static inline float load1(const void *w, int type, int k) {
    if (type == LS_F32) return ((const float *)w)[k];
    uint16_t h = ((const uint16_t *)w)[k];
    return type == LS_F16 ? ls_fp16_to_f32(h) : ls_bf16_to_f32(h);
}

static inline void float_dot(int K, const void *w, int type, const uint8_t *act,
                             const ls_act_layout *lay, int nt, float *out, size_t os) {
    for (int t = 0; t < nt; t++) {
        const float *x = (const float *)(act + (size_t)t * lay->stride);
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        int k = 0;
        for (; k + 8 <= K; k += 8) {
            a0 = vfmaq_f32(a0, load4(w, type, k), vld1q_f32(x + k));
            a1 = vfmaq_f32(a1, load4(w, type, k + 4), vld1q_f32(x + k + 4));
        }
        float s = vaddvq_f32(vaddq_f32(a0, a1));
        for (; k < K; k++) s += load1(w, type, k) * x[k];
        out[t * os] = s;
    }
}

static void dot_f32(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                    float *out, size_t os) {
    float_dot(K, w, LS_F32, act, lay, nt, out, os);
}
static void dot_f16(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                    float *out, size_t os) {
    float_dot(K, w, LS_F16, act, lay, nt, out, os);
}
static void dot_bf16(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, int nt,
                     float *out, size_t os) {
    float_dot(K, w, LS_BF16, act, lay, nt, out, os);
}

static float vdot(const float *a, const float *b, int n) {
    float32x4_t s = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) s = vfmaq_f32(s, vld1q_f32(a + i), vld1q_f32(b + i));
    float r = vaddvq_f32(s);
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

static void vaxpy(float *y, float a, const float *x, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

static void vscale(float *y, float a, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_n_f32(vld1q_f32(y + i), a));
    for (; i < n; i++) y[i] *= a;
}

static inline float32x4_t load_h4(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static float vdot_f16(const float *a, const uint16_t *b, int n) {
    float32x4_t s = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) s = vfmaq_f32(s, vld1q_f32(a + i), load_h4(b + i));
    float r = vaddvq_f32(s);
    for (; i < n; i++) r += a[i] * ls_fp16_to_f32(b[i]);
    return r;
}

static void vaxpy_f16(float *y, float a, const uint16_t *x, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), load_h4(x + i), a));
    for (; i < n; i++) y[i] += a * ls_fp16_to_f32(x[i]);
}

const ls_kernels ls_kernels_neon = {
    "neon", dot_q8_0, dot_q5_0, dot_q4_K, dot_q6_K, dot_f16, dot_bf16, dot_f32,
    {vdot, vaxpy, vscale, vdot_f16, vaxpy_f16, NULL, NULL},
    NULL, NULL, NULL,
};
#else
/* ISO C forbids an empty translation unit. */
typedef int ls_neon_unused;
#endif
