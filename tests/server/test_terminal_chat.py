"""`localserve run` (terminal chat) and `up --tui` wiring, against the fake engine."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from localserve.sampling_params import SamplingParams
from localserve.terminal_chat import render_prompt, run_chat
from tests.server.fake_engine import FakeEngine
from tests.server.test_endpoints import greedy_text

GREEDY = SamplingParams(max_tokens=5, temperature=0)


def test_one_shot(engine: FakeEngine) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_chat(engine, "hi", GREEDY, out=out, err=err) == 0
    ids = engine.calls[-1][0]
    assert ids == engine.tokenizer.encode("<user>hi\n<assistant>", add_special_tokens=False)
    assert out.getvalue() == greedy_text(ids, 5) + "\n"


def test_interactive_keeps_history_and_resets(engine: FakeEngine) -> None:
    inputs: Iterator[str] = iter(["first", "", "second", "/reset", "third", "/exit"])
    out, err = io.StringIO(), io.StringIO()
    code = run_chat(engine, None, GREEDY, system="sys", out=out, err=err,
                    read=lambda prompt: next(inputs))
    assert code == 0
    prompts = [engine.tokenizer.decode(c[0]) for c in engine.calls]
    assert len(prompts) == 3
    answer1 = greedy_text(engine.calls[0][0], 5)
    assert prompts[1] == f"<system>sys\n<user>first\n<assistant>{answer1}\n<user>second\n" \
                         "<assistant>"
    assert prompts[2] == "<system>sys\n<user>third\n<assistant>"  # the system message stays
    assert "(conversation cleared)" in err.getvalue()


def test_interactive_ends_on_eof(engine: FakeEngine) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    assert run_chat(engine, None, GREEDY, out=io.StringIO(), err=io.StringIO(), read=eof) == 0


def test_too_long_conversation_is_a_message(engine: FakeEngine) -> None:
    err = io.StringIO()
    assert run_chat(engine, "x" * 400, GREEDY, out=io.StringIO(), err=err) == 2
    assert "/reset" in err.getvalue() and engine.calls == []


def test_no_template_falls_back_to_plain_text() -> None:
    engine = FakeEngine(has_chat_template=False)
    ids = render_prompt(engine.tokenizer, [{"role": "user", "content": "plain"}])
    assert ids == engine.tokenizer.encode("plain")


def test_ctrl_c_while_answering_aborts_and_continues() -> None:
    engine = FakeEngine(token_delay=0.05)
    inputs = iter(["long answer please", "/exit"])
    out, err = io.StringIO(), io.StringIO()

    def read(prompt: str) -> str:
        return next(inputs)

    def interrupt_when_running() -> None:
        import _thread
        import time

        while not engine.running:
            time.sleep(0.01)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    code = run_chat(engine, None, SamplingParams(max_tokens=200, temperature=0), out=out,
                    err=err, read=read)
    assert code == 0
    assert "(stopped)" in err.getvalue()
    assert len(engine.aborted) == 1 and not engine.running


def test_up_tui_runs_the_dashboard_beside_a_server_subprocess(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import localserve.tui.app as tui_app
    from localserve.cli import main

    seen: dict[str, Any] = {}

    def fake_run_with_server(server: Any, url: str, api_key: str | None = None,
                             **kw: Any) -> int:
        seen.update(server=server, url=url, api_key=api_key)
        return 0

    monkeypatch.setattr(tui_app, "run_with_server", fake_run_with_server)
    monkeypatch.delenv("LOCALSERVE_API_KEY", raising=False)
    assert main(["up", "--tui", "--port", "8123", "--max-num-seqs", "4"]) == 0
    assert seen["server"][1:] == ["-m", "localserve", "up", "--port", "8123",
                                  "--max-num-seqs", "4"]
    assert seen["url"] == "http://127.0.0.1:8123" and seen["api_key"] is None
