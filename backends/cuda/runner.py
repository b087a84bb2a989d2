"""The GPU runner: the shared torch models with Triton kernels, CUDA graphs and memory sizing."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

import torch

from localserve.backends.cuda.compile_ahead import compile_ahead, hash_triton_ahead
from localserve.backends.cuda.gguf import (
    cuda_fused_linear,
    gguf_blocks_setting,
    gguf_layer_ops,
    install_gguf_methods,
    keeps_gguf_blocks,
    reserve_gguf_scratch,
)
from localserve.backends.cuda.graphs import DecodeGraphs, PrefillGraphs
from localserve.backends.cuda.linear import (
    MAX_GEMV_ROWS,
    install_decode_gemv,
    install_gated_gemm,
)
from localserve.backends.cuda.ops import triton_attention_ops, triton_layer_ops
from localserve.config import EngineConfig
from localserve.interfaces import RunnerCapabilities, SchedulerOutput
from localserve.layers.fusion import fuse_projections
from localserve.layers.ops import install_layer_ops
from localserve.loader.source import CheckpointSource
from localserve.runner.context import AttentionMetadata, ForwardContext, forward_context
from localserve.runner.sampler import Sampler, SampleRequest
from localserve.runner.torch_runner import TorchModelRunner, model_weight_bytes
from localserve.sampling_params import SamplingParams

log = logging.getLogger(__name__)
GiB = 2**30
# Short prefill steps replay graphs too (graphs.PrefillGraphs, whose docstring gives what they
# gain and cost); LOCALSERVE_PREFILL_GRAPHS=0 turns them off.
PREFILL_GRAPHS = os.environ.get("LOCALSERVE_PREFILL_GRAPHS", "1") != "0"


class GpuMemoryError(ValueError):
    """The model or one max-length sequence does not fit: the message says what to change."""


def weights_do_not_fit(free: int, total: int, dtype: torch.dtype, gguf: bool,
                       blocks: bool = False) -> GpuMemoryError:
    """The refusal when loading the weights ran out of GPU memory. It names fixes that work
    here: with `blocks` (`gguf.keeps_gguf_blocks`) GGUF blocks of the types the Triton kernels
    read stay as they are, so a smaller quantization is smaller on the GPU too; otherwise GGUF
    and float checkpoints are held in `dtype`, and keeping the blocks (LOCALSERVE_GGUF_BLOCKS=1,
    or by default for a file whose floats would not fit) is the fix. The CPU backend runs GGUF
    blocks from RAM."""
    held = str(dtype).removeprefix("torch.")
    if gguf and blocks:
        from localserve.kernels.triton.gguf import SUPPORTED_TYPES
        from localserve.quant.gguf import type_name

        kept = "/".join(type_name(t) for t in sorted(SUPPORTED_TYPES))
        why = f"this backend keeps GGUF {kept} blocks as they are and holds other types in {held}"
        fix = "a smaller model or quantization (e.g. Q4_K_M)"
    elif gguf:
        why = f"this backend dequantized the GGUF weights to {held}"
        fix = "LOCALSERVE_GGUF_BLOCKS=1 (the blocks stay as they are: about a third of that), " \
              "a smaller model"
    else:
        why = f"this backend holds the weights in {held}"
        fix = "a smaller model, a GGUF quantization of this one (e.g. Q4_K_M: its blocks stay " \
              "as they are when its floats would not fit)"
    return GpuMemoryError(
        f"the weights do not fit: {free / GiB:.1f} GiB of {total / GiB:.1f} GiB were free on the "
        f"GPU, and {why}. Use {fix}, or --backend cpu (it runs GGUF blocks from RAM).")


def step_does_not_fit(num_tokens: int, weights: int, total: int) -> GpuMemoryError:
    """The refusal when the sizing warm-up (one step of `num_tokens`) ran out of memory."""
    return GpuMemoryError(
        f"one step of {num_tokens} tokens does not fit beside the weights ({weights / GiB:.2f}"
        f" GiB on a {total / GiB:.1f} GiB GPU): lower --max-num-batched-tokens, or use a "
        "smaller model")


def kv_cache_does_not_fit(num_blocks: int, num_bytes: int) -> GpuMemoryError:
    """The refusal when the KV pool itself could not be allocated."""
    return GpuMemoryError(
        f"a KV cache of {num_blocks} blocks ({num_bytes / GiB:.2f} GiB) does not fit in the "
        "GPU's free memory: lower --gpu-memory-utilization, or --num-kv-blocks if you set it")


def out_of_memory(error: BaseException | None) -> bool:
    """Whether `error` is, or was raised while handling, a CUDA out-of-memory error (an OOM
    inside a graph capture surfaces as the capture's own error, with the OOM as context)."""
    while error is not None:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def refused_when_out_of_memory(refusal: Callable[[], GpuMemoryError],
                               release: Callable[[], None]) -> Iterator[None]:
    """A CUDA out-of-memory error inside (or an error one caused) becomes `refusal()`, after
    `release()` gives back what was allocated: the refusal's traceback keeps the runner, and
    so its memory, alive as long as the caller holds the exception (e.g. to retry)."""
    try:
        yield
    except RuntimeError as e:
        if not out_of_memory(e):
            raise
        error = refusal()
        release()
        raise error from e


def graphs_do_not_fit(utilization: float, total: int) -> GpuMemoryError:
    """The refusal when capturing CUDA graphs ran out of the memory the KV cache left."""
    return GpuMemoryError(
        f"capturing CUDA graphs ran out of GPU memory: the weights, activations and KV cache "
        f"took --gpu-memory-utilization {utilization} of {total / GiB:.1f} GiB, and the rest "
        "was too little for the graphs. Lower --gpu-memory-utilization, or run without graphs "
        "(--enforce-eager).")


class CudaModelRunner(TorchModelRunner):
    # Kernels are queued, so the engine prepares the next step while this one runs.
    capabilities = RunnerCapabilities(mixed_batches=True, overlap=True)

    def __init__(self, config: EngineConfig, device: torch.device):
        from localserve.kernels.triton import gumbel_argmax

        self._triton_key = hash_triton_ahead()  # joined before the first compile
        # GGUF blocks stay raw only for the Triton GGUF kernels (backends/cuda/gguf.py; decided
        # at load); else the loader dequantizes them as it reads the file.
        super().__init__(config, device, triton_attention_ops())
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self.draw_kernel = gumbel_argmax

    def load_model(self) -> None:
        torch.cuda.set_device(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        self.keep_quantized = self._keeps_gguf_blocks(free)
        with self._refused_when_out_of_memory(lambda: self._weights_refusal(free, total)):
            super().load_model()
            kept, dequantized = install_gguf_methods(self.model, self.keep_quantized)
        self.weight_bytes = model_weight_bytes(self.model)
        install_layer_ops(self.model, gguf_layer_ops(self.model, triton_layer_ops()))
        fuse_projections(self.model, cuda_fused_linear)
        reserve_gguf_scratch(self.model)
        if kept or dequantized:
            log.info("GGUF: %d layers run from their blocks, %d of other types dequantized",
                     kept, dequantized)
        gemv = install_decode_gemv(self.model)
        # After the gemv: a gate|up small enough for it (Qwen3-0.6B's) keeps it at decode.
        gated = install_gated_gemm(self.model)
        log.info("%d linear layers use the Triton gemv for decode batches of <= %d rows; %d "
                 "MLPs the gated GEMM for prefill batches on Hopper", gemv, MAX_GEMV_ROWS,
                 gated)

    def _refused_when_out_of_memory(self, refusal: Callable[[], GpuMemoryError]
                                    ) -> contextlib.AbstractContextManager[None]:
        """Start-up steps that can run out of GPU memory: refused with `refusal()`, and this
        runner's memory given back (`shutdown`)."""
        return refused_when_out_of_memory(refusal, self.shutdown)

    def _source_and_dtype(self) -> tuple[CheckpointSource, torch.dtype]:
        from localserve.config import default_model_path
        from localserve.loader import read_arch, resolve_dtype
        from localserve.loader.source import resolve_source

        model = self.config.model
        source = resolve_source(model.model or default_model_path(), model.load_format)
        return source, resolve_dtype(model.dtype, self.device, read_arch(source))

    def _keeps_gguf_blocks(self, free: int) -> bool:
        """Whether GGUF blocks stay raw for this model and GPU: LOCALSERVE_GGUF_BLOCKS=1 or 0,
        or (auto) `gguf.keeps_gguf_blocks` by the file's size, False for other checkpoints
        (the flag only changes how GGUF files load)."""
        if gguf_blocks_setting() != "auto":
            return keeps_gguf_blocks()
        from localserve.model_store import num_parameters

        source, dtype = self._source_and_dtype()
        if source.kind != "gguf":
            return False
        dequantized = num_parameters(source.path) * dtype.itemsize
        keep = keeps_gguf_blocks(dequantized, free * self.config.cache.gpu_memory_utilization)
        held = str(dtype).removeprefix("torch.")
        log.info("GGUF: %s (LOCALSERVE_GGUF_BLOCKS=auto; 1 or 0 to choose)",
                 f"blocks kept: in {held} they would take over half of the GPU memory" if keep
                 else f"dequantized to {held}: they fit")
        return keep

    def _weights_refusal(self, free: int, total: int) -> GpuMemoryError:
        source, dtype = self._source_and_dtype()
        return weights_do_not_fit(free, total, dtype, source.kind == "gguf",
                                  self.keep_quantized)

    def profile_num_blocks(self) -> int:
        """KV blocks that fit after a warm-up forward at the largest step the scheduler makes."""
        spec = self._spec()
        sched = self.config.scheduler
        num_tokens = min(sched.max_num_batched_tokens, spec.max_position_embeddings)
        if self._triton_key is not None:  # else the first compile computes it again
            self._triton_key.join()
        total = torch.cuda.mem_get_info(self.device)[1]
        with self._refused_when_out_of_memory(
                lambda: step_does_not_fit(num_tokens, self.weight_bytes, total)):
            # The warm-up's kernels, compiled in parallel first where on (compile_ahead).
            compile_ahead(
                lambda: self._prompt_forward(num_tokens, self._scratch_caches(num_tokens)))
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            free_before = torch.cuda.mem_get_info(self.device)[0]
            others = total - free_before - torch.cuda.memory_reserved(self.device)
            self._warm_up(num_tokens, min(sched.max_num_seqs, num_tokens))
        peak = torch.cuda.max_memory_allocated(self.device)
        budget = total * self.config.cache.gpu_memory_utilization - others - peak
        num_blocks = int(budget // self.bytes_per_block())
        tokens = num_blocks * self.block_size
        model_len = self.config.model.max_model_len or spec.max_position_embeddings
        log.info("GPU memory: %.1f GiB total, weights %.2f GiB, activation peak %.2f GiB, "
                 "others %.2f GiB -> KV cache %.2f GiB = %d tokens", total / GiB,
                 self.weight_bytes / GiB, (peak - self.weight_bytes) / GiB, others / GiB,
                 max(budget, 0) / GiB, max(tokens, 0))
        if tokens < model_len and self.config.model.max_model_len:
            raise GpuMemoryError(
                f"the KV cache fits {max(tokens, 0)} tokens, fewer than --max-model-len "
                f"{model_len}: lower --max-model-len, raise --gpu-memory-utilization (now "
                f"{self.config.cache.gpu_memory_utilization}), or use a smaller model")
        if num_blocks < 1:
            raise GpuMemoryError(
                f"no memory is left for the KV cache: weights {self.weight_bytes / GiB:.2f} GiB"
                f" + activations {(peak - self.weight_bytes) / GiB:.2f} GiB exceed "
                f"{self.config.cache.gpu_memory_utilization:.0%} of {total / GiB:.1f} GiB. "
                "Lower --max-num-batched-tokens or use a smaller model.")
        return num_blocks

    def _scratch_caches(self, num_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """KV caches for one `num_tokens` prompt, outside the pool (the warm-up's)."""
        spec = self._spec()
        shape = (-(-num_tokens // self.block_size), self.block_size, spec.num_kv_heads,
                 spec.head_dim)
        return [(torch.empty(shape, dtype=self.kv_dtype, device=self.device),
                 torch.empty(shape, dtype=self.kv_dtype, device=self.device))
                for _ in range(spec.num_layers)]

    @torch.inference_mode()
    def _prompt_forward(self, num_tokens: int,
                        caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states of one prompt of `num_tokens` random ids, its KV in `caches`."""
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.arange(num_tokens, device=dev),
            block_tables=torch.arange(caches[0][0].shape[0], dtype=torch.int32,
                                      device=dev)[None],
            query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=dev),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=dev),
            max_query_len=num_tokens, max_seq_len=num_tokens)
        ids = torch.randint(0, self._spec().vocab_size, (num_tokens,), device=dev)
        with forward_context(ForwardContext(meta, caches, self.ops)):
            return self.model(ids, torch.arange(num_tokens, device=dev))

    @torch.inference_mode()
    def _warm_up(self, num_tokens: int, num_seqs: int) -> None:
        """A forward pass of `num_tokens` prompt tokens (one sequence) plus `num_seqs` logits."""
        spec = self._spec()
        caches = self._scratch_caches(num_tokens)
        hidden = self._prompt_forward(num_tokens, caches)
        logits = self.model.compute_logits(hidden[:num_seqs])
        # The sampler's temporaries at the widest batch count too (a few [seqs, vocab] fp32
        # tensors): left out, the KV pool takes their memory and the allocator thrashes.
        draw = SampleRequest(SamplingParams(temperature=1.0), (), (), 0)
        Sampler(spec.vocab_size).sample(logits, [draw] * num_seqs)
        # ...and the fused draw kernel compiles here, not in the first request.
        Sampler(spec.vocab_size, draw_kernel=self.draw_kernel).sample(logits[:1], [draw])
        torch.cuda.synchronize()
        del caches

    def _empty_cache(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Pages stored head by head behind the usual view, so a decode program reads one
        contiguous run a page: H100, `triton_kernels.py --only decode_layout`, 500 Llama-3-8B
        sequences 259.2 vs 260.3 us; `gpu_bench.py --only b b:tokenmajor c c:tokenmajor`
        (docs/benchmarks.md, session 8)."""
        from localserve.kernels.triton.cache import kv_cache_pages

        return kv_cache_pages(shape, self.kv_dtype, self.device, heads_major=True)

    def init_kv_cache(self, num_blocks: int) -> None:
        with self._refused_when_out_of_memory(
                lambda: kv_cache_does_not_fit(num_blocks, num_blocks * self.bytes_per_block())):
            super().init_kv_cache(num_blocks)
        if not self.config.enforce_eager:
            spec = self._spec()
            model_len = self.config.model.max_model_len or spec.max_position_embeddings
            model_len = min(model_len, num_blocks * self.block_size)
            sched = self.config.scheduler
            shape = (-(-model_len // self.block_size), model_len, self.arch.hidden_size,
                     self.kv_dtype, self.device)
            self.graphs = DecodeGraphs(self.model, self.kv_caches, self.ops,
                                       sched.max_num_seqs, *shape)
            if PREFILL_GRAPHS:
                self.prefill_graphs = PrefillGraphs(
                    self.model, self.kv_caches, self.ops, sched.max_num_batched_tokens,
                    sched.max_num_seqs, *shape)
            kinds = [g for g in (self.graphs, self.prefill_graphs) if g is not None]
            with self._refused_when_out_of_memory(lambda: graphs_do_not_fit(
                    self.config.cache.gpu_memory_utilization,
                    torch.cuda.mem_get_info(self.device)[1])):
                compile_ahead(lambda: [g.forward_every_bucket() for g in kinds])
                for graphs in kinds:  # one memory pool: replays never overlap
                    graphs.pool = self.graphs.pool
                    graphs.capture_all()

    def _forward(self, scheduled: SchedulerOutput, input_ids: torch.Tensor,
                 positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        num_seqs = len(scheduled.seqs)
        graphs: DecodeGraphs | PrefillGraphs | None
        if meta.max_query_len == 1:
            graphs, size = self.graphs, (num_seqs,)
        else:
            graphs, size = self.prefill_graphs, (input_ids.shape[0], num_seqs)
        b = graphs.bucket_for(*size) if graphs is not None else None
        if b is not None:
            return graphs.run(b, input_ids, positions, meta)
        return super()._forward(scheduled, input_ids, positions, meta)

    def shutdown(self) -> None:
        self.graphs = self.prefill_graphs = None
        super().shutdown()
        # cuBLAS's workspaces (one a stream, 32 MiB each on Hopper) belong to no tensor; an
        # engine built next in this process gets new ones.
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()
