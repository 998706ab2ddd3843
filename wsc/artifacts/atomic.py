"""Atomic file writes for every artifact: write under a temporary name in the same folder, then rename.

A failed or interrupted compile never leaves a half-written file; a reader sees the old file or the new one.
Files get the usual permissions (0666 less the umask), not the private mode temporary files are made with.
`unwritable` says, before anything is computed, why a folder could not receive them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _write_file(fd: int, data: bytes | str) -> None:
    """Write `data` to the open descriptor `fd` and close it: the one place artifact bytes reach the disk."""
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first: what making it creates."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first) that exists and is empty: folders a failed write made."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or not ours to remove): its parents are not empty either


def unwritable(folder: Path) -> str:
    """Why `folder` cannot receive files, or '' when it can. Found by doing it: the folder is made (with its
    missing parents) and a file created in it, and everything made is removed again."""
    missing = _missing_folders(folder)
    existing = missing[-1].parent if missing else folder
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    step = "making a folder there"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        step = "creating a file there"
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".wsc-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return f"{step} failed ({error.strerror or type(error).__name__})"
    finally:
        _remove_empty(missing)
    return ""


def write_atomic(path: Path, data: bytes | str) -> None:
    missing = _missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        _write_file(fd, data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        _remove_empty(missing)
        raise


def write_all_atomic(folder: Path, files: dict[str, bytes | str], remove: Sequence[str] = ()) -> None:
    """Write every file of `files` into `folder` as one step: each is written under a temporary name first,
    then all are renamed into place with Ctrl-C held back, so an interrupt or a failure leaves the folder as
    it was (and no folder at all, nor any parent made for it, when it did not exist) or holding every new
    file, never some of them. The files named in `remove` (an earlier write's that this one replaces by
    nothing) are deleted in the same step, after the renames."""
    missing = _missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary: dict[str, str] = {}
    try:
        umask = os.umask(0)
        os.umask(umask)
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            temporary[name] = tmp
            _write_file(fd, data)
            os.chmod(tmp, 0o666 & ~umask)
        with _interrupts_held():
            for name, tmp in temporary.items():
                os.replace(tmp, folder / name)
            temporary.clear()
            for name in remove:
                (folder / name).unlink(missing_ok=True)
    except BaseException:
        for tmp in temporary.values():
            Path(tmp).unlink(missing_ok=True)
        _remove_empty(missing)
        raise


class _interrupts_held:
    """Hold SIGINT back for the duration (it is delivered, as KeyboardInterrupt, when the block ends)."""

    def __enter__(self) -> None:
        import signal
        import threading

        self.held = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
        if self.held:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
