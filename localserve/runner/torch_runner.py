"""The ModelRunner shared by the torch backends (reference, cpu, cuda).

It turns a SchedulerOutput into packed tensors (token ids, positions, KV slots, block
tables), runs the model inside a forward context that carries the backend's attention ops,
and samples. Backends differ only in the ops they pass in and in memory sizing.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import psutil
import torch

from localserve.config import EngineConfig
from localserve.interfaces import (
    ModelSpec,
    RunnerCapabilities,
    SchedulerOutput,
    StepOutput,
    TokenSample,
)
from localserve.runner.context import (
    AttentionMetadata,
    AttentionOps,
    ForwardContext,
    forward_context,
)
from localserve.runner.sampler import Sampler, SampleRequest

log = logging.getLogger(__name__)

class TorchModelRunner:
    """Runs the shared torch models on one device with pluggable attention ops."""

    capabilities = RunnerCapabilities(mixed_batches=True)

    def __init__(self, config: EngineConfig, device: torch.device, ops: AttentionOps,
                 keep_quantized: bool = False):
        self.config = config
        self.device = device
        self.ops = ops
        self.keep_quantized = keep_quantized
        self.block_size = config.cache.block_size
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.sampler: Sampler | None = None
        self.spec: ModelSpec | None = None
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    # -- set-up ----------------------------------------------------------------------------
    def model_dtype(self) -> torch.dtype:
        from localserve.loader import resolve_dtype

        return resolve_dtype(self.config.model.dtype, self.device)

    def load_model(self) -> None:
        from localserve.loader import load_model

        loaded = load_model(self.config.model, self.device, self.model_dtype(),
                            keep_quantized=self.keep_quantized)
        self.model = loaded.model
        self.arch = loaded.arch
        self.spec = loaded.spec
        self.kv_dtype = self.model_dtype()
        # Bytes a forward pass must read: parameters and raw quantized blocks (not RoPE tables).
        weights = [*self.model.parameters(),
                   *(b for n, b in self.model.named_buffers() if n.endswith("qweight"))]
        self.weight_bytes = sum(t.numel() * t.element_size() for t in weights)

    def set_eos_token_ids(self, eos_token_ids: frozenset[int]) -> None:
        spec = self._spec()
        self.sampler = Sampler(spec.vocab_size, eos_token_ids, seed=self.config.model.seed)

    def bytes_per_block(self) -> int:
        spec = self._spec()
        elem = torch.empty((), dtype=self.kv_dtype).element_size()
        return 2 * spec.num_layers * self.block_size * spec.num_kv_heads * spec.head_dim * elem

    def profile_num_blocks(self) -> int:
        """CPU: a fraction of the RAM that is free now (KV pages are touched only when used)."""
        free = psutil.virtual_memory().available
        return max(1, int(free * self.config.cache.cpu_kv_fraction) // self.bytes_per_block())

    def init_kv_cache(self, num_blocks: int) -> None:
        spec = self._spec()
        shape = (num_blocks, self.block_size, spec.num_kv_heads, spec.head_dim)
        # torch.empty: pages are committed only as blocks get written.
        self.kv_caches = [
            (torch.empty(shape, dtype=self.kv_dtype, device=self.device),
             torch.empty(shape, dtype=self.kv_dtype, device=self.device))
            for _ in range(spec.num_layers)]
        self.num_blocks = num_blocks

    def _spec(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError("load_model() must run first")
        return self.spec

    # -- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, scheduled: SchedulerOutput) -> StepOutput:
        if not scheduled.seqs:
            return StepOutput()
        for src, dst in scheduled.blocks_to_copy:
            for k_cache, v_cache in self.kv_caches:
                k_cache[dst].copy_(k_cache[src])
                v_cache[dst].copy_(v_cache[src])
        input_ids, positions, meta, last_rows = self._prepare(scheduled)
        hidden = self._forward(scheduled, input_ids, positions, meta)  # [num_tokens, hidden]
        rows, requests, owners = [], [], []
        for item, last in zip(scheduled.seqs, last_rows, strict=True):
            for choice in item.choice_indices:
                rows.append(last)
                owners.append(item.seq_id)
                requests.append(SampleRequest(item.params, item.prompt_token_ids,
                                              item.output_token_ids, choice))
        if not rows:
            return StepOutput()
        logits = self.model.compute_logits(hidden[rows])  # [num_draws, vocab]
        if self.sampler is None:
            self.set_eos_token_ids(frozenset())
        assert self.sampler is not None
        samples: dict[int, list[TokenSample]] = {}
        for seq_id, sample in zip(owners, self.sampler(logits, requests), strict=True):
            samples.setdefault(seq_id, []).append(sample)
        return StepOutput(samples)

    def _forward(self, scheduled: SchedulerOutput, input_ids: torch.Tensor,
                 positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        with forward_context(ForwardContext(meta, self.kv_caches, self.ops)):
            return self.model(input_ids, positions)

    def _prepare(self, scheduled: SchedulerOutput
                 ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Packs a step into tensors with numpy, then one host-to-device copy."""
        seqs = scheduled.seqs
        n, bs = len(seqs), self.block_size
        q_lens = np.fromiter((s.num_tokens for s in seqs), np.int64, n)
        starts = np.fromiter((s.start_pos for s in seqs), np.int64, n)
        max_blocks = max(len(s.block_table) for s in seqs)
        qsl = np.zeros(n + 1, np.int64)
        np.cumsum(q_lens, out=qsl[1:])
        num_tokens = int(qsl[-1])
        tables = np.zeros((n, max_blocks), np.int64)
        for i, s in enumerate(seqs):
            tables[i, :len(s.block_table)] = s.block_table
        # One int64 buffer: ids | positions | slots | query_start_loc | seq_lens | tables.
        buf = np.empty(3 * num_tokens + 2 * n + 1 + n * max_blocks, np.int64)
        ids, pos, slots = (buf[i * num_tokens:(i + 1) * num_tokens] for i in range(3))
        ids[:] = np.fromiter(itertools.chain.from_iterable(s.token_ids for s in seqs),
                             np.int64, num_tokens)
        seq_of_token = np.repeat(np.arange(n), q_lens)
        pos[:] = np.arange(num_tokens) - qsl[:-1][seq_of_token] + starts[seq_of_token]
        slots[:] = tables[seq_of_token, pos // bs] * bs + pos % bs
        rest = buf[3 * num_tokens:]
        rest[:n + 1] = qsl
        rest[n + 1:2 * n + 1] = starts + q_lens
        rest[2 * n + 1:] = tables.reshape(-1)
        dev = self._to_device(torch.from_numpy(buf))
        t = num_tokens
        meta = AttentionMetadata(
            slot_mapping=dev[2 * t:3 * t],
            block_tables=dev[3 * t + 2 * n + 1:].view(n, max_blocks).to(torch.int32),
            query_start_loc=dev[3 * t:3 * t + n + 1].to(torch.int32),
            seq_lens=dev[3 * t + n + 1:3 * t + 2 * n + 1].to(torch.int32),
            max_query_len=int(q_lens.max()), max_seq_len=int((starts + q_lens).max()))
        last_rows = (qsl[1:] - 1).tolist()
        return dev[:t], dev[t:2 * t], meta, last_rows

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """Copies through a reused pinned buffer (pinning fresh memory each step is slow);
        an event makes the next step wait until this copy has read the buffer."""
        if self.device.type != "cuda":
            return host
        n = host.numel()
        if self._copied is not None:
            self._copied.synchronize()
        if self._pinned is None or self._pinned.numel() < n:
            size = max(n, 2 * (self._pinned.numel() if self._pinned is not None else 0))
            self._pinned = torch.empty(size, dtype=host.dtype, pin_memory=True)
        staged = self._pinned[:n]
        staged.copy_(host)
        dev = staged.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return dev

    def shutdown(self) -> None:
        self.kv_caches = []
