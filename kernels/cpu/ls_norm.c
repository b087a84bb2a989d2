/* Fused elementwise kernels that run between the matmuls every layer: RMSNorm (with the
 * pre-norm residual add and Gemma's weight offset), gated activations and NeoX rotary. */
#include <math.h>
#include <stdatomic.h>

#include "ls_api.h"
#include "ls_common.h"
#include "ls_threads.h"

/* h = x (+ residual, written to residual_out); out = h * rsqrt(mean(h^2) + eps) * (off + w).
 * x [T, H], residual/residual_out/out [T, H] or NULL; w [H]. out may alias x. */
LS_API void ls_rms_norm(const float *x, const float *residual, float *residual_out,
                        const float *w, float *out, int T, int H, float eps, float w_offset) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * H;
        float *o = out + (size_t)t * H;
        if (residual) {
            float *h = residual_out + (size_t)t * H;
            const float *r = residual + (size_t)t * H;
            for (int i = 0; i < H; i++) h[i] = xr[i] + r[i];
            xr = h;
        }
        double ss = 0.0;  /* double: H can be large and the mean feeds every output */
        for (int i = 0; i < H; i++) ss += (double)xr[i] * xr[i];
        float inv = 1.0f / sqrtf((float)(ss / H) + eps);
        for (int i = 0; i < H; i++) o[i] = xr[i] * inv * (w_offset + w[i]);
    }
}

#define ACT_CHUNK 512

typedef struct {
    const float *g, *u;  /* row t of each at t * ld */
    size_t ld;
    float *out;
    int T, d, kind;
    void (*vec_act)(const float *g, const float *u, float *o, int n, int kind);
    atomic_int next;  /* next chunk: token t, columns [c * ACT_CHUNK, ...) */
} act_job;

static void act_task(void *p, int ith, int nth) {
    (void)ith;
    (void)nth;
    act_job *j = (act_job *)p;
    const float c = 0.7978845608028654f;  /* sqrt(2 / pi) */
    /* Chunks are column ranges of one token, so decode (T = 1) splits too. */
    const int per_token = (j->d + ACT_CHUNK - 1) / ACT_CHUNK;
    for (int ch; (ch = atomic_fetch_add(&j->next, 1)) < j->T * per_token;) {
        const int t = ch / per_token, i0 = (ch % per_token) * ACT_CHUNK;
        const int i1 = i0 + ACT_CHUNK < j->d ? i0 + ACT_CHUNK : j->d;
        const float *g = j->g + (size_t)t * j->ld, *u = j->u + (size_t)t * j->ld;
        float *o = j->out + (size_t)t * j->d;
        if (j->vec_act) {
            j->vec_act(g + i0, u + i0, o + i0, i1 - i0, j->kind);
        } else if (j->kind == 0) {
            for (int i = i0; i < i1; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        } else {
            for (int i = i0; i < i1; i++) {
                float v = g[i];
                o[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v))) * u[i];
            }
        }
    }
}

/* out[T, d] = act(g) * u for rows of g and u `ld` floats apart; kind 0 = SiLU, 1 = GELU
 * (tanh). */
int ls_act_mul_rows(const float *g, const float *u, size_t ld, float *out, int T, int d,
                    int kind) {
    if (kind != 0 && kind != 1) return LS_EBADTYPE;
    act_job j = {.g = g, .u = u, .ld = ld, .out = out, .T = T, .d = d, .kind = kind,
                 .vec_act = ls_active_kernels()->act_mul};
    atomic_init(&j.next, 0);
    const int chunks = T * ((d + ACT_CHUNK - 1) / ACT_CHUNK), pool = ls_pool_threads();
    ls_parallel(act_task, &j, chunks < pool ? chunks : pool);
    return LS_OK;
}

/* out[T, d] = act(x[:, :d]) * x[:, d:] for x [T, 2d]. */
LS_API int ls_act_and_mul(const float *x, float *out, int T, int d, int kind) {
    return ls_act_mul_rows(x, x + d, (size_t)2 * d, out, T, d, kind);
}

/* NeoX-style rotary embedding: out = x with pairs (i, i + rot/2), i < rot/2, of every head
 * rotated by the angle of the token's position; dims past `rot` are copied.
 * x, out [T, heads, hd] (out may alias x); positions [T]; cos_sin [max_pos, rot] = cos | sin. */
LS_API int ls_rotary(const float *x, float *out, const int64_t *positions, int T, int heads,
                     int hd, const float *cos_sin, int rot, int64_t max_pos) {
    const int half = rot / 2;
    if (rot > hd || rot % 2) return LS_EBADSHAPE;
    for (int t = 0; t < T; t++) {
        const int64_t p = positions[t];
        if (p < 0 || p >= max_pos) return LS_ERANGE;
        const float *c = cos_sin + p * rot, *s = c + half;
        for (int h = 0; h < heads; h++) {
            const float *v = x + ((size_t)t * heads + h) * hd;
            float *o = out + ((size_t)t * heads + h) * hd;
            for (int i = 0; i < half; i++) {
                const float x1 = v[i], x2 = v[i + half];
                o[i] = x1 * c[i] - x2 * s[i];
                o[i + half] = x2 * c[i] + x1 * s[i];
            }
            for (int i = rot; i < hd; i++) o[i] = v[i];
        }
    }
    return LS_OK;
}
