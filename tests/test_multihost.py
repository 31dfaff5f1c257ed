"""Two processes on one machine (jax.distributed, gloo) train exactly like one process."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import toy
from jaxgen import models
from jaxgen.train import loop

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_equals_single_process(tmp_path, monkeypatch):
    port = _free_port()
    out = tmp_path / "kernel.npy"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(port),
                               str(i), str(tmp_path / "mh"), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    # The checkpoint written by both processes holds one data-iterator state per process.
    names = os.listdir(tmp_path / "mh" / "checkpoints" / "4" / "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(names)

    monkeypatch.setitem(models.FAMILIES, "toy", "toy")
    config = toy.toy_config(steps=4)
    config.mesh.data = 1
    ref = loop.train(config, str(tmp_path / "one"), family=toy.make_family, datasets=toy.toy_datasets(config),
                     devices=jax.devices()[:1], progress=False)
    np.testing.assert_allclose(np.load(out), np.asarray(ref.params["params"]["Dense_0"]["kernel"]),
                               rtol=1e-5, atol=1e-6)
