"""localserve.tui: shipped inside the localserve namespace (see setup.py)."""

# From the repo root, `tui` would be importable a second time as a top-level name.
if __name__ != "localserve.tui":
    raise ImportError(f"import this package as 'localserve.tui', not {__name__!r}")
