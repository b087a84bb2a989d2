/* On-the-fly activation quantization (the llama.cpp technique): x is rounded to int8 per
 * block so the weight dot products run on integer SIMD. Rounding is fixed and ISA-independent
 * (d = amax / 127, q = rint(x * (1 / d)) in fp32) so the tests can reproduce it bit for bit. */
#include <math.h>

#include "ls_quant.h"

/* Round to nearest even for |v| <= 2^22 without libm (vectorizes; needs fp-contract off). */
static inline float round_even(float v) {
    const float magic = 12582912.0f;  /* 1.5 * 2^23 */
    float r = v + magic;
    return r - magic;
}

static float block_amax(const float *x, int n) {
    float m = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

static int32_t quantize_block(const float *x, int8_t *q, int n, float *d_out) {
    float d = block_amax(x, n) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int i = 0; i < n; i++) {
        float v = x[i] * id;
        int32_t r = (int32_t)round_even(v);
        q[i] = (int8_t)r;
        sum += r;
    }
    *d_out = d;
    return sum;
}

ls_act_layout ls_act_layout_for(ls_act_kind kind, int K) {
    ls_act_layout l = {(size_t)K * sizeof(float), 0, 0, 0};
    if (kind == LS_ACT_A8) {
        l.off_d = ((size_t)K + 63) & ~(size_t)63;
        l.off_s = l.off_d + (size_t)(K / LS_QK) * sizeof(float);
        l.off_p = (l.off_s + (size_t)(K / LS_QK) * sizeof(float) + 63) & ~(size_t)63;
        l.stride = l.off_p + (size_t)(K / 64) * 128;
    } else if (kind == LS_ACT_AK) {
        l.off_d = ((size_t)K + 63) & ~(size_t)63;
        l.off_s = l.off_d + (size_t)(K / LS_QK_K) * sizeof(float);
        l.stride = (l.off_s + (size_t)(K / 16) * sizeof(int16_t) + 63) & ~(size_t)63;
    }
    return l;
}

void ls_quantize_row(ls_act_kind kind, const float *x, int K, uint8_t *dst,
                     const ls_act_layout *lay) {
    int8_t *q = (int8_t *)dst;
    float *d = (float *)(dst + lay->off_d);
    if (kind == LS_ACT_A8) {
        float *s = (float *)(dst + lay->off_s);
        uint8_t *pairs = dst + lay->off_p;
        for (int i = 0; i < K / LS_QK; i++) {
            int32_t sum = quantize_block(x + i * LS_QK, q + i * LS_QK, LS_QK, &d[i]);
            s[i] = d[i] * (float)sum;
            if (i / 2 < K / 64) {
                int32_t *nsum = (int32_t *)(pairs + (size_t)(i / 2) * 128);
                float *dx = (float *)(nsum + 16);
                for (int l = 0; l < 8; l++) {
                    nsum[8 * (i % 2) + l] = l == 0 ? -sum : 0;
                    dx[8 * (i % 2) + l] = d[i];
                }
            }
        }
    } else if (kind == LS_ACT_AK) {
        int16_t *bs = (int16_t *)(dst + lay->off_s);
        for (int i = 0; i < K / LS_QK_K; i++) {
            quantize_block(x + i * LS_QK_K, q + i * LS_QK_K, LS_QK_K, &d[i]);
            for (int j = 0; j < 16; j++) {
                int32_t s = 0;
                for (int l = 0; l < 16; l++) s += q[i * LS_QK_K + j * 16 + l];
                bs[i * 16 + j] = (int16_t)s;
            }
        }
    }
}
