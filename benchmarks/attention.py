"""Attention kernel benchmark: every jaxgen kernel that runs here, and PyTorch's SDPA as a peer.

    python -m benchmarks attention [--quick] [--grid default|full] [--kernels xla,chunked]
    python -m benchmarks.attention ...        # the same, kept for old scripts

For each shape of the grid (:mod:`benchmarks.attention_grid`), pass (forward, forward+backward)
and kernel: compile time; the median, quartiles, min and max of the timed calls (candidates
timed interleaved, round-robin, so all see the same machine load; a (max - min) / median above
0.2 is flagged); GFLOP/s counting only unmasked work and its fraction of a same-dtype matmul
peak measured in the same run on the same devices; peak memory per device from the compiled
program's memory analysis (temp + arguments + outputs); the largest error against the float32
reference on one (example, head); and ``vs torch`` = t_torch / t_kernel (> 1: jaxgen faster).
Rows that cannot run say why (``skipped``). With several devices (``--cpu-devices``), inputs
are sharded over the batch, as in training (see :mod:`benchmarks.host`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import peers
from benchmarks.attention_grid import Case, grid, headline, pass_flops
from benchmarks.common import (
    WIDE_SPREAD,
    memory_figures,
    peak_matmul_gflops,
    spread_stats,
    time_interleaved,
)
from jaxgen.nn.kernels import KERNELS, attention, reference_attention, shard_attention
from jaxgen.nn.kernels.cpu_flash import cpu_flash_unusable_reason
from jaxgen.nn.kernels.cpu_flash import scratch_bytes as cpu_flash_scratch_bytes
from jaxgen.nn.kernels.pallas import pallas_unusable_reason
from jaxgen.nn.kernels.xla import cudnn_unusable_reason

BENCH_KERNELS = tuple(k for k in KERNELS if k != "auto")
MIB = 2 ** 20
TARGET_MAX_T = 4096  # headline rows up to this length are always timed (the performance target)
TARGET_KERNELS = ("chunked", "cpu_flash", "pallas", "cudnn", peers.PEER_NAME)
TILED_KERNELS = ("chunked", "cpu_flash", "pallas")  # those --blocks applies to


@dataclasses.dataclass(frozen=True)
class Options:
    grid: str = "default"
    kernels: tuple[str, ...] | None = None  # None: every kernel (unrunnable ones are skipped)
    repeats: int = 5
    call_limit_s: float | None = 8.0  # not timed when one call takes longer; None: no limit
    group_budget_s: float = 20.0  # fewer repeats (>= 3) when a shape's calls take longer
    cases: tuple[Case, ...] | None = None  # overrides the grid
    reference_max_t: int | None = 1024  # the O(T^2)-memory reference is not run beyond this
    blocks: tuple[int, int] | None = None  # (block_q, block_k) for the tiled kernels


def _devices_for(batch: int) -> int:
    n = len(jax.devices())
    return max(d for d in range(1, n + 1) if batch % d == 0)


def _mesh(devices: int) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))


def skip_reason(kernel: str, c: Case, quick: bool, opts: Options = Options()) -> str | None:
    """Why ``kernel`` does not run case ``c`` here (one line), or None."""
    platform = jax.default_backend()
    if kernel == "reference" and opts.reference_max_t and c.seq > opts.reference_max_t:
        return (f"reference (the float32 baseline) runs only up to T={opts.reference_max_t} "
                "in this grid; --grid full runs it")
    q = jax.ShapeDtypeStruct((c.batch, c.seq, c.heads, c.head_dim), jnp.dtype(c.dtype))
    if kernel == "cudnn":
        return cudnn_unusable_reason(q, q, platform)
    if kernel == "pallas":
        if platform != "gpu" and not quick:
            return f"pallas runs on {platform} only in interpret mode (benchmarked with --quick)"
        return pallas_unusable_reason(q, q, mask=None, interpret=platform != "gpu")
    if kernel == "cpu_flash":
        return cpu_flash_unusable_reason(q, q, q, mask=None, platform=platform)
    return None


def _inputs(c: Case, sharding) -> tuple[list[np.ndarray], list[jax.Array]]:
    r = np.random.default_rng(0)
    shape = (c.batch, c.seq, c.heads, c.head_dim)
    host = [r.standard_normal(shape, np.float32) for _ in range(4)]  # q, k, v, do
    host = [np.asarray(jnp.asarray(x, c.dtype).astype(jnp.float32)) for x in host]  # as rounded
    return host, [jax.device_put(jnp.asarray(x, c.dtype), sharding) for x in host]


def _pass_fn(kernel_fn, pass_name: str, do: jax.Array):
    if pass_name == "fwd":
        return kernel_fn

    def loss(q, k, v):
        return jnp.sum(kernel_fn(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))


_HOST: dict[Case, list[np.ndarray]] = {}  # host copies of the current case's q, k, v, do


@functools.lru_cache(maxsize=8)
def _reference(c: Case, pass_name: str) -> tuple[np.ndarray, ...]:
    """float32 reference on example 0, head 0 (attention is independent per example and head)."""
    q, k, v, do = (jnp.asarray(x[:1, :, :1]) for x in _HOST[c])
    fn = functools.partial(reference_attention, causal=c.causal)
    out = jax.jit(_pass_fn(fn, pass_name, do))(q, k, v)
    return tuple(np.asarray(x) for x in (out if isinstance(out, tuple) else (out,)))


def _max_error(got, c: Case, pass_name: str) -> float:
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = _reference(c, pass_name)
    return max(float(np.max(np.abs(np.asarray(g[:1, :, :1], np.float32) - w)))
               for g, w in zip(got, want))


def _limit_for(kernel: str, c: Case, opts: Options) -> Options:
    """The performance target's rows (headline series, T <= 4096, the memory-efficient kernels
    and the peer) are timed whatever they take; the dense kernels keep the limit."""
    if headline(c) and c.seq <= TARGET_MAX_T and kernel in TARGET_KERNELS:
        return dataclasses.replace(opts, call_limit_s=None)
    return opts


def _too_slow(estimate_s: float | None, opts: Options) -> str | None:
    if opts.call_limit_s is None or estimate_s is None or estimate_s <= opts.call_limit_s:
        return None
    return (f"one call estimated at {estimate_s:.0f} s (3.5x its forward) > "
            f"{opts.call_limit_s:g} s limit; --grid full times it")


def _prepare_kernel(kernel: str, c: Case, pass_name: str, args, mesh, quick: bool, opts,
                    estimate_s: float | None = None):
    """-> (row fields, zero-arg timed call or None)."""
    interpret = kernel == "pallas" and jax.default_backend() != "gpu"
    tiles = (dict(zip(("block_q", "block_k"), opts.blocks))
             if opts.blocks and kernel in TILED_KERNELS else {})
    fn = functools.partial(attention, causal=c.causal, kernel=kernel, interpret=interpret, **tiles)
    if kernel == "pallas" and mesh.size > 1:  # opaque to the partitioner
        fn = shard_attention(fn, mesh, batch_axes="data")
    q, k, v, do = args
    try:
        start = _now()
        compiled = jax.jit(_pass_fn(fn, pass_name, do)).lower(q, k, v).compile()
        compile_s = _now() - start
        mem = memory_figures(compiled)
        if kernel == "cpu_flash" and mem["total"] is not None:  # its C++ workspace, outside XLA's
            extra = cpu_flash_scratch_bytes(q.shape, k.shape, backward=pass_name == "fwd_bwd",
                                            **tiles)
            mem = {**mem, "temp": mem["temp"] + extra, "total": mem["total"] + extra}
        budget = _memory_budget()
        if mem["total"] is not None and mem["total"] * mesh.size > budget:
            return {"memory": mem, "compile_s": compile_s, "skipped": (
                f"needs {mem['total'] * mesh.size / 2**30:.1f} GiB (> {budget / 2**30:.1f} GiB, "
                "half the free memory); compile and memory figures only")}, None
        if _too_slow(estimate_s, opts):
            return {"memory": mem, "compile_s": compile_s,
                    "skipped": _too_slow(estimate_s, opts)}, None
        start = _now()
        out = jax.block_until_ready(compiled(q, k, v))
        first = _now() - start
    except (ValueError, NotImplementedError, TypeError) as e:
        return {"skipped": str(e).splitlines()[0]}, None
    fields = {"memory": mem, "compile_s": compile_s, "first_call_s": first,
              "max_err": _max_error(out, c, pass_name)}
    del out
    if opts.call_limit_s is not None and first > opts.call_limit_s:
        fields["skipped"] = (f"one call took {first:.1f} s > {opts.call_limit_s:g} s limit; "
                             "--grid full times it")
        return fields, None
    return fields, lambda: jax.block_until_ready(compiled(q, k, v))


def _prepare_peer(c: Case, pass_name: str, host, opts, estimate_s: float | None = None):
    reason = peers.torch_unavailable_reason() or _too_slow(estimate_s, opts)
    if reason:
        return {"skipped": reason}, None
    call, results = peers.torch_sdpa(*host, causal=c.causal, dtype_name=c.dtype,
                                     backward=pass_name == "fwd_bwd")
    start = _now()
    out = results()
    first = _now() - start
    fields = {"first_call_s": first, "max_err": _max_error(out, c, pass_name), "memory": None}
    if opts.call_limit_s is not None and first > opts.call_limit_s:
        fields["skipped"] = f"one call took {first:.1f} s > {opts.call_limit_s:g} s limit"
        return fields, None
    return fields, call


def _now() -> float:
    return time.perf_counter()


def _memory_budget() -> int:
    """Half of the memory available now (bytes); a row needing more is not run."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def _row(name: str, c: Case, pass_name: str, devices: int, fields: dict, times, peak) -> dict:
    row = {"kernel": name, **c.label(), "pass": pass_name, "devices": devices}
    mem = fields.get("memory")
    row.update({"compile_s": fields.get("compile_s"), "first_call_s": fields.get("first_call_s"),
                "max_err": fields.get("max_err"),
                "mem_mib": None if not mem or mem["total"] is None else mem["total"] / MIB,
                "mem_temp_mib": None if not mem or mem["temp"] is None else mem["temp"] / MIB})
    if times:
        s = spread_stats(times)
        row.update({f"{k[:-2]}_ms": 1e3 * s[k] for k in ("median_s", "q1_s", "q3_s", "min_s",
                                                         "max_s")})
        row.update({"spread": s["spread"], "noisy": s["spread"] > WIDE_SPREAD,
                    "repeats": len(times), "times_ms": [1e3 * t for t in times]})
        row["gflops"] = pass_flops(c, pass_name) / s["median_s"] / 1e9
        row["peak_frac"] = row["gflops"] / peak if peak else None
    if "skipped" in fields:
        row["skipped"] = fields["skipped"]
    return row


def bench_case(c: Case, pass_name: str, kernels, quick: bool, opts: Options, peaks,
               estimates: dict[str, float] | None = None) -> list[dict]:
    """Rows of every kernel and the peer on one case and pass, timed interleaved.
    ``estimates``: seconds per call expected for each kernel (rows over the limit not run)."""
    estimates = estimates or {}
    devices = _devices_for(c.batch)
    mesh = _mesh(devices)
    host, args = _inputs(c, NamedSharding(mesh, P("data")))
    _HOST[c] = host
    prepared, calls = {}, {}
    for kernel in kernels:
        reason = skip_reason(kernel, c, quick, opts)
        fields, call = ({"skipped": reason}, None) if reason else _prepare_kernel(
            kernel, c, pass_name, args, mesh, quick, _limit_for(kernel, c, opts),
            estimates.get(kernel))
        prepared[kernel] = fields
        if call is not None:
            calls[kernel] = call
    prepared[peers.PEER_NAME], peer_call = _prepare_peer(
        c, pass_name, host, _limit_for(peers.PEER_NAME, c, opts), estimates.get(peers.PEER_NAME))
    if peer_call is not None:
        calls[peers.PEER_NAME] = peer_call
    first = sum(prepared[name]["first_call_s"] for name in calls)
    repeats = max(3, min(opts.repeats, int(opts.group_budget_s / max(first, 1e-9))))
    times = time_interleaved(calls, repeats) if calls else {}
    peak = peaks.get(c.dtype)
    rows = [_row(name, c, pass_name, devices, fields, times.get(name), peak)
            for name, fields in prepared.items()]
    peer = next((r for r in rows if r["kernel"] == peers.PEER_NAME and "median_ms" in r), None)
    for r in rows:
        if peer and r is not peer and "median_ms" in r:
            r["vs_torch"] = peer["median_ms"] / r["median_ms"]
        if r.get("noisy"):
            print(f"warning: wide spread {r['spread']:.2f} ((max-min)/median) for {r['kernel']} "
                  f"{c.label()} {pass_name}", file=sys.stderr, flush=True)
    _HOST.pop(c, None)
    _reference.cache_clear()
    return rows


def measure_peaks(quick: bool) -> dict[str, float]:
    """Matmul GFLOP/s per dtype on all devices at once (the devices the kernels use)."""
    devices = len(jax.devices())
    sharding = NamedSharding(_mesh(devices), P("data")) if devices > 1 else None
    n = 512 if quick else 2048
    return {dtype: peak_matmul_gflops(n, jnp.dtype(dtype), repeats=3 if quick else 5,
                                      sharding=sharding) for dtype in ("float32", "bfloat16")}


def summarize(rows: list[dict]) -> dict:
    """The performance target's figures: on the headline series, the best jaxgen kernel's time
    ratio to torch at T=2048 and 4096 (forward, forward+backward), and at the longest T the
    best kernel's peak memory as a fraction of the ``xla`` kernel's."""
    out: dict = {"vs_torch": {}, "memory_vs_xla": {}}
    head = [r for r in rows if headline(_case(r)) and r["kernel"] != peers.PEER_NAME]
    for t in (2048, 4096):
        for p in ("fwd", "fwd_bwd"):
            timed = [r for r in head if r["T"] == t and r["pass"] == p and "median_ms" in r]
            if timed:
                best = min(timed, key=lambda r: r["median_ms"])
                out["vs_torch"][f"T={t} {p}"] = {"kernel": best["kernel"],
                                                 "ratio": best.get("vs_torch")}
    longest = max((r["T"] for r in head), default=None)
    for p in ("fwd", "fwd_bwd"):
        at = {r["kernel"]: r for r in head if r["T"] == longest and r["pass"] == p}
        xla, best = at.get("xla"), _best_memory_kernel(at)
        if xla and best and xla.get("mem_mib") and best.get("mem_mib"):
            out["memory_vs_xla"][f"T={longest} {p}"] = {
                "kernel": best["kernel"], "ratio": best["mem_mib"] / xla["mem_mib"]}
    return out


def _best_memory_kernel(at: dict[str, dict]) -> dict | None:
    """The fastest timed kernel here, else the one with the least memory."""
    timed = [r for r in at.values() if "median_ms" in r]
    if timed:
        return min(timed, key=lambda r: r["median_ms"])
    sized = [r for r in at.values() if r.get("mem_mib")]
    return min(sized, key=lambda r: r["mem_mib"]) if sized else None


def _case(r: dict) -> Case:
    return Case(r["B"], r["N"], r["T"], r["H"], r["causal"], r["dtype"])


TABLE_COLUMNS = [
    ["kernel", "kernel"], ["B", "B"], ["N", "N"], ["T", "T"], ["H", "H"], ["causal", "causal"],
    ["dtype", "dtype"], ["pass", "pass"], ["median_ms", "median ms"], ["q1_ms", "q1 ms"],
    ["q3_ms", "q3 ms"], ["spread", "(max-min)/med"], ["compile_s", "compile s"],
    ["gflops", "GFLOP/s"], ["peak_frac", "of peak"], ["mem_mib", "mem MiB"],
    ["max_err", "max err"], ["vs_torch", "torch/jaxgen time (>1: jaxgen faster)"]]

def plot_spec(rows: list[dict]) -> dict:
    """Time against T per kernel (peer included), forward and forward+backward, for the
    headline series when the grid has it, else the series with the most sequence lengths."""
    groups: dict[tuple, set] = {}
    for r in rows:
        groups.setdefault((r["B"], r["N"], r["H"], r["causal"], r["dtype"]), set()).add(r["T"])
    if not groups:
        return {}
    key = (4, 8, 64, True, "float32")
    key = key if key in groups else max(groups, key=lambda g: len(groups[g]))
    b, n, h, causal, dtype = key
    where = {"B": b, "N": n, "H": h, "causal": causal, "dtype": dtype}
    label = f"B={b} N={n} H={h} {'causal' if causal else 'full'} {dtype}"
    return {"panels": [
        {"title": f"{title}, {label}", "x": "T", "y": "median_ms", "series": "kernel",
         "where": {"pass": p, **where}, "xlabel": "sequence length T",
         "ylabel": "median time per call (ms)", "logx": True, "logy": True}
        for p, title in (("fwd", "forward"), ("fwd_bwd", "forward+backward"))]}


def run(quick: bool, grid_name: str | None = None, kernels: tuple[str, ...] | None = None,
        repeats: int | None = None, cases: tuple[Case, ...] | None = None,
        blocks: tuple[int, int] | None = None) -> dict:
    """The benchmark (contract of :mod:`benchmarks.suite`): rows, table columns, plot, notes."""
    opts = Options(grid=grid_name or ("quick" if quick else "default"), kernels=kernels,
                   repeats=repeats or (3 if quick else 5), cases=cases, blocks=blocks)
    if opts.grid == "full":
        opts = dataclasses.replace(opts, call_limit_s=None, group_budget_s=120.0,
                                   reference_max_t=None)
    unknown = [k for k in opts.kernels or () if k not in BENCH_KERNELS]
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(BENCH_KERNELS)}")
    case_list = list(opts.cases) if opts.cases else grid(opts.grid, jax.default_backend())
    peaks = measure_peaks(quick)
    print(f"matmul peak GFLOP/s on {len(jax.devices())} device(s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()), file=sys.stderr, flush=True)
    rows = []
    for c in case_list:
        fwd = bench_case(c, "fwd", opts.kernels or BENCH_KERNELS, quick, opts, peaks)
        print(f"  done {c.label()} fwd", file=sys.stderr, flush=True)
        estimates = {r["kernel"]: 3.5 * r["first_call_s"] for r in fwd if r.get("first_call_s")}
        rows += fwd + bench_case(c, "fwd_bwd", opts.kernels or BENCH_KERNELS, quick, opts,
                                 peaks, estimates)
        print(f"  done {c.label()} fwd_bwd", file=sys.stderr, flush=True)
    summary = summarize(rows)
    notes = ["matmul peak (GFLOP/s, all devices, measured in this run): "
             + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()),
             "vs torch = t_torch / t_jaxgen: > 1 means jaxgen is faster",
             "FLOPs count only unmasked (query, key) pairs; fwd+bwd = 3.5x fwd",
             ("mem = compiled temp + arguments + outputs per device (cpu_flash: plus the "
              "workspace its C++ code allocates, jaxgen.nn.kernels.cpu_flash.scratch_bytes); "
              "max err vs float32 reference on example 0, head 0 (fwd: output, fwd+bwd: dq, dk, "
              "dv)")]
    notes += [f"best vs torch {k}: {v['kernel']} {v['ratio']:.2f}x" if v["ratio"] else
              f"best vs torch {k}: {v['kernel']} (peer not timed)"
              for k, v in summary["vs_torch"].items()]
    notes += [f"memory of {v['kernel']} / xla at {k}: {v['ratio']:.3f}"
              for k, v in summary["memory_vs_xla"].items()]
    return {"rows": rows, "table_columns": TABLE_COLUMNS, "plot": plot_spec(rows),
            "notes": notes, "summary": summary, "meta": {"peak_matmul_gflops": peaks, "grid": opts.grid,
                                         **peers.torch_info()}}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.attention ARGS`` = ``python -m benchmarks attention ARGS``."""
    from benchmarks.__main__ import main as suite_main
    return suite_main(["attention", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
