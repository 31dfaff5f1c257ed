"""Splitting a CPU-only host into devices (jaxgen.train.host)."""
import os
import subprocess
import sys

import pytest

from jaxgen.config import Experiment
from jaxgen.errors import UsageError
from jaxgen.train import host
from jaxgen.train.mesh import MeshConfig


@pytest.mark.parametrize("cores,batches,axes,expected", [
    (2, (12, 64), {}, 2),
    (8, (12, 64), {}, 4),            # 8, 6 and 5 do not divide both batch sizes
    (5, (12, 64), {}, 4),
    (1, (12, 64), {}, 1),
    (3, (7, 7), {}, 1),              # a prime batch: one device
    (8, (12, 64), {"fsdp": 2}, 4),   # device count a multiple of fsdp, 4 batch shards
    (8, (12, 64), {"tensor": 2}, 8), # tensor does not split the batch: 4 batch shards
    (8, (12, 64), {"data": 2}, 2),   # a fixed mesh asks for exactly data*fsdp*tensor
    (1, (12, 64), {"data": 2}, 1),   # not enough cores for the fixed mesh: no split
])
def test_choose_cpu_devices(cores, batches, axes, expected):
    assert host.choose_cpu_devices(cores, batches, **axes) == expected


def test_configure_is_a_no_op_once_the_backend_exists():
    import jax
    jax.devices()  # the test session's 8 simulated devices
    assert host.configure_cpu_host(Experiment()) is None


def test_negative_cpu_devices_is_an_error():
    from jaxgen import settings
    with pytest.raises(UsageError, match="cpu_devices must be >= 0"):
        settings.update(Experiment(), {"mesh.cpu_devices": -1})
    with pytest.raises(ValueError, match="cpu_devices must be >= 0"):
        MeshConfig(cpu_devices=-1)


SCRIPT = """
import os, jax
from jaxgen import settings
from jaxgen.config import Experiment
from jaxgen.train import host
c = settings.update(Experiment(), {{"data.batch_size": 12, "data.eval_batch_size": 64,
                                    "mesh.cpu_devices": {n}}})
n = host.configure_cpu_host(c)
print(n, len(jax.devices()), os.environ.get("NPROC", "-"), os.environ.get("XLA_FLAGS", ""))
"""


@pytest.mark.parametrize("requested", [0, 3])
def test_configure_splits_a_fresh_cpu_process(requested):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NPROC")}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(n=requested)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    expected = requested or host.choose_cpu_devices(host.available_cores(), (12, 64))
    if expected == 1:
        assert out[:2] == ["1", "1"]
        return
    assert out[:3] == [str(expected), str(expected), str(max(host.available_cores(), 2 * expected))]
    single_threaded = "--xla_cpu_multi_thread_eigen=false" in out[3:]
    assert single_threaded == (expected >= host.available_cores())


def test_user_forced_device_count_is_kept_and_gets_thread_head_room():
    env = {k: v for k, v in os.environ.items() if k != "NPROC"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=3")
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(n=0)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["None", "3", str(max(host.available_cores(), 6))]


def test_an_accelerator_needs_its_device_nodes_not_only_its_plugin(tmp_path, monkeypatch):
    """libtpu comes with the dev extra on every machine (deviceless TPU compiles): a CPU host
    with the wheel and no /dev/accel* or /dev/vfio/N is still a CPU host, and is split."""
    import importlib.util
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    installed = {"libtpu"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    root = str(tmp_path)
    assert not host._accelerator_installed(root)           # plugin only: a CPU host
    (tmp_path / "dev" / "vfio").mkdir(parents=True)
    (tmp_path / "dev" / "vfio" / "vfio").touch()             # the control node is not a chip
    assert not host._accelerator_installed(root)
    (tmp_path / "dev" / "vfio" / "0").touch()                # a v5p/v6e chip
    assert host._accelerator_installed(root)
    installed.clear()
    assert not host._accelerator_installed(root)           # nodes without the plugin
    (tmp_path / "dev" / "nvidia0").touch()
    installed.add("jax_cuda12_plugin")
    assert host._accelerator_installed(root)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")               # the user's choice wins
    assert not host._accelerator_installed(root)
