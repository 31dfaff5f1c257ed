"""Shared timing helpers for the benchmarks: wall-clock timing of jitted functions and a peak
matmul throughput measured in the same run (so kernel figures can be reported as a fraction of
what this machine actually delivers right now)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def time_fn(fn: Callable[..., Any], *args: Any, warmup: int = 1, repeats: int = 5) -> dict:
    """Time ``fn(*args)`` (already jitted) with ``jax.block_until_ready``.

    The first call (compilation) is timed separately as ``compile_s``; then ``warmup`` untimed
    calls and ``repeats`` timed ones. Returns {"median_s", "min_s", "compile_s", "times_s"}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "compile_s": compile_s,
            "times_s": times}


def peak_matmul_gflops(n: int = 2048, dtype: Any = jnp.float32, repeats: int = 5) -> float:
    """GFLOP/s of one jitted [n, n] @ [n, n] matmul (2 n^3 FLOPs), median of ``repeats``."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    seconds = time_fn(matmul, a, b, warmup=1, repeats=repeats)["median_s"]
    return 2.0 * n ** 3 / seconds / 1e9


def device_description() -> str:
    """E.g. 'cpu: TFRT_CPU_0 (x8)'."""
    devices = jax.devices()
    return f"{jax.default_backend()}: {devices[0].device_kind} (x{len(devices)})"
