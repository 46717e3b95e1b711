"""``python -m puterfs``: the same command line as the ``puterfs`` console script."""

from __future__ import annotations

import sys

from puterfs.cli import main

if __name__ == "__main__":
    sys.exit(main())
