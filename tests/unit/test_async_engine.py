"""AsyncLLMEngine: concurrent streams, abort on close, errors at admission, a dying engine."""

from __future__ import annotations

import asyncio

import pytest

from localserve.engine.async_engine import AsyncLLMEngine
from localserve.engine.errors import EngineDeadError, PromptTooLongError
from localserve.sampling_params import SamplingParams
from tests.helpers.fake_runner import fake_engine


async def collect(engine: AsyncLLMEngine, rid: str, prompt: list[int], **kw) -> list[int]:
    ids: list[int] = []
    async for out in engine.generate(prompt, SamplingParams(**kw), rid):
        for d in out.outputs:
            ids += d.token_ids
    return ids


def test_concurrent_streams_equal_sequential():
    engine = AsyncLLMEngine(fake_engine(num_blocks=64, max_num_seqs=8))
    try:
        prompts = [[2 + i, 3 + i, 4] for i in range(12)]

        async def main():
            together = await asyncio.gather(*[
                collect(engine, f"c{i}", p, max_tokens=6, temperature=0, ignore_eos=True)
                for i, p in enumerate(prompts)])
            alone = [await collect(engine, f"s{i}", p, max_tokens=6, temperature=0,
                                   ignore_eos=True) for i, p in enumerate(prompts)]
            return together, alone

        together, alone = asyncio.run(main())
        assert together == alone and all(len(t) == 6 for t in together)
    finally:
        engine.shutdown()


def test_closing_the_stream_aborts_and_frees_blocks():
    engine = AsyncLLMEngine(fake_engine(num_blocks=64))
    try:
        async def main():
            gen = engine.generate([2, 3, 4], SamplingParams(max_tokens=200, ignore_eos=True),
                                  "a")
            await gen.__anext__()
            await gen.aclose()
            for _ in range(200):
                await asyncio.sleep(0.01)
                s = engine.stats()
                if s.num_running == 0 and s.kv_blocks_used == 0:
                    return s
            return engine.stats()

        s = asyncio.run(main())
        assert s.num_running == 0 and s.num_waiting == 0 and s.kv_blocks_used == 0
        engine.engine.block_manager.check_integrity([])
    finally:
        engine.shutdown()


def test_admission_errors_reach_the_caller():
    engine = AsyncLLMEngine(fake_engine(max_len=8))
    try:
        with pytest.raises(PromptTooLongError):
            asyncio.run(collect(engine, "a", list(range(2, 20))))
        assert engine.is_ready
    finally:
        engine.shutdown()


def test_dead_engine_fails_requests_instead_of_hanging():
    inner = fake_engine()

    def boom(_scheduled):
        raise RuntimeError("device lost")

    inner.runner.execute = boom
    engine = AsyncLLMEngine(inner)
    try:
        with pytest.raises(EngineDeadError):
            asyncio.run(asyncio.wait_for(collect(engine, "a", [2, 3]), timeout=10))
        assert not engine.is_ready and isinstance(engine.errored, RuntimeError)
        with pytest.raises(EngineDeadError):
            asyncio.run(collect(engine, "b", [2, 3]))
    finally:
        engine.shutdown()


def test_abort_from_elsewhere_ends_the_stream_with_abort():
    engine = AsyncLLMEngine(fake_engine(num_blocks=64))
    try:
        async def main():
            reasons = []
            gen = engine.generate([2, 3, 4], SamplingParams(max_tokens=200, ignore_eos=True), "a")
            async for out in gen:
                reasons += [d.finish_reason for d in out.outputs]
                if len(reasons) == 1:
                    await engine.abort("a")
            return reasons

        reasons = asyncio.run(asyncio.wait_for(main(), timeout=30))
        assert reasons[-1] == "abort" and len(reasons) < 200
    finally:
        engine.shutdown()
