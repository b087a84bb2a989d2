/* Shared definitions for the localserve CPU kernels: GGUF block layouts, the internal
 * quantized-activation layout, fp16/bf16 conversion and the per-ISA kernel table.
 * Plain C11, no Python API: the library is loaded with ctypes. */
#ifndef LS_COMMON_H
#define LS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LS_API __attribute__((visibility("default")))

/* ggml type ids (gguf.GGMLQuantizationType values). */
enum {
    LS_F32 = 0, LS_F16 = 1, LS_Q5_0 = 6, LS_Q8_0 = 8, LS_Q4_K = 12, LS_Q6_K = 14,
    LS_Q8_K = 15, LS_BF16 = 30
};

/* Error codes returned by the exported functions (negative = error). */
enum { LS_OK = 0, LS_EBADTYPE = -1, LS_EBADSHAPE = -2, LS_ERANGE = -3, LS_ENOMEM = -4 };

#define LS_QK 32     /* elements per Q5_0 / Q8_0 block */
#define LS_QK_K 256  /* elements per K-quant super-block */

/* Blocks exactly as stored in a GGUF file (little-endian, fp16 scales as raw bits). */
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } blk_q8_K;

_Static_assert(sizeof(blk_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(blk_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(blk_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(blk_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(blk_q8_K) == 292, "q8_K layout");

/* Quantized activations of one token, planar so SIMD loads of qs are contiguous:
 *   A8 (for Q5_0/Q8_0 weights): int8 qs[K]; float d[K/32]; float s[K/32] (s = d * sum(qs));
 *      then per pair of blocks p (the AVX-512 kernels' unit): int32 nsum[16] (lane 0 and 8:
 *      -sum(qs) of blocks 2p and 2p+1, other lanes 0) and float dx[16] (d of block 2p in
 *      lanes 0-7, of 2p+1 in lanes 8-15), so offsets and scales are single vector loads
 *   AK (for Q4_K/Q6_K weights): int8 qs[K]; float d[K/256]; int16 bsums[K/16]
 * Rounding is fixed (d = amax/127, q = rint(x / d) in fp32) so tests can emulate it exactly. */
typedef enum { LS_ACT_F32 = 0, LS_ACT_A8 = 1, LS_ACT_AK = 2 } ls_act_kind;

typedef struct {
    size_t stride;  /* bytes between consecutive tokens */
    size_t off_d;   /* byte offset of d[] inside one token */
    size_t off_s;   /* byte offset of s[] (A8) or bsums[] (AK) inside one token */
    size_t off_p;   /* A8 only: byte offset of the per-pair vectors (128 bytes per pair) */
} ls_act_layout;

/* Dot of one weight row (K elements) with nt <= LS_NT tokens of activations:
 * out[t * out_stride] = sum_k w[k] * x_t[k]. */
#define LS_NT 4
typedef void (*ls_dot_fn)(int K, const void *w, const uint8_t *act, const ls_act_layout *lay,
                          int nt, float *out, size_t out_stride);

/* Decode (one token) over two consecutive weight rows at once: out[0], out[1]. Two
 * independent accumulator chains and shared activation loads; optional per ISA. */
typedef void (*ls_dot2_fn)(int K, const void *w, size_t row_bytes, const uint8_t *act,
                           const ls_act_layout *lay, float *out);

/* Vector helpers for attention (fp32 math; fp16 K/V rows are converted in registers). */
typedef struct {
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n);  /* y += a * x */
    void (*scale)(float *y, float a, int n);                 /* y *= a */
    float (*dot_f16)(const float *a, const uint16_t *b, int n);
    void (*axpy_f16)(float *y, float a, const uint16_t *x, int n);
    /* Optional tile versions (NULL: composed from the above). rows are fp32, or fp16 if f16.
     * scores: out[k] = q . rows[k] for k < nk (q read once per few keys, chains in parallel);
     * pv: acc += sum_k p[k] * rows[k] (acc stays in registers across the keys). */
    void (*scores)(const float *q, const void *const *rows, int f16, int nk, int n, float *out);
    void (*pv)(float *acc, const float *p, const void *const *rows, int f16, int nk, int n);
} ls_vec_ops;

/* One ISA's kernels; a NULL dot entry falls back to the scalar one. */
typedef struct {
    const char *name;
    ls_dot_fn dot_q8_0, dot_q5_0, dot_q4_K, dot_q6_K, dot_f16, dot_bf16, dot_f32;
    ls_vec_ops vec;
    ls_dot2_fn dot2_q8_0, dot2_q5_0;  /* may be NULL */
    /* o = act(g) * u over n elements, kind 0 SiLU, 1 GELU-tanh; NULL: the libm loop. Both
     * are g * u * sigmoid(a) (a = g, or a = 2 * sqrt(2/pi) * (g + 0.044715 g^3) since
     * 1 + tanh(z) = 2 * sigmoid(2z)), so one vector exp serves both. */
    void (*act_mul)(const float *g, const float *u, float *o, int n, int kind);
} ls_kernels;

/* A grow-only buffer, one per calling thread (`static _Thread_local ls_scratch s;`): kernels
 * run every decode step, and a fresh malloc of a large size is an mmap plus page faults each
 * time. Returns NULL when the allocation fails. */
typedef struct { void *p; size_t cap; } ls_scratch;

static inline void *ls_scratch_get(ls_scratch *s, size_t bytes) {
    if (bytes > s->cap) {
        free(s->p);
        s->p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        s->cap = s->p ? bytes : 0;
    }
    return s->p;
}

enum { LS_ISA_SCALAR = 0, LS_ISA_AVX2 = 1, LS_ISA_AVX512 = 2, LS_ISA_NEON = 3 };

extern const ls_kernels ls_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const ls_kernels ls_kernels_avx2;
extern const ls_kernels ls_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const ls_kernels ls_kernels_neon;
#endif

const ls_kernels *ls_active_kernels(void);

/* ---- scalar fp16 / bf16 conversion (bit exact, round-to-nearest-even) ---- */
static inline float ls_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t ls_bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float ls_fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return ls_f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {  /* zero or subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return ls_f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t ls_f32_to_fp16(float f) {
    uint32_t u = ls_bits_from_f32(f), sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {  /* result is subnormal or zero: round a * 2^24 to an integer */
        float v = ls_f32_from_bits(a) * 16777216.0f;  /* exact: power-of-two scaling */
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1);  /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

static inline float ls_bf16_to_f32(uint16_t h) { return ls_f32_from_bits((uint32_t)h << 16); }

static inline uint16_t ls_f32_to_bf16(float f) {
    uint32_t u = ls_bits_from_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* Q4_K packs 8 six-bit scales and mins into 12 bytes. */
static inline void ls_q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* All 8 scales and mins at once with 32-bit word operations (same result as above). */
static inline void ls_q4k_unpack(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
    uint32_t u0, u1, u2, w[4];
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    w[0] = u0 & 0x3f3f3f3fu;                                   /* sc 0-3 */
    w[1] = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);     /* sc 4-7 */
    w[2] = u1 & 0x3f3f3f3fu;                                   /* m 0-3 */
    w[3] = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);  /* m 4-7 */
    memcpy(sc, w, 8);
    memcpy(m, w + 2, 8);
}

/* Weight rows stream from memory once per token: prefetch the same offset `rows` rows ahead,
 * since one core's hardware prefetcher alone leaves a matvec latency bound (measured: Q8_0
 * LM head at one thread 22 -> 14 ms). -DLS_NO_PREFETCH turns it off to A/B. */
#ifndef LS_NO_PREFETCH
#define LS_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define LS_PREFETCH(p) ((void)(p))
#endif

/* Activation-layout helpers shared by the matmul driver and the dot kernels. */
static inline const int8_t *ls_act_qs(const uint8_t *a) { return (const int8_t *)a; }
static inline const float *ls_act_d(const uint8_t *a, const ls_act_layout *l) {
    return (const float *)(a + l->off_d);
}
static inline const float *ls_act_s(const uint8_t *a, const ls_act_layout *l) {
    return (const float *)(a + l->off_s);
}
static inline const int16_t *ls_act_bsums(const uint8_t *a, const ls_act_layout *l) {
    return (const int16_t *)(a + l->off_s);
}

#endif
