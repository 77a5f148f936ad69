"""``python -m evopes``: see :mod:`evopes.cli`."""

from evopes.cli import main

raise SystemExit(main())
