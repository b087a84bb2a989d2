"""localserve: a fast, OpenAI-compatible LLM inference server for the machines people own.

The offline API (`LLM`, `SamplingParams`) is imported lazily so that `import localserve`
stays cheap and pulls in no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localserve.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from localserve.llm import LLM


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from localserve.llm import LLM

        return LLM
    raise AttributeError(name)
