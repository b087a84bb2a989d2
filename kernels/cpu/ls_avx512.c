/* AVX-512 (F/BW/VL/DQ + VNNI) kernels. vpdpbusd (u8 x s8 summed into s32) replaces the
 * maddubs+madd pair, and vpdpwssd applies per-sub-block scales while accumulating. 32-element
 * blocks are processed two per zmm; the K-quants map a 64-element chunk onto one zmm. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "ls_common.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) TGT

INL float fp16(uint16_t h) { return _cvtsh_ss(h); }

INL __m512i join256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* fp16 scales of blocks i (lanes 0-7) and i+1 (lanes 8-15) as fp32. */
INL __m512 pair_scales(uint16_t d0, uint16_t d1) {
    __m256i h = _mm256_mask_set1_epi16(_mm256_set1_epi16((short)d0), (__mmask16)0xFF00,
                                       (short)d1);
    return _mm512_cvtph_ps(h);
}

/* Q8_0 pairs: w + 128 (xor 0x80) is unsigned, so vpdpbusd takes it directly; the extra
 * 128 * sum(x) is cancelled by starting the accumulator at -128 * sum(qs), a per-pair
 * vector prepared with the activations. Scales are one fp16 broadcast pair + one multiply. */
INL void q8_0_nt(int K, const blk_q8_0 *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m512 acc[LS_NT];
    const int8_t *xq[LS_NT];
    const float *xd[LS_NT];
    const uint8_t *pp[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        xq[t] = ls_act_qs(act + t * lay->stride);
        xd[t] = ls_act_d(act + t * lay->stride, lay);
        pp[t] = act + t * lay->stride + lay->off_p;
    }
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const int nb = K / LS_QK;
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        LS_PREFETCH((const uint8_t *)b + 2 * (size_t)nb * sizeof(*b) + (size_t)i * sizeof(*b));
        __m512i w = join256(_mm256_loadu_si256((const __m256i *)b[i].qs),
                            _mm256_loadu_si256((const __m256i *)b[i + 1].qs));
        w = _mm512_xor_si512(w, bias);
        __m512 dw = pair_scales(b[i].d, b[i + 1].d);
        for (int t = 0; t < NT; t++) {
            const uint8_t *p = pp[t] + (size_t)i * 64;
            __m512i init = _mm512_slli_epi32(_mm512_load_si512((const void *)p), 7);
            __m512i x = _mm512_loadu_si512((const void *)(xq[t] + 32 * i));
            __m512i d = _mm512_dpbusd_epi32(init, w, x);
            __m512 sc = _mm512_mul_ps(dw, _mm512_load_ps((const float *)(p + 64)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        float s = _mm512_reduce_add_ps(acc[t]);
        if (i < nb) {  /* odd block count: one ymm block, sign trick */
            __m256i w = _mm256_loadu_si256((const __m256i *)b[i].qs);
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * i));
            __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w),
                                            _mm256_sign_epi8(x, w));
            __m512 f = _mm512_cvtepi32_ps(_mm512_castsi256_si512(p));
            s += fp16(b[i].d) * xd[t][i] * _mm512_mask_reduce_add_ps(0xFF, f);
        }
        out[t * os] = s;
    }
}

/* One Q5_0 block as 32 unsigned codes in [0, 31]. */
INL __m256i q5_codes(const blk_q5_0 *b) {
    __m128i q = _mm_loadu_si128((const __m128i *)b->qs);
    __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q),
                                   _mm256_set1_epi8(0xF));
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    return _mm256_mask_add_epi8(nib, (__mmask32)qh, nib, _mm256_set1_epi8(0x10));
}

/* Q5_0 pairs: codes in [0, 31] are unsigned; the -16 offset is folded into the accumulator
 * start (-16 * sum(qs)) like Q8_0's bias. */
INL void q5_0_nt(int K, const blk_q5_0 *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m512 acc[LS_NT];
    const int8_t *xq[LS_NT];
    const float *xd[LS_NT], *xs[LS_NT];
    const uint8_t *pp[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        xq[t] = ls_act_qs(act + t * lay->stride);
        xd[t] = ls_act_d(act + t * lay->stride, lay);
        xs[t] = ls_act_s(act + t * lay->stride, lay);
        pp[t] = act + t * lay->stride + lay->off_p;
    }
    const int nb = K / LS_QK;
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        LS_PREFETCH((const uint8_t *)b + 2 * (size_t)nb * sizeof(*b) + (size_t)i * sizeof(*b));
        __m512i w = join256(q5_codes(&b[i]), q5_codes(&b[i + 1]));
        __m512 dw = pair_scales(b[i].d, b[i + 1].d);
        for (int t = 0; t < NT; t++) {
            const uint8_t *p = pp[t] + (size_t)i * 64;
            __m512i init = _mm512_slli_epi32(_mm512_load_si512((const void *)p), 4);
            __m512i x = _mm512_loadu_si512((const void *)(xq[t] + 32 * i));
            __m512i d = _mm512_dpbusd_epi32(init, w, x);
            __m512 sc = _mm512_mul_ps(dw, _mm512_load_ps((const float *)(p + 64)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        float s = _mm512_reduce_add_ps(acc[t]);
        if (i < nb) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * i));
            __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q5_codes(&b[i]), x);
            __m512 f = _mm512_cvtepi32_ps(_mm512_castsi256_si512(p));
            float d = fp16(b[i].d);
            s += d * (xd[t][i] * _mm512_mask_reduce_add_ps(0xFF, f) - 16.0f * xs[t][i]);
        }
        out[t * os] = s;
    }
}

INL void q4_K_nt(int K, const blk_q4_K *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m512 acc[LS_NT];
    float corr[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        corr[t] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int i = 0; i < K / LS_QK_K; i++) {
        const uint8_t *ahead = (const uint8_t *)(b + 2 * (K / LS_QK_K) + i);  /* 2 rows on */
        for (size_t o = 0; o < sizeof(*b); o += 64) LS_PREFETCH(ahead + o);
        uint8_t sc[8], mn[8];
        ls_q4k_unpack(b[i].scales, sc, mn);
        __m512i q[4], s16[4];
        const __m512i sc16 =
            _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc)));
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
        for (int j = 0; j < 4; j++) {  /* chunk j = sub-blocks 2j (low nibbles), 2j+1 (high) */
            __m256i v = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * j));
            q[j] = join256(_mm256_and_si256(v, m4),
                           _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            /* int16 lanes 0-15 <- sc[2j], 16-31 <- sc[2j+1] */
            s16[j] = _mm512_permutexvar_epi16(
                _mm512_mask_blend_epi16((__mmask32)0xFFFF0000u, _mm512_set1_epi16((short)(2 * j)),
                                        _mm512_set1_epi16((short)(2 * j + 1))), sc16);
        }
        float d = fp16(b[i].d), dmin = fp16(b[i].dmin);
        for (int t = 0; t < NT; t++) {
            const uint8_t *a = act + t * lay->stride;
            const int8_t *x = ls_act_qs(a) + 256 * i;
            const int16_t *bs = ls_act_bsums(a, lay) + 16 * i;
            __m512i sumi = _mm512_setzero_si512();
            for (int j = 0; j < 4; j++) {
                __m512i xv = _mm512_loadu_si512((const void *)(x + 64 * j));
                __m512i p = _mm512_maddubs_epi16(q[j], xv);
                sumi = _mm512_dpwssd_epi32(sumi, p, s16[j]);
            }
            /* sum_j m_j * (x sum over sub-block j): pairwise-added bsums times the mins */
            __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bs),
                                           _mm_loadu_si128((const __m128i *)(bs + 8)));
            __m128i mm = _mm_madd_epi16(pairs, mn16);
            mm = _mm_add_epi32(mm, _mm_shuffle_epi32(mm, 0x4E));
            mm = _mm_add_epi32(mm, _mm_shuffle_epi32(mm, 0xB1));
            int32_t summ = _mm_cvtsi128_si32(mm);
            float dx = ls_act_d(a, lay)[i];
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(d * dx), acc[t]);
            corr[t] += dmin * dx * (float)summ;
        }
    }
    for (int t = 0; t < NT; t++) out[t * os] = _mm512_reduce_add_ps(acc[t]) - corr[t];
}

INL void q6_K_nt(int K, const blk_q6_K *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m512 acc[LS_NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(0x30);
    /* zmm k covers 16-element groups 4k..4k+3, 8 int16 lanes each after maddubs. */
    const __m512i gidx = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                          1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int i = 0; i < K / LS_QK_K; i++) {
        const uint8_t *ahead = (const uint8_t *)(b + 2 * (K / LS_QK_K) + i);  /* 2 rows on */
        for (size_t o = 0; o < sizeof(*b); o += 64) LS_PREFETCH(ahead + o);
        __m512i q[4], scv[4];
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b[i].scales));
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b[i].qh + 32 * h));
            __m256i q1 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                         _mm256_and_si256(_mm256_slli_epi16(qh, 4), m3));
            __m256i q2 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                         _mm256_and_si256(_mm256_slli_epi16(qh, 2), m3));
            __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                         _mm256_and_si256(qh, m3));
            __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), m3));
            q[2 * h] = join256(q1, q2);
            q[2 * h + 1] = join256(q3, q4);
        }
        for (int k = 0; k < 4; k++)
            scv[k] = _mm512_permutexvar_epi16(
                _mm512_add_epi16(gidx, _mm512_set1_epi16((short)(4 * k))),
                                              _mm512_castsi256_si512(sc16));
        float d = fp16(b[i].d);
        for (int t = 0; t < NT; t++) {
            const uint8_t *a = act + t * lay->stride;
            const int8_t *x = ls_act_qs(a) + 256 * i;
            __m256i bs = _mm256_loadu_si256((const __m256i *)(ls_act_bsums(a, lay) + 16 * i));
            __m256i c = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);  /* 32*sc*sum(x) */
            __m512i sumi = _mm512_castsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), c));
            sumi = _mm512_maskz_mov_epi32(0x00FF, sumi);
            for (int k = 0; k < 4; k++) {
                __m512i xv = _mm512_loadu_si512((const void *)(x + 64 * k));
                __m512i p = _mm512_maddubs_epi16(q[k], xv);
                sumi = _mm512_dpwssd_epi32(sumi, p, scv[k]);
            }
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi),
                                     _mm512_set1_ps(d * ls_act_d(a, lay)[i]), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) out[t * os] = _mm512_reduce_add_ps(acc[t]);
}

INL __m512 load_w(const void *w, int type, int k) {
    if (type == LS_F32) return _mm512_loadu_ps((const float *)w + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (type == LS_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INL float load_w1(const void *w, int type, int k) {
    if (type == LS_F32) return ((const float *)w)[k];
    uint16_t h = ((const uint16_t *)w)[k];
    return type == LS_F16 ? fp16(h) : ls_bf16_to_f32(h);
}

INL void float_nt(int K, const void *w, int type, const uint8_t *act,
                  const ls_act_layout *lay, const int NT, float *out, size_t os) {
    __m512 acc[LS_NT];
    const float *x[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        x[t] = (const float *)(act + t * lay->stride);
    }
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv = load_w(w, type, k);
        for (int t = 0; t < NT; t++)
            acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[t] + k), acc[t]);
    }
    for (int t = 0; t < NT; t++) {
        float s = _mm512_reduce_add_ps(acc[t]);
        for (int r = k; r < K; r++) s += load_w1(w, type, r) * x[t][r];
        out[t * os] = s;
    }
}

/* Block i of one Q8_0 / Q5_0 row against one token, for odd block counts. */
INL float a8_last_block(const uint8_t *row, int i, const int8_t *xq, const float *xd,
                        const float *xs, const int Q5) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(xq + 32 * i));
    __m256i p;
    float d;
    if (Q5) {
        const blk_q5_0 *b = (const blk_q5_0 *)row + i;
        p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q5_codes(b), x);
        d = fp16(b->d);
    } else {
        const blk_q8_0 *b = (const blk_q8_0 *)row + i;
        __m256i w = _mm256_loadu_si256((const __m256i *)b->qs);
        p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w),
                                _mm256_sign_epi8(x, w));
        d = fp16(b->d);
    }
    float s = _mm512_mask_reduce_add_ps(0xFF, _mm512_cvtepi32_ps(_mm512_castsi256_si512(p)));
    return Q5 ? d * (xd[i] * s - 16.0f * xs[i]) : d * xd[i] * s;
}

/* Two rows of Q8_0 or Q5_0 against one token (see ls_dot2_fn). */
INL void a8_two_rows(int K, const uint8_t *w, size_t rb, const uint8_t *act,
                     const ls_act_layout *lay, float *out, const int Q5) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const int8_t *xq = ls_act_qs(act);
    const uint8_t *pp = act + lay->off_p;
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const int nb = K / LS_QK, shift = Q5 ? 4 : 7;
    int i = 0;
    /* Prefetch 4 rows ahead (the pair after next): one line per row per step. */
    const size_t bb = Q5 ? sizeof(blk_q5_0) : sizeof(blk_q8_0);
    for (; i + 2 <= nb; i += 2) {
        LS_PREFETCH(w + 4 * rb + (size_t)i * bb);
        LS_PREFETCH(w + 5 * rb + (size_t)i * bb);
        const uint8_t *p = pp + (size_t)i * 64;
        __m512i init = _mm512_sll_epi32(_mm512_load_si512((const void *)p),
                                        _mm_cvtsi32_si128(shift));
        __m512i x = _mm512_loadu_si512((const void *)(xq + 32 * i));
        __m512 dx = _mm512_load_ps((const float *)(p + 64));
        __m512i w0, w1;
        __m512 d0, d1;
        if (Q5) {
            const blk_q5_0 *a = (const blk_q5_0 *)w, *b = (const blk_q5_0 *)(w + rb);
            w0 = join256(q5_codes(&a[i]), q5_codes(&a[i + 1]));
            w1 = join256(q5_codes(&b[i]), q5_codes(&b[i + 1]));
            d0 = pair_scales(a[i].d, a[i + 1].d);
            d1 = pair_scales(b[i].d, b[i + 1].d);
        } else {
            const blk_q8_0 *a = (const blk_q8_0 *)w, *b = (const blk_q8_0 *)(w + rb);
            w0 = _mm512_xor_si512(join256(_mm256_loadu_si256((const __m256i *)a[i].qs),
                                          _mm256_loadu_si256((const __m256i *)a[i + 1].qs)), bias);
            w1 = _mm512_xor_si512(join256(_mm256_loadu_si256((const __m256i *)b[i].qs),
                                          _mm256_loadu_si256((const __m256i *)b[i + 1].qs)), bias);
            d0 = pair_scales(a[i].d, a[i + 1].d);
            d1 = pair_scales(b[i].d, b[i + 1].d);
        }
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, w0, x)),
                               _mm512_mul_ps(d0, dx), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, w1, x)),
                               _mm512_mul_ps(d1, dx), acc1);
    }
    out[0] = _mm512_reduce_add_ps(acc0);
    out[1] = _mm512_reduce_add_ps(acc1);
    if (i < nb) {  /* odd block count */
        const float *xd = ls_act_d(act, lay), *xs = ls_act_s(act, lay);
        out[0] += a8_last_block(w, i, xq, xd, xs, Q5);
        out[1] += a8_last_block(w + rb, i, xq, xd, xs, Q5);
    }
}

static TGT void dot2_q8_0(int K, const void *w, size_t rb, const uint8_t *act,
                          const ls_act_layout *lay, float *out) {
    a8_two_rows(K, (const uint8_t *)w, rb, act, lay, out, 0);
}

static TGT void dot2_q5_0(int K, const void *w, size_t rb, const uint8_t *act,
                          const ls_act_layout *lay, float *out) {
    a8_two_rows(K, (const uint8_t *)w, rb, act, lay, out, 1);
}

#define LS_SPECIALISE(name, call)                                                         \
    static TGT void name(int K, const void *w, const uint8_t *act, const ls_act_layout *lay, \
                         int nt, float *out, size_t os) {                                 \
        switch (nt) {                                                                     \
        case 1: call(1); break;                                                           \
        case 2: call(2); break;                                                           \
        case 3: call(3); break;                                                           \
        default: call(4); break;                                                          \
        }                                                                                 \
    }
#define C_Q8_0(n) q8_0_nt(K, (const blk_q8_0 *)w, act, lay, n, out, os)
#define C_Q5_0(n) q5_0_nt(K, (const blk_q5_0 *)w, act, lay, n, out, os)
#define C_Q4_K(n) q4_K_nt(K, (const blk_q4_K *)w, act, lay, n, out, os)
#define C_Q6_K(n) q6_K_nt(K, (const blk_q6_K *)w, act, lay, n, out, os)
#define C_F32(n) float_nt(K, w, LS_F32, act, lay, n, out, os)
#define C_F16(n) float_nt(K, w, LS_F16, act, lay, n, out, os)
#define C_BF16(n) float_nt(K, w, LS_BF16, act, lay, n, out, os)
LS_SPECIALISE(dot_q8_0, C_Q8_0)
LS_SPECIALISE(dot_q5_0, C_Q5_0)
LS_SPECIALISE(dot_q4_K, C_Q4_K)
LS_SPECIALISE(dot_q6_K, C_Q6_K)
LS_SPECIALISE(dot_f32, C_F32)
LS_SPECIALISE(dot_f16, C_F16)
LS_SPECIALISE(dot_bf16, C_BF16)

static TGT float vdot(const float *a, const float *b, int n) {
    __m512 s = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        s = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s);
    }
    return _mm512_reduce_add_ps(s);
}

static TGT void vaxpy(float *y, float a, const float *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i,
                         _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static TGT void vscale(float *y, float a, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(av, _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] *= a;
}

INL __m512 load_h16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static TGT float vdot_f16(const float *a, const uint16_t *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_h16(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), load_h16(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_h16(b + i), s0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * fp16(b[i]);
    return s;
}

static TGT void vaxpy_f16(float *y, float a, const uint16_t *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, load_h16(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * fp16(x[i]);
}

/* 16 values of a K/V row at d as fp32. */
INL __m512 row16(const void *row, int d, const int F16) {
    return F16 ? load_h16((const uint16_t *)row + d) : _mm512_loadu_ps((const float *)row + d);
}

INL float row1(const void *row, int d, const int F16) {
    return F16 ? fp16(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

INL void scores_impl(const float *q, const void *const *rows, int nk, int n, float *out,
                     const int F16) {
    int k = 0;
    for (; k + 4 <= nk; k += 4) {  /* four keys: q loaded once, four independent chains */
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int d = 0;
        for (; d + 16 <= n; d += 16) {
            __m512 qv = _mm512_loadu_ps(q + d);
            a0 = _mm512_fmadd_ps(qv, row16(rows[k], d, F16), a0);
            a1 = _mm512_fmadd_ps(qv, row16(rows[k + 1], d, F16), a1);
            a2 = _mm512_fmadd_ps(qv, row16(rows[k + 2], d, F16), a2);
            a3 = _mm512_fmadd_ps(qv, row16(rows[k + 3], d, F16), a3);
        }
        float r0 = _mm512_reduce_add_ps(a0), r1 = _mm512_reduce_add_ps(a1);
        float r2 = _mm512_reduce_add_ps(a2), r3 = _mm512_reduce_add_ps(a3);
        for (; d < n; d++) {
            r0 += q[d] * row1(rows[k], d, F16), r1 += q[d] * row1(rows[k + 1], d, F16);
            r2 += q[d] * row1(rows[k + 2], d, F16), r3 += q[d] * row1(rows[k + 3], d, F16);
        }
        out[k] = r0, out[k + 1] = r1, out[k + 2] = r2, out[k + 3] = r3;
    }
    for (; k < nk; k++)
        out[k] = F16 ? vdot_f16(q, (const uint16_t *)rows[k], n)
                     : vdot(q, (const float *)rows[k], n);
}

static TGT void vscores(const float *q, const void *const *rows, int f16, int nk, int n,
                        float *out) {
    if (f16) scores_impl(q, rows, nk, n, out, 1);
    else scores_impl(q, rows, nk, n, out, 0);
}

INL void pv_impl(float *acc, const float *p, const void *const *rows, int nk, int n,
                 const int F16) {
    int d = 0;
    for (; d + 64 <= n; d += 64) {  /* 64 accumulators in registers across all keys */
        __m512 a0 = _mm512_loadu_ps(acc + d), a1 = _mm512_loadu_ps(acc + d + 16);
        __m512 a2 = _mm512_loadu_ps(acc + d + 32), a3 = _mm512_loadu_ps(acc + d + 48);
        for (int k = 0; k < nk; k++) {
            __m512 pk = _mm512_set1_ps(p[k]);
            a0 = _mm512_fmadd_ps(pk, row16(rows[k], d, F16), a0);
            a1 = _mm512_fmadd_ps(pk, row16(rows[k], d + 16, F16), a1);
            a2 = _mm512_fmadd_ps(pk, row16(rows[k], d + 32, F16), a2);
            a3 = _mm512_fmadd_ps(pk, row16(rows[k], d + 48, F16), a3);
        }
        _mm512_storeu_ps(acc + d, a0), _mm512_storeu_ps(acc + d + 16, a1);
        _mm512_storeu_ps(acc + d + 32, a2), _mm512_storeu_ps(acc + d + 48, a3);
    }
    for (; d + 16 <= n; d += 16) {
        __m512 a = _mm512_loadu_ps(acc + d);
        for (int k = 0; k < nk; k++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(p[k]), row16(rows[k], d, F16), a);
        _mm512_storeu_ps(acc + d, a);
    }
    for (; d < n; d++)
        for (int k = 0; k < nk; k++) acc[d] += p[k] * row1(rows[k], d, F16);
}

static TGT void vpv(float *acc, const float *p, const void *const *rows, int f16, int nk, int n) {
    if (f16) pv_impl(acc, p, rows, nk, n, 1);
    else pv_impl(acc, p, rows, nk, n, 0);
}

/* e^x as in ls_avx2.c; vscalefps applies 2^n with range handling. */
INL __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(87.0f)), _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static TGT void act_mul(const float *g, const float *u, float *o, int n, int kind) {
    const __m512 one = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(2.0f * 0.7978845608028654f);
    const __m512 k3 = _mm512_set1_ps(0.044715f);
    int i = 0;
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, g + i), a = v;
        if (kind)
            a = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(k3, v), _mm512_mul_ps(v, v), v));
        __m512 den = _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), a)));
        __m512 num = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, u + i));
        _mm512_mask_storeu_ps(o + i, m, _mm512_div_ps(num, den));
    }
}

const ls_kernels ls_kernels_avx512 = {
    "avx512", dot_q8_0, dot_q5_0, dot_q4_K, dot_q6_K, dot_f16, dot_bf16, dot_f32,
    {vdot, vaxpy, vscale, vdot_f16, vaxpy_f16, vscores, vpv},
#ifndef LS_NO_DOT2  /* -DLS_NO_DOT2: build without the paired-row decode kernels, to A/B them */
    dot2_q8_0, dot2_q5_0,
#else
    NULL, NULL,
#endif
    act_mul,
};
#endif
