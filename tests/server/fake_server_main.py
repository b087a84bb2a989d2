"""`python -m tests.server.fake_server_main '{"port": 0, ...}'`: the real launcher, fake engine.

Used by test_launch.py to check the process-level behaviour (ready line, signals, watchdog
exit) without a model. FAKE_TOKEN_DELAY and FAKE_DIE_AFTER_S (seconds after start) tune the
engine; its shutdown prints a marker line the tests look for.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from localserve.server.launch import StartupError, serve
from localserve.settings import Settings
from tests.server.fake_engine import FakeEngine


class MarkedEngine(FakeEngine):
    def shutdown(self) -> None:
        super().shutdown()
        print("fake engine shut down", flush=True)


def factory(settings: Settings, on_progress: Any) -> FakeEngine:
    on_progress("loading fake weights", 0.0)
    engine = MarkedEngine(token_delay=float(os.environ.get("FAKE_TOKEN_DELAY", "0")))
    on_progress("loading fake weights", 1.0)
    die_after = os.environ.get("FAKE_DIE_AFTER_S")
    if die_after:
        threading.Timer(float(die_after), engine.die).start()
    return engine


def main() -> int:
    settings = Settings(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))
    try:
        return serve(settings, engine_factory=factory)
    except StartupError as e:
        print(f"localserve: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
