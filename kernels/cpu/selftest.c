/* Stand-alone check of every SIMD path against the scalar one, in C: built with the library
 * sources into an executable (no Python), so it can run where Python cannot, e.g. an AArch64
 * build under qemu-aarch64 (tests/kernels/test_cpu_neon.py). Integer block sums are the same
 * on every path, so outputs may differ only by fp32 accumulation order: the bound is
 * 1e-5 * sum|w * x| per output. Prints one line per check; exit status 1 on any failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ls_common.h"
#include "ls_quant.h"

int ls_set_isa(int isa);
int ls_best_isa(void);
void ls_set_num_threads(int n);
int ls_gguf_matmul(const float *x, int T, int K, const void *w, int qtype, int N, float *y);
int ls_dequantize_row(const void *row, int qtype, int K, float *y);
int ls_paged_attention(const float *q, int num_tokens, int nh, int hd, const void *k_cache,
                       const void *v_cache, int kv_dtype, int num_blocks, int bs, int nkv,
                       const int32_t *block_tables, int max_blocks,
                       const int32_t *query_start_loc, const int32_t *seq_lens, int num_seqs,
                       float scale, int window, float soft_cap, float *out);

static uint32_t rng_state = 12345u;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static float frand(void) { return (float)(rnd() & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f; }

/* Random blocks with small fp16 scales (random bytes elsewhere). */
static void random_row(int qtype, int K, uint8_t *row) {
    size_t nbytes = ls_row_bytes(qtype, K);
    for (size_t i = 0; i < nbytes; i++) row[i] = (uint8_t)rnd();
    const int nb = K / ls_block_elems(qtype), bb = ls_block_bytes(qtype);
    for (int i = 0; i < nb; i++) {
        uint8_t *b = row + (size_t)i * bb;
        uint16_t h = ls_f32_to_fp16(0.001f + 0.01f * fabsf(frand()));
        if (qtype == LS_Q8_0 || qtype == LS_Q5_0 || qtype == LS_Q4_K) memcpy(b, &h, 2);
        if (qtype == LS_Q4_K) memcpy(b + 2, &h, 2);
        if (qtype == LS_Q6_K) memcpy(b + 208, &h, 2);
    }
    if (qtype == LS_F16 || qtype == LS_BF16) {
        for (int k = 0; k < K; k++) {
            uint16_t h = qtype == LS_F16 ? ls_f32_to_fp16(frand()) : ls_f32_to_bf16(frand());
            memcpy(row + 2 * k, &h, 2);
        }
    } else if (qtype == LS_F32) {
        for (int k = 0; k < K; k++) ((float *)row)[k] = frand();
    }
}

static int check_matmul(int isa, int qtype, int T, int K, int N) {
    size_t rb = ls_row_bytes(qtype, K);
    uint8_t *w = malloc(rb * N);
    float *x = malloc(sizeof(float) * T * K), *y0 = malloc(sizeof(float) * T * N);
    float *y1 = malloc(sizeof(float) * T * N), *wd = malloc(sizeof(float) * K);
    for (int r = 0; r < N; r++) random_row(qtype, K, w + r * rb);
    for (int i = 0; i < T * K; i++) x[i] = frand() * (i % 37 == 0 ? 20.0f : 1.0f);
    ls_set_isa(0);
    int rc = ls_gguf_matmul(x, T, K, w, qtype, N, y0);
    ls_set_isa(isa);
    rc |= ls_gguf_matmul(x, T, K, w, qtype, N, y1);
    double worst = 0.0;
    for (int r = 0; r < N; r++) {
        ls_dequantize_row(w + r * rb, qtype, K, wd);
        for (int t = 0; t < T; t++) {
            double mag = 0.0;
            for (int k = 0; k < K; k++) mag += fabs((double)wd[k] * x[t * K + k]);
            double err = fabs((double)y1[t * N + r] - y0[t * N + r]) / (mag + 1e-30);
            worst = err > worst ? err : worst;
        }
    }
    int ok = rc == 0 && worst < 1e-5;
    printf("%s matmul isa=%d type=%d T=%d K=%d N=%d rel_err=%.2e\n", ok ? "ok  " : "FAIL", isa,
           qtype, T, K, N, worst);
    free(w), free(x), free(y0), free(y1), free(wd);
    return ok;
}

static int check_attention(int isa, int kv_dtype, int hd) {
    enum { NB = 12, BS = 16, NKV = 2, NH = 4, NSEQ = 2, MAXB = 6 };
    const int es = kv_dtype == LS_F32 ? 4 : 2, ntok = 9;
    const size_t cache_elems = (size_t)NB * BS * NKV * hd;
    uint8_t *kc = malloc(cache_elems * es), *vc = malloc(cache_elems * es);
    for (size_t i = 0; i < cache_elems; i++) {
        float kf = frand(), vf = frand();
        if (es == 4) {
            ((float *)kc)[i] = kf, ((float *)vc)[i] = vf;
        } else {
            ((uint16_t *)kc)[i] = ls_f32_to_fp16(kf), ((uint16_t *)vc)[i] = ls_f32_to_fp16(vf);
        }
    }
    float *q = malloc(sizeof(float) * ntok * NH * hd), *o0 = malloc(sizeof(float) * ntok * NH * hd);
    float *o1 = malloc(sizeof(float) * ntok * NH * hd);
    for (int i = 0; i < ntok * NH * hd; i++) q[i] = frand();
    int32_t bt[NSEQ * MAXB] = {3, 7, 1, 9, 0, 0, 11, 2, 5, 4, 0, 0};
    int32_t qsl[NSEQ + 1] = {0, 8, 9}, lens[NSEQ] = {60, 41};
    ls_set_isa(0);
    int rc = ls_paged_attention(q, ntok, NH, hd, kc, vc, kv_dtype, NB, BS, NKV, bt, MAXB, qsl,
                                lens, NSEQ, 0.1f, 24, 20.0f, o0);
    ls_set_isa(isa);
    rc |= ls_paged_attention(q, ntok, NH, hd, kc, vc, kv_dtype, NB, BS, NKV, bt, MAXB, qsl, lens,
                             NSEQ, 0.1f, 24, 20.0f, o1);
    double worst = 0.0;
    for (int i = 0; i < ntok * NH * hd; i++) {
        double e = fabs((double)o0[i] - o1[i]);
        worst = e > worst ? e : worst;
    }
    int ok = rc == 0 && worst < 2e-5;
    printf("%s attention isa=%d kv_dtype=%d hd=%d max_abs_err=%.2e\n", ok ? "ok  " : "FAIL", isa,
           kv_dtype, hd, worst);
    free(kc), free(vc), free(q), free(o0), free(o1);
    return ok;
}

int main(void) {
    static const int types[] = {LS_Q8_0, LS_Q5_0, LS_Q4_K, LS_Q6_K, LS_F16, LS_BF16, LS_F32};
    const int best = ls_best_isa();
    int fails = 0, runs = 0;
    ls_set_num_threads(2);
    for (int isa = 1; isa <= 3; isa++) {
        if (ls_set_isa(isa) < 0) continue;  /* not on this CPU */
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
            int elems = ls_block_elems(types[i]);
            int k = elems == LS_QK_K ? 512 : elems == LS_QK ? 96 : 200;
            fails += !check_matmul(isa, types[i], 1, k, 67);
            fails += !check_matmul(isa, types[i], 6, elems == 1 ? 2 * k + 1 : 2 * k, 33);
            runs += 2;
        }
        fails += !check_attention(isa, LS_F32, 64) + !check_attention(isa, LS_F16, 256);
        runs += 2;
    }
    printf("selftest (best isa %d): %d checks, %d failed\n", best, runs, fails);
    return fails ? 1 : 0;
}
