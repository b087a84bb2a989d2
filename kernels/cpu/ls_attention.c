/* Paged attention over the shared KV layout (kernels/reference.py) and the KV-cache write.
 * Work items are (sequence, head, chunk of up to QC queries); each walks its keys in tiles of
 * KT with an online softmax, so a key/value tile is converted to fp32 once and reused by every
 * query of the chunk. Causal with a cached prefix, GQA/MQA, sliding window, soft cap. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "ls_common.h"
#include "ls_threads.h"

#define QC 16
#define KT 64

typedef struct {
    const float *q;
    const uint8_t *kc, *vc;
    int kv_dtype, esize, nh, nkv, hd, bs, max_blocks, num_seqs;
    const int32_t *bt, *qsl, *seq_lens;
    const int *item_start;  /* [num_seqs + 1] prefix sums of items per sequence */
    float scale, soft_cap;
    int window;
    float *scratch;  /* per thread: acc [QC, hd], scores [KT], bf16 K/V tiles [KT, hd] */
    size_t scratch_floats;
    float *out;
    atomic_int next;
    const ls_vec_ops *v;
} attn_job;

/* Row of one cached token for one kv head: fp32 or fp16 in place; bf16 converted to buf. */
static const void *kv_row(const attn_job *j, const uint8_t *cache, int s, int pos, int kvh,
                          float *buf) {
    int blk = j->bt[(size_t)s * j->max_blocks + pos / j->bs];
    size_t idx = (((size_t)blk * j->bs + pos % j->bs) * j->nkv + kvh) * j->hd;
    const void *p = cache + idx * j->esize;
    if (j->kv_dtype != LS_BF16) return p;
    for (int d = 0; d < j->hd; d++) buf[d] = ls_bf16_to_f32(((const uint16_t *)p)[d]);
    return buf;
}

static void run_item(const attn_job *j, int s, int h, int c, float *scr) {
    const int hd = j->hd, kvh = h / (j->nh / j->nkv);
    const int start = j->qsl[s], q_len = j->qsl[s + 1] - start, seq_len = j->seq_lens[s];
    const int i0 = c * QC, nq = q_len - i0 < QC ? q_len - i0 : QC;
    const int bf16 = j->kv_dtype == LS_BF16;
    float *acc = scr, *sc = acc + QC * hd;
    float *kbuf = bf16 ? sc + KT : NULL, *vbuf = bf16 ? kbuf + KT * hd : NULL;
    const void *krow[KT], *vrow[KT];
    const int f16 = j->kv_dtype == LS_F16;
    float m[QC], l[QC];
    const float *qv[QC];
    int pos[QC];
    for (int i = 0; i < nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        pos[i] = seq_len - q_len + i0 + i;
        qv[i] = j->q + ((size_t)(start + i0 + i) * j->nh + h) * hd;
        memset(acc + i * hd, 0, sizeof(float) * hd);
    }
    int lo = 0, hi = pos[nq - 1];
    if (j->window > 0 && pos[0] - j->window + 1 > 0) lo = pos[0] - j->window + 1;
    for (int k0 = lo; k0 <= hi; k0 += KT) {
        const int nk = hi - k0 + 1 < KT ? hi - k0 + 1 : KT;
        for (int k = 0; k < nk; k++) {
            krow[k] = kv_row(j, j->kc, s, k0 + k, kvh, bf16 ? kbuf + k * hd : NULL);
            vrow[k] = kv_row(j, j->vc, s, k0 + k, kvh, bf16 ? vbuf + k * hd : NULL);
        }
        for (int i = 0; i < nq; i++) {
            /* keys k0 + k visible to query i: k0 + k <= pos and pos - (k0 + k) < window */
            int kb = 0, ke = pos[i] - k0 + 1 < nk ? pos[i] - k0 + 1 : nk;
            if (j->window > 0 && pos[i] - j->window + 1 > k0) kb = pos[i] - j->window + 1 - k0;
            if (kb >= ke) continue;
            float *scq = sc + kb;
            const int n = ke - kb;
            if (j->v->scores) {
                j->v->scores(qv[i], krow + kb, f16, n, hd, scq);
            } else {
                for (int k = 0; k < n; k++)
                    scq[k] = f16 ? j->v->dot_f16(qv[i], (const uint16_t *)krow[kb + k], hd)
                                 : j->v->dot(qv[i], (const float *)krow[kb + k], hd);
            }
            float mt = -INFINITY;
            for (int k = 0; k < n; k++) {
                float x = scq[k] * j->scale;
                if (j->soft_cap > 0.0f) x = j->soft_cap * tanhf(x / j->soft_cap);
                scq[k] = x;
                mt = x > mt ? x : mt;
            }
            if (mt > m[i]) {
                float f = expf(m[i] - mt);  /* 0 on the first tile (m = -inf) */
                l[i] *= f;
                j->v->scale(acc + i * hd, f, hd);
                m[i] = mt;
            }
            for (int k = 0; k < n; k++) {
                scq[k] = expf(scq[k] - m[i]);
                l[i] += scq[k];
            }
            if (j->v->pv) {
                j->v->pv(acc + i * hd, scq, vrow + kb, f16, n, hd);
            } else {
                for (int k = 0; k < n; k++) {
                    const void *v = vrow[kb + k];
                    if (f16) j->v->axpy_f16(acc + i * hd, scq[k], (const uint16_t *)v, hd);
                    else j->v->axpy(acc + i * hd, scq[k], (const float *)v, hd);
                }
            }
        }
    }
    for (int i = 0; i < nq; i++) {
        float *o = j->out + ((size_t)(start + i0 + i) * j->nh + h) * hd;
        float inv = 1.0f / l[i];
        for (int d = 0; d < hd; d++) o[d] = acc[i * hd + d] * inv;
    }
}

static _Thread_local ls_scratch tl_scratch;

static void attn_task(void *p, int ith, int nth) {
    (void)nth;
    attn_job *j = (attn_job *)p;
    float *scr = j->scratch + (size_t)ith * j->scratch_floats;
    const int total = j->item_start[j->num_seqs];
    for (;;) {
        int it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (it >= total) break;
        int s = 0, e = j->num_seqs;  /* last s with item_start[s] <= it */
        while (e - s > 1) {
            int mid = (s + e) / 2;
            if (j->item_start[mid] <= it) s = mid; else e = mid;
        }
        int r = it - j->item_start[s];
        int nchunks = (j->qsl[s + 1] - j->qsl[s] + QC - 1) / QC;
        run_item(j, s, r / nchunks, r % nchunks, scr);
    }
}

static int esize_of(int dtype) {
    return dtype == LS_F32 ? 4 : (dtype == LS_F16 || dtype == LS_BF16) ? 2 : 0;
}

/* q, out [num_tokens, nh, hd] fp32; caches [num_blocks, bs, nkv, hd] of kv_dtype (ggml id:
 * 0 f32, 1 f16, 30 bf16); block_tables [num_seqs, max_blocks] int32; query_start_loc
 * [num_seqs + 1] and seq_lens [num_seqs] int32. window <= 0: none; soft_cap <= 0: none. */
LS_API int ls_paged_attention(const float *q, int num_tokens, int nh, int hd, const void *k_cache,
                              const void *v_cache, int kv_dtype, int num_blocks, int bs, int nkv,
                              const int32_t *block_tables, int max_blocks,
                              const int32_t *query_start_loc, const int32_t *seq_lens,
                              int num_seqs, float scale, int window, float soft_cap, float *out) {
    if (esize_of(kv_dtype) == 0) return LS_EBADTYPE;
    if (nh <= 0 || nkv <= 0 || nh % nkv != 0 || hd <= 0 || bs <= 0 || num_seqs < 0)
        return LS_EBADSHAPE;
    /* Per-call buffers come from a grow-only per-caller scratch: a fresh malloc of this size
     * is an mmap + page faults on every decode step. */
    const int nth_max = ls_pool_threads();
    const size_t per_thread = (size_t)QC * hd + KT + (kv_dtype == LS_BF16 ? 2 * KT * hd : 0);
    float *scratch = (float *)ls_scratch_get(
        &tl_scratch, sizeof(float) * (per_thread * nth_max + (size_t)num_seqs + 1 + 16));
    if (!scratch) return LS_ENOMEM;
    int *item_start = (int *)(scratch + per_thread * nth_max);
    item_start[0] = 0;
    int rc = LS_OK;
    for (int s = 0; s < num_seqs && rc == LS_OK; s++) {
        int q0 = query_start_loc[s], q_len = query_start_loc[s + 1] - q0, len = seq_lens[s];
        if (q0 < 0 || q_len < 0 || q0 + q_len > num_tokens || q_len > len ||
            (len + bs - 1) / bs > max_blocks)
            rc = LS_ERANGE;
        for (int b = 0; rc == LS_OK && q_len > 0 && b < (len + bs - 1) / bs; b++) {
            int id = block_tables[(size_t)s * max_blocks + b];
            if (id < 0 || id >= num_blocks) rc = LS_ERANGE;
        }
        item_start[s + 1] = item_start[s] + nh * ((q_len + QC - 1) / QC);
    }
    if (rc == LS_OK && item_start[num_seqs] > 0) {
        attn_job j = {.q = q, .kc = (const uint8_t *)k_cache, .vc = (const uint8_t *)v_cache,
                      .kv_dtype = kv_dtype, .esize = esize_of(kv_dtype), .nh = nh, .nkv = nkv,
                      .hd = hd, .bs = bs, .max_blocks = max_blocks, .num_seqs = num_seqs,
                      .bt = block_tables, .qsl = query_start_loc, .seq_lens = seq_lens,
                      .item_start = item_start, .scale = scale, .soft_cap = soft_cap,
                      .window = window, .out = out, .v = &ls_active_kernels()->vec};
        atomic_init(&j.next, 0);
        int items = item_start[num_seqs], nth = nth_max;
        nth = items < nth ? items : nth;
        j.scratch_floats = per_thread;
        j.scratch = scratch;
        ls_parallel(attn_task, &j, nth);
    }
    return rc;
}

/* Stores key/value [num_tokens, nkv, hd] (src_dtype) at slot_mapping[t] (skipped if < 0) in
 * caches [num_blocks, bs, nkv, hd] of kv_dtype. Returns LS_ERANGE for a slot past the pool. */
LS_API int ls_write_kv(const void *key, const void *value, int src_dtype, void *k_cache,
                       void *v_cache, int kv_dtype, int num_tokens, int nkv, int hd,
                       int num_blocks, int bs, const int64_t *slot_mapping) {
    const int es = esize_of(kv_dtype), ss = esize_of(src_dtype);
    if (!es || !ss) return LS_EBADTYPE;
    const int64_t nslots = (int64_t)num_blocks * bs;
    for (int t = 0; t < num_tokens; t++)
        if (slot_mapping[t] >= nslots) return LS_ERANGE;
    const size_t n = (size_t)nkv * hd;
    for (int t = 0; t < num_tokens; t++) {
        int64_t slot = slot_mapping[t];
        if (slot < 0) continue;
        for (int which = 0; which < 2; which++) {
            const uint8_t *src = (const uint8_t *)(which ? value : key) + (size_t)t * n * ss;
            uint8_t *dst = (uint8_t *)(which ? v_cache : k_cache) + (size_t)slot * n * es;
            if (src_dtype == kv_dtype) {
                memcpy(dst, src, n * es);
                continue;
            }
            for (size_t i = 0; i < n; i++) {
                float f = src_dtype == LS_F32 ? ((const float *)src)[i]
                          : src_dtype == LS_F16 ? ls_fp16_to_f32(((const uint16_t *)src)[i])
                                                : ls_bf16_to_f32(((const uint16_t *)src)[i]);
                if (kv_dtype == LS_F32) ((float *)dst)[i] = f;
                else if (kv_dtype == LS_F16) ((uint16_t *)dst)[i] = ls_f32_to_fp16(f);
                else ((uint16_t *)dst)[i] = ls_f32_to_bf16(f);
            }
        }
    }
    return LS_OK;
}
