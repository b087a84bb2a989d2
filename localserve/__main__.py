"""`python -m localserve ...` is the `localserve` command."""

import os
import sys

# `python -m` puts the working directory on sys.path; in a checkout, its backends/ kernels/
# quant/ tui/ folders would then shadow real packages (transformers probes for `kernels`).
_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from localserve.cli import main  # noqa: E402

raise SystemExit(main())
