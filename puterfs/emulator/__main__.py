from __future__ import annotations

import sys

from puterfs.emulator.server import main

sys.exit(main())
