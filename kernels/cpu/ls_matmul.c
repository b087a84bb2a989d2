/* y_i[T, N_i] = x[T, K] @ W_i^T for one or more weights W_i stored as raw GGUF rows (several
 * weights sharing x, e.g. q/k/v or gate/up, run as one parallel region: one wake-up, one
 * activation quantization). Activations are quantized once per kind; threads take chunks of
 * output rows; inside a chunk each weight row is dotted against LS_NT tokens at a time, so a
 * row is unpacked once per token tile and stays in L1 across tiles (the matrix-matrix path);
 * T = 1 is the plain matrix-vector path. */
#include <stdatomic.h>
#include <stdlib.h>

#include "ls_common.h"
#include "ls_quant.h"
#include "ls_threads.h"

#define LS_MAX_PARTS 8

typedef struct {
    ls_dot_fn dot;
    ls_dot2_fn dot2;   /* two rows, one token; NULL if the ISA has none for this type */
    const uint8_t *w;
    size_t row_bytes;
    int kind;          /* ls_act_kind: which activation buffer */
    int N, first;      /* rows; index of this part's first chunk */
    float *y;
} mm_part;

typedef struct {
    mm_part part[LS_MAX_PARTS];
    int nparts, T, K, chunk, nchunks;
    const float *x;
    const uint8_t *act[3];     /* per ls_act_kind */
    ls_act_layout lay[3];
    int need[3];
    atomic_int next;   /* next chunk of rows to claim */
    atomic_int qnext;  /* next token to quantize */
} mm_job;

static void quantize_task(void *p, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = (mm_job *)p;
    for (int t; (t = atomic_fetch_add(&j->qnext, 1)) < j->T;) {
        for (int kind = LS_ACT_A8; kind <= LS_ACT_AK; kind++) {
            if (!j->need[kind]) continue;
            ls_quantize_row((ls_act_kind)kind, j->x + (size_t)t * j->K, j->K,
                            (uint8_t *)j->act[kind] + (size_t)t * j->lay[kind].stride,
                            &j->lay[kind]);
        }
    }
}

static void matmul_task(void *p, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = (mm_job *)p;
    for (;;) {
        int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->nchunks) break;
        int pi = 0;
        while (pi + 1 < j->nparts && j->part[pi + 1].first <= c) pi++;
        const mm_part *pt = &j->part[pi];
        const ls_act_layout *lay = &j->lay[pt->kind];
        int r0 = (c - pt->first) * j->chunk;
        int r1 = r0 + j->chunk < pt->N ? r0 + j->chunk : pt->N;
        if (j->T == 1 && pt->dot2) {  /* decode: rows in pairs */
            int r = r0;
            for (; r + 2 <= r1; r += 2)
                pt->dot2(j->K, pt->w + (size_t)r * pt->row_bytes, pt->row_bytes,
                         j->act[pt->kind], lay, pt->y + r);
            if (r < r1)
                pt->dot(j->K, pt->w + (size_t)r * pt->row_bytes, j->act[pt->kind], lay, 1,
                        pt->y + r, 1);
            continue;
        }
        for (int t0 = 0; t0 < j->T; t0 += LS_NT) {
            int nt = j->T - t0 < LS_NT ? j->T - t0 : LS_NT;
            const uint8_t *a = j->act[pt->kind] + (size_t)t0 * lay->stride;
            float *yt = pt->y + (size_t)t0 * pt->N;
            for (int r = r0; r < r1; r++)
                pt->dot(j->K, pt->w + (size_t)r * pt->row_bytes, a, lay, nt, yt + r,
                        (size_t)pt->N);
        }
    }
}

/* Quantized activations, reused across calls. */
static _Thread_local ls_scratch tl_scratch;

static ls_dot_fn pick(const ls_kernels *k, int qtype, int *kind) {
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

/* n weights (n <= 8) of ggml types qtypes[i], each [N[i], K], all applied to x [T, K];
 * y[i] receives [T, N[i]]. Returns LS_OK or a negative error code (unsupported type, K not a
 * multiple of a weight's block, too many weights). */
LS_API int ls_gguf_matmul_multi(const float *x, int T, int K, int n, const void *const *w,
                                const int *qtypes, const int *N, float *const *y) {
    if (n < 1 || n > LS_MAX_PARTS || T < 0) return LS_EBADSHAPE;
    mm_job j;
    memset(&j, 0, sizeof(j));
    const ls_kernels *kt = ls_active_kernels();
    double macs = 0.0;
    int total_rows = 0;
    for (int i = 0; i < n; i++) {
        mm_part *pt = &j.part[i];
        if (ls_row_bytes(qtypes[i], K) == 0)
            return ls_block_elems(qtypes[i]) ? LS_EBADSHAPE : LS_EBADTYPE;
        if (N[i] < 0) return LS_EBADSHAPE;
        pt->dot = pick(kt, qtypes[i], &pt->kind);
        if (!pt->dot) pt->dot = pick(&ls_kernels_scalar, qtypes[i], &pt->kind);
        pt->dot2 = qtypes[i] == LS_Q8_0   ? kt->dot2_q8_0
                   : qtypes[i] == LS_Q5_0 ? kt->dot2_q5_0
                                          : NULL;
        if (!pt->dot) return LS_EBADTYPE;
        pt->w = (const uint8_t *)w[i];
        pt->row_bytes = ls_row_bytes(qtypes[i], K);
        pt->N = N[i];
        pt->y = y[i];
        j.need[pt->kind] = 1;
        macs += (double)T * K * N[i];
        total_rows += N[i];
    }
    if (T == 0 || total_rows == 0) return LS_OK;
    j.nparts = n;
    j.x = x;
    j.T = T;
    j.K = K;
    /* Waking a worker costs about a microsecond and a thread needs ~48k MACs (a few us) to
     * earn it: small decode matmuls use a few threads, large ones all of them. */
    const int pool = ls_pool_threads();
    int nth = (int)(macs / 49152.0);
    nth = nth < 1 ? 1 : nth > pool ? pool : nth;
    size_t bytes = 0;
    for (int kind = LS_ACT_A8; kind <= LS_ACT_AK; kind++) {
        j.lay[kind] = ls_act_layout_for((ls_act_kind)kind, K);
        if (j.need[kind]) bytes += (size_t)T * j.lay[kind].stride;
    }
    j.lay[LS_ACT_F32] = ls_act_layout_for(LS_ACT_F32, K);
    j.act[LS_ACT_F32] = (const uint8_t *)x;
    if (bytes) {
        uint8_t *buf = (uint8_t *)ls_scratch_get(&tl_scratch, bytes);
        if (!buf) return LS_ENOMEM;
        for (int kind = LS_ACT_A8; kind <= LS_ACT_AK; kind++) {
            if (!j.need[kind]) continue;
            j.act[kind] = buf;
            buf += (size_t)T * j.lay[kind].stride;
        }
        atomic_init(&j.qnext, 0);
        ls_parallel(quantize_task, &j, T >= 8 ? nth : 1);
    }
    /* Enough chunks per thread to balance a shared CPU, few enough to keep the counter cold. */
    int chunk = total_rows / (nth * 8);
    j.chunk = chunk < 4 ? 4 : chunk > 64 ? 64 : chunk;
    for (int i = 0; i < n; i++) {
        j.part[i].first = j.nchunks;
        j.nchunks += (j.part[i].N + j.chunk - 1) / j.chunk;
    }
    atomic_init(&j.next, 0);
    ls_parallel(matmul_task, &j, nth);
    return LS_OK;
}

/* y[T, N] = x[T, K] @ W^T; see ls_gguf_matmul_multi. */
LS_API int ls_gguf_matmul(const float *x, int T, int K, const void *w, int qtype, int N,
                          float *y) {
    return ls_gguf_matmul_multi(x, T, K, 1, &w, &qtype, &N, &y);
}
