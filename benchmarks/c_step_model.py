"""A cost model of workload (c)'s steps, to ask which scheduling choices could pay before
spending device time on them. It is a model, not a measurement: per-step costs are fitted to
session 9-19's `gpu_bench.py --only c --phases` tables and profiles on an H100 (decode GEMMs
bound by the weights' 16 GB at ~3.0 TB/s or by ~660 TFLOP/s at the power cap, attention by the
KV bytes at ~2.8 TB/s), and it predicts ~82 req/s where those boards measured 77.5-80.4.

Run: python3 benchmarks/c_step_model.py (CPU). It prints the modelled
(c) time for admission caps (max_num_seqs) and longest-output-first admission, and the share
of decode rows that CUDA-graph buckets pad at 8, 16 and 32 buckets per doubling.
"""

from __future__ import annotations

from gpu_bench import sharegpt_like  # this folder's module

from localserve.backends.cuda.graphs import bucket_sizes

WEIGHT_MS = 5.3            # 16 GB of Llama-3-8B weights at ~3.0 TB/s
GEMM_MS_PER_TOKEN = 0.0212  # 14 GFLOP a token at ~660 TFLOP/s (power-capped)
LM_HEAD_MS = (0.35, 0.0016)  # weight-bound floor, compute per row
KV_MS_PER_KEY = 131e3 / 2.8e9  # 128 KiB of K and V a token (32 layers) at ~2.8 TB/s
SMALL_MS = (0.3, 0.0018)   # launches of the small kernels, their per-token traffic
STEP_TOKENS = 16384        # the engine's step budget on an 80 GB GPU


def workload(n: int = 500) -> tuple[list[int], list[int]]:
    """(c)'s prompt and output lengths (gpu_bench.py's draw)."""
    prompts, outputs = sharegpt_like(n)
    return [len(p) for p in prompts], outputs


def step_ms(rows: int, prefill_tokens: int, keys: int, logits_rows: int) -> float:
    tokens = rows + prefill_tokens
    return (max(WEIGHT_MS, tokens * GEMM_MS_PER_TOKEN)
            + max(LM_HEAD_MS[0], logits_rows * LM_HEAD_MS[1])
            + keys * KV_MS_PER_KEY + SMALL_MS[0] + tokens * SMALL_MS[1])


def simulate(max_num_seqs: int, order: list[int] | None = None) -> tuple[float, int]:
    """Seconds and steps for (c) under FCFS chunked prefill with at most max_num_seqs running."""
    prompts, outputs = workload()
    waiting = [[i, 0] for i in (order or range(len(prompts)))]  # [request, prefilled tokens]
    running: list[list[int]] = []  # [request, context, generated]
    total_ms, steps = 0.0, 0
    while waiting or running:
        budget = STEP_TOKENS - len(running)
        prefill, joined = 0, []
        while waiting and budget > 0 and len(running) + len(joined) < max_num_seqs:
            request = waiting[0]
            take = min(budget, prompts[request[0]] - request[1])
            request[1] += take
            budget -= take
            prefill += take
            if request[1] < prompts[request[0]]:
                break
            waiting.pop(0)
            joined.append([request[0], prompts[request[0]], 1])
        total_ms += step_ms(len(running), prefill, sum(r[1] for r in running),
                            len(running) + len(joined))
        steps += 1
        for r in running:
            r[1] += 1
            r[2] += 1
        running = [r for r in running if r[2] < outputs[r[0]]] + joined
    return total_ms / 1000, steps


def padded_share(per_doubling: int) -> float:
    """Padded rows / real rows over (c)'s compute-bound decode steps (250+ rows)."""
    prompts, outputs = workload()
    rows_at: dict[int, int] = {}
    admitted, tokens = [], 0
    for p in prompts:
        tokens += p
        admitted.append(tokens // STEP_TOKENS)
    for first, out in zip(admitted, outputs, strict=True):
        for step in range(first + 1, first + out):
            rows_at[step] = rows_at.get(step, 0) + 1
    sizes = bucket_sizes(1024, per_doubling)
    padded = real = 0
    for rows in rows_at.values():
        bucket = min(b for b in sizes if b >= rows)
        real += rows
        padded += (bucket - rows) if bucket >= 250 else 0
    return padded / real


def main() -> None:
    n = len(workload()[0])
    for cap in (1024, 448, 384, 256):
        seconds, steps = simulate(cap)
        print(f"max_num_seqs {cap:>4}: {seconds:.2f} s, {n / seconds:.1f} req/s, {steps} steps")
    outputs = workload()[1]
    seconds, steps = simulate(1024, sorted(range(n), key=lambda i: -outputs[i]))
    print(f"longest output first: {seconds:.2f} s, {n / seconds:.1f} req/s, {steps} steps")
    for per in (8, 16, 32):
        print(f"{per} buckets per doubling: {padded_share(per):.1%} of compute-bound decode rows "
              "are padding")


if __name__ == "__main__":
    main()
