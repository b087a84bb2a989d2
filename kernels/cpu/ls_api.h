/* Prototypes of the library's exported kernels, for the C code that composes them
 * (ls_layer.c). Python binds the same functions through ctypes (_loader.SIGNATURES). */
#ifndef LS_API_H
#define LS_API_H

#include <stddef.h>
#include <stdint.h>

#include "ls_common.h"

LS_API int ls_gguf_matmul_multi(const float *x, int T, int K, int n, const void *const *w,
                                const int *qtypes, const int *N, float *const *y);
LS_API int ls_gguf_matmul(const float *x, int T, int K, const void *w, int qtype, int N,
                          float *y);
LS_API void ls_rms_norm(const float *x, const float *residual, float *residual_out,
                        const float *w, float *out, int T, int H, float eps, float w_offset);
LS_API int ls_rotary(const float *x, float *out, const int64_t *positions, int T, int heads,
                     int hd, const float *cos_sin, int rot, int64_t max_pos);
LS_API int ls_paged_attention(const float *q, int num_tokens, int nh, int hd,
                              const void *k_cache, const void *v_cache, int kv_dtype,
                              int num_blocks, int bs, int nkv, const int32_t *block_tables,
                              int max_blocks, const int32_t *query_start_loc,
                              const int32_t *seq_lens, int num_seqs, float scale, int window,
                              float soft_cap, float *out);
LS_API int ls_write_kv(const void *key, const void *value, int src_dtype, void *k_cache,
                       void *v_cache, int kv_dtype, int num_tokens, int nkv, int hd,
                       int num_blocks, int bs, const int64_t *slot_mapping);

/* Internal: out[t] = act(g[t]) * u[t] over d columns; rows of g and u are ld floats apart. */
int ls_act_mul_rows(const float *g, const float *u, size_t ld, float *out, int T, int d,
                    int kind);

#endif
