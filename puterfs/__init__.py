"""puterfs: Puter's files and AI as a local FUSE mount, and an async Puter client."""

from __future__ import annotations

from puterfs.client import *  # noqa: F403 - the package re-exports the client's public surface
from puterfs.client import __all__ as _client_all

__all__ = list(_client_all)
__version__ = "0.1.0"
