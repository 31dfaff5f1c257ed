"""Times the training step of an experiment's LM, as the CLI builds it, on N CPU devices.

    python -m benchmarks.lm_step lm_shakespeare_char:cpu --devices 1 --threaded
    python -m benchmarks.lm_step lm_shakespeare_char:cpu --devices 1
    python -m benchmarks.lm_step lm_shakespeare_char:cpu --devices 2

``--devices N`` splits the host as ``jaxgen.train.host`` does (single-threaded devices,
thread-pool head-room); ``--threaded`` keeps XLA's multi-threaded matmuls. Batches come from the
recipe's data (``--set data.path=FILE`` for a local text) and are put on the devices before
timing; prints milliseconds per step for three windows of ``--steps`` steps. ``--profile`` then
traces ``--steps`` more steps with ``jax.profiler`` (a Perfetto trace, with XLA:CPU's per-thunk
events) and prints where a step's time goes: the total per op kind (``ynn_fusion``: the matmuls
XLA:CPU hands to YNNPACK; ``*_fusion``: elementwise loops; ``all-reduce``: the gradient sum across
devices), summed over devices, per step; waits nested in an op are part of that op.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--threaded", action="store_true", help="keep multi-threaded matmuls")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--profile", action="store_true", help="print a per-op breakdown of a step")
    args = p.parse_args()

    from jaxgen.train import host
    host.reserve_pool_threads(args.devices)
    flags = os.environ.get("XLA_FLAGS", "")
    flags += f" --xla_force_host_platform_device_count={args.devices}"
    if not args.threaded:
        flags += " --xla_cpu_multi_thread_eigen=false"
    if args.profile:
        flags += " --xla_cpu_enable_xprof_traceme"
    os.environ["XLA_FLAGS"] = flags.strip()

    import jax
    from jaxgen import experiments, models
    from jaxgen.train import loop, mesh as mesh_lib

    config = experiments.apply_overrides(experiments.get_config(args.experiment), args.overrides)
    run = loop.build(config, devices=jax.devices()[:args.devices], family=models.make_family)
    it = iter(run.datasets.train)
    first = next(it)
    state = loop.init_state(run, first)
    state, metrics = run.train_step(state, mesh_lib.global_batch(first, run.batch_sharding))
    jax.block_until_ready(metrics)
    batches = [mesh_lib.global_batch(next(it), run.batch_sharding) for _ in range(args.steps)]
    for _ in range(3):
        t = time.perf_counter()
        for b in batches:
            state, metrics = run.train_step(state, b)
        jax.block_until_ready(metrics)
        print(f"{args.experiment} devices={args.devices} threaded={args.threaded}: "
              f"{(time.perf_counter() - t) / args.steps * 1e3:.1f} ms/step", flush=True)
    if args.profile:
        with tempfile.TemporaryDirectory() as logdir:
            with jax.profiler.trace(logdir, create_perfetto_trace=True):
                for b in batches:
                    state, metrics = run.train_step(state, b)
                jax.block_until_ready(metrics)
            print_breakdown(glob.glob(f"{logdir}/**/*.json.gz", recursive=True)[0], args.steps)


# XLA:CPU executor and Python frames that enclose the op events, and waits nested inside them
# (an all-reduce's Rendezvous, YNNPACK's thread-pool Await): not ops of their own.
_ENCLOSING = re.compile(r"ThunkExecutor|^\$|PjitFunction|PjRt|ParseArguments|LaunchOnDevice|"
                        r"ExecutePrepare|^Wait|Rendezvous|ThreadPool::Await")


def print_breakdown(trace_path: str, steps: int, top: int = 15) -> None:
    """Per-step time of each XLA:CPU op kind in a Perfetto trace, summed over devices."""
    with gzip.open(trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or _ENCLOSING.search(e["name"]):
            continue
        kind = re.sub(r"\.\d+$", "", e["name"])
        total[kind] += e["dur"]
        count[kind] += 1
    print(f"per step, summed over devices ({steps} steps traced):")
    print(f"{'op':<32} {'ms':>8} {'calls':>7}")
    for kind, us in total.most_common(top):
        print(f"{kind[:32]:<32} {us / steps / 1e3:8.2f} {count[kind] / steps:7.1f}")
    print(f"{'all ops':<32} {sum(total.values()) / steps / 1e3:8.2f}  (a device may run "
          "independent ops at once, so this can exceed devices x step time)")


if __name__ == "__main__":
    main()
