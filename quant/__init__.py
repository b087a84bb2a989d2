"""localserve.quant: shipped inside the localserve namespace (see setup.py)."""

# From the repo root, `quant` would be importable a second time as a top-level name.
if __name__ != "localserve.quant":
    raise ImportError(f"import this package as 'localserve.quant', not {__name__!r}")
