"""A local server that speaks the Puter 26.07 HTTP API (``puterfs emulator``)."""

from __future__ import annotations

from puterfs.emulator.app import Emulator
from puterfs.emulator.server import main

__all__ = ["Emulator", "main"]
