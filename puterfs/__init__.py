"""puterfs: Puter's files and AI as a local FUSE mount, and an async Puter client.

The client's public names (``from puterfs import PuterClient``) are loaded on first use, so
that the ``puterfs`` command starts without importing httpx (``--version``, ``status``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # PEP 562: only called for names not defined here; `from puterfs import *` asks for __all__.
    import importlib

    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module 'puterfs' has no attribute {name!r}")
    import os

    for base in __path__:
        if os.path.exists(os.path.join(base, name + ".py")) or os.path.isdir(os.path.join(base, name)):
            # a submodule not imported yet (`from puterfs import config`): the import
            # system loads it once this says no
            raise AttributeError(f"module 'puterfs' has no attribute {name!r}")
    client = importlib.import_module("puterfs.client")

    if name == "__all__":
        value: Any = list(client.__all__)
    elif name in client.__all__:
        value = getattr(client, name)
    else:
        raise AttributeError(f"module 'puterfs' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    import importlib

    client = importlib.import_module("puterfs.client")
    return sorted({*globals(), *client.__all__})
