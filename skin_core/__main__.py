"""``python -m skin_core`` is the ``skin-core`` command line."""

from skin_core.cli import main

raise SystemExit(main())
