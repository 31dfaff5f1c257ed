"""GPU target configs for deviceless CUDA compilation (no GPU on the host).

XLA compiles for a GPU it cannot see when given a ``stream_executor.GpuTargetConfigProto`` as
text: ``jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=TEXT,
topology="PARTITIONS x HOSTS_PER_PARTITION x GPUS_PER_HOST")`` (as in jax's
``tests/deviceless_aot_test.py``, where the config comes from a real GPU). The figures below are
those of XLA's own spec files ``xla/backends/gpu/target_config/specs/h100_sxm.txtpb`` and
``h200.txtpb`` (openxla/xla), less the field ``collective_memory_granularity``, which the proto
inside jax-cuda12-plugin 0.10.2 does not know yet (it refuses the whole config). The two chips
differ only in memory size and bandwidth (same GH100, sm_90a, 132 SMs).

Needs ``jax-cuda12-plugin`` and ``jax-cuda12-pjrt`` (about 180 MB, no CUDA libraries needed to
compile XLA's own fusions and Triton kernels); cuDNN fusions (``jax.nn.dot_product_attention(...,
implementation="cudnn")``) also need the cuDNN wheel, i.e. ``jax[cuda12]``.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """The model-specific fields of a Hopper target config (XLA's spec files)."""

    name: str                # CUDA device name, also jax's device_kind
    memory_bytes: int        # device_memory_size, as CUDA reports it
    bandwidth: int           # memory_bandwidth, bytes/s
    mem_clock_khz: int
    dnn_version: tuple[int, int, int]


GPU_SPECS = {
    # dnn 9.10.0 for both: the H100 file's 8.9.4 predates the cuDNN >= 9.8 that jax 0.10 needs.
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", 84942979072, 3352320000000, 2619000, (9, 10, 0)),
    "h200": GpuSpec("NVIDIA H200 141GB HBM3e", 151397597184, 4800000000000, 3750000, (9, 10, 0)),
}

# (data type key, clock GHz, units per SM, ops per clock) of the Hopper spec files.
_SCALAR_UNITS = ((4, 1.98, 64, 1), (8, 1.98, 64, 1), (10, 1.98, 128, 2), (11, 1.98, 128, 1),
                 (12, 1.98, 64, 1), (16, 1.98, 128, 2))
_TENSOR_CLOCK = 1.8295201
_MATRIX_UNITS = ((2, _TENSOR_CLOCK, 4, 1024), (6, _TENSOR_CLOCK, 4, 1024),
                 (10, _TENSOR_CLOCK, 4, 512), (11, _TENSOR_CLOCK, 4, 256), (12, 1.98, 4, 32),
                 (16, _TENSOR_CLOCK, 4, 512)) + tuple(
    (key, _TENSOR_CLOCK, 4, 1024) for key in (19, 20, 23, 24, 25, 28, 29, 33, 35, 36))


def _rates(name: str, rows) -> str:
    infos = "".join(
        f"    rate_infos {{ key: {k} value {{ clock_rate_ghz: {c} units_per_core: {u} "
        f"ops_per_clock: {o} }} }}\n" for k, c, u, o in rows)
    return f"  {name} {{\n{infos}  }}\n"


def target_config(chip: str) -> str:
    """The GpuTargetConfigProto text of ``chip`` (``h100`` or ``h200``)."""
    s = GPU_SPECS[chip]
    major, minor, patch = s.dnn_version
    return (
        "gpu_device_info {\n"
        "  threads_per_block_limit: 1024\n  threads_per_warp: 32\n"
        "  shared_memory_per_block: 49152\n  shared_memory_per_core: 233472\n"
        "  threads_per_core_limit: 2048\n  core_count: 132\n  fpus_per_core: 128\n"
        "  block_dim_limit_x: 2147483647\n  block_dim_limit_y: 65535\n  block_dim_limit_z: 65535\n"
        f"  memory_bandwidth: {s.bandwidth}\n  l2_cache_size: 52428800\n  clock_rate_ghz: 1.98\n"
        f"  device_memory_size: {s.memory_bytes}\n  shared_memory_per_block_optin: 232448\n"
        "  cuda_compute_capability { major: 9 feature_extension: ACCELERATED_FEATURES }\n"
        "  registers_per_core_limit: 65536\n  registers_per_block_limit: 65536\n"
        + _rates("scalar_unit_description", _SCALAR_UNITS)
        + _rates("matrix_unit_description", _MATRIX_UNITS)
        + "  thread_dim_limit_x: 1024\n  thread_dim_limit_y: 1024\n  thread_dim_limit_z: 64\n"
        '  device_vendor: "NVIDIA Corporation"\n  platform_version: "Compute Capability 9.0a"\n'
        f'  model_str: "sm_9.0a with {s.memory_bytes}B RAM, 132 cores, 1980000KHz clock, '
        f'{s.mem_clock_khz}KHz mem clock, 52428800B L2$"\n'
        "  device_address_bits: 64\n  pcie_bandwidth: 34359738368\n  ecc_enabled: true\n"
        f'  name: "{s.name}"\n  driver_version: "13.0.0"\n  runtime_version: "12.8.0"\n'
        '  compile_time_toolkit_version: "12.8.0"\n  dnn_version: "9.10.0"\n'
        '  cub_version: "3.1.2"\n  device_interconnect_info { active_links: 18 }\n'
        "}\n"
        'platform_name: "CUDA"\n'
        f"dnn_version_info {{ major: {major} minor: {minor} patch: {patch} }}\n"
        f'device_description_str: "{s.name}"\n')


def device_memory_bytes(chip: str) -> int:
    return GPU_SPECS[chip].memory_bytes


__all__ = ["GPU_SPECS", "GpuSpec", "device_memory_bytes", "target_config"]
