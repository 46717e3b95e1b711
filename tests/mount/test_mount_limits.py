"""The mount within the server's rules (issue 8): rate limits never become errors, files of
any size go up (presigned uploads, resumed after a kill -9), a refused upload fails alone
and is reported, a small edit is not stuck behind a tree upload.

These run against the session emulator, which enforces the free tier's limits when the
suite runs with it (tests/conftest.py); the mount paces itself to the free tier (its default).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mount_testlib import MountedFs, MountFactory, wait_for

MIB = 1 << 20


def run(*argv: object, timeout: float = 600, cwd: object = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert res.returncode == 0, f"{argv[0]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def refusals(emulator) -> list[dict]:  # noqa: ANN001
    return [r for r in emulator.log() if r.get("status") == 429]


def _write_pattern(path: Path, size: int) -> str:
    """A file of ``size`` bytes, every MiB different; its sha256."""
    h = hashlib.sha256()
    base = os.urandom(MIB)
    with open(path, "wb") as f:
        for i in range(0, size, MIB):
            block = (i // MIB).to_bytes(8, "little") + base[8:]
            block = block[: size - i]
            f.write(block)
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def free_mounts(tmp_path: Path, emulator):  # noqa: ANN001, ANN201
    """Mounts of a fresh signed-up (free-tier) user, not a temporary one."""
    import inspect

    from mount_testlib import fuse_available

    if (reason := fuse_available()) is not None:
        pytest.skip(reason)
    if "temp" not in inspect.signature(emulator.new_user).parameters:
        pytest.skip("this emulator cannot make signed-up users")
    username, token = emulator.new_user(temp=False)

    class User:
        url = emulator.url

    user = User()
    user.username, user.token, user.home = username, token, "/" + username
    factory = MountFactory(tmp_path, user, emulator)
    yield factory
    crashes = factory.close()
    assert not crashes, "\n".join(crashes)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_remount_then_diff_and_git_fsck_on_1000_files(free_mounts: MountFactory, tmp_path: Path) -> None:
    mount_factory = free_mounts
    src = tmp_path / "src"
    src.mkdir()
    for d in range(20):
        sub = src / f"d{d:02}"
        sub.mkdir()
        for i in range(50):
            (sub / f"f{i:02}.txt").write_bytes(os.urandom(200 + i * 7))
    run("git", "init", "-q", cwd=src)
    run("git", "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A", cwd=src)
    run("git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "tree", cwd=src)
    run("git", "gc", "-q", cwd=src)

    m = mount_factory()
    m.emulator.clear_log()
    run("cp", "-a", src, m.path / "tree")
    m.wait_uploaded(timeout=900)
    # the uploads kept within the account's budgets (/batch 2 in flight and 300 a minute,
    # /fs/batchWrite 6 and 120, mkdir and move 900 a minute)
    refused = refusals(m.emulator)
    assert not refused, f"{len(refused)} upload request(s) refused by the server's limits, e.g. {refused[:3]}"
    uploads = [r for r in m.emulator.log() if r["path"] in ("/batch", "/fs/batchWrite", "/fs/write")]
    assert uploads and all(r["status"] in (200, 218) for r in uploads)
    m.proc.stop()
    # a fresh cache: every read, listing and stat of the tree goes to the server
    m2 = mount_factory(cache_dir=tmp_path / "cold-cache")
    m.emulator.clear_log()
    run("diff", "-r", src, m2.path / "tree", timeout=1200)
    run("git", "-C", m2.path / "tree", "fsck", "--full", timeout=1200)
    refused = refusals(m.emulator)
    assert not refused, f"{len(refused)} request(s) refused by the server's limits, e.g. {refused[:3]}"


def test_150_mib_file_through_the_mount(mount: MountedFs, tmp_path: Path) -> None:
    size = 150 * MIB
    src = tmp_path / "big.bin"
    digest = _write_pattern(src, size)
    hwm_before = mount.proc.vm_hwm_kib()
    run("cp", src, mount.path / "big.bin")
    mount.wait_uploaded(timeout=900)
    hwm_after = mount.proc.vm_hwm_kib()
    assert mount.remote.stat("big.bin")["size"] == size
    assert mount.remote.sha256("big.bin") == digest
    growth = (hwm_after - hwm_before) / 1024
    assert growth < 64, f"daemon peak RSS grew by {growth:.0f} MiB for a 150 MiB file"
    puts = [r for r in mount.emulator.log() if r["method"] == "PUT" and r["path"].startswith("/puter-local/")]
    assert len(puts) >= 15  # presigned, in parts (not /batch: it refuses 100 MiB and more)
    # replaced in place: the old version stays whole until the new one is complete
    digest2 = _write_pattern(src, size)
    run("cp", src, mount.path / "big.bin")
    mount.wait_uploaded(timeout=900)
    assert mount.remote.sha256("big.bin") == digest2
    assert not [n for n in mount.remote.listdir("") if n.startswith(".puterfs-upload-")]


def test_kill_9_in_the_middle_of_a_large_upload_then_a_mount_finishes_it(
    mount: MountedFs, tmp_path: Path
) -> None:
    size = 120 * MIB
    src = tmp_path / "big.bin"
    digest = _write_pattern(src, size)
    # slow storage, so that the daemon can be killed with some parts done and some not
    mount.emulator.set_faults({"path": "/puter-local/*", "method": "PUT", "latency": 3.0})
    run("cp", src, mount.path / "big.bin")
    st = mount.proc.wait_state(
        lambda s: any(0 < u["done"] < u["total"] for u in s.get("large_uploads", [])), 300, "a large upload halfway"
    )
    done_before = st["large_uploads"][0]["done"]
    killed_at = time.time()
    mount.kill_and_remount()
    mount.emulator.clear_faults()
    mount.wait_uploaded(timeout=900)
    assert mount.remote.sha256("big.bin") == digest
    # PUTs the new daemon made (the dead one's last PUTs may still have been finishing)
    puts = [r for r in mount.emulator.log()
            if r["method"] == "PUT" and r["path"].startswith("/puter-local/") and r["t"] > killed_at]
    assert len(puts) <= 12 - done_before // (10 * MIB), "the parts done before the kill were sent again"


def test_a_refused_upload_fails_alone_and_is_reported(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=3)
    (m.path / "blocked").mkdir()
    wait_for(lambda: m.remote.is_dir("blocked"), 30, "the directory on the server")
    (m.path / "blocked" / "x.txt").write_bytes(b"cannot go up")
    for i in range(5):
        (m.path / f"good{i}.txt").write_bytes(b"fine %d" % i)
    # meanwhile another client puts a file where the directory was
    m.remote.delete("blocked")
    m.remote.write("blocked", b"a file now")
    st = m.proc.wait_state(lambda s: s.get("failed_files"), 120, "the refused file in the state file")
    (failed,) = st["failed_files"]
    assert failed["path"] == "blocked/x.txt"
    assert "not a directory" in failed["reason"].lower() and failed["since"] > 0
    for i in range(5):
        wait_for(lambda i=i: m.remote.read(f"good{i}.txt") == b"fine %d" % i, 60, f"good{i}.txt uploaded")
    # not retried forever: a while later it has not been tried again
    uploads = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite")

    def attempts() -> int:
        return len([r for r in m.emulator.log() if r["path"] in uploads])

    before = attempts()
    assert before > 0
    time.sleep(5)
    assert attempts() == before
    # unmount finishes, exits non-zero and names the file left in the cache
    m.proc.expected_exit = True
    m.proc.proc.terminate()
    rc = m.proc.proc.wait(120)
    assert rc != 0
    final = m.proc.state()
    assert final is not None and [f["path"] for f in final["failed_files"]] == ["blocked/x.txt"]
    assert "blocked/x.txt" in m.proc.log_text()


def test_a_small_edit_is_not_stuck_behind_a_tree_upload(mount_factory: MountFactory, tmp_path: Path) -> None:
    m = mount_factory(write_back=1)
    (m.path / "notes.txt").write_bytes(b"version 1")
    m.wait_uploaded()
    src = tmp_path / "tree"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(300))
    archive = tmp_path / "tree.tar"
    run("tar", "-cf", archive, "-C", tmp_path, "tree")
    tar = subprocess.Popen(["tar", "-xf", str(archive), "-C", str(m.path)])
    try:
        wait_for(lambda: m.proc.state()["pending"] > 100, 120, "the tree upload under way", interval=0.05)
        (m.path / "notes.txt").write_bytes(b"version 2")
        t0 = time.monotonic()
        # polled once a second: the test's reads count against the same account's budget
        wait_for(lambda: m.remote.read("notes.txt") == b"version 2", 60, "the edit on the server", interval=1.0)
        took = time.monotonic() - t0
        pending = m.proc.state()["pending"]
    finally:
        tar.wait(600)
    # the write-back delay plus a few seconds, while hundreds of files were still to go
    assert took < 1 + 10, f"the edit took {took:.1f}s to reach the server"
    assert pending > 0 or took < 5
    m.wait_uploaded(timeout=900)
    assert len(m.remote.listdir("tree/d9")) == 100


def test_a_name_the_server_cannot_hold_is_refused_at_once_next_to_good_files(mount: MountedFs) -> None:
    """Puter trims trailing whitespace from a new name and then cannot find it (the errata):
    such a name is refused when it is made (EINVAL), never queued as an upload that cannot
    succeed, and the files around it go up as usual."""
    (mount.path / "good.txt").write_bytes(b"fine")
    for bad in ("trailing ", "   ", "tab\t"):
        with pytest.raises(OSError) as info:
            open(mount.path / bad, "wb")  # noqa: SIM115 - it must not open
        assert info.value.errno == errno.EINVAL, bad
        with pytest.raises(OSError) as info:
            os.mkdir(mount.path / bad)
        assert info.value.errno == errno.EINVAL, bad
    with pytest.raises(OSError) as info:
        os.rename(mount.path / "good.txt", mount.path / "good.txt ")
    assert info.value.errno == errno.EINVAL
    assert (mount.path / "good.txt").read_bytes() == b"fine"  # nothing lost
    state = mount.wait_uploaded()
    assert mount.remote.read("good.txt") == b"fine"
    assert not state.get("failed_files")
    assert sorted(os.listdir(mount.path)) == sorted(n for n in mount.remote.listdir("") if n != ".ai")


def test_an_abandoned_large_upload_aborts_its_session(mount: MountedFs) -> None:
    """A file of 100 MiB or more deleted while its presigned upload is under way: the upload
    stops, the session is dropped with /fs/abortWrite, nothing is left on the server. The
    file is sparse (cheap); the storage is slowed so that it is deleted halfway."""
    mount.emulator.clear_log()  # the session emulator's log holds earlier tests' requests
    mount.emulator.set_faults({"path": "/puter-local/*", "method": "PUT", "latency": 2.0})
    with open(mount.path / "gone.bin", "wb") as f:
        f.write(b"head")
        f.truncate(100 * MIB)
    mount.proc.wait_state(
        lambda s: any(0 < u["done"] < u["total"] for u in s.get("large_uploads", [])), 300, "a large upload halfway"
    )
    os.unlink(mount.path / "gone.bin")
    wait_for(lambda: [r for r in mount.emulator.log() if r["path"] == "/fs/abortWrite" and r["status"] == 200],
             60, "the session aborted")
    mount.emulator.clear_faults()
    state = mount.wait_uploaded()
    assert not state.get("large_uploads") and not state.get("failed_files")
    names = mount.remote.listdir("")
    assert "gone.bin" not in names and not [n for n in names if n.startswith(".puterfs-upload-")]


def test_a_big_file_skips_a_busy_batch_for_the_presigned_flow(mount_factory: MountFactory) -> None:
    """"Whichever budget has room": with /batch's two in-flight slots taken (two 9 MiB uploads
    held by the server), a 16 MiB file goes up through the presigned routes (a budget of their
    own) instead of queueing behind them; the held ones finish once let go."""
    mount = mount_factory(timeout=600)  # the held requests must not time out meanwhile
    mount.emulator.clear_log()  # the session emulator's log holds earlier tests' requests
    # count 3: a third /batch would be held too (the rule stays listed while it has some left)
    mount.emulator.set_faults({"method": "POST", "path": "/batch", "stall": True, "count": 3})

    def held() -> int:
        rules = mount.emulator.http.get("/_emulator/faults").json()["rules"]
        return sum(r.get("fired", 0) for r in rules if r.get("path") == "/batch")

    digests = {}
    try:
        for n, name in enumerate(("held1.bin", "held2.bin"), 1):
            digests[name] = _write_pattern(mount.path / name, 9 * MIB)
            wait_for(lambda n=n: held() == n, 120, f"{n} /batch request(s) held")
        digests["big.bin"] = _write_pattern(mount.path / "big.bin", 16 * MIB)
        wait_for(lambda: mount.remote.exists("big.bin"), 120, "big.bin on the server")
        assert mount.remote.sha256("big.bin") == digests["big.bin"]
        assert held() == 2 and not mount.remote.exists("held1.bin") and not mount.remote.exists("held2.bin")
        assert [r["status"] for r in mount.emulator.log() if r["path"] == "/fs/completeWrite"] == [200]
    finally:
        mount.emulator.release()
        mount.emulator.clear_faults()
    mount.wait_uploaded(timeout=300)
    for name, digest in digests.items():
        assert mount.remote.sha256(name) == digest


def test_a_server_by_address_with_its_domain_given_separately(mount_factory: MountFactory, tmp_path: Path) -> None:
    """`--api-url http://127.0.0.1:PORT --domain puter.localhost`: the server answers its names
    only (an address as Host gets 404), so the mount must name it while connecting to the
    address; everything works as by name."""
    from mount_testlib import MountProcess

    emu = mount_factory.emulator
    proc = MountProcess(
        tmp_path / "by-address", url=emu.address_url, token_file=mount_factory.token_file,
        cache_dir=tmp_path / "by-address-cache", xdg_root=tmp_path / "xdg", log_path=tmp_path / "by-address.log",
        extra=["--domain", emu.domain],
    )
    proc.start()
    try:
        proc.wait_ready(60)
        (proc.mountpoint / "sub").mkdir()
        (proc.mountpoint / "sub" / "by-address.txt").write_bytes(b"through 127.0.0.1")
        remote = mount_factory.remote()
        wait_for(lambda: remote.read("sub/by-address.txt") == b"through 127.0.0.1", 60, "the file on the server")
        remote.write("from-server.txt", b"seen")
        wait_for(lambda: (proc.mountpoint / "from-server.txt").exists(), 60, "the server's file in the mount")
        assert (proc.mountpoint / "from-server.txt").read_bytes() == b"seen"
        assert proc.state()["api_url"] == emu.address_url
    finally:
        assert proc.stop() == 0
