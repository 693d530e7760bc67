"""The study's output folder: checked before use, locked while a run uses it."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from .config import StudyInputError

__all__ = ["prepare_out", "OutLock"]


def prepare_out(out: Path) -> Path:
    """Create ``out`` if needed; :class:`StudyInputError` naming ``--out`` if it is not a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyInputError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyInputError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    # os.access also honours read-only mounts; a root user passes it on a read-only folder of a
    # writable mount, which the first write then reports
    if not os.access(out, os.W_OK | os.X_OK):
        raise StudyInputError(f"--out {out}: the folder is not writable")
    return out


class OutLock:
    """An exclusive ``flock`` on ``out/.lock`` for as long as the object lives (or until :meth:`release`).

    The kernel drops a ``flock`` when its process dies, so a killed run never leaves a lock that
    blocks the next one; the file itself stays (removing it would let two runs lock two files).
    """

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StudyInputError(f"--out {out}: another run{holder} is using this folder; wait for it to "
                                  f"finish or use another --out") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def _holder(self) -> str:
        try:
            pid = os.pread(self._fd, 32, 0).decode().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __del__(self):
        self.release()
