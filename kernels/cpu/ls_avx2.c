/* AVX2 + FMA + F16C kernels. Integer dot products use _mm256_maddubs_epi16 (u8 x s8 -> s16
 * pairs): unsigned weight codes (Q5_0, Q4_K, Q6_K) go in as the unsigned operand directly and
 * the code offset is removed with the activations' precomputed block sums; signed Q8_0 uses
 * the sign trick |w| x sign(x, w). Each dot unpacks a weight block once and reuses it for up
 * to LS_NT tokens (NT is a compile-time constant in each specialisation). */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#include "ls_common.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) TGT

INL float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL float fp16(uint16_t h) { return _cvtsh_ss(h); }

/* 32 bits -> 32 bytes of 0xFF (bit set) or 0x00. */
INL __m256i bits_to_bytes(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                            0x0303030303030303LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

INL void q8_0_nt(int K, const blk_q8_0 *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m256 acc[LS_NT];
    const int8_t *xq[LS_NT];
    const float *xd[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        xq[t] = ls_act_qs(act + t * lay->stride);
        xd[t] = ls_act_d(act + t * lay->stride, lay);
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < K / LS_QK; i++) {
        LS_PREFETCH((const uint8_t *)(b + 2 * (K / LS_QK) + i));  /* 2 rows on */
        __m256i w = _mm256_loadu_si256((const __m256i *)b[i].qs);
        __m256i aw = _mm256_sign_epi8(w, w);
        float dw = fp16(b[i].d);
        for (int t = 0; t < NT; t++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * i));
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[t][i]), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) out[t * os] = hsum_ps(acc[t]);
}

INL void q5_0_nt(int K, const blk_q5_0 *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m256 acc[LS_NT];
    float corr[LS_NT];
    const int8_t *xq[LS_NT];
    const float *xd[LS_NT], *xs[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        corr[t] = 0.0f;
        xq[t] = ls_act_qs(act + t * lay->stride);
        xd[t] = ls_act_d(act + t * lay->stride, lay);
        xs[t] = ls_act_s(act + t * lay->stride, lay);
    }
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0xF);
    for (int i = 0; i < K / LS_QK; i++) {
        LS_PREFETCH((const uint8_t *)(b + 2 * (K / LS_QK) + i));  /* 2 rows on */
        __m128i q = _mm_loadu_si128((const __m128i *)b[i].qs);
        __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        __m256i w = _mm256_or_si256(nib, _mm256_and_si256(bits_to_bytes(qh),
                                                          _mm256_set1_epi8(0x10)));
        float dw = fp16(b[i].d);
        for (int t = 0; t < NT; t++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * i));
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[t][i]), acc[t]);
            corr[t] += dw * xs[t][i];
        }
    }
    for (int t = 0; t < NT; t++) out[t * os] = hsum_ps(acc[t]) - 16.0f * corr[t];
}

INL void q4_K_nt(int K, const blk_q4_K *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m256 acc[LS_NT];
    float corr[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        corr[t] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int i = 0; i < K / LS_QK_K; i++) {
        const uint8_t *ahead = (const uint8_t *)(b + 2 * (K / LS_QK_K) + i);  /* 2 rows on */
        for (size_t o = 0; o < sizeof(*b); o += 64) LS_PREFETCH(ahead + o);
        uint8_t sc[8], mn[8];
        ls_q4k_unpack(b[i].scales, sc, mn);
        __m256i lo[4], hi[4];
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * j));
            lo[j] = _mm256_and_si256(q, m4);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        }
        float d = fp16(b[i].d), dmin = fp16(b[i].dmin);
        for (int t = 0; t < NT; t++) {
            const uint8_t *a = act + t * lay->stride;
            const int8_t *x = ls_act_qs(a) + 256 * i;
            const int16_t *bs = ls_act_bsums(a, lay) + 16 * i;
            __m256i sumi = _mm256_setzero_si256();
            for (int j = 0; j < 4; j++) {
                __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + 64 * j));
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 64 * j + 32));
                __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[j], x0),
                                               _mm256_set1_epi16(sc[2 * j]));
                __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[j], x1),
                                               _mm256_set1_epi16(sc[2 * j + 1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
            }
            int32_t summ = 0;
            for (int j = 0; j < 8; j++) summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
            float dx = ls_act_d(a, lay)[i];
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d * dx), acc[t]);
            corr[t] += dmin * dx * (float)summ;
        }
    }
    for (int t = 0; t < NT; t++) out[t * os] = hsum_ps(acc[t]) - corr[t];
}

INL void q6_K_nt(int K, const blk_q6_K *b, const uint8_t *act, const ls_act_layout *lay,
                 const int NT, float *out, size_t os) {
    __m256 acc[LS_NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(0x30);
    for (int i = 0; i < K / LS_QK_K; i++) {
        const uint8_t *ahead = (const uint8_t *)(b + 2 * (K / LS_QK_K) + i);  /* 2 rows on */
        for (size_t o = 0; o < sizeof(*b); o += 64) LS_PREFETCH(ahead + o);
        __m256i q[8], scv[8];
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b[i].qh + 32 * h));
            q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                           _mm256_and_si256(_mm256_slli_epi16(qh, 4), m3));
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                           _mm256_and_si256(_mm256_slli_epi16(qh, 2), m3));
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                           _mm256_and_si256(qh, m3));
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), m3));
        }
        for (int k = 0; k < 8; k++)  /* sub-block scales of q[k]: low 16 bytes, high 16 */
            scv[k] = _mm256_set_m128i(_mm_set1_epi16(b[i].scales[2 * k + 1]),
                                      _mm_set1_epi16(b[i].scales[2 * k]));
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b[i].scales));
        float d = fp16(b[i].d);
        for (int t = 0; t < NT; t++) {
            const uint8_t *a = act + t * lay->stride;
            const int8_t *x = ls_act_qs(a) + 256 * i;
            __m256i bs = _mm256_loadu_si256((const __m256i *)(ls_act_bsums(a, lay) + 16 * i));
            __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);  /* 32*sc*sum(x) */
            sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
            for (int k = 0; k < 8; k++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * k));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv),
                                                                scv[k]));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi),
                                     _mm256_set1_ps(d * ls_act_d(a, lay)[i]), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) out[t * os] = hsum_ps(acc[t]);
}

/* Float weights: 8-wide FMA, weights converted once per 8 and reused for NT tokens. */
INL __m256 load_w(const void *w, int type, int k) {
    if (type == LS_F32) return _mm256_loadu_ps((const float *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (type == LS_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INL float load_w1(const void *w, int type, int k) {
    if (type == LS_F32) return ((const float *)w)[k];
    uint16_t h = ((const uint16_t *)w)[k];
    return type == LS_F16 ? fp16(h) : ls_bf16_to_f32(h);
}

INL void float_nt(int K, const void *w, int type, const uint8_t *act,
                  const ls_act_layout *lay, const int NT, float *out, size_t os) {
    __m256 acc[LS_NT];
    const float *x[LS_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        x[t] = (const float *)(act + t * lay->stride);
    }
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv = load_w(w, type, k);
        for (int t = 0; t < NT; t++)
            acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + k), acc[t]);
    }
    for (int t = 0; t < NT; t++) {
        float s = hsum_ps(acc[t]);
        for (int r = k; r < K; r++) s += load_w1(w, type, r) * x[t][r];
        out[t * os] = s;
    }
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
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static TGT void vaxpy(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static TGT void vscale(float *y, float a, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(av, _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] *= a;
}

INL __m256 load_h8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static TGT float vdot_f16(const float *a, const uint16_t *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_h8(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_h8(b + i + 8), s1);
    }
    float s = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * fp16(b[i]);
    return s;
}

static TGT void vaxpy_f16(float *y, float a, const uint16_t *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load_h8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * fp16(x[i]);
}

/* 8 values of a K/V row at d as fp32. */
INL __m256 row8(const void *row, int d, const int F16) {
    return F16 ? load_h8((const uint16_t *)row + d) : _mm256_loadu_ps((const float *)row + d);
}

INL float row1(const void *row, int d, const int F16) {
    return F16 ? fp16(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

INL void scores_impl(const float *q, const void *const *rows, int nk, int n, float *out,
                     const int F16) {
    int k = 0;
    for (; k + 4 <= nk; k += 4) {  /* four keys: q loaded once, four independent chains */
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int d = 0;
        for (; d + 8 <= n; d += 8) {
            __m256 qv = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(qv, row8(rows[k], d, F16), a0);
            a1 = _mm256_fmadd_ps(qv, row8(rows[k + 1], d, F16), a1);
            a2 = _mm256_fmadd_ps(qv, row8(rows[k + 2], d, F16), a2);
            a3 = _mm256_fmadd_ps(qv, row8(rows[k + 3], d, F16), a3);
        }
        float r0 = hsum_ps(a0), r1 = hsum_ps(a1), r2 = hsum_ps(a2), r3 = hsum_ps(a3);
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
    for (; d + 32 <= n; d += 32) {  /* 32 accumulators in registers across all keys */
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        __m256 a2 = _mm256_loadu_ps(acc + d + 16), a3 = _mm256_loadu_ps(acc + d + 24);
        for (int k = 0; k < nk; k++) {
            __m256 pk = _mm256_set1_ps(p[k]);
            a0 = _mm256_fmadd_ps(pk, row8(rows[k], d, F16), a0);
            a1 = _mm256_fmadd_ps(pk, row8(rows[k], d + 8, F16), a1);
            a2 = _mm256_fmadd_ps(pk, row8(rows[k], d + 16, F16), a2);
            a3 = _mm256_fmadd_ps(pk, row8(rows[k], d + 24, F16), a3);
        }
        _mm256_storeu_ps(acc + d, a0), _mm256_storeu_ps(acc + d + 8, a1);
        _mm256_storeu_ps(acc + d + 16, a2), _mm256_storeu_ps(acc + d + 24, a3);
    }
    for (; d + 8 <= n; d += 8) {
        __m256 a = _mm256_loadu_ps(acc + d);
        for (int k = 0; k < nk; k++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(p[k]), row8(rows[k], d, F16), a);
        _mm256_storeu_ps(acc + d, a);
    }
    for (; d < n; d++)
        for (int k = 0; k < nk; k++) acc[d] += p[k] * row1(rows[k], d, F16);
}

static TGT void vpv(float *acc, const float *p, const void *const *rows, int f16, int nk, int n) {
    if (f16) pv_impl(acc, p, rows, nk, n, 1);
    else pv_impl(acc, p, rows, nk, n, 0);
}

/* e^x, |rel err| ~ 2e-7: x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor for e^r, 2^n built in
 * the exponent bits. Inputs are clamped to [-87, 87], enough for a sigmoid. */
INL __m256 exp_ps(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(87.0f)), _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    e = _mm256_slli_epi32(e, 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static TGT void act_mul(const float *g, const float *u, float *o, int n, int kind) {
    const __m256 one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(2.0f * 0.7978845608028654f);
    const __m256 k3 = _mm256_set1_ps(0.044715f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i), a = v;
        if (kind)
            a = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(k3, v), _mm256_mul_ps(v, v), v));
        __m256 den = _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), a)));
        _mm256_storeu_ps(o + i, _mm256_div_ps(_mm256_mul_ps(v, _mm256_loadu_ps(u + i)), den));
    }
    for (; i < n; i++) {
        float v = g[i], a = kind ? 2.0f * 0.7978845608028654f * (v + 0.044715f * v * v * v) : v;
        o[i] = v * u[i] / (1.0f + expf(-a));
    }
}

const ls_kernels ls_kernels_avx2 = {
    "avx2", dot_q8_0, dot_q5_0, dot_q4_K, dot_q6_K, dot_f16, dot_bf16, dot_f32,
    {vdot, vaxpy, vscale, vdot_f16, vaxpy_f16, vscores, vpv},
    NULL, NULL, act_mul,
};
#endif
