"""`localserve run MODEL [PROMPT]`: one streamed answer, or a chat in the terminal.

Talks to an in-process engine directly (no HTTP). Ctrl-C while the model writes stops that
answer (the request is aborted in the engine) and returns to the prompt; Ctrl-C or Ctrl-D at
the prompt quits. `/reset` forgets the conversation, `/exit` quits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from localserve.sampling_params import SamplingParams


def render_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids for a conversation; plain concatenated text for a model with no template."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    except ValueError:
        text = "\n".join(m["content"] for m in messages)
        return tokenizer.encode(text, add_special_tokens=True)


async def stream_reply(engine: Any, messages: list[dict], params: SamplingParams,
                       out: TextIO) -> str:
    """Streams one answer to `out`; returns its text."""
    ids = render_prompt(engine.tokenizer, messages)
    room = engine.max_model_len - len(ids)
    if room < 1:
        raise ValueError(f"the conversation ({len(ids)} tokens) fills the model's context "
                         f"({engine.max_model_len}); /reset to start over")
    params = replace(params, max_tokens=min(params.max_tokens or room, room))
    parts: list[str] = []
    outputs = engine.generate(ids, params, f"run-{uuid.uuid4().hex}")
    try:
        async for output in outputs:
            for delta in output.outputs:
                out.write(delta.text)
                out.flush()
                parts.append(delta.text)
    finally:
        await outputs.aclose()  # aborts the request if we stopped early
    out.write("\n")
    out.flush()
    return "".join(parts)


def run_chat(engine: Any, prompt: str | None, params: SamplingParams, *,
             system: str | None = None, out: TextIO, err: TextIO,
             read: Callable[[str], str] = input) -> int:
    """One-shot when `prompt` is given, else an interactive loop. Returns an exit code."""
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        try:
            asyncio.run(stream_reply(engine, [*history, {"role": "user", "content": prompt}],
                                     params, out))
        except ValueError as e:
            err.write(f"localserve: {e}\n")
            return 2
        return 0
    err.write(f"chatting with {engine.model_name} ({engine.backend_name}); "
              "/reset clears, /exit or Ctrl-D quits\n")
    while True:
        try:
            line = read(">>> ")
        except (EOFError, KeyboardInterrupt):
            err.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit", "/bye"):
            return 0
        if line == "/reset":
            history = history[:1] if system else []
            err.write("(conversation cleared)\n")
            continue
        turn = [*history, {"role": "user", "content": line}]
        try:
            answer = asyncio.run(stream_reply(engine, turn, params, out))
        except KeyboardInterrupt:
            err.write("\n(stopped)\n")
            continue
        except ValueError as e:
            err.write(f"localserve: {e}\n")
            continue
        history = [*turn, {"role": "assistant", "content": answer}]
