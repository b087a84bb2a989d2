/* Activation quantization and per-type facts used by the matmul driver. */
#ifndef LS_QUANT_H
#define LS_QUANT_H

#include "ls_common.h"

/* Layout of one token's quantized activations for K inputs (64-byte aligned stride). */
ls_act_layout ls_act_layout_for(ls_act_kind kind, int K);

/* Quantizes one token's K activations into dst (see ls_common.h for the layout). */
void ls_quantize_row(ls_act_kind kind, const float *x, int K, uint8_t *dst,
                     const ls_act_layout *lay);

/* Elements and bytes per block of a ggml type; 0 for unsupported types. */
static inline int ls_block_elems(int qtype) {
    switch (qtype) {
    case LS_Q8_0: case LS_Q5_0: return LS_QK;
    case LS_Q4_K: case LS_Q6_K: case LS_Q8_K: return LS_QK_K;
    case LS_F32: case LS_F16: case LS_BF16: return 1;
    default: return 0;
    }
}

static inline int ls_block_bytes(int qtype) {
    switch (qtype) {
    case LS_Q8_0: return (int)sizeof(blk_q8_0);
    case LS_Q5_0: return (int)sizeof(blk_q5_0);
    case LS_Q4_K: return (int)sizeof(blk_q4_K);
    case LS_Q6_K: return (int)sizeof(blk_q6_K);
    case LS_Q8_K: return (int)sizeof(blk_q8_K);
    case LS_F32: return 4;
    case LS_F16: case LS_BF16: return 2;
    default: return 0;
    }
}

/* Bytes of one row of K elements, or 0 if K does not fill whole blocks. */
static inline size_t ls_row_bytes(int qtype, int K) {
    int be = ls_block_elems(qtype);
    if (be == 0 || K <= 0 || K % be != 0) return 0;
    return (size_t)(K / be) * (size_t)ls_block_bytes(qtype);
}

#endif
