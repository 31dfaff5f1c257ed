"""Ahead-of-time compilation for accelerators this host does not have.

With libtpu installed (``pip install "jax[tpu]"``) JAX runs the real TPU compiler on a CPU-only
host for any TPU topology; with ``jax-cuda12-plugin`` and ``jax-cuda12-pjrt`` it runs XLA's GPU
compiler for an H100/H200 it cannot see. The recipe::

    devices = topology_devices("v5e:16x16")                      # compile-only devices
    mesh = make_topology_mesh(devices, {"data": -1, "fsdp": 16})
    args = jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec)), ...
    with jax.set_mesh(mesh):
        compiled = aot_compile(jax.jit(step).lower(*args))      # CompileOOMError if it can't fit
    print(format_report(compile_report(compiled, model_flops=6 * n_params * tokens)))

Everything the report says about time is the compiler's estimate, not a measurement.
Modules: :mod:`~jaxgen.aot.chips` (chip table, HBM), :mod:`~jaxgen.aot.topology` (names, devices,
meshes), :mod:`~jaxgen.aot.report` (memory, cost, MFU, OOM), :mod:`~jaxgen.aot.hlo` (collectives),
:mod:`~jaxgen.aot.gpu_targets` (CUDA target configs).
"""
from __future__ import annotations

from jaxgen.aot.chips import CHIPS, Chip, available_hbm_bytes, chip_of_device, get_chip
from jaxgen.aot.hlo import (
    COLLECTIVE_KINDS,
    collective_summary,
    custom_call_targets,
    find_collectives,
    loop_trip_counts,
)
from jaxgen.aot.report import (
    CompileOOMError,
    aot_compile,
    compile_report,
    format_report,
    oom_from_error,
)
from jaxgen.aot.topology import (
    TopologySpec,
    make_topology_mesh,
    parse_topology,
    resolve_axis_sizes,
    topology_devices,
)


def libtpu_available() -> bool:
    """Whether libtpu can be imported (TPU topologies can be compiled for)."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


__all__ = [
    "CHIPS",
    "COLLECTIVE_KINDS",
    "Chip",
    "CompileOOMError",
    "TopologySpec",
    "aot_compile",
    "available_hbm_bytes",
    "chip_of_device",
    "collective_summary",
    "compile_report",
    "custom_call_targets",
    "find_collectives",
    "format_report",
    "get_chip",
    "libtpu_available",
    "loop_trip_counts",
    "make_topology_mesh",
    "oom_from_error",
    "parse_topology",
    "resolve_axis_sizes",
    "topology_devices",
]
