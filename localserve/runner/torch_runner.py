"""The ModelRunner shared by the torch backends (reference, cpu, cuda).

It turns a SchedulerOutput into packed tensors (token ids, positions, KV slots, block
tables), runs the model inside a forward context that carries the backend's attention ops,
and samples. Backends differ only in the ops they pass in and in memory sizing.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from torch import nn

from localserve.config import EngineConfig
from localserve.interfaces import (
    PLACEHOLDER,
    FinishedStep,
    ModelSpec,
    PendingStep,
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
from localserve.runner.sampler import DrawKernel, Sampler, SampleRequest
from localserve.runner.staging import PinnedStager

log = logging.getLogger(__name__)


@dataclass
class _PreparedStep:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor | None  # rows of the hidden states to sample; None = all
    requests: list[SampleRequest]
    owners: list[int]  # the seq_id of each draw
    first_draw: dict[int, int]  # seq_id -> its first draw's row


class _Launched:
    """A step in flight: its draws are copied to pinned host memory behind the step."""

    def __init__(self, token_ids: torch.Tensor, raw_logprobs: torch.Tensor | None,
                 requests: list[SampleRequest], owners: list[int], sampler: Sampler):
        self.raw_logprobs, self.requests, self.owners = raw_logprobs, requests, owners
        self.sampler = sampler
        self.event: torch.cuda.Event | None = None
        if token_ids.is_cuda:
            self.host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            self.host.copy_(token_ids, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = token_ids

    def result(self) -> StepOutput:
        if self.event is not None:
            self.event.synchronize()
        samples: dict[int, list[TokenSample]] = {}
        drawn = self.sampler.pack(self.host.tolist(), self.raw_logprobs, self.requests)
        for seq_id, sample in zip(self.owners, drawn, strict=True):
            samples.setdefault(seq_id, []).append(sample)
        return StepOutput(samples)


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes a forward pass must read: parameters and raw quantized blocks (not RoPE tables)."""
    weights = [*model.parameters(),
               *(b for n, b in model.named_buffers() if n.endswith("qweight"))]
    return sum(t.numel() * t.element_size() for t in weights)


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
        self._stager = PinnedStager(device)
        self.draw_kernel: DrawKernel | None = None  # a fused sampling kernel (GPU runners)
        # The device tensor of the last step's draws and each sequence's first row in it.
        self._last_sampled: tuple[torch.Tensor, dict[int, int]] | None = None

    # -- set-up ----------------------------------------------------------------------------
    def model_dtype(self) -> torch.dtype | None:
        """The dtype a backend imposes; None: `config.model.dtype` as resolved for this device
        and model by the loader (`loader.resolve_dtype`)."""
        return None

    def load_model(self) -> None:
        from localserve.loader import load_model

        loaded = load_model(self.config.model, self.device, self.model_dtype(),
                            keep_quantized=self.keep_quantized)
        self.model = loaded.model
        self.arch = loaded.arch
        self.spec = loaded.spec
        self.kv_dtype = loaded.dtype
        self.weight_bytes = model_weight_bytes(self.model)

    def set_eos_token_ids(self, eos_token_ids: frozenset[int]) -> None:
        spec = self._spec()
        self.sampler = Sampler(spec.vocab_size, eos_token_ids, seed=self.config.model.seed,
                               to_device=lambda a, _device: self._to_device(a),
                               draw_kernel=self.draw_kernel)

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
        self.kv_caches = [(self._empty_cache(shape), self._empty_cache(shape))
                          for _ in range(spec.num_layers)]
        self.num_blocks = num_blocks

    def _empty_cache(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        """One layer's K or V pages, [num_blocks, block_size, num_kv_heads, head_dim].
        torch.empty: pages are committed only as blocks get written."""
        return torch.empty(shape, dtype=self.kv_dtype, device=self.device)

    def _spec(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError("load_model() must run first")
        return self.spec

    # -- one step --------------------------------------------------------------------------
    def execute(self, scheduled: SchedulerOutput) -> StepOutput:
        return self.launch(scheduled).result()

    @torch.inference_mode()
    def launch(self, scheduled: SchedulerOutput) -> PendingStep:
        """Queues the step on the device; on a GPU nothing here waits for earlier steps."""
        if not scheduled.seqs:
            return FinishedStep(StepOutput())
        for src, dst in scheduled.blocks_to_copy:
            for k_cache, v_cache in self.kv_caches:
                k_cache[dst].copy_(k_cache[src])
                v_cache[dst].copy_(v_cache[src])
        step = self._prepare(scheduled)
        hidden = self._forward(scheduled, step.input_ids, step.positions, step.meta)
        if not step.requests:
            self._last_sampled = None
            return FinishedStep(StepOutput())
        if step.sample_rows is not None:
            hidden = hidden.index_select(0, step.sample_rows)
        logits = self.model.compute_logits(hidden)  # [num_draws, vocab]
        if self.sampler is None:
            self.set_eos_token_ids(frozenset())
        assert self.sampler is not None
        token_ids, raw_logprobs = self.sampler.sample(logits, step.requests)
        # The next step reads these on the device where the engine holds placeholders.
        self._last_sampled = (token_ids, step.first_draw)
        return _Launched(token_ids, raw_logprobs, step.requests, step.owners, self.sampler)

    def _forward(self, scheduled: SchedulerOutput, input_ids: torch.Tensor,
                 positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        with forward_context(ForwardContext(meta, self.kv_caches, self.ops)):
            return self.model(input_ids, positions)

    def _prepare(self, scheduled: SchedulerOutput) -> _PreparedStep:
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
        ids = np.fromiter(itertools.chain.from_iterable(s.token_ids for s in seqs), np.int64,
                          num_tokens)
        # Draws: one per choice index, each from its sequence's last token.
        rows, requests, owners, first_draw = [], [], [], {}
        for item, last in zip(seqs, (qsl[1:] - 1).tolist(), strict=True):
            for choice in item.choice_indices:
                first_draw.setdefault(item.seq_id, len(rows))
                rows.append(last)
                owners.append(item.seq_id)
                requests.append(SampleRequest(item.params, item.prompt_token_ids,
                                              item.output_token_ids, choice))
        holes = np.flatnonzero(ids == PLACEHOLDER)
        hole_rows = self._placeholder_rows(holes, seqs, qsl)
        gather = rows != list(range(num_tokens))  # decode-only steps sample every row
        # One int64 buffer: ids | positions | slots | query_start_loc | seq_lens | tables |
        # placeholder positions | their rows in the previous draw | rows to sample.
        sizes = [num_tokens] * 3 + [n + 1, n, n * max_blocks, len(holes), len(holes),
                                    len(rows) if gather else 0]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        buf = np.empty(int(offsets[-1]), np.int64)
        part = [buf[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
        part[0][:] = ids
        seq_of_token = np.repeat(np.arange(n), q_lens)
        pos = np.arange(num_tokens) - qsl[:-1][seq_of_token] + starts[seq_of_token]
        part[1][:] = pos
        part[2][:] = tables[seq_of_token, pos // bs] * bs + pos % bs
        part[3][:] = qsl
        part[4][:] = starts + q_lens
        part[5][:] = tables.reshape(-1)
        part[6][:] = holes
        part[7][:] = hole_rows
        if gather:
            part[8][:] = rows
        dev_buf = self._to_device(buf)
        dev = [dev_buf[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
        if len(holes):
            assert self._last_sampled is not None
            dev[0][dev[6]] = self._last_sampled[0][dev[7]]
        meta = AttentionMetadata(
            slot_mapping=dev[2], block_tables=dev[5].view(n, max_blocks).to(torch.int32),
            query_start_loc=dev[3].to(torch.int32), seq_lens=dev[4].to(torch.int32),
            max_query_len=int(q_lens.max()), max_seq_len=int((starts + q_lens).max()))
        return _PreparedStep(dev[0], dev[1], meta, dev[8] if gather else None, requests,
                             owners, first_draw)

    def _placeholder_rows(self, holes: np.ndarray, seqs, qsl: np.ndarray) -> list[int]:
        """For each placeholder: the row of the previous step's draw that holds its token."""
        if not len(holes):
            return []
        owner = np.searchsorted(qsl, holes, side="right") - 1
        drawn = self._last_sampled[1] if self._last_sampled is not None else {}
        rows = [drawn.get(seqs[i].seq_id, -1) for i in owner.tolist()]
        if -1 in rows or (holes != qsl[owner + 1] - 1).any():
            raise RuntimeError("a placeholder is not the last token of a sequence that the "
                               "step before sampled")
        return rows

    def _to_device(self, host: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(host)
        return self._stager.copy(host)

    def shutdown(self) -> None:
        """Drops the KV pool and the weights (the runner cannot step afterwards)."""
        self.kv_caches = []
        self._last_sampled = None
        self.sampler = None
        self.model = None
