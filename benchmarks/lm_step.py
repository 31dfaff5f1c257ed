"""Times the training step of an experiment's LM, as the CLI builds it, on N CPU devices.

    python -m benchmarks.lm_step lm_shakespeare_char:cpu --devices 1 --threaded
    python -m benchmarks.lm_step lm_shakespeare_char:cpu --devices 1
    python -m benchmarks.lm_step lm_shakespeare_char:cpu --devices 2

``--devices N`` splits the host as ``jaxgen.train.host`` does (single-threaded devices,
thread-pool head-room); ``--threaded`` keeps XLA's multi-threaded matmuls. Batches come from the
recipe's data (``--set data.path=FILE`` for a local text) and are put on the devices before
timing; prints milliseconds per step for three windows of ``--steps`` steps.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--threaded", action="store_true", help="keep multi-threaded matmuls")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()

    from jaxgen.train import host
    host.reserve_pool_threads(args.devices)
    flags = os.environ.get("XLA_FLAGS", "")
    flags += f" --xla_force_host_platform_device_count={args.devices}"
    if not args.threaded:
        flags += " --xla_cpu_multi_thread_eigen=false"
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


if __name__ == "__main__":
    main()
