"""A journal COMMIT the disk refuses is an OSError like any other journal statement's:
ENOSPC for a full disk (so a create on a full cache disk is ENOSPC or works, never EIO)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from puterfs.fs.cache import _Tx


class _Db:
    """A connection whose COMMIT fails as SQLite's does on SQLITE_FULL (it has then rolled the
    transaction back itself, so a ROLLBACK would fail with "no transaction is active")."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.in_transaction = False
        self.statements: list[str] = []

    def execute(self, sql: str) -> None:
        self.statements.append(sql)
        if sql == "BEGIN":
            self.in_transaction = True
        elif sql == "COMMIT":
            self.in_transaction = False
            raise sqlite3.OperationalError(self.message)
        elif sql == "ROLLBACK":
            if not self.in_transaction:
                raise sqlite3.OperationalError("cannot rollback - no transaction is active")
            self.in_transaction = False


@pytest.mark.parametrize(("message", "code"), [("database or disk is full", errno.ENOSPC),
                                               ("disk I/O error", errno.EIO)])
def test_a_refused_commit_is_an_oserror_with_the_disks_errno(message: str, code: int, tmp_path: Path) -> None:
    db = _Db(message)
    with pytest.raises(OSError) as err, _Tx(db, tmp_path / "journal.sqlite3"):  # type: ignore[arg-type]
        pass
    assert err.value.errno == code
    assert db.statements == ["BEGIN", "COMMIT"]  # no ROLLBACK of a transaction SQLite ended


def test_an_error_inside_rolls_back_and_propagates(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "j.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError), _Tx(db, tmp_path / "j.sqlite3"):
        db.execute("INSERT INTO t VALUES (1)")
        raise ValueError("boom")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert not db.in_transaction
