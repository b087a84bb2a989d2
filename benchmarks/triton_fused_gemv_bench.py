"""The fused-gemv section of benchmarks/triton_kernels.py (`--only fused_gemv`): batch-1 decode
linears that compute their own input (kernels/triton/vector_gemv.py) against the launches they
replace, in a PDL chain replayed as a CUDA graph over weight copies larger than L2.

Rows, per Llama-3-8B / Qwen3-0.6B shape at M = 1:
- the plain vector gemv at each tile config, beside the batched (tl.dot) gemv and cuBLAS;
- norm-fed projections: RMSNorm(+ residual) then the gemv (q/k/v today) or cuBLAS (gate/up
  today), against norm_gemv;
- the down projection: act_and_mul then the gemv, against act_gemv;
- one decoder layer's linears in order (attention left out), today's launches against the
  fused ones: the row that says whether the engine should switch.
Imported only once triton_kernels.py has chosen the interpreter or the GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from triton_bench_core import Bench, Row  # this folder's module

from localserve.kernels.triton._common import pdl_override
from localserve.kernels.triton.gemv import gemv
from localserve.kernels.triton.vector_gemv import (
    VectorGemvConfig,
    act_gemv,
    norm_gemv,
    vector_gemv,
)

CONFIGS = [VectorGemvConfig(*c) for c in (
    (32, 256, 4, 4), (16, 1024, 8, 1), (8, 512, 4, 4), (16, 512, 4, 3), (8, 1024, 4, 1),
    (16, 1024, 4, 1), (8, 1024, 8, 2), (32, 1024, 8, 1), (16, 2048, 8, 1), (8, 256, 4, 4),
    (4, 1024, 4, 1), (16, 512, 8, 2), (8, 2048, 8, 1))]
SMOKE_CONFIGS = [VectorGemvConfig(16, 64, 4, 2), VectorGemvConfig(32, 128, 4, 1)]


def _note(cfg: VectorGemvConfig) -> str:
    return f"BN={cfg.block_n} BK={cfg.block_k} w={cfg.num_warps} s={cfg.num_stages}"


class FusedGemvSection:
    def __init__(self, b: Bench, replay_ms: Callable[[list[Callable[[], object]]], float]
                 ) -> None:
        self.b, self.replay_ms = b, replay_ms
        self.pdl = not b.smoke and torch.cuda.get_device_capability()[0] >= 9

    def copies(self, n: int, k: int) -> list[torch.Tensor]:
        """Copies of an [n, k] weight larger than L2 together (two under the interpreter)."""
        count = 2 if self.b.smoke else max(2, -(-160 * 2**20 // (n * k * self.b.elem)))
        return [torch.randn(n, k, device=self.b.dev, dtype=self.b.dtype) / k ** 0.5
                for _ in range(count)]

    def time(self, calls: list[Callable[[], object]]) -> float:
        with pdl_override(self.pdl):
            return self.replay_ms(calls)

    def fused_gemv(self) -> None:
        print("fused_gemv", flush=True)
        b = self.b
        shapes = ([("tiny", 96, 512, "norm"), ("tiny down", 40, 300, "act")] if b.smoke else
                  [("llama3-8b qkv", 6144, 4096, "norm"), ("llama3-8b o_proj", 4096, 4096, ""),
                   ("llama3-8b gate_up", 28672, 4096, "norm"),
                   ("llama3-8b down", 4096, 14336, "act"),
                   ("llama3-8b lm_head", 128256, 4096, "norm"),
                   ("qwen3-0.6b gate_up", 6144, 1024, "norm")])
        configs = SMOKE_CONFIGS if b.smoke else CONFIGS
        self.best: dict[tuple[int, int], VectorGemvConfig] = {}
        for label, n, k, fused in shapes:
            self.shape_rows(label, n, k, fused, configs)
        for (n, k), cfg in self.best.items():
            print(f"fastest vector_gemv config for {n}x{k}: {cfg}", flush=True)
        if not b.smoke:
            self.layer_rows()

    def shape_rows(self, label: str, n: int, k: int, fused: str,
                   configs: list[VectorGemvConfig]) -> None:
        b = self.b
        ws = self.copies(n, k)
        x = torch.randn(1, k, device=b.dev, dtype=b.dtype)
        shape = f"{label} M=1 {n}x{k}"
        nbytes = (n * k + n + k) * b.elem
        b.add(Row("cuBLAS F.linear", shape, bytes_moved=nbytes, ms=self.time(
            [lambda w=w: torch.nn.functional.linear(x, w) for w in ws])))
        b.add(Row("gemv (tl.dot)", shape, bytes_moved=nbytes, ms=self.time(
            [lambda w=w: gemv(x, w) for w in ws])))
        times = {}
        for cfg in configs:
            row = Row("vector_gemv", shape, bytes_moved=nbytes,
                      note=_note(cfg))
            b.check(row, vector_gemv(x, ws[0], config=cfg), b.ref.linear(x, ws[0]),
                    b.elementwise_tol())
            row.ms = self.time([lambda w=w, c=cfg: vector_gemv(x, w, config=c) for w in ws])
            times[cfg] = row.ms
            b.add(row)
        self.best[(n, k)] = cfg = min(times, key=times.get)
        if fused == "norm":
            self.norm_rows(shape, nbytes, ws, x, cfg)
        elif fused == "act":
            self.act_rows(shape, nbytes, ws, cfg)

    def norm_rows(self, shape: str, nbytes: int, ws: list[torch.Tensor],
                  x: torch.Tensor, cfg: VectorGemvConfig) -> None:
        """Norm-fed shapes: norm_gemv at the shape's fastest config (and as a gated
        projection) against the norm kernel then the gemv, cuBLAS or the vector gemv."""
        b, k = self.b, x.shape[1]
        r = torch.randn_like(x)
        g = torch.randn(k, device=b.dev, dtype=b.dtype)
        for gated in (None, "silu"):
            row = Row("norm_gemv (fused)" + (" gated" if gated else "") + ", PDL", shape,
                      bytes_moved=nbytes, note=_note(cfg))
            out, new_res = norm_gemv(x, r, g, 1e-6, 0.0, ws[0], gated=gated, config=cfg)
            ref, ref_res = b.ref.norm_linear(x, r, g, 1e-6, 0.0, ws[0], gated=gated)
            b.check(row, out, ref, b.elementwise_tol())
            row.ok = row.ok and bool(torch.equal(new_res, ref_res))
            row.ms = self.time([lambda w=w, a=gated: norm_gemv(x, r, g, 1e-6, 0.0, w, gated=a,
                                                              config=cfg) for w in ws])
            b.add(row)
        vector = functools.partial(vector_gemv, config=cfg)
        for name, linear in (("gemv", gemv), ("cuBLAS", torch.nn.functional.linear),
                             ("vector_gemv", vector)):
            b.add(Row(f"rms_norm + {name}, PDL", shape, bytes_moved=nbytes, ms=self.time(
                [lambda w=w, f=linear: f(b.k.rms_norm(x, g, 1e-6, r)[0], w) for w in ws])))
        b.add(Row("rms_norm + cuBLAS + act_and_mul, PDL", shape, bytes_moved=nbytes,
                  ms=self.time([lambda w=w: b.k.act_and_mul(torch.nn.functional.linear(
                      b.k.rms_norm(x, g, 1e-6, r)[0], w), "silu") for w in ws])))

    def act_rows(self, shape: str, nbytes: int, ws: list[torch.Tensor],
                 cfg: VectorGemvConfig) -> None:
        b, k = self.b, ws[0].shape[1]
        gu = torch.randn(1, 2 * k, device=b.dev, dtype=b.dtype)
        row = Row("act_gemv (fused), PDL", shape, bytes_moved=nbytes, note=_note(cfg))
        b.check(row, act_gemv(gu, "silu", ws[0], config=cfg),
                b.ref.act_linear(gu, "silu", ws[0]), b.elementwise_tol())
        row.ms = self.time([lambda w=w: act_gemv(gu, "silu", w, config=cfg) for w in ws])
        b.add(row)
        vector = functools.partial(vector_gemv, config=cfg)
        for name, linear in (("gemv", gemv), ("vector_gemv", vector)):
            b.add(Row(f"act_and_mul + {name}, PDL", shape, bytes_moved=nbytes, ms=self.time(
                [lambda w=w, f=linear: f(b.k.act_and_mul(gu, "silu"), w) for w in ws])))

    def layer_rows(self) -> None:
        """One Llama-3-8B decoder layer's linears and their norms/activation, two layers'
        weights alternating (872 MB, past L2): today's launches against the vector gemv
        (each shape at its fastest config) with separate norm/activation kernels, with the
        norm and activation folded in (act_gemv), and with the activation as the gate/up's
        epilogue (gated norm_gemv)."""
        b, dev, dt = self.b, self.b.dev, self.b.dtype
        shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
                  "down": (4096, 14336)}
        layers = [{name: torch.randn(n, k, device=dev, dtype=dt) / k ** 0.5
                   for name, (n, k) in shapes.items()} for _ in range(2)]
        cfg = {name: self.best[shape] for name, shape in shapes.items()}
        x = torch.randn(1, 4096, device=dev, dtype=dt)
        res = torch.randn_like(x)
        g = torch.randn(4096, device=dev, dtype=dt)
        f, k = torch.nn.functional, b.k

        def today(w: dict) -> object:
            h, r = k.rms_norm(x, g, 1e-5, res)
            qkv = gemv(h, w["qkv"])
            o = gemv(qkv[:, :4096], w["o"])
            h, r = k.rms_norm(o, g, 1e-5, r)
            return gemv(k.act_and_mul(f.linear(h, w["gate_up"]), "silu"), w["down"])

        def vector(w: dict) -> object:
            h, r = k.rms_norm(x, g, 1e-5, res)
            qkv = vector_gemv(h, w["qkv"], config=cfg["qkv"])
            o = vector_gemv(qkv[:, :4096], w["o"], config=cfg["o"])
            h, r = k.rms_norm(o, g, 1e-5, r)
            gu = vector_gemv(h, w["gate_up"], config=cfg["gate_up"])
            return vector_gemv(k.act_and_mul(gu, "silu"), w["down"], config=cfg["down"])

        def fused_act(w: dict) -> object:
            qkv, r = norm_gemv(x, res, g, 1e-5, 0.0, w["qkv"], config=cfg["qkv"])
            o = vector_gemv(qkv[:, :4096], w["o"], config=cfg["o"])
            gu, r = norm_gemv(o, r, g, 1e-5, 0.0, w["gate_up"], config=cfg["gate_up"])
            return act_gemv(gu, "silu", w["down"], config=cfg["down"])

        def fused_gated(w: dict) -> object:
            qkv, r = norm_gemv(x, res, g, 1e-5, 0.0, w["qkv"], config=cfg["qkv"])
            o = vector_gemv(qkv[:, :4096], w["o"], config=cfg["o"])
            a, r = norm_gemv(o, r, g, 1e-5, 0.0, w["gate_up"], gated="silu",
                             config=cfg["gate_up"])
            return vector_gemv(a, w["down"], config=cfg["down"])

        nbytes = sum(w.numel() for w in layers[0].values()) * b.elem
        for name, fn in (("layer today", today), ("layer vector_gemv", vector),
                         ("layer norm_gemv + act_gemv", fused_act),
                         ("layer norm_gemv gated", fused_gated)):
            b.add(Row(name + ", PDL", "llama3-8b layer M=1", bytes_moved=nbytes,
                      ms=self.time([lambda w=w, fn=fn: fn(w) for w in layers])))
