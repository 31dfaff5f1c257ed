"""Shared helpers for the benchmarks: wall-clock timing of jitted functions with spread
statistics, a peak matmul throughput measured in the same run (so kernel figures can be reported
as a fraction of what this machine delivers right now), compiled-memory figures, and the
versions/device description every result file records."""
from __future__ import annotations

import importlib.metadata
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# A figure whose (max - min) / median exceeds this is flagged as noisy in tables and on stderr.
WIDE_SPREAD = 0.2


def spread_stats(times: list[float]) -> dict:
    """Median, quartiles, min, max and relative spread ((max - min) / median) of ``times``."""
    if not times:
        raise ValueError("no times to summarise")
    ordered = sorted(times)
    median = statistics.median(ordered)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = median
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "min_s": ordered[0],
            "max_s": ordered[-1], "spread": (ordered[-1] - ordered[0]) / median if median else 0.0}


def time_fn(fn: Callable[..., Any], *args: Any, warmup: int = 1, repeats: int = 5) -> dict:
    """Time ``fn(*args)`` (already jitted) with ``jax.block_until_ready``.

    The first call (compilation) is timed separately as ``compile_s``; then ``warmup`` untimed
    calls and ``repeats`` timed ones. Returns :func:`spread_stats` plus ``compile_s`` and
    ``times_s``.
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
    return {**spread_stats(times), "compile_s": compile_s, "times_s": times}


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument (blocking) callable, calls interleaved round-robin
    so that every candidate sees the same machine load; call each once untimed first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def peak_matmul_gflops(n: int = 2048, dtype: Any = jnp.float32, repeats: int = 5,
                       sharding: Any = None) -> float:
    """GFLOP/s of a jitted [n, n] @ [n, n] matmul (2 n^3 FLOPs per device), median of
    ``repeats``. With a ``sharding`` of a 1-d mesh, every device multiplies its own pair at once
    (a batch of matmuls split over the devices), i.e. the peak of all of them together."""
    devices = 1 if sharding is None else sharding.mesh.size
    a = jax.random.normal(jax.random.key(0), (devices, n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (devices, n, n), dtype)
    if sharding is not None:
        a, b = jax.device_put(a, sharding), jax.device_put(b, sharding)
    matmul = jax.jit(jnp.matmul)
    seconds = time_fn(matmul, a, b, warmup=1, repeats=repeats)["median_s"]
    return 2.0 * devices * n ** 3 / seconds / 1e9


def compiled_memory(fn: Callable[..., Any], *args: Any) -> dict:
    """Peak-memory figures of ``jax.jit(fn)`` for these arguments from the compiled program's
    memory analysis (per device, bytes): temp, argument, output and their sum ``total``; compiles
    but does not run. None values where the backend reports no analysis."""
    return memory_figures(jax.jit(fn).lower(*args).compile())


def memory_figures(compiled: Any) -> dict:
    """:func:`compiled_memory` of an already compiled (``jit(...).lower(...).compile()``)
    program."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {"temp": None, "argument": None, "output": None, "total": None}
    temp, arg, out = (int(getattr(analysis, f"{name}_size_in_bytes"))
                      for name in ("temp", "argument", "output"))
    alias = int(getattr(analysis, "alias_size_in_bytes", 0))
    return {"temp": temp, "argument": arg, "output": out, "total": temp + arg + out - alias}


def device_description() -> str:
    """E.g. 'cpu: cpu (x2)'."""
    devices = jax.devices()
    return f"{jax.default_backend()}: {devices[0].device_kind} (x{len(devices)})"


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in ("jax", "jaxlib", "flax", "torch", "diffusers", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
