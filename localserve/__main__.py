"""`python -m localserve ...` is the `localserve` command."""

from localserve.cli import main

raise SystemExit(main())
