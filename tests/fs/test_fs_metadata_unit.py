"""How the mount reads and writes the POSIX attributes it keeps in entry metadata."""

from __future__ import annotations

import pytest

from puterfs.fs.remote import RemoteEntry, format_mtime, parse_mtime, posix_metadata


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000_123_456_789, 4_102_444_800_999_999_999])
def test_mtime_round_trips_with_nanoseconds(ns: int) -> None:
    text = format_mtime(ns)
    assert text.endswith("Z") and len(text.split(".")[1]) == 10
    assert parse_mtime(text) == ns


def test_mtime_parsing_accepts_rfc3339_offsets_and_refuses_junk() -> None:
    assert parse_mtime("2001-09-09T01:46:40Z") == 1_000_000_000 * 10**9
    assert parse_mtime("2001-09-09T03:46:40.5+02:00") == 1_000_000_000 * 10**9 + 500_000_000
    for junk in (None, 12, "", "yesterday", "2001-09-09 01:46:40", "2001-13-09T01:46:40Z"):
        assert parse_mtime(junk) is None


def test_entry_metadata_of_every_shape() -> None:
    base = {"name": "f", "is_dir": False, "size": 1, "modified": 1796116053, "created": 1796116050, "uid": "u"}
    ours = RemoteEntry.from_json({**base, "metadata": '{"mode":"100755","mtime":"2001-09-09T01:46:40.000000001Z",'
                                                      '"contentType":"text/plain"}'})
    assert ours.mode == 0o100755 and ours.mtime_ns == 1_000_000_000 * 10**9 + 1
    assert ours.metadata == {"mode": "100755", "mtime": "2001-09-09T01:46:40.000000001Z", "contentType": "text/plain"}
    # what other clients store: no keys of ours, a plain string, a JSON non-object, garbage values
    for md in (None, '{"contentType":"text/plain"}', "just text", "[1,2]", '{"mode":"rwx","mtime":5}'):
        e = RemoteEntry.from_json({**base, "metadata": md})
        assert e.mode is None and e.meta_mtime_ns is None
        assert e.mtime_ns == 1796116053 * 10**9  # the server's whole-second time


def test_posix_metadata_keys() -> None:
    assert posix_metadata(0o100644, 5) == {"mtime": "1970-01-01T00:00:00.000000005Z", "mode": "100644"}
    assert posix_metadata(None, 5) == {"mtime": "1970-01-01T00:00:00.000000005Z"}  # links: no mode
