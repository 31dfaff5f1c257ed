"""What SIGINT (Ctrl-C) and SIGTERM (preemption) do at each moment of a jaxgen process.

Python's default SIGINT handler raises ``KeyboardInterrupt`` at whatever bytecode runs next.
Inside JAX's lowering (Python code that builds MLIR through C++ bindings) that leaves native
state half-built, and the interpreter later dies in its finalisation (exit 139, "Segmentation
fault", no Python frame: seen with Ctrl-C 6-10 s into ``jaxgen train gan_mnist:smoke``). A
Python handler also runs only when the main thread returns to Python, so a Ctrl-C during a
long XLA computation waited for it to end (99 s in ``jaxgen eval`` of the VAE). So a jaxgen
command never lets a signal raise at a random bytecode, and each moment is in one of two modes:

* **immediate** (a command's default: start-up, building, compiling, evaluating, sampling): no
  write is in flight, and every file jaxgen writes goes to a temporary name that is then
  renamed, so the process prints one line and ends at once with ``os._exit`` (no
  finalisation, hence no crash), even while the main thread waits in XLA: a watcher thread
  reads the signal from ``signal.set_wakeup_fd``. The workdir is left as SIGKILL would leave
  it, which the resume tests show is always consistent.
* **deferred** (the training loop and its checkpoint saves): the signal is only recorded; the
  loop stops at the next step boundary, or between evaluation batches, saves and exits.
  :func:`check` raises :class:`Stop` where a long loop can stop cleanly.

Library code (``jaxgen.train.loop.train`` called from Python) uses only the deferred mode,
around its step loop: an interactive session keeps its own Ctrl-C everywhere else.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[str] = []       # signals recorded in deferred mode, oldest first
_deferred_depth = [0]
_immediate: dict = {}           # {"status": fn, "message": fn} once install_immediate ran


class Stop(Exception):
    """Raised by :func:`check` after a signal was recorded in deferred mode."""

    def __init__(self, signal_name: str):
        super().__init__(f"{signal_name} received")
        self.signal_name = signal_name


def received() -> Optional[str]:
    """The first signal recorded in deferred mode since the mode was entered, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raises :class:`Stop` if a signal was recorded (call between units of long work)."""
    if _received:
        raise Stop(_received[0])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_now(name: str) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.write(_immediate["message"](name) + "\n")
        sys.stderr.flush()
    finally:
        os._exit(_immediate["status"](name))


def _watch(fd: int) -> None:
    """The watcher thread: ends the process on SIGINT/SIGTERM outside deferred sections."""
    wanted = {int(s) for s in SIGNALS}
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        for signum in data:
            if signum in wanted and _deferred_depth[0] == 0:
                _exit_now(signal.Signals(signum).name)


def _ignore(signum, frame) -> None:
    """The Python-level handler in immediate mode: the watcher thread acts, not the main one."""


def install_immediate(exit_status: Callable[[str], int], message: Callable[[str], str]) -> None:
    """Makes SIGINT and SIGTERM end the process at once, outside deferred sections.

    ``exit_status(signal_name)`` and ``message(signal_name)`` give the exit status and the line
    printed on stderr. Call once, first thing in a command-line entry point (main thread).
    """
    if not _main_thread():
        return
    _immediate.update(status=exit_status, message=message)
    if "fd" not in _immediate:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        _immediate["fd"] = (r, w)
        threading.Thread(target=_watch, args=(r,), name="jaxgen-signals", daemon=True).start()
    for sig in SIGNALS:
        signal.signal(sig, _ignore)


@contextlib.contextmanager
def deferred(signals: tuple = SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` are only recorded (see :func:`received`, :func:`check`).

    The previous handlers come back on exit, and what was recorded is forgotten. Off the main
    thread (where Python cannot install handlers) the block runs unchanged.
    """
    if not _main_thread():
        yield
        return

    def record(signum, frame):
        _received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, record) for sig in signals}
    _deferred_depth[0] += 1
    try:
        yield
    finally:
        _deferred_depth[0] -= 1
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python; left alone
                signal.signal(sig, handler)
        if _deferred_depth[0] == 0:
            _received.clear()
