"""One request's output side: detokenizing each choice and deciding when it stops.

Stop strings are matched across token boundaries on the decoded text and never reach the
caller: text that could still be the start of a stop string is held back until it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from localserve.detokenizer import IncrementalDetokenizer
from localserve.engine.outputs import CompletionDelta, FinishReason, RequestMetrics
from localserve.interfaces import TokenSample
from localserve.sampling_params import SamplingParams


@dataclass
class ChoiceState:
    """The output of one choice: text released so far and text held back for stop matching."""

    index: int
    detokenizer: IncrementalDetokenizer
    held: str = ""
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    delta: CompletionDelta | None = None  # pending output since the last yield

    def pending(self) -> CompletionDelta:
        if self.delta is None:
            self.delta = CompletionDelta(self.index)
        return self.delta


@dataclass
class RequestState:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    metrics: RequestMetrics
    eos_token_ids: frozenset[int]
    max_model_len: int
    choices: dict[int, ChoiceState] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return len(self.choices) == self.params.n and all(
            c.finish_reason is not None for c in self.choices.values())

    def add_token(self, choice: ChoiceState, sample: TokenSample, num_outputs: int,
                  seq_len: int) -> bool:
        """Records one generated token of `choice`; returns True when the choice finished.

        num_outputs: tokens generated so far by this choice, this one included;
        seq_len: prompt + outputs.
        """
        p = self.params
        delta = choice.pending()
        delta.token_ids.append(sample.token_id)
        if p.logprobs is not None:
            delta.logprobs.append(sample)
        token = sample.token_id
        may_stop = num_outputs >= p.min_tokens
        if may_stop and token in p.stop_token_ids:
            return self._finish(choice, "stop", token)
        if may_stop and not p.ignore_eos and token in self.eos_token_ids:
            return self._finish(choice, "stop", None)
        text = choice.held + choice.detokenizer.add([token])
        if may_stop and p.stop:
            hit = _first_stop(text, p.stop)
            if hit is not None:
                at, stop = hit
                choice.held = text[:at]
                return self._finish(choice, "stop", stop)
        if p.max_tokens is not None and num_outputs >= p.max_tokens:
            choice.held = text
            return self._finish(choice, "length", None)
        if seq_len >= self.max_model_len:
            choice.held = text
            return self._finish(choice, "length", None)
        if not p.stop:  # nothing to hold back for
            delta.text += text
            choice.held = ""
            return False
        keep = max((len(s) - 1 for s in p.stop), default=0)
        release = max(0, len(text) - keep)
        # Hold back only a tail that could still grow into a stop string.
        while release < len(text) and not any(s.startswith(text[release:]) for s in p.stop):
            release += 1
        delta.text += text[:release]
        choice.held = text[release:]
        return False

    def _finish(self, choice: ChoiceState, reason: FinishReason, stop: str | int | None
                ) -> bool:
        if not isinstance(stop, str):  # after a stop string, the rest is cut off
            choice.held += choice.detokenizer.flush()
        choice.pending().text += choice.held
        choice.held = ""
        choice.finish_reason = reason
        choice.stop_reason = stop
        choice.pending().finish_reason = reason
        choice.pending().stop_reason = stop
        return True

    def abort(self) -> None:
        for index in range(self.params.n):
            choice = self.choices.get(index)
            if choice is not None and choice.finish_reason is None:
                choice.finish_reason = "abort"
                choice.pending().finish_reason = "abort"

    def take_deltas(self) -> list[CompletionDelta]:
        if len(self.choices) == 1:  # n = 1: no ordering to do
            (choice,) = self.choices.values()
            delta, choice.delta = choice.delta, None
            return [delta] if delta is not None else []
        deltas = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            if choice.delta is not None:
                deltas.append(choice.delta)
                choice.delta = None
        return deltas


def _first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest stop string in `text` and where it starts."""
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    return best
