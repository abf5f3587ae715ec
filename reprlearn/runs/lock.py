"""One process at a time per run folder: an OS file lock, held for the whole run.

The lock is a file in the system's temporary folder named after the run folder's absolute path, so
nothing is written beside or inside the user's folder (a complete run run again leaves every file
as it was). It holds the PID and command of the process that owns it, so a second process can say
who has the folder. The operating system releases the lock when its process ends, however it ends,
so a killed run's lock is simply taken over by the next. It guards processes of one machine; the
workers of a multi-worker run share their chief's (only the chief writes the folder).

Example:
    with run_lock("runs/demo", command="reprlearn train configs/demo.yaml"):
        ...  # train, evaluate, report
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from reprlearn.errors import RunFolderError

try:  # POSIX
    import fcntl

    def _try_lock(handle) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
except ImportError:  # Windows
    import msvcrt

    def _try_lock(handle) -> bool:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False


def lock_path(out_dir: str | Path) -> Path:
    """The lock file of a run folder, keyed by its absolute path (symbolic links resolved)."""
    key = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "reprlearn-locks" / f"{key}.lock"


@contextlib.contextmanager
def run_lock(out_dir: str | Path, command: str | None):
    """Holds the run folder's lock for the `with` block.

    Raises:
        RunFolderError: another live process holds the folder (the message names its PID and command).
    """
    out = Path(out_dir)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if not _try_lock(handle):
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            raise RunFolderError(f"{out} is in use by another reprlearn process (pid {holder.get('pid', '?')}: "
                                 f"{holder.get('command') or 'a Python API run'}); wait for it to end or stop it. "
                                 f"Received: out={str(out)!r}")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": command}))
        handle.flush()
        yield
