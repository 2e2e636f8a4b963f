"""One send of an issue to a list at a time."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from pipeline.errors import SendError


class SendLock:
    """One send of an issue to a list at a time: an OS file lock (flock) next to the send log.

    The kernel releases it when the process ends, even by kill -9, so a lock file left behind by a dead
    process is no obstacle: the next send simply takes it. The file holds the owner's pid for the message.
    """

    def __init__(self, state_dir: Path, *, issue: str, list_name: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{issue}--{list_name}")
        self.path = state_dir / "locks" / f"{safe}.lock"
        self.label = f"issue {issue} to list {list_name}"
        self._fd: int | None = None

    def acquire(self) -> None:
        owner = self.take()
        if owner is not None:
            raise SendError(f"another send of {self.label} is running (pid {owner}); "
                            f"wait for it to end, or stop that process, then run this command again "
                            f"(the lock is {self.path})")

    def take(self, holder: str = "") -> str | None:
        """Without waiting: None once held, else the holder's pid (for callers with their own message). A
        `holder` other than a send (`newsletter db copy`) is named after the pid, so a refused send says so."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            return owner
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}{', ' + holder if holder else ''}\n".encode("ascii", "replace"), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held(self) -> bool:
        """True from acquire to release: the kernel keeps a flock as long as the process and its fd live."""
        return self._fd is not None

    def __enter__(self) -> SendLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
