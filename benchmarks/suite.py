"""The benchmark suite: a registry of benchmarks, each run lazily, and one record per run.

    python -m benchmarks NAME [--quick] [--out DIR]     # or: jaxgen bench NAME ...
    NAME: attention | denoise | train | input | all

The contract a benchmark module ``benchmarks/<name>.py`` implements::

    def run(quick: bool) -> dict:
        return {
            "rows": [dict, ...],           # one flat, JSON-serialisable dict per measurement;
                                           # a row that could not be measured carries
                                           # "skipped": "<one-line reason>"
            "table_columns": [...],        # row keys in table order; an entry may also be a
                                           # [key, header] pair
            "plot": {"panels": [{"x": key, "y": key, "series": key, "where": {key: value},
                                 "title": str, "xlabel": str, "ylabel": str,
                                 "logx": bool, "logy": bool}, ...]},
                                           # or one panel dict without "panels"; {} for none
            # optional:
            "notes": [str, ...],           # lines printed above the table
            "summary": dict, "meta": dict, # free-form figures kept in the JSON
        }

``quick`` must keep the whole benchmark to seconds (CI). ``run`` may also accept ``out`` (the
output directory, for extra artifacts) and benchmark-specific keyword options; the runner passes
only the keywords the function's signature names. Modules are imported only when their
benchmark runs: a module that is missing, fails to import, raises, or returns something that
breaks the contract marks that benchmark ``skipped`` with a one-line reason, and the rest of
the run (e.g. ``all``) goes on.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import inspect
import sys
import time
import traceback
from typing import Any

from benchmarks import report


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    module: str  # imported when the benchmark runs
    description: str

    def run(self, quick: bool, out: str | None = None, **options: Any) -> dict:
        """Imports the module and calls its ``run`` with the keywords it accepts."""
        fn = importlib.import_module(self.module).run
        params = inspect.signature(fn).parameters
        kwargs = {"out": out, **options} if any(
            p.kind is p.VAR_KEYWORD for p in params.values()) else {
            k: v for k, v in {"out": out, **options}.items() if k in params}
        return fn(quick=quick, **kwargs)


REGISTRY: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("attention", "benchmarks.attention",
              "attention kernels, forward and forward+backward, against torch SDPA"),
    Benchmark("denoise", "benchmarks.denoise", "diffusion denoiser steps against diffusers"),
    Benchmark("train", "benchmarks.train", "training-step throughput of the model families"),
    Benchmark("input", "benchmarks.input", "input pipelines (token files, ArrayRecord images) "
              "against what the training steps consume"),
)}
NAMES = (*REGISTRY, "all")


def resolve(name: str) -> list[Benchmark]:
    """Benchmarks a NAME stands for; ValueError (one line) for an unknown name."""
    if name == "all":
        return list(REGISTRY.values())
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(NAMES)}")
    return [REGISTRY[name]]


def contract_error(result: Any) -> str | None:
    """What is wrong with a benchmark's result (one line), or None."""
    if not isinstance(result, dict):
        return f"run() returned {type(result).__name__}, not a dict"
    missing = [k for k in ("rows", "table_columns", "plot") if k not in result]
    if missing:
        return f"result lacks {', '.join(missing)}"
    if not isinstance(result["rows"], list) or not all(isinstance(r, dict)
                                                        for r in result["rows"]):
        return "rows must be a list of dicts"
    if not isinstance(result["table_columns"], list):
        return "table_columns must be a list"
    if not isinstance(result["plot"], dict):
        return "plot must be a dict"
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def run_one(bench: Benchmark, quick: bool, out: str | None, options: dict) -> dict:
    """A section of the run record; never raises for a failing benchmark."""
    start = time.perf_counter()
    section: dict = {"name": bench.name, "description": bench.description}
    try:
        result = bench.run(quick, out, **options)
        problem = contract_error(result)
    except ModuleNotFoundError as e:
        problem = (f"module {bench.module} is not there" if e.name == bench.module
                   else f"import failed: {_one_line(e)}")
    except Exception as e:  # noqa: BLE001 -- a failing benchmark must not stop the suite
        problem = _one_line(e)
        traceback.print_exc(file=sys.stderr)
    section["seconds"] = time.perf_counter() - start
    if problem:
        print(f"benchmark {bench.name} skipped: {problem}", file=sys.stderr, flush=True)
        return {**section, "status": "skipped", "reason": problem, "rows": [],
                "table_columns": [], "plot": {}}
    return {**result, **section, "status": "ok", "reason": None}


def environment(host_note: str) -> dict:
    """Device, versions and host configuration for the record (imports JAX)."""
    import platform

    from benchmarks.common import device_description, versions
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"device": f"{device_description()}; {cpu}", "versions": versions(),
            "host": host_note}


def run_suite(name: str, quick: bool, out_dir: str, command: str, host_note: str,
              options: dict[str, dict] | None = None) -> tuple[dict, dict[str, str]]:
    """Runs NAME's benchmarks and writes the three files into ``out_dir``.

    ``options`` maps a benchmark name to extra keywords for its ``run``. Returns the record and
    the paths written."""
    benches = resolve(name)
    record = {"command": command,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "quick": quick, **environment(host_note), "benchmarks": []}
    for bench in benches:
        print(f"== {bench.name}", file=sys.stderr, flush=True)
        record["benchmarks"].append(run_one(bench, quick, out_dir,
                                            (options or {}).get(bench.name, {})))
    return record, report.write_all(out_dir, record)
