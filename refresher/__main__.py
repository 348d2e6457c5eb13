"""``python -m refresher``: the ``refresher`` command line."""

from __future__ import annotations

import sys

from refresher.cli import main

if __name__ == "__main__":  # spawned demo workers import this module: run only as a script
    sys.exit(main())
