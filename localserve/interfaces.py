"""The seams between the engine core and the hardware backends.

Everything that crosses a seam is plain data: the scheduler says which tokens of which
sequence to compute this step; the runner answers with sampled tokens. No phases (prefill vs
decode) appear here: a sequence's computed-token count simply catches up with its length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from localserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from localserve.config import EngineConfig
    from localserve.platform.probe import DeviceInfo


# The per-token messages (ScheduledSeq, TokenSample, the sampler's SampleRequest) are built
# for every sequence in every step: slotted and not frozen, because a frozen dataclass's
# __init__ costs ~5x more (1.7 vs 0.3 us for nine fields), host time on the engine's hot
# path. Treat them as immutable all the same.
@dataclass(slots=True)
class ScheduledSeq:
    """One sequence's share of a step.

    `token_ids` are the tokens to run now; the first sits at position `start_pos` (the number
    of tokens whose KV is already cached). The KV of every token goes to the slots named by
    `block_table` (slot = block_table[pos // block_size] * block_size + pos % block_size).
    `choice_indices` lists which samples to draw from the logits of the last token: empty for
    a prefill chunk that does not reach the end, one index normally, n indices when the parent
    of an n>1 request finishes its prompt (the engine then forks it).
    The sequences are the scheduler's own lists, not copies: read them within execute() only.
    """

    seq_id: int
    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    choice_indices: Sequence[int]
    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class SchedulerOutput:
    """What the runner computes in one step."""

    seqs: Sequence[ScheduledSeq]
    # Copy-on-write: copy block src -> dst (all layers) before the forward pass.
    blocks_to_copy: Sequence[tuple[int, int]] = ()

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)


@dataclass(slots=True)
class TokenSample:
    """One sampled token; logprobs come from the raw logits (log_softmax before processing)."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class StepOutput:
    """The runner's answer: for each sampling seq_id, one TokenSample per choice index."""

    samples: dict[int, list[TokenSample]] = field(default_factory=dict)


# Stands in a sequence's token list for a token sampled by a step still running on the device:
# the engine appends it when it launches the step and overwrites it when the step's result
# arrives. Only the runner that launched that step can read the real value (it stays on the
# device), so a placeholder is only ever the last token of a sequence in the next step.
PLACEHOLDER = -1


@dataclass(frozen=True)
class RunnerCapabilities:
    # False: the runner cannot mix prompt chunks and decode tokens in one step; the scheduler
    # then gives a step either only multi-token chunks or only single tokens.
    mixed_batches: bool = True
    # The runner can swap KV blocks to host memory on preemption (else: recompute).
    swap: bool = False
    # The runner has launch(): it queues a step on the device and returns at once, and it
    # fills PLACEHOLDER inputs from the step it launched before. The engine then prepares
    # step N+1 while the device computes step N.
    overlap: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Facts about the loaded model that the engine and server need (derived, not knobs)."""

    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    dtype: str
    quantization: str | None = None
    sliding_window: int | None = None
    num_params: int = 0


class PendingStep(Protocol):
    """A launched step; result() waits for the device and returns the sampled tokens."""

    def result(self) -> StepOutput: ...


@dataclass(frozen=True)
class FinishedStep:
    """A PendingStep whose result is known already (a step that samples nothing, or a
    runner that computes at launch)."""

    output: StepOutput

    def result(self) -> StepOutput:
        return self.output


@runtime_checkable
class ModelRunner(Protocol):
    """Executes scheduled steps on one device. One runner per engine."""

    capabilities: RunnerCapabilities
    spec: ModelSpec

    def load_model(self) -> None:
        """Loads the weights (sets `spec`)."""

    def set_eos_token_ids(self, eos_token_ids: frozenset[int]) -> None:
        """The tokenizer's end-of-sequence ids (min_tokens bans them)."""

    def profile_num_blocks(self) -> int:
        """Returns how many KV blocks fit in the memory left after a max-batch warm-up."""

    def init_kv_cache(self, num_blocks: int) -> None:
        """Allocates the KV pool: `num_blocks` blocks of `block_size` tokens, every layer."""

    def execute(self, scheduled: SchedulerOutput) -> StepOutput:
        """Runs one step: writes KV for every scheduled token, samples where asked.

        Args:
            scheduled: the sequences and tokens of this step.
        Returns:
            The sampled tokens of every sequence with non-empty `choice_indices`.
        """

    def shutdown(self) -> None:
        """Frees device memory and threads."""


class OverlappingRunner(ModelRunner, Protocol):
    """A runner with `capabilities.overlap`: steps are queued, not waited for."""

    def launch(self, scheduled: SchedulerOutput) -> PendingStep:
        """Queues one step and returns without waiting for the device.

        The last token of a scheduled sequence may be PLACEHOLDER: the token this runner
        sampled for that sequence in the step launched just before.
        """


@runtime_checkable
class Backend(Protocol):
    """A hardware plugin. `name` = directory = registry key = `--backend` value."""

    name: str

    def probe(self) -> DeviceInfo | None:
        """Cheap, lazy, never raises: the device this backend would run on, or None."""

    def check(self, config: EngineConfig, device: DeviceInfo) -> list[str]:
        """Reasons this backend cannot run `config` on `device`; empty means it can."""

    def create_runner(self, config: EngineConfig, device: DeviceInfo) -> ModelRunner:
        """Builds (but does not load) a runner."""
