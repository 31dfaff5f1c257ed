"""Device mesh and shardings: data parallelism, FSDP (ZeRO-3 style) and tensor axes.

The mesh has three named axes ``("data", "fsdp", "tensor")``. Batches are split along their
leading dimension over ``("data", "fsdp")``; with ``fsdp > 1`` every parameter and optimizer-state
array is additionally split along its largest dimension divisible by the fsdp size (Rajbhandari
et al. 2020, ZeRO; Zhao et al. 2023, PyTorch FSDP), and XLA inserts the all-gathers and
reduce-scatters. This is the current JAX form of data-parallel ``pmap``: ``jit`` with
``NamedSharding`` (multi-host once ``jax.distributed.initialize()`` has run).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh ("data", "fsdp", "tensor").

    Attributes:
      data: data-parallel devices (-1: every device the other axes leave).
      fsdp: devices that parameters and optimizer state are sharded over (ZeRO-3 style).
      tensor: devices that heads and MLP widths are split over (tensor parallelism).
      cpu_devices: CPU-only hosts: 0 = one device per core (jaxgen.train.host), 1 = one
        multi-threaded device, n = exactly n devices. Ignored where there is an accelerator.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    cpu_devices: int = 0

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh axis sizes must be positive, at most one of them -1, got "
                             f"data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}")
        if self.cpu_devices < 0:
            raise ValueError(f"mesh.cpu_devices must be >= 0 (0: automatic), got "
                             f"{self.cpu_devices}")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolves ``-1`` and checks that the axes multiply to ``num_devices``."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not split into mesh axes {sizes}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Optional[list] = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over ``devices`` (default: all, every process)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2 ** 10) -> P:
    """Shards the largest dimension divisible by ``fsdp_size``; small arrays stay replicated."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _spec_lookup(param_specs: Any, abstract_params: Any) -> dict[tuple[str, ...], tuple]:
    flat_specs = jax.tree_util.tree_flatten_with_path(
        param_specs, is_leaf=lambda x: isinstance(x, P))[0]
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    shapes = {_path_key(p): tuple(x.shape) for p, x in flat_params}
    return {_path_key(p): (s, shapes.get(_path_key(p))) for p, s in flat_specs}


def state_specs(abstract_state: Any, fsdp_size: int, param_specs: Optional[Any] = None) -> Any:
    """PartitionSpecs for a whole TrainState (params, optimizer state, EMA...).

    ``param_specs`` (from the family's logical axes, :meth:`Family.param_specs`) give the
    parameters' specs; every other leaf whose key path ends with a parameter's path and has its
    shape (Adam's mu and nu, the EMA) gets the same spec. Leaves matched by neither (research
    families without logical axes, counters) fall back to :func:`fsdp_spec`.
    """
    lookup: dict = {}
    if param_specs is not None:
        lookup = _spec_lookup(param_specs, abstract_state.params)

    def spec(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        key = _path_key(path)
        for n in range(len(key)):
            hit = lookup.get(key[n:])
            if hit is not None and hit[1] == shape:
                return hit[0]
        return fsdp_spec(shape, fsdp_size)

    return jax.tree_util.tree_map_with_path(spec, abstract_state)


def state_shardings(abstract_state: Any, mesh: Mesh, param_specs: Optional[Any] = None) -> Any:
    """NamedShardings for a TrainState on ``mesh`` (see :func:`state_specs`)."""
    specs = state_specs(abstract_state, mesh.shape["fsdp"], param_specs)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles per-process numpy batches into global arrays sharded along the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
