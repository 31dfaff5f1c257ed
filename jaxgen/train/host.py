"""Splitting a CPU-only host into one XLA device per core, so data parallelism uses every core.

XLA:CPU runs one program on one device as a sequence of mostly single-threaded kernels: only
large matmuls use the intra-op thread pool, and for the small matmuls of a small model even
those barely gain from it (measured on a 2-core host: 50 ms per step of the 4x4x128 char LM
with one device and multi-threaded matmuls, 50 ms single-threaded). Splitting the host into
``n`` CPU devices (``jax_num_cpu_devices``) and running the usual data-parallel ``jit`` over
them puts every core to work on its own slice of the batch (35-39 ms per step on 2 devices), with
the gradient all-reduce in shared memory. Each device then runs single-threaded
(``--xla_cpu_multi_thread_eigen=false``), so the devices do not fight over the cores, and XLA's
thread pools get head-room (``NPROC``) so that devices waiting in an all-reduce cannot starve
their peers.

This must happen before JAX creates its backends, i.e. before the first ``jax.devices()``; the
CLI calls :func:`configure_cpu_host` first thing. It changes nothing on hosts with an
accelerator (a plugin installed and its device nodes present, so a CPU host with libtpu
installed for deviceless TPU compiles is still split), when the backend already exists, or when
the user has already chosen a device count through ``XLA_FLAGS``.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
from typing import Any, Optional

log = logging.getLogger("jaxgen")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_cpu_devices(cores: int, batch_sizes: tuple[int, ...], data: int = -1, fsdp: int = 1,
                       tensor: int = 1) -> int:
    """The largest device count <= ``cores`` that the mesh axes and every batch size allow.

    ``data``, ``fsdp``, ``tensor`` are the configured mesh axis sizes (``data=-1``: whatever the
    others leave). A count ``d`` is allowed when ``fsdp * tensor`` divides it, it equals
    ``data * fsdp * tensor`` if ``data`` is fixed, and the ``d / tensor`` batch shards divide
    every batch size. Returns at least 1.
    """
    model = fsdp * tensor
    for d in range(max(cores, 1), 0, -1):
        if d % model or (data != -1 and d != data * model):
            continue
        shards = d // tensor
        if all(b % shards == 0 for b in batch_sizes):
            return d
    return 1


def reserve_pool_threads(devices: int) -> None:
    """Gives XLA:CPU's thread pools two threads per device (``NPROC``, unless already set).

    XLA:CPU sizes its pools by NPROC (default: the core count). A device blocked in an
    in-process all-reduce holds a pool thread while it waits for its peers; with a pool no larger
    than the core count the runs stalled (2 devices on 2 cores: every run of 6 within a few
    hundred steps of the LM, with or without async dispatch; a 3-thread run also died). With two
    threads per device, 3,000 steps ran without a stall; the extra threads cost about 10% of step
    time. Must run before the backend exists.
    """
    os.environ.setdefault("NPROC", str(max(available_cores(), 2 * devices)))


# Device nodes an accelerator's driver creates on Linux; a plugin wheel without one of them (the
# `dev` extra installs libtpu on every machine, for deviceless TPU compiles) is no accelerator.
_ACCELERATOR_DEVICE_GLOBS = {
    "libtpu": ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*"),  # v2-v5e: accel; v5p, v6e: vfio
    "jax_cuda12_plugin": ("/dev/nvidia[0-9]*",),
    "jax_cuda13_plugin": ("/dev/nvidia[0-9]*",),
    "jax_rocm60_plugin": ("/dev/kfd",),
    "jax_rocm7_plugin": ("/dev/kfd",),
}


def _has_device_nodes(patterns: tuple[str, ...], root: str = "") -> bool:
    return any(glob.glob(root + pattern) for pattern in patterns)


def _accelerator_installed(root: str = "") -> bool:
    """Whether JAX will pick an accelerator here: ``JAX_PLATFORMS`` names one first, or an
    accelerator plugin is installed *and* its device nodes exist (``root`` prefixes the paths,
    for tests). A CPU-only host with libtpu installed for deviceless compiles is still split."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() not in ("cpu", "")
    return any(importlib.util.find_spec(name) is not None and _has_device_nodes(globs, root)
               for name, globs in _ACCELERATOR_DEVICE_GLOBS.items())


def configure_cpu_host(config: Any, *, distributed: bool = False) -> Optional[int]:
    """Splits a CPU-only host into devices as ``config.mesh.cpu_devices`` asks; returns the count.

    ``cpu_devices``: 0 = automatic (one device per available core, the largest count the batch
    sizes and mesh axes allow; 1 under ``jax.distributed``, where each process keeps one device),
    1 = a single device with multi-threaded matmuls (JAX's default), n > 1 = exactly n devices.
    Returns None (and changes nothing) where the split does not apply; see the module docstring.
    """
    from jax._src import xla_bridge

    requested = setting = int(config.mesh.cpu_devices)
    flags = os.environ.get("XLA_FLAGS", "")
    if xla_bridge.backends_are_initialized() or _accelerator_installed():
        return None
    forced = re.search(r"xla_force_host_platform_device_count=(\d+)", flags)
    if forced:  # the user chose the devices; still give the thread pools their head-room
        reserve_pool_threads(int(forced.group(1)))
        return None
    if requested == 0:
        if distributed:
            return None
        batches = (int(config.data.batch_size), int(config.data.eval_batch_size))
        requested = choose_cpu_devices(available_cores(), batches, int(config.mesh.data),
                                       int(config.mesh.fsdp), int(config.mesh.tensor))
    if requested == 1:
        return 1
    import jax

    jax.config.update("jax_num_cpu_devices", requested)
    reserve_pool_threads(requested)
    if requested >= available_cores() and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    log.info("CPU host split into %d devices for data parallelism (mesh.cpu_devices=%s)",
             requested, setting)
    return requested
