"""Atomic file writes for every artifact: write under a temporary name in the same folder, then rename.

A failed or interrupted compile never leaves a half-written file; a reader sees the old file or the new one.
Files get the usual permissions (0666 less the umask), not the private mode temporary files are made with.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all_atomic(folder: Path, files: dict[str, bytes | str]) -> None:
    """Write every file of `files` into `folder` as one step: each is written under a temporary name first,
    then all are renamed into place with Ctrl-C held back, so an interrupt or a failure leaves the folder as
    it was (and no folder at all when it did not exist) or holding every new file, never some of them."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    temporary: dict[str, str] = {}
    try:
        umask = os.umask(0)
        os.umask(umask)
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            temporary[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            os.chmod(tmp, 0o666 & ~umask)
        with _interrupts_held():
            for name, tmp in temporary.items():
                os.replace(tmp, folder / name)
            temporary.clear()
    except BaseException:
        for tmp in temporary.values():
            Path(tmp).unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
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
