"""The output folder: `unwritable` finds what cannot be written before anything is computed, and leaves nothing
behind; a write that fails part way (a full disk) leaves no file, no temporary and no folder it made."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from wsc.artifacts import atomic


def test_a_writable_folder_is_probed_without_a_trace(tmp_path: Path) -> None:
    assert atomic.unwritable(tmp_path / "a" / "b" / "c") == ""
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("mine")
    assert atomic.unwritable(tmp_path / "kept") == ""
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]


def test_what_cannot_be_written_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert atomic.unwritable(tmp_path / "notes.txt") == f"{tmp_path / 'notes.txt'} is a file, not a folder"
    assert atomic.unwritable(tmp_path / "notes.txt" / "a" / "b") == f"{tmp_path / 'notes.txt'} is a file, not a folder"
    assert atomic.unwritable(Path("/proc/wsc-probe/x")).startswith("making a folder there failed (")
    assert not Path("/proc/wsc-probe").exists()


def full_after(files: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up after `files` files: the next one is written half way, then ENOSPC."""
    real, calls = atomic._write_file, []

    def write(fd: int, data: bytes | str) -> None:
        calls.append(fd)
        if len(calls) <= files:
            return real(fd, data)
        with os.fdopen(fd, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_file", write)


def test_a_full_disk_leaves_none_of_the_folders_it_made(tmp_path: Path, monkeypatch) -> None:
    full_after(1, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_all_atomic(tmp_path / "a" / "b" / "out", {"report.json": "{}", "placement.json": "{}"})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_leaves_an_existing_folder_as_it_was(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("old")
    full_after(1, monkeypatch)
    with pytest.raises(OSError):
        atomic.write_all_atomic(tmp_path / "out", {"report.json": "new", "placement.json": "new"})
    assert [(p.name, p.read_text()) for p in (tmp_path / "out").iterdir()] == [("report.json", "old")]


def test_a_full_disk_leaves_no_picture_nor_its_folder(tmp_path: Path, monkeypatch) -> None:
    full_after(0, monkeypatch)
    with pytest.raises(OSError):
        atomic.write_atomic(tmp_path / "pictures" / "map.svg", "<svg/>")
    assert list(tmp_path.iterdir()) == []
