"""Input pipelines: batches per second and resident memory over Grain worker counts, against
what the matching recipe's training step consumes.

    python -m benchmarks input [--quick]          # or: jaxgen bench input

Sources (written once, then reused, under ``$JAXGEN_BENCH_DATA``, default
``~/.cache/jaxgen/bench``):

- a token file (``jaxgen.data.tokenfile.synthetic``): random uint16 ids of the char LM's 65-symbol
  vocabulary at two sizes 10x apart,
  50M and 500M tokens (1 GB) (``--quick``: 200k and 2M), read as ``data.source=token_file``
  with the batch and context of ``lm_shakespeare_char:cpu`` (12 x 65);
- ArrayRecord images (``jaxgen.data.arrayrecord.synthetic``): 10,000 and 100,000 random
  32x32x3 images (``--quick``: 500 and 5,000 of 28x28x1), read as ``data.source=arrayrecord``
  with the batch of ``gan_cifar10`` (64). (``diffusion_cifar10``'s step does not fit a 24 GiB
  host's memory.)

Each (source, size, workers) is measured in a fresh Python process (``--quick``: in this one,
the worker sweep at the larger size only), as a training process would run it:
``make_datasets`` of the recipe's config, 10 batches of warm-up (worker start-up included),
then batches for ``seconds`` (median of 3 windows). Memory is that process's
anonymous resident set (``RssAnon``: Python objects and buffers, what grows if a dataset is
held in memory), its file-backed resident pages (``RssFile``: mapped token-file and library
pages the kernel may drop), and the same two for the worker processes together.

The consumption figure is the recipe's training step on this host (``benchmarks.train.build``:
the real trainer pieces, on the devices the CLI uses; a fresh process too), fed by the same
source: steps/s =
batches/s the trainer consumes. ``headroom`` = input batches/s / consumed batches/s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = {"quick": {"tokens": (200_000, 2_000_000), "images": (500, 5_000)},
         "full": {"tokens": (50_000_000, 500_000_000), "images": (10_000, 100_000)}}
# source -> (recipe, overrides) whose training step the source feeds
RECIPES = {"quick": {"tokens": [("lm_shakespeare_char:smoke", ())],
                     "images": [("vae_mnist:smoke", ())]},
           "full": {"tokens": [("lm_shakespeare_char:cpu", ())],
                    # diffusion_cifar10's step (DDPM's 35.7M U-Net, batch 128) does not fit a
                    # 24 GiB host: the process was killed at 24 GiB of anonymous memory
                    "images": [("gan_cifar10", ())]}}
WORKERS = {"quick": (0, 1), "full": (0, 1, 2)}


def data_root() -> str:
    return os.environ.get("JAXGEN_BENCH_DATA") or os.path.expanduser("~/.cache/jaxgen/bench")


def ensure_tokens(n: int) -> str:
    from jaxgen.data import tokenfile
    path = os.path.join(data_root(), f"tokens-{n}-v65")
    if not os.path.isfile(os.path.join(path, tokenfile.INFO_FILE)):
        print(f"writing a synthetic token file of {n:,} tokens to {path}", file=sys.stderr,
              flush=True)
        tokenfile.synthetic(path, n, vocab_size=65)  # the char LM's vocabulary
    return path


def ensure_images(n: int, shape: tuple[int, int, int]) -> str:
    from jaxgen.data import arrayrecord
    path = os.path.join(data_root(), f"images-{n}-{'x'.join(map(str, shape))}")
    if not os.path.isfile(os.path.join(path, arrayrecord.INFO_FILE)):
        print(f"writing {n:,} synthetic {shape} images to {path}", file=sys.stderr, flush=True)
        arrayrecord.synthetic(path, n, shape)
    return path


def _config(source: str, path: str, batch: int, workers: int, seq_len: int = 64):
    from jaxgen import settings
    from jaxgen.config import Experiment, ImageData, TextData
    if source == "tokens":
        data = settings.from_dict(TextData, {"source": "token_file", "path": path,
                                             "batch_size": batch, "seq_len": seq_len,
                                             "workers": workers, "eval_batches": 1}, what="data")
    else:
        data = settings.from_dict(ImageData, {"source": "arrayrecord", "path": path,
                                              "batch_size": batch, "workers": workers},
                                  what="data")
    return Experiment(data=data)


def _status_mib(pid: str = "self") -> dict:
    """RssAnon and RssFile (MiB) of a process, from /proc/PID/status."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    except OSError:
        pass
    return out


def _memory() -> dict:
    """This process's RssAnon / RssFile and its worker processes' totals."""
    out = _status_mib()
    try:
        import psutil
        kids = [_status_mib(str(k.pid)) for k in psutil.Process().children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing
        kids = []
    out["workers_anon"] = sum(k.get("RssAnon", 0.0) for k in kids)
    out["workers_file"] = sum(k.get("RssFile", 0.0) for k in kids)
    return out


def measure_one(source: str, path: str, batch: int, workers: int, seconds: float,
                seq_len: int = 64) -> dict:
    """Batches/s and memory of one pipeline in this process (run in a fresh process)."""
    from jaxgen.data import make_datasets
    ds = make_datasets(_config(source, path, batch, workers, seq_len))
    it = ds.train
    start = time.perf_counter()
    for _ in range(10):
        next(it)
    warm_s = time.perf_counter() - start
    rates = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            next(it)
            n += 1
        rates.append(n / (time.perf_counter() - t0))
    mem = _memory()
    it.close()
    return {"batches_per_s": float(np.median(rates)), "warmup_s": warm_s, **mem}


def _subprocess(fn: str, *args) -> dict:
    """``fn(*args)`` of this module in a fresh Python process (its memory alone; a crash or an
    out-of-memory kill is a skipped row, not the end of the benchmark)."""
    code = ("import json, sys; sys.path.insert(0, %r); from benchmarks import input as b;"
            "print('RESULT ' + json.dumps(b.%s(*%r)))" % (ROOT, fn, args))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    if p.returncode == -9:
        tail = "killed (SIGKILL: out of memory?)"
    return {"skipped": f"exit {p.returncode}: {tail[:200]}"}


def consumed(spec: str, source: str, path: str) -> dict:
    """Steps/s of ``spec``'s training step on this host, fed from ``path``."""
    from benchmarks.common import spread_stats, time_interleaved
    from benchmarks.train import Case, build
    import jax
    over = (("data.source=token_file", f"data.path={path}") if source == "tokens" else
            ("data.source=arrayrecord", f"data.path={path}"))
    steps = 5
    b = build(Case(spec, spec, "examples", steps, over))
    times = time_interleaved({"step": b.window}, 3)["step"]
    s = spread_stats([t / steps for t in times])
    return {"recipe": spec, "batch": int(b.config.data.batch_size),
            "step_ms": 1e3 * s["median_s"], "steps_per_s": 1.0 / s["median_s"],
            "compile_s": b.compile_s, "devices": len(jax.devices())}


def run(quick: bool) -> dict:
    mode = "quick" if quick else "full"
    seconds = 0.6 if quick else 6.0
    image_shape = (28, 28, 1) if quick else (32, 32, 3)
    rows, notes, steps = [], [], {}
    for source in ("tokens", "images"):
        sizes = SIZES[mode][source]
        paths = [ensure_tokens(n) if source == "tokens" else ensure_images(n, image_shape)
                 for n in sizes]
        for spec, _ in RECIPES[mode][source]:
            try:
                steps[spec] = consumed(spec, source, paths[0]) if quick else \
                    _subprocess("consumed", spec, source, paths[0])
            except Exception as e:  # noqa: BLE001 - a recipe that cannot build skips its rows
                text = str(e).strip().splitlines()
                steps[spec] = {"recipe": spec, "skipped": f"{type(e).__name__}: "
                                                          f"{text[0] if text else ''}"}
        for spec, _ in RECIPES[mode][source]:
            st = steps[spec]
            if "skipped" in st:
                rows.append({"source": source, "recipe": spec, "skipped": st["skipped"]})
                continue
            for n, path in zip(sizes, paths):
                # --quick: the worker sweep at the larger size only, in this process
                for workers in WORKERS[mode] if (n == sizes[-1] or not quick) else (0,):
                    args = (source, path, st["batch"], workers, seconds)
                    r = measure_one(*args) if quick else _subprocess("measure_one", *args)
                    row = {"source": source, "size": n, "recipe": spec, "batch": st["batch"],
                           "workers": workers, **r}
                    if "batches_per_s" in r:
                        row["step_per_s"] = st["steps_per_s"]
                        row["headroom"] = r["batches_per_s"] / st["steps_per_s"]
                    rows.append(row)
    for spec, st in steps.items():
        if "skipped" not in st:
            notes.append(f"{spec}: training step {st['step_ms']:.1f} ms (batch {st['batch']}, "
                         f"{st['devices']} CPU devices) = {st['steps_per_s']:.1f} batches/s "
                         "consumed on this host")
    sizes = ", ".join(f"{s} {a:,} and {b:,}" for s, (a, b) in SIZES[mode].items())
    notes.append(f"sizes: {sizes}; data under {data_root()}")
    return {
        "rows": rows,
        "table_columns": ["source", "size", "recipe", "batch", "workers",
                          ["batches_per_s", "batches/s"], ["step_per_s", "step consumes/s"],
                          "headroom", ["RssAnon", "RssAnon MiB"], ["RssFile", "RssFile MiB"],
                          ["workers_anon", "workers RssAnon MiB"],
                          ["workers_file", "workers RssFile MiB"], ["warmup_s", "warm-up s"]],
        "plot": {"x": "workers", "y": "batches_per_s", "series": "recipe",
                 "where": {"size": SIZES[mode]["images"][1]}, "title": "input batches/s",
                 "xlabel": "Grain worker processes", "ylabel": "batches/s"},
        "notes": notes,
        "summary": {"steps": steps},
    }
