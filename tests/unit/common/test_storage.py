"""Folders and files a process writes: one-line errors naming the path, nothing half-written
left behind. Faults the kernel gives only as root (read-only and full mounts) are in
tests/e2e/test_storage_faults.py; here they are simulated."""

import errno
import os

import pytest

from fedlora.common import storage
from fedlora.common.storage import (Appender, Reserve, StorageError, atomic_dir, file_sha256, prepare_dir,
                                    tree_sha256, write_atomic)


def _fail_writes(monkeypatch, err: int, after: int = 0):
    """os.write takes ``after`` bytes, then fails with ``err`` (a disk that fills)."""
    real = os.write
    left = [after]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(err, os.strerror(err))
        n = real(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    monkeypatch.setattr(storage.os, "write", write)


def test_prepare_dir_makes_the_folder_and_leaves_nothing_in_it(tmp_path):
    folder = prepare_dir(tmp_path / "a" / "run", "run folder")
    assert folder.is_dir() and list(folder.iterdir()) == []


@pytest.mark.parametrize("blocker, target", [("f", "f/run"), ("f", "f")])
def test_prepare_dir_names_the_file_in_the_way(tmp_path, blocker, target):
    (tmp_path / blocker).write_text("x")
    with pytest.raises(StorageError) as e:
        prepare_dir(tmp_path / target, "run folder")
    msg = str(e.value)
    assert msg.startswith(f"storage error: run folder {tmp_path / target}: ")
    assert "is a file, not a folder" in msg and "\n" not in msg


def test_prepare_dir_full_says_so_and_removes_what_it_made(tmp_path, monkeypatch):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "_replace", full)
    with pytest.raises(StorageError) as e:
        prepare_dir(tmp_path / "run", "state folder")
    assert str(e.value) == f"storage error: state folder {tmp_path / 'run'}: no space left on device"
    assert e.value.why == "no space left on device"
    assert not (tmp_path / "run").exists()


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "summary.json", "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "summary.json", "old")

    def fsync(_fd):  # where a delayed-allocation file system reports a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", fsync)
    with pytest.raises(StorageError) as e:
        write_atomic(path, "new")
    monkeypatch.undo()
    assert str(e.value) == f"storage error: {path}: cannot write: no space left on device"
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_appender_creates_on_first_record_and_cuts_back_a_torn_one(tmp_path, monkeypatch):
    log = Appender(tmp_path / "metrics.jsonl")
    assert not log.path.exists()  # no 0-byte file before there is something to say
    log.append(b'{"a": 1}\n')
    _fail_writes(monkeypatch, errno.ENOSPC, after=5)  # half a record fits, then the disk is full
    with pytest.raises(StorageError) as e:
        log.append(b'{"b": 2, "long": "record"}\n')
    assert e.value.why == "no space left on device"
    monkeypatch.undo()
    log.close()
    assert log.path.read_bytes() == b'{"a": 1}\n'


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "a").write_text("2")
        raise RuntimeError("disk full half way")
    assert (target / "a").read_text() == "1"
    with atomic_dir(target) as d:
        (d / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_reserve_holds_room_until_released(tmp_path):
    r = Reserve(tmp_path)
    assert r.path.stat().st_size == storage.RESERVE_BYTES
    r.release()
    r.release()  # idempotent: released on the first failure and again at close
    assert not r.path.exists()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "no space left on device"),
                                         (errno.EACCES, "permission denied")])
def test_reasons_are_words_an_operator_acts_on(code, words):
    assert storage.reason(OSError(code, os.strerror(code))) == words


def test_a_folders_digest_changes_with_any_file_name_or_content_in_it(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_text("x")
    (tmp_path / "d" / "sub" / "b").write_text("y")
    first = tree_sha256(tmp_path / "d")
    assert tree_sha256(tmp_path / "d") == first and tree_sha256(tmp_path / "d" / "a") == file_sha256(tmp_path / "d" / "a")
    (tmp_path / "d" / "sub" / "b").write_text("z")
    assert tree_sha256(tmp_path / "d") != first
    (tmp_path / "d" / "sub" / "b").write_text("y")
    (tmp_path / "d" / "sub" / "b").rename(tmp_path / "d" / "sub" / "c")
    assert tree_sha256(tmp_path / "d") != first
