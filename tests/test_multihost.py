"""Two processes on one machine (jax.distributed, gloo) train exactly like one process."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

import toy
from jaxgen.train import loop

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(tmp_path, workdir, out, steps):
    _two_processes("multihost_worker.py", str(workdir), str(out), str(steps))


def _two_processes(script, *args):
    """Runs ``script PORT PROCESS_ID *args`` as the 2 processes of one jax.distributed job."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, script), str(port), str(i),
                               *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


def _one_process(workdir, steps):
    # as the workers: runs of different lengths agree
    config = toy.with_(toy.toy_config(steps=steps), **{"mesh.data": 1, "optim.schedule": "constant"})
    return loop.train(config, str(workdir), family=toy.make_family,
                      datasets=toy.toy_datasets(config), devices=jax.devices()[:1], progress=False)


def _kernel(state):
    return np.asarray(state.params["params"]["Dense_0"]["kernel"])


def test_two_process_run_equals_single_process_and_resumes_across_process_counts(tmp_path):
    out = tmp_path / "kernel.npy"
    _workers(tmp_path, tmp_path / "mh", out, steps=4)
    # The data position is the step: no per-process iterator files in the checkpoint.
    assert not os.path.exists(tmp_path / "mh" / "checkpoints" / "4" / "data")
    ref4 = _one_process(tmp_path / "one", 4)
    np.testing.assert_allclose(np.load(out), _kernel(ref4), rtol=1e-5, atol=1e-6)

    ref6 = _one_process(tmp_path / "ref6", 6)
    # Saved by 2 processes, resumed by 1.
    resumed = _one_process(tmp_path / "mh", 6)
    np.testing.assert_allclose(_kernel(resumed), _kernel(ref6), rtol=1e-5, atol=1e-6)
    # Saved by 1 process, resumed by 2.
    _workers(tmp_path, tmp_path / "one", out, steps=6)
    np.testing.assert_allclose(np.load(out), _kernel(ref6), rtol=1e-5, atol=1e-6)


def test_sigterm_to_both_processes_saves_one_step_and_exits_with_requeue_status(tmp_path):
    import signal
    import time

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    marker = tmp_path / "started"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(port),
                               str(i), str(tmp_path / "w"), str(tmp_path / "k.npy"), "1000000",
                               str(marker)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    try:
        deadline = time.time() + 240
        while not all(os.path.exists(f"{marker}.{i}") for i in range(2)):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[0].decode()[-2000:] for p in procs if p.poll() is not None]
            time.sleep(0.2)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    steps = set()
    for p, log in zip(procs, logs):
        assert p.returncode == loop.PREEMPTED_EXIT_STATUS, log[-3000:]
        steps.add(int(log.split("preempted at step ")[1].split()[0]))
    assert len(steps) == 1  # both processes stopped at the step the sync point agreed on
    saved = sorted(int(d) for d in os.listdir(tmp_path / "w" / "checkpoints") if d.isdigit())
    assert saved[-1] == steps.pop()  # the agreed step was saved (earlier ones: ckpt_every=3)


def test_two_processes_read_disjoint_shards_that_make_the_global_batch(tmp_path):
    """Each process of a jax.distributed job reads its own share of a prepared ArrayRecord set
    (through a Grain worker process) and of a token file; together they are the global batch
    one process reads."""
    from jaxgen import settings
    from jaxgen.config import Experiment, ImageData, TextData
    from jaxgen.data import arrayrecord, images, make_datasets, tokenfile

    s = images.mnist_embedded()
    np.savez(tmp_path / "d.npz", image=s.train_images[:240], label=s.train_labels[:240])
    arrayrecord.prepare_images(str(tmp_path / "d.npz"), str(tmp_path / "ar"), eval_fraction=0.2)
    text = tmp_path / "t.txt"
    text.write_text(open(os.path.join(HERE, "..", "jaxgen", "train", "loop.py")).read())
    tokenfile.prepare_text([str(text)], "byte", str(tmp_path / "tok"), workers=1)
    for kind, data, path in (
            ("arrayrecord", {"batch_size": 32, "eval_batch_size": 48}, tmp_path / "ar"),
            ("token_file", {"batch_size": 8, "eval_batch_size": 8, "seq_len": 32,
                            "eval_batches": 2}, tmp_path / "tok")):
        _two_processes("data_worker.py", kind, str(path), str(tmp_path / kind))
        cls = ImageData if kind == "arrayrecord" else TextData
        one = make_datasets(Experiment(data=settings.from_dict(
            cls, {"source": kind, "path": str(path), **data}, what="data")))
        key = "image" if kind == "arrayrecord" else "tokens"
        parts = [np.load(tmp_path / f"{kind}.{p}.npz") for p in range(2)]
        for b in range(3):
            whole = next(one.train)[key]
            p0, p1 = parts[0][f"arr_{b}"], parts[1][f"arr_{b}"]
            assert len(p0) == len(p1) == len(whole) // 2
            np.testing.assert_array_equal(np.concatenate([p0, p1]), whole)
            assert not {x.tobytes() for x in p0} & {x.tobytes() for x in p1}
