"""localserve.backends: shipped inside the localserve namespace (see setup.py)."""

# From the repo root, `backends` would be importable a second time as a top-level name.
if __name__ != "localserve.backends":
    raise ImportError(f"import this package as 'localserve.backends', not {__name__!r}")

from localserve.backends.registry import BACKENDS, Selection, get_backend, select

__all__ = ["BACKENDS", "Selection", "get_backend", "select"]
