"""Puter HTTP client (knows HTTP, nothing of FUSE)."""
