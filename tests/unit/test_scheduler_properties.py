"""Property tests: random arrivals, lengths, priorities, aborts, forks and a tiny KV pool.

After every step the block manager's integrity holds, and every request that is not aborted
finishes with exactly the tokens it produces when run alone (greedy or seeded).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localserve.engine.errors import PromptTooLongError
from localserve.sampling_params import SamplingParams
from tests.helpers.fake_runner import fake_engine

request = st.fixed_dictionaries({
    "prompt": st.lists(st.integers(2, 47), min_size=1, max_size=30),
    "max_tokens": st.integers(1, 12),
    "n": st.integers(1, 3),
    "priority": st.integers(0, 2),
    "seed": st.none() | st.integers(0, 5),
    "arrive_at": st.integers(0, 8),
    "abort_at": st.none() | st.integers(0, 12),
    "shared_prefix": st.booleans(),
})

PREFIX = [5, 6, 7, 8, 9, 10, 11, 12, 13]


def params(r: dict) -> SamplingParams:
    if r["seed"] is None:
        return SamplingParams(max_tokens=r["max_tokens"], temperature=0, n=r["n"], ignore_eos=True)
    return SamplingParams(max_tokens=r["max_tokens"], temperature=0.8, seed=r["seed"], n=r["n"],
                          ignore_eos=True)


def prompt(r: dict) -> list[int]:
    return (PREFIX + r["prompt"]) if r["shared_prefix"] else r["prompt"]


def solo(r: dict) -> list[list[int]]:
    engine = fake_engine(num_blocks=64, block_size=4)
    engine.add_request("solo", prompt(r), params(r))
    tokens: dict[int, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for d in out.outputs:
                tokens.setdefault(d.index, []).extend(d.token_ids)
    return [tokens[i] for i in range(r["n"])]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=10),
       num_blocks=st.integers(12, 40), block_size=st.sampled_from([2, 4]),
       budget=st.integers(4, 40), max_num_seqs=st.integers(1, 6),
       policy=st.sampled_from(["fcfs", "priority"]), mixed=st.booleans(),
       overlap=st.booleans())
def test_batched_equals_solo_and_integrity_holds(requests, num_blocks, block_size, budget,
                                                 max_num_seqs, policy, mixed, overlap):
    """overlap: async scheduling (placeholders), drained whenever an n > 1 request lives."""
    engine = fake_engine(num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=budget, policy=policy, mixed_batches=mixed,
                         overlap=overlap)
    tokens: dict[str, dict[int, list[int]]] = {}
    finished: set[str] = set()
    aborted: set[str] = set()
    admitted: set[str] = set()
    rejected: set[str] = set()
    for step in range(400):
        for i, r in enumerate(requests):
            rid = str(i)
            if r["arrive_at"] == step:
                try:
                    engine.add_request(rid, prompt(r), params(r), priority=r["priority"])
                except PromptTooLongError:  # rejected up front, never truncated or dropped
                    assert len(prompt(r)) + r["max_tokens"] > engine.max_model_len
                    rejected.add(rid)
                    continue
                admitted.add(rid)
            if r["abort_at"] is not None and r["abort_at"] == step and rid in admitted \
                    and rid not in finished:
                engine.abort(rid)
                aborted.add(rid)
        for out in engine.step():
            for d in out.outputs:
                tokens.setdefault(out.request_id, {}).setdefault(d.index, []).extend(d.token_ids)
            if out.finished:
                finished.add(out.request_id)
        engine.block_manager.check_integrity(engine.live_sequences())
        if step > 8 and not engine.has_unfinished_requests():
            break
    assert not engine.has_unfinished_requests(), "requests left unfinished (a hang)"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    for i, r in enumerate(requests):
        rid = str(i)
        if rid in aborted or rid in rejected:
            continue
        assert rid in finished, f"request {rid} never finished"
        got = [tokens[rid][k] for k in range(r["n"])]
        assert got == solo(r), f"request {rid} differs from its solo run"


def test_preemption_happens_and_outputs_still_match():
    engine = fake_engine(num_blocks=10, block_size=2, max_num_seqs=6, max_num_batched_tokens=64)
    reqs = [{"prompt": list(range(2 + i, 8 + i)), "max_tokens": 8, "n": 1, "seed": None,
             "shared_prefix": False} for i in range(5)]
    for i, r in enumerate(reqs):
        engine.add_request(str(i), prompt(r), params(r))
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for d in out.outputs:
                tokens.setdefault(out.request_id, []).extend(d.token_ids)
        engine.block_manager.check_integrity(engine.live_sequences())
    assert engine.scheduler.num_preempted_total > 0
    for i, r in enumerate(reqs):
        assert [tokens[str(i)]] == solo(r)
