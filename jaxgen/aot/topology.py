"""Devices of an accelerator topology this host does not have, and meshes over them.

``topology_devices("v5e:16x16")`` returns 256 compile-only TPU devices from libtpu
(``jax.experimental.topologies.get_topology_desc``); ``jit(f).lower(abstract args with
NamedShardings over a mesh of them).compile()`` then runs the real TPU compiler on this host.
Multi-slice topologies come from libtpu's ``num_slices`` option: the devices carry a
``slice_index`` and collectives between slices go over the data-centre network (DCN).
GPU topologies (``h100:2x8``) use XLA's deviceless CUDA path with a target config from
:mod:`jaxgen.aot.gpu_targets`.

Names accepted (see :func:`parse_topology`):
  v5e:AxB, v5litepod:AxB, v6e:AxB      2-d slices of chips (v5e:2x2, v5e:16x16, v6e:4x4)
  v4:AxBxC, v5p:AxBxC                  3-d slices of chips (v4:2x2x1, v5p:4x4x4)
  v5e-N, v5litepod-N, v6e-N            Cloud TPU accelerator types, N chips (v5e-256)
  v4-N, v5p-N                          Cloud TPU accelerator types, N TensorCores = 2 x chips
  h100, h100:G, h100:HxG (h200 alike)  H hosts of G GPUs (default 1 host of 8)
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxgen.aot.chips import CHIP_ALIASES, CHIPS, Chip
from jaxgen.errors import UsageError

ACCEPTED = ("v5e:AxB, v5litepod:AxB, v6e:AxB, v4:AxBxC, v5p:AxBxC, v5e-N/v5litepod-N/v6e-N "
            "(N chips), v4-N/v5p-N (N TensorCores), h100[:HxG], h200[:HxG]")

# Cloud TPU accelerator types -> slice shapes (cloud.google.com/tpu/docs/v5e, /v6e: "Supported
# configurations"; /v4, /v5p: the same shapes per chip count as MaxText's accelerator_to_spec_map).
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
             256: (16, 16)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
             2048: (8, 16, 16), 4096: (16, 16, 16)}
DEFAULT_CHIPS_PER_HOST = (2, 2, 1)  # libtpu's default host bounds for these chips
DEFAULT_GPUS_PER_HOST = 8


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    """A parsed topology name: the chip and the shape of one slice.

    ``shape`` is the chip grid of a TPU slice, or (hosts, GPUs per host) for a GPU topology.
    """

    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"


def _bad(name: str, why: str = "") -> UsageError:
    why = f" ({why})" if why else ""
    return UsageError(f"unknown topology {name!r}{why}; accepted: {ACCEPTED}")


def _chip(prefix: str, name: str) -> Chip:
    key = CHIP_ALIASES.get(prefix.lower(), prefix.lower())
    if key not in CHIPS:
        raise _bad(name, f"unknown chip {prefix!r}")
    return CHIPS[key]


def parse_topology(name: str) -> TopologySpec:
    """Parse a topology name (see the module docstring). Raises UsageError (one line)."""
    if not isinstance(name, str) or not name.strip():
        raise _bad(str(name))
    text = name.strip()
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)-([0-9]+)", text)
    if m:  # accelerator type: v5e-256, v4-8
        chip, n = _chip(m.group(1), text), int(m.group(2))
        if chip.platform != "tpu":
            raise _bad(text, f"{chip.name} takes {chip.name}:HOSTSxGPUS")
        if chip.torus_dims == 3:
            if n % 2 or n // 2 not in SHAPES_3D:
                raise _bad(text, f"{chip.name}-N counts TensorCores, N in "
                                 f"{sorted(2 * c for c in SHAPES_3D)}")
            return TopologySpec(chip, SHAPES_3D[n // 2])
        if n not in SHAPES_2D:
            raise _bad(text, f"{chip.name}-N counts chips, N in {sorted(SHAPES_2D)}")
        return TopologySpec(chip, SHAPES_2D[n])
    prefix, _, dims = text.partition(":")
    chip = _chip(prefix, text)
    if chip.platform == "gpu":
        dims = dims or str(DEFAULT_GPUS_PER_HOST)
        if not re.fullmatch(r"[0-9]+(x[0-9]+)?", dims):
            raise _bad(text, "GPU topologies are NAME:GPUS or NAME:HOSTSxGPUS")
        shape = tuple(int(d) for d in dims.split("x"))
        shape = (1,) + shape if len(shape) == 1 else shape
        if min(shape) < 1:
            raise _bad(text, "sizes must be positive")
        return TopologySpec(chip, shape)
    if not re.fullmatch(r"[0-9]+(x[0-9]+)+", dims):
        raise _bad(text, f"{chip.name} needs a shape such as {chip.name}:"
                         f"{'x'.join(['2'] * chip.torus_dims)}")
    shape = tuple(int(d) for d in dims.split("x"))
    if len(shape) != chip.torus_dims:
        raise _bad(text, f"{chip.name} slices are {chip.torus_dims}-d")
    if min(shape) < 1:
        raise _bad(text, "sizes must be positive")
    return TopologySpec(chip, shape)


DEVICELESS_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",  # do not probe a GCE metadata server for a TPU VM
    # libtpu takes /tmp/libtpu_lockfile so two processes never drive the same chips; compiling
    # for a topology drives none, so it must not fail beside a training run or a second compile
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_STDERR_LOG_LEVEL": "3",  # libtpu's notes about host bounds it cannot find
    "TPU_MIN_LOG_LEVEL": "3",
}


def deviceless_env() -> None:
    """Set libtpu's environment for compile-only use (before libtpu loads; a variable the user
    set is kept)."""
    for key, value in DEVICELESS_ENV.items():
        os.environ.setdefault(key, value)


def _tpu_devices(spec: TopologySpec, slices: int) -> list:
    from jax.experimental import topologies

    deviceless_env()

    bounds = tuple(min(s, b) for s, b in
                   zip(spec.shape + (1,) * (3 - len(spec.shape)), DEFAULT_CHIPS_PER_HOST))
    try:
        topo = topologies.get_topology_desc(
            topology_name=spec.libtpu_name, platform="tpu", chip_config_name=spec.chip.chip_config,
            chips_per_host_bounds=bounds, num_slices=slices)
    except RuntimeError as e:  # JaxRuntimeError subclasses RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "TPU support not installed" in first:
            raise UsageError("compiling for a TPU topology needs libtpu: pip install "
                             "'jax[tpu]'") from None
        raise UsageError(f"libtpu refused topology {spec.libtpu_name!r}: {first}") from None
    return list(topo.devices)


def _gpu_devices(spec: TopologySpec) -> list:
    from jax.experimental import topologies

    from jaxgen.aot.gpu_targets import target_config

    hosts, per_host = spec.shape
    try:
        # "partitions x hosts per partition x devices per host": each H100/H200 host is its own
        # NVLink domain, so a partition is a host.
        topo = topologies.get_topology_desc(platform="cuda", target_config=target_config(
            spec.chip.name), topology=f"{hosts}x1x{per_host}")
    except (NotImplementedError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"deviceless CUDA compilation for {spec.chip.name} is unavailable here "
                         f"({first}); it needs pip install jax-cuda12-plugin=={jax.__version__} "
                         f"jax-cuda12-pjrt=={jax.__version__}") from None
    return list(topo.devices)


def topology_devices(name: str, slices: int = 1) -> list:
    """Compile-only devices of topology ``name`` times ``slices``, in libtpu's order.

    Args:
      name: a topology name (see the module docstring), e.g. ``"v5e:2x2"``.
      slices: number of slices joined over DCN (TPU only); each device's ``slice_index`` says
        which slice it is on.
    Returns:
      A list of ``num_chips * slices`` devices (one per chip: v4 and v5p in megacore mode).
    Raises:
      UsageError (one line): a bad name, ``slices < 1``, a GPU topology with ``slices > 1``,
      libtpu or the CUDA plugin missing, or a shape libtpu refuses.
    """
    spec = parse_topology(name)
    if not isinstance(slices, int) or isinstance(slices, bool) or slices < 1:
        raise UsageError(f"slices must be an integer >= 1, got {slices!r}")
    if spec.chip.platform == "gpu":
        if slices != 1:
            raise UsageError(f"slices apply to TPU topologies; for several {spec.chip.name} "
                             f"hosts write {spec.chip.name}:HOSTSxGPUS")
        return _gpu_devices(spec)
    return _tpu_devices(spec, slices)


def _num_slices(devices: Sequence) -> int:
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def resolve_axis_sizes(axis_sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Axis sizes with one -1 filled in so that their product is ``num_devices``.

    Raises UsageError (one line) for sizes < 1 other than a single -1, or a product that does
    not divide / equal the device count.
    """
    sizes = dict(axis_sizes)
    bad = {a: s for a, s in sizes.items() if not isinstance(s, int) or (s < 1 and s != -1)}
    free = [a for a, s in sizes.items() if s == -1]
    if bad or len(free) > 1:
        raise UsageError(f"mesh axis sizes must be positive integers with at most one -1, "
                         f"got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % known:
            raise UsageError(f"mesh {sizes} does not divide the {num_devices} devices "
                             f"({num_devices} is not a multiple of {known})")
        sizes[free[0]] = num_devices // known
    elif known != num_devices:
        raise UsageError(f"mesh {sizes} has {known} devices but the topology has {num_devices}")
    return sizes


def _device_grid(shape: tuple[int, ...], devices: Sequence) -> np.ndarray:
    from jax.experimental import mesh_utils

    for split in (False, True):
        try:
            return mesh_utils.create_device_mesh(shape, devices,
                                                 allow_split_physical_axes=split)
        except (NotImplementedError, ValueError, AssertionError):
            continue
    return np.asarray(devices, dtype=object).reshape(shape)  # no physical layout fits: in order


def make_topology_mesh(devices: Sequence, axis_sizes: Mapping[str, int],
                       axis_names: Sequence[str] | None = None, *, dcn_axis: str | None = None,
                       axis_types: tuple | None = None) -> jax.sharding.Mesh:
    """A ``Mesh`` over ``devices`` (e.g. from :func:`topology_devices`) laid out physically.

    Within a slice ``jax.experimental.mesh_utils.create_device_mesh`` maps mesh axes onto the
    torus (splitting physical axes when it must, else devices in order). Over several slices
    ``create_hybrid_device_mesh`` puts the slices on one axis, ``dcn_axis`` (default: the first
    axis, conventionally ``data``), so that only that axis's collectives cross DCN.

    Args:
      devices: the devices, all of them used.
      axis_sizes: ``{axis name: size}``; one size may be -1 (the rest of the devices).
      axis_names: the order of the mesh axes (default: the order of ``axis_sizes``); names
        missing from ``axis_sizes`` get size 1.
      dcn_axis: the axis spanning slices (multi-slice only); its size must be a multiple of the
        number of slices.
      axis_types: passed to ``Mesh`` (default: ``Mesh``'s own, Auto).
    Raises:
      UsageError (one line): sizes that do not match the device count, an unknown ``dcn_axis``
      or one that the slice count does not divide.
    """
    devices = list(devices)
    names = tuple(axis_names) if axis_names is not None else tuple(axis_sizes)
    extra = [a for a in axis_sizes if a not in names]
    if extra:
        raise UsageError(f"mesh axes {extra} are not in axis_names {names}")
    sizes = resolve_axis_sizes({a: axis_sizes.get(a, 1) for a in names}, len(devices))
    shape = tuple(sizes[a] for a in names)
    slices = _num_slices(devices)
    kwargs = {} if axis_types is None else {"axis_types": axis_types}
    if slices == 1:
        return jax.sharding.Mesh(_device_grid(shape, devices), names, **kwargs)
    from jax.experimental import mesh_utils

    dcn = dcn_axis or names[0]
    if dcn not in names:
        raise UsageError(f"dcn_axis {dcn!r} is not a mesh axis {names}")
    if sizes[dcn] % slices:
        raise UsageError(f"mesh axis {dcn!r} of size {sizes[dcn]} cannot span {slices} slices "
                         f"(make it a multiple of {slices})")
    dcn_shape = tuple(slices if a == dcn else 1 for a in names)
    ici_shape = tuple(s // d for s, d in zip(shape, dcn_shape))
    try:
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices,
                                                    allow_split_physical_axes=True)
    except (NotImplementedError, ValueError, AssertionError) as e:
        raise UsageError(f"no layout of mesh {sizes} over {slices} slices: {e}") from None
    return jax.sharding.Mesh(grid, names, **kwargs)


__all__ = ["ACCEPTED", "TopologySpec", "make_topology_mesh", "parse_topology",
           "resolve_axis_sizes", "topology_devices"]
