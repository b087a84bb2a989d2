"""The near-tie rule for comparing two correct engines' greedy outputs (as vLLM's checks do).

Outputs must be equal, or, at the first position where they differ, each side's token must be
among the other side's top-5 logprobs there; after that point they are not compared.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_divergence(ours: Sequence[int], ours_top: Sequence[Sequence[Sequence[float]]],
                     ref: Sequence[int], ref_top: Sequence[Sequence[Sequence[float]]]
                     ) -> int | None:
    """Index of the first differing token (None if equal); AssertionError if not a near-tie.

    `*_top[i]` lists (token_id, logprob) pairs at position i, best first.
    """
    for i, (a, b) in enumerate(zip(ours, ref, strict=False)):
        if a == b:
            continue
        ref_ids = {int(t) for t, _ in ref_top[i]}
        our_ids = {int(t) for t, _ in ours_top[i]}
        if a in ref_ids and b in our_ids:
            return i
        raise AssertionError(
            f"diverged at token {i}: ours {a} (reference top-5 {sorted(ref_ids)}), "
            f"reference {b} (our top-5 {sorted(our_ids)}) — not a near-tie")
    if len(ours) != len(ref):
        raise AssertionError(f"lengths differ: {len(ours)} vs {len(ref)}")
    return None


def golden_divergences(golden: dict, keys: Sequence[str], outs: Sequence) -> dict[str, int]:
    """Where each engine output leaves its prompt's golden (tests/e2e/golden: `greedy_ids`,
    `top5`), for the prompts that do; AssertionError unless every departure is a near-tie.
    `outs` are GenerationOutputs of greedy runs with logprobs=5, in `keys` order."""
    found = {}
    for key, out in zip(keys, outs, strict=True):
        ref, ours = golden["prompts"][key], out.outputs[0]
        at = first_divergence(ours.token_ids, [s.top_logprobs for s in ours.logprobs],
                              ref["greedy_ids"], ref["top5"])
        if at is not None:
            found[key] = at
    return found
