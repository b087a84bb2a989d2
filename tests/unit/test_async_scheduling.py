"""Async scheduling: step N+1 is prepared while step N runs, with placeholders in between."""

from __future__ import annotations

import pytest

from localserve.interfaces import PLACEHOLDER
from localserve.sampling_params import SamplingParams
from tests.helpers.fake_runner import fake_engine


def run(engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    for _ in range(500):
        if not engine.has_unfinished_requests():
            return tokens
        for out in engine.step():
            for d in out.outputs:
                tokens.setdefault(out.request_id, []).extend(d.token_ids)
        engine.block_manager.check_integrity(engine.live_sequences())
    raise AssertionError("did not finish")


def placeholder_steps(engine) -> int:
    return sum(any(PLACEHOLDER in s.token_ids for s in step.seqs)
               for step in engine.runner.steps)


REQUESTS = {
    "a": ([2, 3, 4, 5, 6, 7, 8, 9, 10], SamplingParams(max_tokens=9, temperature=0,
                                                        ignore_eos=True)),
    "b": ([11, 12, 13], SamplingParams(max_tokens=5, temperature=0.7, seed=3, ignore_eos=True)),
    "c": ([2, 3, 4, 5, 20, 21], SamplingParams(max_tokens=7, temperature=0, stop=["c"])),
}


@pytest.mark.parametrize("budget", [4, 64])
def test_overlapped_tokens_equal_synchronous_ones(budget):
    sync = fake_engine(block_size=4, max_num_batched_tokens=budget)
    overlapped = fake_engine(block_size=4, max_num_batched_tokens=budget, overlap=True)
    assert run(overlapped, REQUESTS) == run(sync, REQUESTS)
    assert placeholder_steps(sync) == 0
    assert placeholder_steps(overlapped) > 0
    bm = overlapped.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_a_request_runs_exactly_max_tokens_steps():
    """The step after the last token is not computed: the scheduler skips a sequence whose
    in-flight token is its last."""
    engine = fake_engine(block_size=4, max_num_batched_tokens=64, overlap=True)
    run(engine, {"a": ([2, 3, 4], SamplingParams(max_tokens=6, temperature=0,
                                                   ignore_eos=True))})
    assert len(engine.runner.steps) == 6


def test_penalties_and_forks_step_synchronously():
    engine = fake_engine(block_size=4, max_num_batched_tokens=64, overlap=True)
    penalised = {"p": ([2, 3, 4], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True,
                                                   repetition_penalty=1.3)),
                 "n": ([5, 6, 7], SamplingParams(max_tokens=4, temperature=0, n=2,
                                                   ignore_eos=True))}
    sync = fake_engine(block_size=4, max_num_batched_tokens=64)
    assert run(engine, penalised) == run(sync, penalised)
    assert placeholder_steps(engine) == 0
    # Once they are gone, the engine overlaps again.
    run(engine, {"x": ([8, 9], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))})
    assert placeholder_steps(engine) > 0


def test_abort_while_a_step_is_in_flight():
    engine = fake_engine(block_size=4, max_num_batched_tokens=64, overlap=True)
    engine.add_request("a", [2, 3, 4], SamplingParams(max_tokens=20, temperature=0,
                                                      ignore_eos=True))
    b = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    engine.add_request("b", [5, 6, 7], b)
    early = [t for _ in range(3) for out in engine.step() if out.request_id == "b"
             for d in out.outputs for t in d.token_ids]
    assert engine._pending is not None
    engine.abort("a")
    rest = run(engine, {})
    solo = run(fake_engine(block_size=4), {"b": ([5, 6, 7], b)})
    assert early + rest["b"] == solo["b"]
    assert "a" not in rest
    assert not engine.has_unfinished_requests()
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
