"""One process at a time per run folder: an OS file lock beside the folder, held for the whole run.

The lock is `.NAME.lock` next to the run folder NAME (the folder itself may not exist yet when a
run starts, and it appears whole, by a rename). It holds the PID and command of the process that
owns it, so a second process can say who has the folder. The operating system releases the lock
when its process ends however it ends, so a killed run's lock is simply taken over by the next.

Example:
    with run_lock("runs/demo", command="reprlearn train configs/demo.yaml"):
        ...  # train, evaluate, report
"""

from __future__ import annotations

import contextlib
import json
import os
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
    """The lock file of a run folder: `.NAME.lock` beside it."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def run_lock(out_dir: str | Path, command: str | None):
    """Holds the run folder's lock for the `with` block.

    Raises:
        RunFolderError: another live process holds the folder (the message names its PID and command), or the
            folder's parent cannot hold the lock file (the message names the user's path and why).
    """
    out = Path(out_dir)
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:
        why = ("a folder on its path is a file" if isinstance(error, (FileExistsError, NotADirectoryError))
               else error.strerror or str(error))
        raise RunFolderError(f"cannot make the run folder {out}: {why} ({error.filename}). "
                             f"Received: out={str(out)!r}") from None
    with handle:
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
