"""Training-step throughput of each model family's default recipe, with model FLOPs
utilisation, and the char LM against nanoGPT's PyTorch step.

    python -m benchmarks train [--quick]          # or: jaxgen bench train

Each recipe (vae_mnist, gan_mnist, diffusion_mnist, lm_shakespeare_char:cpu; ``--quick``: their
smoke variants) is built through the real trainer pieces (``loop.build`` with
``jaxgen.models.make_family``, then ``loop.init_state``) on the devices the CLI uses on this
host (one per core, batch sharded; see :mod:`benchmarks.host`). Batches come from the recipe's
data and are put on the devices before timing; a figure is the median over windows of
``steps`` consecutive steps (donated state, one block at the end of the window). MFU = the
step's FLOPs from XLA's cost analysis of the compiled step (per device, times the devices) /
step time / the f32 matmul peak measured in the same run on the same devices. The LM reads
``/work/shared/data/tinyshakespeare.txt`` (else the Python stdlib's source, said in the row).

Peer: :mod:`benchmarks.nanogpt_torch`, nanoGPT's shakespeare_char CPU model and AdamW step, the
same batch and context, with ``torch.set_num_threads(<available cores>)``; its windows are
interleaved with jaxgen's. ``lm_vs_nanogpt`` = jaxgen step time / nanoGPT step time
(< 1: jaxgen faster).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.common import WIDE_SPREAD, peak_matmul_gflops, spread_stats, time_interleaved

SHAKESPEARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "..", "shared", "data", "tinyshakespeare.txt")


@dataclasses.dataclass(frozen=True)
class Case:
    """One family's recipe and how it is timed."""
    family: str
    spec: str  # experiment[:variant]
    unit: str  # "examples" or "tokens"
    steps: int  # steps per timed window
    overrides: tuple[str, ...] = ()


def cases(quick: bool) -> list[Case]:
    text = lm_data_overrides()
    if quick:
        return [Case("vae", "vae_mnist:smoke", "examples", 3),
                Case("gan", "gan_mnist:smoke", "examples", 3),
                Case("diffusion", "diffusion_mnist:smoke", "examples", 3),
                Case("lm", "lm_shakespeare_char:smoke", "tokens", 3, text)]
    return [Case("vae", "vae_mnist", "examples", 20),
            Case("gan", "gan_mnist", "examples", 10),
            Case("diffusion", "diffusion_mnist", "examples", 5),
            Case("lm", "lm_shakespeare_char:cpu", "tokens", 20, text)]


def lm_data_overrides() -> tuple[str, ...]:
    """tiny Shakespeare as a local text file, else the stdlib's source (no network here)."""
    path = os.path.normpath(SHAKESPEARE)
    if os.path.exists(path):
        return ("data.source=text_file", f"data.path={path}")
    return ("data.source=stdlib",)


def measure_peak(quick: bool) -> float:
    """f32 matmul GFLOP/s on all host devices at once."""
    devices = len(jax.devices())
    sharding = None
    if devices > 1:
        sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
                                 P("data"))
    return peak_matmul_gflops(512 if quick else 2048, repeats=3 if quick else 5,
                              sharding=sharding)


@dataclasses.dataclass
class Built:
    """A family's compiled step with its state and device-resident batches."""
    window: object  # zero-argument call: ``steps`` steps, blocking
    compile_s: float
    flops: float | None  # per step, all devices
    per_step: int  # examples or tokens per step
    config: object


def build(case: Case) -> Built:
    """Builds the recipe as the CLI does, compiles and runs its first step."""
    from jaxgen import experiments, models
    from jaxgen.train import loop
    from jaxgen.train import mesh as mesh_lib

    config = experiments.apply_overrides(experiments.get_config(case.spec), list(case.overrides))
    run = loop.build(config, family=models.make_family)
    it = iter(run.datasets.train)
    first = next(it)
    state = loop.init_state(run, first)
    batch = mesh_lib.global_batch(first, run.batch_sharding)
    start = time.perf_counter()
    compiled = run.train_step.lower(state, batch).compile()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = cost.get("flops") if isinstance(cost, dict) else None
    flops = None if flops is None else float(flops) * run.mesh.size  # per device -> all
    batches = [mesh_lib.global_batch(next(it), run.batch_sharding) for _ in range(case.steps)]
    box = {"state": state}

    def window():
        s, m = box["state"], None
        for b in batches:
            s, m = compiled(s, b)
        jax.block_until_ready(m)
        box["state"] = s

    per_step = int(config.data.batch_size)
    if case.unit == "tokens":
        per_step *= int(config.data.seq_len)
    return Built(window, compile_s, flops, per_step, config)


def nanogpt_window(config, steps: int):
    """(zero-argument call of ``steps`` nanoGPT steps, its GPTConfig) at the LM's shape."""
    import torch

    from benchmarks import nanogpt_torch as ng
    torch.set_num_threads(_cores())
    m = config.model
    c = dataclasses.replace(ng.SHAKESPEARE_CHAR_CPU, n_layer=int(m.num_layers),
                            n_head=int(m.num_heads), n_embd=int(m.d_model),
                            block_size=int(config.data.seq_len),
                            batch_size=int(config.data.batch_size))
    text = _text(config)
    chars = sorted(set(text))
    c = dataclasses.replace(c, vocab_size=len(chars))
    index = {ch: i for i, ch in enumerate(chars)}
    tokens = np.fromiter((index[ch] for ch in text[:200_000]), np.int64)
    model, step = ng.make_step(c)
    data = ng.batches(tokens, c, steps)

    def window():
        for x, y in data:
            step(x, y)
    window()  # first steps: allocator and autograd warm-up
    return window, c, ng.num_params(model)


def _cores() -> int:
    from jaxgen.train.host import available_cores
    return available_cores()


def _text(config) -> str:
    if config.data.source == "text_file":
        with open(config.data.path, encoding="utf-8") as f:
            return f.read()
    import sysconfig
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "os.py"), encoding="utf-8") as f:
        return f.read()


def _row(case: Case, b: Built | None, times: list[float] | None, peak: float, **extra) -> dict:
    row = {"family": case.family, "recipe": case.spec, "impl": extra.pop("impl", "jaxgen"),
           "unit": case.unit, **extra}
    if b is not None:
        row.update(compile_s=b.compile_s, per_step=b.per_step,
                   gflop_per_step=None if b.flops is None else b.flops / 1e9)
    if times:
        s = spread_stats([t / case.steps for t in times])
        row.update({"step_ms": 1e3 * s["median_s"], "q1_ms": 1e3 * s["q1_s"],
                    "q3_ms": 1e3 * s["q3_s"], "spread": s["spread"], "windows": len(times),
                    "steps_per_window": case.steps})
        row["throughput"] = row["per_step"] / s["median_s"] if "per_step" in row else None
        if b is not None and b.flops:
            row["gflops"] = b.flops / s["median_s"] / 1e9
            row["mfu"] = row["gflops"] / peak if peak else None
        if s["spread"] > WIDE_SPREAD:
            print(f"warning: wide spread {s['spread']:.2f} for {case.spec} {row['impl']}",
                  file=sys.stderr, flush=True)
    return row


def bench_case(case: Case, repeats: int, peak: float) -> list[dict]:
    """Rows of one family (and of nanoGPT for the LM); a failing family is a skipped row."""
    try:
        b = build(case)
    except Exception as e:  # noqa: BLE001 -- a missing recipe/module skips only this family
        text = str(e).strip().splitlines()
        return [{"family": case.family, "recipe": case.spec, "impl": "jaxgen",
                 "skipped": f"{type(e).__name__}: {text[0] if text else ''}"}]
    calls, peer = {"jaxgen": b.window}, None
    if case.family == "lm":
        try:
            calls["nanogpt"], peer, n_params = nanogpt_window(b.config, case.steps)
        except ImportError as e:
            peer = f"peer torch not installed ({e.name}); pip install -e .[peers]"
    times = time_interleaved(calls, repeats)
    rows = [_row(case, b, times["jaxgen"], peak)]
    if isinstance(peer, str):
        rows.append({"family": "lm", "recipe": "nanoGPT shakespeare_char (torch)",
                     "impl": "nanogpt", "skipped": peer})
    elif peer is not None:
        r = _row(case, None, times["nanogpt"], peak, impl="nanogpt",
                 recipe=f"nanoGPT {peer.n_layer}x{peer.n_head}x{peer.n_embd} "
                        f"ctx {peer.block_size} (torch)", per_step=peer.batch_size *
                 peer.block_size, peer_params=n_params)
        r["throughput"] = r["per_step"] / (r["step_ms"] / 1e3)
        rows.append(r)
        rows[0]["vs_nanogpt"] = rows[0]["step_ms"] / r["step_ms"]
    if case.family == "lm":
        rows[0]["data"] = b.config.data.source
    return rows


TABLE_COLUMNS = [
    ["family", "family"], ["recipe", "recipe"], ["impl", "impl"], ["per_step", "per step"],
    ["unit", "unit"], ["step_ms", "step ms"], ["q1_ms", "q1 ms"], ["q3_ms", "q3 ms"],
    ["spread", "(max-min)/med"], ["compile_s", "compile s"], ["throughput", "per s"],
    ["gflop_per_step", "GFLOP/step"], ["gflops", "GFLOP/s"], ["mfu", "MFU"],
    ["vs_nanogpt", "jaxgen/nanoGPT step time (<1: jaxgen faster)"]]

PLOT = {"x": "per_step", "y": "step_ms", "series": "impl", "title": "step time by family",
        "xlabel": "examples or tokens per step", "ylabel": "ms per step", "logx": True,
        "logy": True}


def run(quick: bool) -> dict:
    """The benchmark (contract of :mod:`benchmarks.suite`)."""
    load = os.getloadavg()
    peak = measure_peak(quick)
    print(f"matmul peak {peak:.1f} GFLOP/s on {len(jax.devices())} device(s); load {load}",
          file=sys.stderr, flush=True)
    rows = []
    for case in cases(quick):
        rows += bench_case(case, 3 if quick else 5, peak)
        print(f"  {case.spec} done", file=sys.stderr, flush=True)
    lm = next((r for r in rows if r.get("vs_nanogpt")), None)
    end = os.getloadavg()
    text = next((r.get("data") for r in rows if r["family"] == "lm" and "data" in r), None)
    notes = [f"matmul peak (f32, all {len(jax.devices())} devices, this run): {peak:.1f} GFLOP/s",
             f"1-minute load average at start {load[0]:.2f}, at end {end[0]:.2f}",
             (f"{len(jax.devices())} device(s) for every recipe (--cpu-devices N picks the "
              f"layout; jaxgen train follows each recipe's mesh.cpu_devices: 0 = one device "
              f"per core, {_cores()} here)"),
             "MFU = XLA cost-analysis FLOPs of the compiled step / step time / matmul peak",
             f"LM data: {'tiny Shakespeare (text_file)' if text == 'text_file' else text}",
             "nanoGPT: torch.set_num_threads(all cores), windows interleaved with jaxgen's",
             "jaxgen/nanoGPT = jaxgen step time / nanoGPT step time: < 1 means jaxgen faster"
             + (f"; measured {lm['vs_nanogpt']:.2f}" if lm else "")]
    return {"rows": rows, "table_columns": TABLE_COLUMNS, "plot": PLOT, "notes": notes,
            "summary": {"lm_vs_nanogpt": lm and lm["vs_nanogpt"],
                        "mfu": {r["family"]: r.get("mfu") for r in rows
                                if r["impl"] == "jaxgen"}},
            "meta": {"peak_matmul_gflops": peak, "loadavg_start": load, "loadavg_end": end,
                     "devices": len(jax.devices())}}
