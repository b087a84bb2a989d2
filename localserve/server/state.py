"""What every route needs, owned by one app: the engine, the settings, the metrics.

Stored on `app.state.localserve` by `create_app`; nothing here is module-level, so two apps
(two engines, two test fixtures) in one process never share a counter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from localserve.server.errors import APIError, engine_dead, not_ready, validation_error
from localserve.server.metrics import ServerMetrics
from localserve.settings import Settings

M = TypeVar("M", bound=BaseModel)


@dataclass
class ServerState:
    engine: Any  # AsyncLLMEngine or anything with the same surface
    settings: Settings
    metrics: ServerMetrics
    started_at: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, requested: str | None) -> None:
        """404 unless the request names the served model (or none)."""
        if requested is not None and requested != self.engine.model_name:
            raise APIError(404, f"the model {requested!r} does not exist; this server serves "
                                f"{self.engine.model_name!r}", param="model",
                           code="model_not_found")

    def check_engine(self) -> None:
        """503 while the model loads or after the engine thread died."""
        if self.engine.errored is not None:
            raise engine_dead()
        if not self.engine.is_ready:
            raise not_ready()


def get_state(request: Request) -> ServerState:
    return request.app.state.localserve


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body validated as `model`; 400 for a wrong content type, bad JSON or bad fields."""
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime and mime != "application/json" and not mime.endswith("+json"):
        raise APIError(400, f"Content-Type must be application/json, got {mime!r}",
                       code="invalid_content_type")
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError included
        raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
