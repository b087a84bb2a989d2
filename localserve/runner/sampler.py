"""Turns logits into tokens: penalties, bias, temperature, top-k/p, min-p, seeded sampling.

Shared by every torch backend. Each row of the logits is one draw; a row never looks at
another, so a seeded request samples the same tokens alone or in any batch. Seeded rows
draw from their own generator, keyed by (seed, choice index, output position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from localserve.interfaces import TokenSample
from localserve.sampling_params import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, choice, step) apart


@dataclass(slots=True)
class SampleRequest:
    """One draw: the params and token history of the sequence it extends (a per-token
    message: slotted, not frozen, see interfaces.ScheduledSeq)."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    choice_index: int


# draw(logits [rows, >= vocab], temps [rows] fp32 (0 = greedy), seeds [rows] int64 < 2**31,
# vocab) -> token ids [rows]: a fused sampling kernel (kernels/triton/sampling.py).
DrawKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
_SEED_MOD = 2**31 - 1


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: frozenset[int] = frozenset(),
                 seed: int = 0, to_device: Callable[[np.ndarray, torch.device], torch.Tensor]
                 | None = None, draw_kernel: DrawKernel | None = None):
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._generator: torch.Generator | None = None
        self._seed = seed
        # Host arrays reach the device through this (the GPU runner passes a pinned, non-
        # blocking copy: a plain copy from pageable memory would wait for the whole queue).
        self.to_device = to_device or (lambda a, device: torch.from_numpy(a).to(device))
        # Set by GPU runners: draws rows without top-k/p/min-p in one read of the logits.
        self.draw_kernel = draw_kernel
        self._seeds = np.random.default_rng(seed)

    def __call__(self, logits: torch.Tensor,
                 requests: Sequence[SampleRequest]) -> list[TokenSample]:
        """Args: logits [num_draws, >= vocab]; one request per row. Returns a sample per row."""
        token_ids, raw_logprobs = self.sample(logits, requests)
        return self.pack(token_ids.tolist(), raw_logprobs, requests)

    def sample(self, logits: torch.Tensor, requests: Sequence[SampleRequest]
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draws on the device without waiting for it (unless a row needs a penalty, bias or
        min_tokens). Returns (token ids [num_draws], raw logprobs or None)."""
        logits = logits[:, :self.vocab_size]
        raw_logprobs = None
        if any(r.params.logprobs is not None for r in requests):
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)
        if any(_processes(r.params) for r in requests):
            # A copy: the caller's logits stay as they are.
            logits = self._process(logits.float().clone(), requests)
        if self.draw_kernel is not None and not any(_truncates(r.params) for r in requests):
            return self._draw_fused(logits, requests), raw_logprobs
        logits = logits.float()
        if all(r.params.greedy for r in requests):
            return _argmax(logits), raw_logprobs
        temps = _temperatures(requests)
        drawn = self._sample(logits, requests, self.to_device(temps, logits.device))
        if temps.all():
            return drawn, raw_logprobs
        greedy = self.to_device(temps == 0, logits.device)
        return torch.where(greedy, _argmax(logits), drawn), raw_logprobs

    def _draw_fused(self, logits: torch.Tensor, requests: Sequence[SampleRequest]
                    ) -> torch.Tensor:
        """The draw kernel: seeded rows keyed like their torch generators (batch-invariant),
        the others from this sampler's own stream."""
        assert self.draw_kernel is not None
        n = len(requests)
        # One host-to-device copy: seeds (int64) then the temperatures (fp32) in its tail.
        staged = np.empty(n + (n + 1) // 2, np.int64)
        seeds = staged[:n]
        seeds[:] = self._seeds.integers(0, _SEED_MOD, n, dtype=np.int64)
        for i, r in enumerate(requests):
            if r.params.seed is not None:
                seeds[i] = _seed_key(r) % _SEED_MOD
        staged[n:].view(np.float32)[:n] = _temperatures(requests)
        dev = self.to_device(staged, logits.device)
        return self.draw_kernel(logits, dev[n:].view(torch.float32)[:n], dev[:n],
                                self.vocab_size)

    # -- logit processing ------------------------------------------------------------------
    def _process(self, logits: torch.Tensor, requests: Sequence[SampleRequest]) -> torch.Tensor:
        for i, r in enumerate(requests):
            p = r.params
            if p.logit_bias:
                bias = {t: b for t, b in p.logit_bias.items() if t < self.vocab_size}
                ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
                logits[i, ids] += torch.tensor(list(bias.values()), device=logits.device)
            if len(r.output_token_ids) < p.min_tokens:
                banned = set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_token_ids)
                if banned:
                    logits[i, sorted(banned)] = float("-inf")
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted({*r.prompt_token_ids, *r.output_token_ids}),
                                    dtype=torch.long, device=logits.device)
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty,
                                              vals * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and r.output_token_ids:
                out = torch.tensor(r.output_token_ids, dtype=torch.long, device=logits.device)
                counts = torch.zeros(logits.shape[1], device=logits.device)
                counts.scatter_add_(0, out, torch.ones_like(out, dtype=counts.dtype))
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        return logits

    def _sample(self, logits: torch.Tensor, requests: Sequence[SampleRequest],
                temps: torch.Tensor) -> torch.Tensor:
        """Samples one token per row after temperature, top-k, top-p and min-p (greedy rows,
        temperature 0, draw garbage that the caller discards)."""
        probs = torch.softmax(logits / temps.clamp(min=1e-5)[:, None], dim=-1)
        for i, r in enumerate(requests):
            if _truncates(r.params):
                probs[i] = _truncate(probs[i], r.params)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p (Gumbel-max in disguise).
        noise = torch.empty_like(probs)
        unseeded = [i for i, r in enumerate(requests) if r.params.seed is None]
        if unseeded:  # one draw for all rows: their randomness need not be batch-invariant
            noise.exponential_(generator=self._row_generator(requests[unseeded[0]],
                                                             logits.device))
        for i, r in enumerate(requests):
            if r.params.seed is not None:
                noise[i].exponential_(generator=self._row_generator(r, logits.device))
        return (probs / noise).argmax(dim=-1)

    def _row_generator(self, r: SampleRequest, device: torch.device) -> torch.Generator:
        if r.params.seed is None:
            if self._generator is None or self._generator.device != device:
                self._generator = torch.Generator(device=device).manual_seed(self._seed)
            return self._generator
        return torch.Generator(device=device).manual_seed(_seed_key(r))

    def pack(self, ids: list[int], raw_logprobs: torch.Tensor | None,
             requests: Sequence[SampleRequest]) -> list[TokenSample]:
        """TokenSamples from the drawn ids (on the host) and the raw logprobs."""
        samples = []
        for i, r in enumerate(requests):
            k = r.params.logprobs
            if k is None or raw_logprobs is None:
                samples.append(TokenSample(ids[i]))
                continue
            row = raw_logprobs[i]
            top: tuple[tuple[int, float], ...] = ()
            if k > 0:
                vals, idx = row.topk(k)
                top = tuple(zip(idx.tolist(), vals.tolist(), strict=True))
            samples.append(TokenSample(ids[i], float(row[ids[i]]), top))
        return samples


def _seed_key(r: SampleRequest) -> int:
    """A seeded row's stream: (seed, choice, output position), never the batch."""
    assert r.params.seed is not None
    return (r.params.seed * _SEED_MIX + r.choice_index * 1_000_003
            + len(r.output_token_ids)) % (2**63)


def _temperatures(requests: Sequence[SampleRequest]) -> np.ndarray:
    """Per-row temperature, 0 for greedy rows."""
    return np.array([0.0 if r.params.greedy else r.params.temperature for r in requests],
                    np.float32)


def _truncates(p: SamplingParams) -> bool:
    return not p.greedy and (p.top_k > 0 or p.top_p < 1 or p.min_p > 0)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (first maximum, like torch's). On the CPU numpy's SIMD argmax is ~20x
    faster than torch's over a 262k vocabulary: most of a greedy decode step's sampling."""
    if logits.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(logits.numpy()).argmax(axis=-1))
    return logits.argmax(dim=-1)


def _processes(p: SamplingParams) -> bool:
    return bool(p.logit_bias or p.min_tokens) or p.penalized


def _truncate(probs: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Zeroes the tail that top-k, top-p and min-p cut off (one row, renormalised)."""
    if p.min_p > 0:
        probs = torch.where(probs < p.min_p * probs.max(), 0.0, probs)
    if p.top_k > 0 or p.top_p < 1:
        k = min(p.top_k, probs.numel()) if p.top_k > 0 else probs.numel()
        vals, idx = probs.topk(k) if k < probs.numel() else probs.sort(descending=True)
        if p.top_p < 1:
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            before = vals.cumsum(0) - vals
            vals = torch.where(before < p.top_p * vals.sum(), vals, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, idx, vals)
    return probs / probs.sum()
