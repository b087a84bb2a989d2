/* One decoder layer of the shared models (the Llama family and Gemma 3) in one call.
 *
 * At decode a layer is a dozen small kernels; driven one by one from Python, the calls,
 * tensor allocations and checks between them cost about as much as the layer's matmuls on a
 * small model. Here the same kernels run back to back over a reused workspace, so the
 * result is bit-identical to the module path (tests/models/test_cpu_decoder_layer.py). */
#include "ls_api.h"
#include "ls_common.h"

/* A layer's weights and shape; filled once at load time (layout mirrored by ctypes). */
typedef struct {
    int hidden, num_heads, num_kv_heads, head_dim, inter;
    int act_kind;        /* 0 SiLU, 1 GELU-tanh */
    float eps, norm_offset;  /* every RMSNorm of the layer; offset 1 for Gemma's (1 + w) */
    const float *input_norm, *pre_mlp_norm;
    const float *attn_out_norm, *mlp_out_norm;  /* Gemma's post-norms; NULL for Llama */
    const float *q_norm, *k_norm;                /* per-head q/k norm; NULL if none */
    const void *w_qkv[3];
    int t_qkv[3];
    const void *w_o;
    int t_o;
    const void *w_gate_up[2];
    int t_gate_up[2];
    const void *w_down;
    int t_down;
    const float *cos_sin;
    int rot_dim;
    int64_t max_pos;
    float scale, soft_cap;  /* soft_cap <= 0: none */
    int window;             /* <= 0: none */
    void *k_cache, *v_cache;
    int kv_dtype, num_blocks, block_size;
} ls_layer;

/* Where this step's packed tokens sit (kernels/reference.py layouts); one per forward. */
typedef struct {
    int num_tokens, num_seqs, max_blocks;
    const int64_t *positions, *slot_mapping;
    const int32_t *block_tables, *query_start_loc, *seq_lens;
} ls_step;

static _Thread_local ls_scratch tl_workspace;

#define TRY(call)                   \
    do {                            \
        int rc_ = (call);           \
        if (rc_ != LS_OK) return rc_; \
    } while (0)

/* hidden [T, H]: the previous layer's output not yet added to residual [T, H] (first: the
 * embeddings, and residual is only written). On return hidden holds this layer's output,
 * again not yet added, and residual the running sum: the contract of the torch layers. */
LS_API int ls_decoder_layer(const ls_layer *L, const ls_step *S, float *hidden,
                            float *residual, int first) {
    const int T = S->num_tokens, H = L->hidden, hd = L->head_dim, I = L->inter;
    const int qn = L->num_heads * hd, kvn = L->num_kv_heads * hd;
    if (T <= 0) return T == 0 ? LS_OK : LS_EBADSHAPE;
    float *ws = (float *)ls_scratch_get(
        &tl_workspace,
        sizeof(float) * T * (2 * (size_t)H + 2 * (size_t)qn + 2 * (size_t)kvn + 3 * (size_t)I));
    if (!ws) return LS_ENOMEM;
    float *x = ws, *q = x + (size_t)T * H, *k = q + (size_t)T * qn, *v = k + (size_t)T * kvn;
    float *att = v + (size_t)T * kvn, *a = att + (size_t)T * qn, *gate = a + (size_t)T * H;
    float *up = gate + (size_t)T * I, *act = up + (size_t)T * I;

    if (first) {
        memcpy(residual, hidden, sizeof(float) * T * H);
        ls_rms_norm(residual, NULL, NULL, L->input_norm, x, T, H, L->eps, L->norm_offset);
    } else {
        ls_rms_norm(hidden, residual, residual, L->input_norm, x, T, H, L->eps,
                    L->norm_offset);
    }

    /* attention */
    const int qkv_n[3] = {qn, kvn, kvn};
    float *const qkv[3] = {q, k, v};
    TRY(ls_gguf_matmul_multi(x, T, H, 3, L->w_qkv, L->t_qkv, qkv_n, qkv));
    if (L->q_norm) ls_rms_norm(q, NULL, NULL, L->q_norm, q, T * L->num_heads, hd, L->eps,
                               L->norm_offset);
    if (L->k_norm) ls_rms_norm(k, NULL, NULL, L->k_norm, k, T * L->num_kv_heads, hd, L->eps,
                               L->norm_offset);
    TRY(ls_rotary(q, q, S->positions, T, L->num_heads, hd, L->cos_sin, L->rot_dim,
                  L->max_pos));
    TRY(ls_rotary(k, k, S->positions, T, L->num_kv_heads, hd, L->cos_sin, L->rot_dim,
                  L->max_pos));
    TRY(ls_write_kv(k, v, LS_F32, L->k_cache, L->v_cache, L->kv_dtype, T, L->num_kv_heads, hd,
                    L->num_blocks, L->block_size, S->slot_mapping));
    TRY(ls_paged_attention(q, T, L->num_heads, hd, L->k_cache, L->v_cache, L->kv_dtype,
                           L->num_blocks, L->block_size, L->num_kv_heads, S->block_tables,
                           S->max_blocks, S->query_start_loc, S->seq_lens, S->num_seqs,
                           L->scale, L->window, L->soft_cap, att));
    TRY(ls_gguf_matmul(att, T, qn, L->w_o, L->t_o, H, a));
    if (L->attn_out_norm)
        ls_rms_norm(a, NULL, NULL, L->attn_out_norm, a, T, H, L->eps, L->norm_offset);
    ls_rms_norm(a, residual, residual, L->pre_mlp_norm, x, T, H, L->eps, L->norm_offset);

    /* MLP: the output goes straight to hidden */
    const int gu_n[2] = {I, I};
    float *const gu[2] = {gate, up};
    TRY(ls_gguf_matmul_multi(x, T, H, 2, L->w_gate_up, L->t_gate_up, gu_n, gu));
    TRY(ls_act_mul_rows(gate, up, (size_t)I, act, T, I, L->act_kind));
    TRY(ls_gguf_matmul(act, T, I, L->w_down, L->t_down, H, hidden));
    if (L->mlp_out_norm)
        ls_rms_norm(hidden, NULL, NULL, L->mlp_out_norm, hidden, T, H, L->eps,
                    L->norm_offset);
    return LS_OK;
}
