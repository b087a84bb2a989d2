/* y[T, N] = x[T, K] @ W^T for W stored as raw GGUF rows. Activations are quantized once per
 * call; threads take chunks of output rows; inside a chunk each weight row is dotted against
 * LS_NT tokens at a time, so a row is unpacked once per token tile and stays in L1 across
 * tiles (the matrix-matrix path); T = 1 is the plain matrix-vector path. */
#include <stdatomic.h>
#include <stdlib.h>

#include "ls_common.h"
#include "ls_quant.h"
#include "ls_threads.h"

typedef struct {
    ls_dot_fn dot;
    const uint8_t *w;
    size_t row_bytes;
    const uint8_t *act;
    ls_act_layout lay;
    ls_act_kind kind;
    const float *x;
    int T, K, N, chunk;
    float *y;
    atomic_int next;
} mm_job;

static void quantize_task(void *p, int ith, int nth) {
    mm_job *j = (mm_job *)p;
    for (int t = ith; t < j->T; t += nth)
        ls_quantize_row(j->kind, j->x + (size_t)t * j->K, j->K,
                        (uint8_t *)j->act + (size_t)t * j->lay.stride, &j->lay);
}

static void matmul_task(void *p, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = (mm_job *)p;
    const int nchunks = (j->N + j->chunk - 1) / j->chunk;
    for (;;) {
        int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= nchunks) break;
        int r0 = c * j->chunk, r1 = r0 + j->chunk < j->N ? r0 + j->chunk : j->N;
        for (int t0 = 0; t0 < j->T; t0 += LS_NT) {
            int nt = j->T - t0 < LS_NT ? j->T - t0 : LS_NT;
            const uint8_t *a = j->act + (size_t)t0 * j->lay.stride;
            float *yt = j->y + (size_t)t0 * j->N;
            for (int r = r0; r < r1; r++)
                j->dot(j->K, j->w + (size_t)r * j->row_bytes, a, &j->lay, nt, yt + r,
                       (size_t)j->N);
        }
    }
}

/* Reused scratch for quantized activations (one per calling thread; grows, never shrinks). */
static _Thread_local uint8_t *tl_buf;
static _Thread_local size_t tl_cap;

static uint8_t *scratch(size_t n) {
    if (n > tl_cap) {
        free(tl_buf);
        tl_buf = (uint8_t *)aligned_alloc(64, (n + 63) & ~(size_t)63);
        tl_cap = tl_buf ? n : 0;
    }
    return tl_buf;
}

static ls_dot_fn pick(const ls_kernels *k, int qtype, ls_act_kind *kind) {
    *kind = LS_ACT_F32;
    switch (qtype) {
    case LS_Q8_0: *kind = LS_ACT_A8; return k->dot_q8_0;
    case LS_Q5_0: *kind = LS_ACT_A8; return k->dot_q5_0;
    case LS_Q4_K: *kind = LS_ACT_AK; return k->dot_q4_K;
    case LS_Q6_K: *kind = LS_ACT_AK; return k->dot_q6_K;
    case LS_F16: return k->dot_f16;
    case LS_BF16: return k->dot_bf16;
    case LS_F32: return k->dot_f32;
    default: return NULL;
    }
}

/* Returns LS_OK or a negative error code (unsupported type, K not a multiple of the block). */
LS_API int ls_gguf_matmul(const float *x, int T, int K, const void *w, int qtype, int N,
                          float *y) {
    if (T <= 0 || N <= 0) return T < 0 || N < 0 ? LS_EBADSHAPE : LS_OK;
    if (ls_row_bytes(qtype, K) == 0) return ls_block_elems(qtype) ? LS_EBADSHAPE : LS_EBADTYPE;
    mm_job j;
    const ls_kernels *kt = ls_active_kernels();
    j.dot = pick(kt, qtype, &j.kind);
    if (!j.dot) j.dot = pick(&ls_kernels_scalar, qtype, &j.kind);
    if (!j.dot) return LS_EBADTYPE;
    j.w = (const uint8_t *)w;
    j.row_bytes = ls_row_bytes(qtype, K);
    j.x = x;
    j.T = T;
    j.K = K;
    j.N = N;
    j.y = y;
    j.lay = ls_act_layout_for(j.kind, K);
    const int pool = ls_pool_threads();
    /* Waking a worker costs about a microsecond and a thread needs ~48k MACs (a few us) to
     * earn it: small decode matmuls use a few threads, large ones all of them. */
    const double macs = (double)T * K * N;
    int nth = (int)(macs / 49152.0);
    nth = nth < 1 ? 1 : nth > pool ? pool : nth;
    if (j.kind == LS_ACT_F32) {
        j.act = (const uint8_t *)x;
    } else {
        uint8_t *buf = scratch((size_t)T * j.lay.stride);
        if (!buf) return LS_ENOMEM;
        j.act = buf;
        ls_parallel(quantize_task, &j, T >= 8 ? nth : 1);
    }
    /* Enough chunks per thread to balance a shared CPU, few enough to keep the counter cold. */
    int chunk = N / (nth * 8);
    j.chunk = chunk < 4 ? 4 : chunk > 64 ? 64 : chunk;
    atomic_init(&j.next, 0);
    ls_parallel(matmul_task, &j, nth);
    return LS_OK;
}
