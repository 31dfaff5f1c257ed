"""The workdir of a run: one owner at a time, paths checked before any work, atomic writes.

A workdir belongs to one experiment and, while it trains, to one run. :class:`WorkdirLock`
holds an OS lock (``flock``) on ``WORKDIR/.jaxgen.lock``, so a second ``jaxgen train`` on the
same workdir refuses in one line naming the process, host and start time of the first, and a
run that dies (even by SIGKILL) releases the lock with its process: nothing stale is left to
remove. On a filesystem without ``flock`` the lock file itself is the lock (created
exclusively), and a lock left by a dead process of the same host is taken over. In a
multi-host run process 0 owns the lock for all processes.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
from typing import Any, Optional

from jaxgen.errors import UsageError

LOCK_FILE = ".jaxgen.lock"


def _oserror_text(e: OSError) -> str:
    return e.strerror or type(e).__name__


def ensure_dir(path: str, what: str) -> str:
    """Creates directory ``path`` (and its parents) if needed and checks it is writable.

    Raises a one-line UsageError naming ``what`` (e.g. "--workdir") when it cannot be.
    """
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{what} {path}: a file is in the way (not a directory)") from None
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot create it ({_oserror_text(e)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: not writable")
    return path


def check_output_file(path: str, what: str = "--out", suffixes: tuple[str, ...] = ()) -> str:
    """Checks, before any work, that file ``path`` can be written (its folder is created).

    ``suffixes``: the accepted file name endings (any when empty). A file that did not exist is
    not left behind. Raises a one-line UsageError.
    """
    if suffixes and not path.endswith(suffixes):
        raise UsageError(f"{what} {path}: name a {' or '.join(suffixes)} file")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory; name a file")
    ensure_dir(os.path.dirname(os.path.abspath(path)), what)
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot be written ({_oserror_text(e)})") from None
    if not existed:
        os.remove(path)
    return path


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes ``path`` through a temporary file and a rename: never half-written."""
    mode = "wb" if isinstance(data, bytes) else "w"
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def _holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(workdir: str, info: dict) -> str:
    who = (f"process {info.get('pid', '?')} on host {info.get('host', '?')} since "
           f"{info.get('since', '?')}") if info else "another process"
    return f"workdir {workdir} is in use by {who}; wait for it to finish or choose another --workdir"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """An exclusive lock on a workdir for the lifetime of a run (a context manager)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: Optional[int] = None
        self._file_lock = False

    def _info(self) -> bytes:
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": since}).encode()

    def acquire(self) -> "WorkdirLock":
        """Takes the lock; a one-line UsageError if another live run holds it."""
        import fcntl

        ensure_dir(self.workdir, "--workdir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(_describe(self.workdir, _holder(self.path))) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            return self._acquire_file_lock()
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._info(), 0)
        self._fd = fd
        return self

    def _acquire_file_lock(self) -> "WorkdirLock":
        """Fallback for filesystems without flock: the lock file's existence is the lock."""
        path = self.path + ".pid"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _holder(path)
                stale = (info.get("host") == socket.gethostname()
                         and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]))
                if not stale:
                    raise UsageError(_describe(self.workdir, info) + f" (or remove {path} if "
                                     "that run is gone)") from None
                os.remove(path)
                continue
            os.write(fd, self._info())
            os.close(fd)
            self._file_lock = True
            return self
        raise UsageError(_describe(self.workdir, _holder(path)))

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)  # the file stays: removing it would race with a waiting run
            self._fd = None
        if self._file_lock:
            try:
                os.remove(self.path + ".pid")
            except FileNotFoundError:
                pass
            self._file_lock = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock:
    """The lock of a (possibly multi-host) run: process 0 takes :class:`WorkdirLock`, and every
    process learns whether it succeeded, so all stop together with the same one-line error."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._lock: Optional[WorkdirLock] = None

    def __enter__(self) -> "RunLock":
        import jax

        error: Optional[UsageError] = None
        if jax.process_index() == 0:
            try:
                self._lock = WorkdirLock(self.workdir).acquire()
            except UsageError as e:
                error = e
        if jax.process_count() > 1:
            import numpy as np
            from jax.experimental import multihost_utils
            ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not int(ok) and error is None:
                error = UsageError(_describe(self.workdir, {}))
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
