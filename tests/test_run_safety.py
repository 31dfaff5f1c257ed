"""A run cannot hurt itself: one run per workdir, and a signal at any moment ends cleanly.

These start real ``jaxgen`` processes (``python -m jaxgen.cli``, the program's own signal
handling) on ``vae_mnist:smoke`` and send signals when the process logs that it has reached a
moment (building, compiling, the step loop with a save in flight, the final evaluation).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxgen.errors import UsageError
from jaxgen.train import workdir as workdir_lib

RECIPE = "vae_mnist:smoke"


def _start(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "jaxgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kw)


class Watched:
    """A process whose output is read by a thread, so a test can wait for a line."""

    def __init__(self, args: list[str]):
        self.proc = _start(args)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                self._thread.join(5)
                return any(text in line for line in self.lines)
            time.sleep(0.02)
        return False

    def finish(self, timeout: float = 180.0) -> int:
        rc = self.proc.wait(timeout)
        self._thread.join(10)
        return rc

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _train_args(w, *sets: str) -> list[str]:
    args = ["train", RECIPE, "--workdir", str(w), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return args


def _ckpt_steps(w) -> list[int]:
    d = os.path.join(w, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def test_a_second_run_on_a_workdir_is_refused_and_the_first_is_untouched(tmp_path):
    w = tmp_path / "w"
    first = Watched(_train_args(w, "train.steps=300", "train.log_every=10"))
    assert first.wait_for("training from step 0"), first.output
    second = subprocess.run([sys.executable, "-m", "jaxgen.cli", *_train_args(w)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    err = [line for line in second.stderr.strip().splitlines() if "error" in line]
    assert len(err) == 1 and f"is in use by process {first.proc.pid} on host" in err[0], \
        second.stderr
    assert "Traceback" not in second.stderr
    assert first.finish() == 0, first.output
    steps = [json.loads(line)["step"] for line in open(w / "metrics.jsonl")
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert len(os.listdir(w / "tensorboard")) == 1  # one event file: only the first run wrote
    assert _ckpt_steps(w)[-1] == 300


def test_a_run_killed_with_sigkill_leaves_no_lock_behind(tmp_path):
    w = tmp_path / "w"
    run = Watched(_train_args(w, "train.steps=100000", "train.ckpt_every=20"))
    assert run.wait_for("training from step 0"), run.output
    time.sleep(1.0)
    run.proc.kill()
    assert run.finish() == -signal.SIGKILL
    assert os.path.exists(w / workdir_lib.LOCK_FILE)  # the file stays; its lock died
    with workdir_lib.WorkdirLock(str(w)):
        pass
    again = subprocess.run([sys.executable, "-m", "jaxgen.cli", *_train_args(w, "train.steps=10")],
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr


def test_a_lock_in_process_refuses_a_second_taker_and_names_the_holder(tmp_path):
    with workdir_lib.WorkdirLock(str(tmp_path)):
        info = json.loads(open(tmp_path / workdir_lib.LOCK_FILE).read())
        assert info["pid"] == os.getpid()
        # flock locks belong to open file descriptions: a second one in this process conflicts
        with pytest.raises(UsageError, match=f"in use by process {os.getpid()} on host"):
            workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    with workdir_lib.WorkdirLock(str(tmp_path)):  # released on exit
        pass


def test_without_flock_the_lock_file_is_the_lock_and_a_dead_holder_is_taken_over(tmp_path,
                                                                                  monkeypatch):
    import fcntl
    import socket

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    pid_file = tmp_path / (workdir_lib.LOCK_FILE + ".pid")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    pid_file.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(),
                                    "since": "earlier"}))
    lock = workdir_lib.WorkdirLock(str(tmp_path)).acquire()  # the holder is dead: taken over
    assert json.loads(pid_file.read_text())["pid"] == os.getpid()
    with pytest.raises(UsageError, match=f"in use by process {os.getpid()}"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    lock.release()
    assert not pid_file.exists()
    pid_file.write_text(json.dumps({"pid": 1, "host": "another-host", "since": "earlier"}))
    with pytest.raises(UsageError, match="on host another-host .* remove"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()


@pytest.mark.parametrize("path, message", [
    ("/sys/jaxgen_w", "cannot create it"),
    ("FILE/w", "a file is in the way"),
])
def test_an_unwritable_workdir_is_one_line_before_any_work(tmp_path, path, message):
    (tmp_path / "FILE").write_text("x")
    path = path.replace("FILE", str(tmp_path / "FILE"))
    r = subprocess.run([sys.executable, "-m", "jaxgen.cli", "train", RECIPE, "--workdir", path],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("jaxgen train: error: --workdir")
    assert message in r.stderr


# (the log line that marks the moment, the signal, the exit statuses documented for it)
MOMENTS = [
    ("building vae_mnist:smoke", signal.SIGINT, {130}),
    ("compiling the train step", signal.SIGTERM, {75}),
    ("compiling the train step", signal.SIGINT, {130}),
    ("training from step", signal.SIGINT, {75}),          # saves the current step
    ("training from step", signal.SIGTERM, {75}),
    ("final evaluation", signal.SIGINT, {130}),           # the last step is saved
]


def test_a_signal_at_any_moment_exits_as_documented_and_the_workdir_resumes(tmp_path):
    """One workdir, interrupted again and again at every moment (every step saves, so a
    signal in the loop meets an asynchronous save in flight), then resumed to the end."""
    w = tmp_path / "w"
    sets = ("train.steps=80", "train.ckpt_every=1", "train.keep_ckpts=2", "train.log_every=20",
            "eval.iwae_k=64")
    saved = []
    for marker, sig, statuses in MOMENTS:
        run = Watched(_train_args(w, *sets))
        assert run.wait_for(marker), run.output
        time.sleep(0.3 if marker == "training from step" else 0.0)
        assert run.proc.poll() is None, run.output
        run.proc.send_signal(sig)
        rc = run.finish()
        assert rc in statuses and rc != -signal.SIGSEGV, (marker, sig, rc, run.output[-3000:])
        assert "Traceback" not in run.output and "Segmentation" not in run.output
        if rc == 75 and marker == "training from step":
            assert "saved step" in run.output
            saved.append(_ckpt_steps(w)[-1])
    assert saved and all(s >= 1 for s in saved)
    final = subprocess.run([sys.executable, "-m", "jaxgen.cli", *_train_args(w, *sets)],
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "already trained to step 80" in final.stderr
    assert _ckpt_steps(w)[-1] == 80


def test_ctrl_c_in_eval_stops_at_once_and_writes_nothing(tmp_path):
    w = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "jaxgen.cli", *_train_args(w, "train.steps=2")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    # k=20,000 importance samples in chunks of 10: each of the two test batches is a long
    # computation inside XLA, during which a Python signal handler would never run.
    ev = Watched(["eval", "--workdir", str(w), "--set", "eval.iwae_k=20000",
                  "--set", "eval.iwae_chunk=10", "--set", "data.eval_batch_size=512"])
    assert ev.wait_for("IWAE bound (k=20000) over the test split"), ev.output
    time.sleep(1.0)
    ev.proc.send_signal(signal.SIGINT)
    assert ev.finish(timeout=60) == 130, ev.output
    assert "nothing was written" in ev.output
    assert len([line for line in ev.lines if "test images done" in line]) <= 1
    assert not os.path.exists(w / "eval.json")
