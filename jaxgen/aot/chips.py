"""Accelerator chips: HBM per chip and peak dense bf16 FLOP/s, with where each figure comes from.

Two memory figures are kept apart:
- ``hbm_bytes`` (the spec): the capacity the vendor publishes, from the page cited beside it.
  Google's and NVIDIA's pages write "GB" for what is GiB (the TPU compiler offers 15.75 GiB of
  v5e's "16 GB", CUDA reports 79.1 GiB of H100's "80GB"); the table reads them as GiB.
- :func:`available_hbm_bytes` (what compiling is checked against): on TPU the compiler's own
  "available HBM" for one device, read from a probe compile (a program that cannot fit, whose
  RESOURCE_EXHAUSTED message states the figure: 15.75 GiB on v5e, 30.75 GiB on v4 megacore,
  95.74 GiB on v5p, 31.25 GiB on v6e with libtpu 0.0.42.1). On GPU the device memory the
  target config records (what CUDA reports on that model) times JAX's default preallocated
  fraction, 0.75 (``XLA_PYTHON_CLIENT_MEM_FRACTION``; JAX docs, "GPU memory allocation").
"""
from __future__ import annotations

import dataclasses
import functools
import re

import jax
import numpy as np

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip model.

    Attributes:
      name: jaxgen's name, the prefix of a topology name (``v5e`` in ``v5e:2x2``).
      platform: ``tpu`` or ``gpu``.
      device_kinds: ``jax.Device.device_kind`` values of this chip.
      hbm_bytes: published HBM capacity per chip (bytes).
      peak_bf16_flops: published peak dense bf16 FLOP/s per chip (no sparsity).
      source: the public page both figures come from.
      topology_prefix: the chip name libtpu's topology parser takes ("" for GPUs).
      torus_dims: 2 or 3 for TPU slice shapes (0 for GPUs).
      chip_config: libtpu ``chip_config_name``: ``megacore`` fuses the two TensorCores of a v4
        or v5p chip into one device, which is how those chips are used for training.
    """

    name: str
    platform: str
    device_kinds: tuple[str, ...]
    hbm_bytes: int
    peak_bf16_flops: float
    source: str
    topology_prefix: str = ""
    torus_dims: int = 0
    chip_config: str = "default"


CHIPS: dict[str, Chip] = {
    # TPU v4: "Peak compute per chip (bf16) 275 TFLOPs", "HBM2 capacity 32 GiB".
    "v4": Chip("v4", "tpu", ("TPU v4",), 32 * GiB, 275e12,
               "https://cloud.google.com/tpu/docs/v4", "v4", 3, "megacore"),
    # TPU v5e: "Peak compute per chip (bf16) 197 TFLOPs", "HBM2 capacity ... 16 GB".
    "v5e": Chip("v5e", "tpu", ("TPU v5 lite", "TPU v5e"), 16 * GiB, 197e12,
                "https://cloud.google.com/tpu/docs/v5e", "v5e", 2),
    # TPU v5p: "Peak compute per chip (bf16) 459 TFLOPs", "HBM2e capacity 95 GB" (the compiler
    # offers 95.74 GiB of it, so the published 95 is GiB rounded down).
    "v5p": Chip("v5p", "tpu", ("TPU v5", "TPU v5p"), 95 * GiB, 459e12,
                "https://cloud.google.com/tpu/docs/v5p", "v5p", 3, "megacore"),
    # TPU v6e (Trillium): "Peak compute per chip (bf16) 918 TFLOPs", "HBM capacity 32 GB".
    "v6e": Chip("v6e", "tpu", ("TPU v6 lite", "TPU v6e"), 32 * GiB, 918e12,
                "https://cloud.google.com/tpu/docs/v6e", "v6e", 2),
    # H100 SXM5: datasheet "BF16 Tensor Core 1,979 teraFLOPS" is with 2:4 sparsity; dense is
    # half, 989.4 TFLOP/s. "GPU memory 80GB" (HBM3; binary: CUDA reports 79.1 GiB usable).
    "h100": Chip("h100", "gpu", ("NVIDIA H100 80GB HBM3",), 80 * GiB, 989.4e12,
                 "https://www.nvidia.com/en-us/data-center/h100/"),
    # H200 SXM: datasheet "BF16 Tensor Core 1,979 TFLOPS" with sparsity, dense 989.4 (the same
    # GH100 compute as H100); "GPU memory 141GB" (HBM3e; CUDA reports 141.0 GiB).
    "h200": Chip("h200", "gpu", ("NVIDIA H200", "NVIDIA H200 141GB HBM3e"), 141 * GiB, 989.4e12,
                 "https://www.nvidia.com/en-us/data-center/h200/"),
}
CHIP_ALIASES = {"v5litepod": "v5e", "trillium": "v6e"}
# JAX preallocates this fraction of GPU memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION).
JAX_GPU_MEMORY_FRACTION = 0.75


def chip_names() -> tuple[str, ...]:
    return tuple(CHIPS) + tuple(CHIP_ALIASES)


def get_chip(name_or_kind: str | Chip) -> Chip:
    """The :class:`Chip` for a jaxgen chip name (``v5e``, ``v5litepod``, ``h100``) or a
    ``device_kind`` (``TPU v5 lite``). Raises UsageError (one line) for anything else."""
    from jaxgen.errors import UsageError

    if isinstance(name_or_kind, Chip):
        return name_or_kind
    key = CHIP_ALIASES.get(name_or_kind.lower(), name_or_kind.lower())
    if key in CHIPS:
        return CHIPS[key]
    for chip in CHIPS.values():
        if name_or_kind in chip.device_kinds:
            return chip
    raise UsageError(f"unknown chip {name_or_kind!r}; known: {', '.join(chip_names())}")


def chip_of_device(device: jax.Device) -> Chip | None:
    """The chip of a (compile-only) device, from its ``device_kind``; None if not in the table."""
    for chip in CHIPS.values():
        if device.device_kind in chip.device_kinds:
            return chip
    return None


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]i?B?|B)\b")
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """``15.75G`` -> bytes (XLA's units are binary: G = GiB). Raises ValueError if no size."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2)[0]])


_AVAILABLE = re.compile(
    r"available HBM \(([^)]+)\)|of ([0-9.]+[KMGT]) hbm|HBM capacity ([0-9.]+[KMGT])")


@functools.cache
def _tpu_available_hbm(device: jax.Device) -> int | None:
    # One device, one argument far larger than any HBM: the compiler refuses it in ~0.05 s and
    # names the HBM it had. Nothing is allocated (the devices are compile-only).
    sharding = jax.sharding.SingleDeviceSharding(device)
    big = jax.ShapeDtypeStruct((1 << 22, 1 << 22), np.int8, sharding=sharding)  # 16 TiB
    try:
        jax.jit(lambda x: x + 1).lower(big).compile()
    except Exception as e:  # noqa: BLE001  (the figure is in the message, any error type)
        m = _AVAILABLE.search(str(e))
        if m:
            return parse_size(next(g for g in m.groups() if g))
    return None


def available_hbm_bytes(device: jax.Device) -> tuple[int | None, str]:
    """(bytes one device can use for a program, where the figure comes from).

    TPU: ``("compiler")`` the compiler's own available HBM (see the module docstring), else the
    spec. GPU: the device memory of the topology's target config times
    :data:`JAX_GPU_MEMORY_FRACTION` (``"target_config x 0.75"``). Unknown chips: (None, "none").
    """
    chip = chip_of_device(device)
    if device.platform == "tpu":
        probed = _tpu_available_hbm(device)
        if probed is not None:
            return probed, "compiler"
        return (chip.hbm_bytes, "spec") if chip else (None, "none")
    if chip is not None and chip.platform == "gpu":
        from jaxgen.aot.gpu_targets import device_memory_bytes

        total = device_memory_bytes(chip.name)
        return int(total * JAX_GPU_MEMORY_FRACTION), f"target_config x {JAX_GPU_MEMORY_FRACTION}"
    return None, "none"


__all__ = [
    "CHIPS",
    "CHIP_ALIASES",
    "JAX_GPU_MEMORY_FRACTION",
    "Chip",
    "GiB",
    "available_hbm_bytes",
    "chip_names",
    "chip_of_device",
    "get_chip",
    "parse_size",
]
