/* Row dequantization and the quantized-embedding gather: the token embedding of a GGUF
 * model is often a Q8_0 (or K-quant) table too large to dequantize whole (Gemma 3: 262144 rows),
 * so only the rows a step needs are expanded. */
#include "ls_common.h"
#include "ls_quant.h"

static void deq_q8_0(const blk_q8_0 *b, int nb, float *y) {
    for (int i = 0; i < nb; i++) {
        float d = ls_fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++) y[32 * i + j] = d * (float)b[i].qs[j];
    }
}

static void deq_q5_0(const blk_q5_0 *b, int nb, float *y) {
    for (int i = 0; i < nb; i++) {
        float d = ls_fp16_to_f32(b[i].d);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[32 * i + j] = d * (float)(lo - 16);
            y[32 * i + j + 16] = d * (float)(hi - 16);
        }
    }
}

static void deq_q4_K(const blk_q4_K *b, int nb, float *y) {
    for (int i = 0; i < nb; i++, y += 256) {
        float d = ls_fp16_to_f32(b[i].d), dmin = ls_fp16_to_f32(b[i].dmin);
        for (int j = 0; j < 4; j++) {
            uint8_t sc0, m0, sc1, m1;
            ls_q4k_scale_min(2 * j, b[i].scales, &sc0, &m0);
            ls_q4k_scale_min(2 * j + 1, b[i].scales, &sc1, &m1);
            for (int l = 0; l < 32; l++) {
                y[64 * j + l] = d * sc0 * (float)(b[i].qs[32 * j + l] & 0xF) - dmin * m0;
                y[64 * j + 32 + l] = d * sc1 * (float)(b[i].qs[32 * j + l] >> 4) - dmin * m1;
            }
        }
    }
}

static void deq_q6_K(const blk_q6_K *b, int nb, float *y) {
    for (int i = 0; i < nb; i++, y += 256) {
        float d = ls_fp16_to_f32(b[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            const int8_t *sc = b[i].scales + 8 * h;
            float *o = y + 128 * h;
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                o[l] = d * sc[is] * (float)(((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                o[l + 32] = d * sc[is + 2] *
                            (float)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = d * sc[is + 4] *
                            (float)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = d * sc[is + 6] *
                            (float)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
    }
}

static void deq_q8_K(const blk_q8_K *b, int nb, float *y) {
    for (int i = 0; i < nb; i++)
        for (int j = 0; j < 256; j++) y[256 * i + j] = b[i].d * (float)b[i].qs[j];
}

/* Dequantizes one row of K elements; returns LS_OK or LS_EBADTYPE. */
LS_API int ls_dequantize_row(const void *row, int qtype, int K, float *y) {
    if (ls_row_bytes(qtype, K) == 0) return ls_block_elems(qtype) ? LS_EBADSHAPE : LS_EBADTYPE;
    const int nb = K / ls_block_elems(qtype);
    switch (qtype) {
    case LS_Q8_0: deq_q8_0((const blk_q8_0 *)row, nb, y); break;
    case LS_Q5_0: deq_q5_0((const blk_q5_0 *)row, nb, y); break;
    case LS_Q4_K: deq_q4_K((const blk_q4_K *)row, nb, y); break;
    case LS_Q6_K: deq_q6_K((const blk_q6_K *)row, nb, y); break;
    case LS_Q8_K: deq_q8_K((const blk_q8_K *)row, nb, y); break;
    case LS_F32: memcpy(y, row, (size_t)K * 4); break;
    case LS_F16:
        for (int k = 0; k < K; k++) y[k] = ls_fp16_to_f32(((const uint16_t *)row)[k]);
        break;
    case LS_BF16:
        for (int k = 0; k < K; k++) y[k] = ls_bf16_to_f32(((const uint16_t *)row)[k]);
        break;
    default: return LS_EBADTYPE;
    }
    return LS_OK;
}

/* out[t, :] = scale * dequantize(table[ids[t]]) for t < n; ids must be in [0, num_rows). */
LS_API int ls_embedding(const int64_t *ids, int n, const void *table, int qtype, int K,
                        int64_t num_rows, float scale, float *out) {
    size_t rb = ls_row_bytes(qtype, K);
    if (rb == 0) return ls_block_elems(qtype) ? LS_EBADSHAPE : LS_EBADTYPE;
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= num_rows) return LS_ERANGE;
    for (int t = 0; t < n; t++) {
        float *y = out + (size_t)t * K;
        ls_dequantize_row((const uint8_t *)table + (size_t)ids[t] * rb, qtype, K, y);
        if (scale != 1.0f)
            for (int k = 0; k < K; k++) y[k] *= scale;
    }
    return LS_OK;
}
