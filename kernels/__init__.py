"""localserve.kernels: shipped inside the localserve namespace (see setup.py)."""

# From the repo root, `kernels` would be importable a second time as a top-level name.
if __name__ != "localserve.kernels":
    raise ImportError(f"import this package as 'localserve.kernels', not {__name__!r}")
