"""How a benchmark run sets up a CPU-only host, before JAX creates its backends.

``cpu_devices=1`` runs like a plain ``python`` process: one CPU device whose matmuls are
multi-threaded and whose independent ops (the ``chunked`` kernel's query blocks) XLA's thunk
executor runs in parallel. ``cpu_devices=0`` splits the host the way ``jaxgen train`` and
``jaxgen sample`` do (one single-threaded device per core, the batch sharded over them, see
:mod:`jaxgen.train.host`); n > 1 asks for n devices. Without ``--cpu-devices`` each benchmark
takes its default from ``benchmarks.__main__.DEFAULT_CPU_DEVICES`` (attention 1; denoise and
train 0). On the 2-core machine this was tuned on,
the chunked kernel's ratio to torch SDPA was the same or better on one device (e.g. forward at
T=2048: 0.62-0.89x on one device, 0.57-0.60x on two, same process interleaved). Every result
file records the configuration, so figures from the two are never mixed up. Nothing changes on a host with an accelerator, once JAX's
backends exist, or when ``XLA_FLAGS`` already forces a device count.
"""
from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class HostSetup:
    """What :func:`configure_host` did; ``note`` is one line for tables."""
    cpu_devices: int | None  # devices requested on a CPU host; None: left to JAX
    single_threaded: bool  # --xla_cpu_multi_thread_eigen=false was set
    note: str


def _accelerator_installed() -> bool:
    from jaxgen.train import host
    return host._accelerator_installed()  # the same rule as jaxgen train


def configure_host(cpu_devices: int = 1) -> HostSetup:
    """Splits a CPU-only host into ``cpu_devices`` devices (0: one per available core) the way
    ``jaxgen train`` does; 1 leaves one device. Must run before JAX's backends are created."""
    from jax._src import xla_bridge

    from jaxgen.train import host

    if cpu_devices < 0:
        raise ValueError(f"--cpu-devices must be >= 0 (0: one per core), got {cpu_devices}")
    flags = os.environ.get("XLA_FLAGS", "")
    forced = re.search(r"xla_force_host_platform_device_count=(\d+)", flags)
    if xla_bridge.backends_are_initialized() or _accelerator_installed():
        return HostSetup(None, False, "host left as JAX configured it")
    if forced:
        host.reserve_pool_threads(int(forced.group(1)))
        return HostSetup(int(forced.group(1)), "multi_thread_eigen=false" in flags,
                         f"XLA_FLAGS forces {forced.group(1)} CPU devices")
    wanted = cpu_devices or host.available_cores()
    if wanted == 1:
        return HostSetup(1, False, "one CPU device, multi-threaded matmuls (plain python)")
    import jax

    jax.config.update("jax_num_cpu_devices", wanted)
    host.reserve_pool_threads(wanted)
    single = wanted >= host.available_cores() and "xla_cpu_multi_thread_eigen" not in flags
    if single:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return HostSetup(wanted, single, f"CPU split into {wanted} single-threaded devices, batch "
                     "sharded over them, as jaxgen train does" if single else
                     f"CPU split into {wanted} devices, batch sharded over them")
