"""LLMEngine behaviour on the fake runner: stops, limits, errors, aborts, stats."""

from __future__ import annotations

import pytest

from localserve.engine.errors import PromptTooLongError, QueueFullError
from localserve.sampling_params import SamplingParams
from tests.helpers.fake_runner import FakeRunner, FakeTokenizer, fake_engine


def run(engine, prompt, params, rid="r"):
    engine.add_request(rid, prompt, params)
    text, ids, deltas = "", [], []
    while engine.has_unfinished_requests():
        for out in engine.step():
            for d in out.outputs:
                text += d.text
                ids += d.token_ids
                deltas.append(d)
    return text, ids, deltas


def test_max_tokens_gives_length_and_text_equals_decode():
    engine = fake_engine()
    text, ids, deltas = run(engine, [3, 4, 5], SamplingParams(max_tokens=7, temperature=0,
                                                              ignore_eos=True))
    assert len(ids) == 7 and deltas[-1].finish_reason == "length"
    assert text == FakeTokenizer().decode(ids)


def test_stop_string_across_tokens_is_cut_and_never_streamed():
    engine = fake_engine()
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    full, _, _ = run(engine, [3, 4, 5], params)
    stop = full[5:8]  # spans several 1-2 character tokens
    text, _, deltas = run(engine, [3, 4, 5], SamplingParams(
        max_tokens=30, temperature=0, ignore_eos=True, stop=[stop]), rid="s")
    assert text == full[:full.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop
    streamed = "".join(d.text for d in deltas[:-1])
    assert stop not in streamed


def test_stop_token_id_and_min_tokens():
    engine = fake_engine()
    _, ids, _ = run(engine, [3, 4], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    target = ids[3]
    _, got, deltas = run(engine, [3, 4], SamplingParams(
        max_tokens=20, temperature=0, ignore_eos=True, stop_token_ids=[target]), rid="b")
    assert got == ids[:ids.index(target) + 1]
    assert deltas[-1].stop_reason == target


def test_eos_stops_unless_ignored():
    engine = fake_engine()
    eos_logit_bias = {1: 100.0}
    _, ids, deltas = run(engine, [3], SamplingParams(max_tokens=5, temperature=0,
                                                     logit_bias=eos_logit_bias))
    assert ids == [1] and deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason is None
    _, ids, _ = run(engine, [3], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True,
                                                logit_bias=eos_logit_bias), rid="x")
    assert ids == [1] * 5


def test_prompt_too_long_and_bad_tokens_raise():
    engine = fake_engine(max_len=16)
    with pytest.raises(PromptTooLongError, match="maximum context length is 16"):
        engine.add_request("a", list(range(2, 20)), SamplingParams())
    with pytest.raises(PromptTooLongError):
        engine.add_request("b", [2] * 10, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="at least one token"):
        engine.add_request("c", [], SamplingParams())
    with pytest.raises(ValueError, match="token ids must be in"):
        engine.add_request("d", [999], SamplingParams())
    assert not engine.has_unfinished_requests()


def test_queue_bound_rejects():
    engine = fake_engine(max_waiting=2)
    engine.add_request("a", [2], SamplingParams())
    engine.add_request("b", [2], SamplingParams())
    with pytest.raises(QueueFullError):
        engine.add_request("c", [2], SamplingParams())


def test_abort_frees_blocks_in_the_same_step():
    engine = fake_engine()
    engine.add_request("a", list(range(2, 30)), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.block_manager.num_used_blocks > 0
    out = engine.abort("a")
    assert out is not None and out.finished and out.outputs[0].finish_reason == "abort"
    assert engine.block_manager.num_used_blocks == 0
    assert engine.stats().num_running == 0


def test_n_shares_prompt_blocks_and_gives_n_choices():
    engine = fake_engine()
    engine.add_request("a", list(range(2, 12)), SamplingParams(max_tokens=4, n=3, seed=3,
                                                               temperature=1.0, ignore_eos=True))
    tokens: dict[int, list[int]] = {}

    def collect(outs):
        for out in outs:
            for d in out.outputs:
                tokens.setdefault(d.index, []).extend(d.token_ids)

    collect(engine.step())  # the prompt runs once; its last logits give all three first tokens
    parent, *children = engine.live_sequences()
    assert len(children) == 2
    assert all(c.block_table == parent.block_table for c in children)
    engine.block_manager.check_integrity(engine.live_sequences())
    while engine.has_unfinished_requests():
        collect(engine.step())
        engine.block_manager.check_integrity(engine.live_sequences())
    assert sorted(tokens) == [0, 1, 2] and all(len(t) == 4 for t in tokens.values())
    assert len({tuple(t) for t in tokens.values()}) > 1  # seeded choices differ
    assert engine.block_manager.num_used_blocks == 0


def test_prefix_cache_stats_count_hits():
    engine = fake_engine(block_size=4)
    prompt = list(range(2, 20))
    run(engine, prompt, SamplingParams(max_tokens=2, ignore_eos=True), rid="a")
    run(engine, prompt, SamplingParams(max_tokens=2, ignore_eos=True), rid="b")
    s = engine.stats()
    assert s.prefix_cache_queries == 36 and s.prefix_cache_hits == 16


def test_stats_rows():
    engine = fake_engine()
    engine.add_request("a", [2, 3], SamplingParams(max_tokens=3), priority=1)
    s = engine.stats()
    assert s.num_waiting == 1 and s.requests[0].id == "a" and s.requests[0].state == "waiting"
    assert s.to_dict()["kv_blocks_free"] == s.kv_blocks_total


def test_non_mixing_runner_never_gets_mixed_steps():
    engine = fake_engine(mixed_batches=False, max_num_batched_tokens=8)
    assert isinstance(engine.runner, FakeRunner)
    for i in range(4):
        engine.add_request(str(i), list(range(2, 14 + i)), SamplingParams(max_tokens=5,
                                                                          ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()  # FakeRunner asserts on mixed steps


def test_engine_raises_the_gc_threshold_while_it_lives():
    """Fewer cyclic-GC passes while serving (each a pause the GPU may wait through); the
    process gets its own threshold back at shutdown."""
    import gc

    from localserve.engine.engine import GC_GEN0_THRESHOLD

    before = gc.get_threshold()
    gc.set_threshold(700, *before[1:])
    try:
        engine = fake_engine()
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        engine.shutdown()
        assert gc.get_threshold()[0] == 700
        gc.set_threshold(0, *before[1:])  # automatic collection off: the engine keeps it off
        engine = fake_engine()
        assert gc.get_threshold()[0] == 0
        engine.shutdown()
    finally:
        gc.set_threshold(*before)
