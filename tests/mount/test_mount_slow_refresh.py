"""A listing refresh that stalls does not hold up stat(2) of entries already cached."""

from __future__ import annotations

import os
import time
from typing import Any

from mount_testlib import MountFactory, wait_for


def test_stalled_listing_does_not_hold_up_stat_of_a_cached_entry(mount_factory: MountFactory, emulator: Any) -> None:
    """A listing refresh that stalls: stat(2) and lookups of entries already cached answer from
    the cache meanwhile (after at most STALE_WAIT, 2 s); the refresh goes on and lands later."""
    m = mount_factory(timeout=20, listing_max_age=1)
    m.remote.write("d/f.txt", b"cached")
    wait_for(lambda: (m.path / "d" / "f.txt").read_bytes() == b"cached", 10, "f.txt through the mount")
    time.sleep(1.5)  # the listing of d is older than --listing-max-age: the next use refreshes it
    emulator.set_faults({"method": "POST", "path": "/readdir", "stall": True})
    try:
        t0 = time.monotonic()
        st = os.stat(m.path / "d" / "f.txt")
        os.stat(m.path / "d")
        elapsed = time.monotonic() - t0
        assert st.st_size == 6
        assert (m.path / "d" / "f.txt").read_bytes() == b"cached"
    finally:
        emulator.clear_faults()
        emulator.release()
    assert elapsed < 10, f"stat of a cached entry took {elapsed:.1f}s behind a stalled listing"
    print(f"stalled /readdir: stat of a cached entry answered in {elapsed:.1f}s (the refresh waits up to 60s)")
