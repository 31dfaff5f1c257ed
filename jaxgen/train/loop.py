"""The one training loop, shared by every family. It reads top to bottom in marked sections.

A run is fully described by its config and lives in its workdir:
  workdir/config.json      the resolved config (the workdir belongs to this experiment)
  workdir/checkpoints/     Orbax checkpoints: {state, data-iterator state, config}, last N kept
  workdir/metrics.jsonl    one JSON record per logged step and evaluation
  workdir/tensorboard/     TensorBoard event files
  workdir/samples/         sample grids (PNG) or texts, at the end and every sample_every steps
Calling :func:`train` again on the same workdir resumes from the newest readable checkpoint and
continues exactly: same data order (the iterator state is restored), same RNG (per-step keys are
``fold_in(rng, step)``), so the result equals that of a run that was never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgen import data as data_lib
from jaxgen import models
from jaxgen.models.base import Family
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.checkpoint import Checkpointer
from jaxgen.train.logging import MetricWriter

log = logging.getLogger("jaxgen")


class Interrupted(Exception):
    """Raised by the ``interrupt_at`` test hook: the run stops as if killed (no extra save)."""


@dataclasses.dataclass
class Run:
    """Everything built from a config: mesh, data, family and the compiled steps."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    datasets: Any
    family: Family
    abstract_state: Any
    state_sharding: Any
    batch_sharding: jax.sharding.NamedSharding
    train_step: Callable
    eval_step: Callable


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


# ----------------------------------------------------------------------------- build
def build(config: ml_collections.ConfigDict, devices: Optional[list] = None,
          datasets: Any = None) -> Run:
    """Builds mesh, data pipelines, family, abstract sharded state and jitted steps.

    ``datasets`` replaces the pipelines of ``config.data`` (research code bringing its own data:
    any object with ``train``, ``make_eval()`` and ``info`` as in :mod:`jaxgen.data`).
    """
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig.from_config(config.mesh), devices)
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        size = int(config.data[key])
        if size % n_batch_shards:
            raise ValueError(f"data.{key}={size} is not divisible by the {n_batch_shards} "
                             f"data-parallel devices of the mesh {dict(mesh.shape)}")
    datasets = data_lib.make_datasets(config) if datasets is None else datasets
    family = models.make_family(config, datasets.info)
    sample_batch = next(iter(datasets.make_eval()))
    sample_batch = {k: v for k, v in sample_batch.items() if k != "mask"}
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(family.init_state, rng, sample_batch)
    state_sh = mesh_lib.state_shardings(abstract, mesh, family.param_specs)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sh)
    batch_sh = mesh_lib.batch_sharding(mesh)
    rep = mesh_lib.replicated(mesh)
    train_step = jax.jit(family.train_step, in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, rep), donate_argnums=0)
    eval_step = jax.jit(family.eval_step, in_shardings=(state_sh, batch_sh), out_shardings=rep)
    return Run(config, mesh, datasets, family, abstract, state_sh, batch_sh, train_step, eval_step)


def init_state(run: Run, sample_batch: dict) -> Any:
    """Fresh step-0 state, created directly with its shardings (never whole on one device)."""
    sample_batch = {k: v for k, v in sample_batch.items() if k != "mask"}
    init = jax.jit(run.family.init_state, out_shardings=run.state_sharding)
    return init(jax.random.PRNGKey(run.config.seed), sample_batch)


# ----------------------------------------------------------------------------- evaluate
def evaluate(run: Run, state: Any, batches: Optional[Iterable[dict]] = None) -> dict[str, float]:
    """Runs ``eval_step`` over the eval split; returns sums divided by the example count."""
    totals: dict[str, float] = {}
    for batch in (run.datasets.make_eval() if batches is None else batches):
        sums = jax.device_get(run.eval_step(state, mesh_lib.global_batch(batch, run.batch_sharding)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
    count = totals.pop("count", 0.0)
    if count <= 0:
        raise ValueError("the evaluation split is empty")
    return {k: v / count for k, v in totals.items()}


def write_samples(run: Run, state: Any, rng: jax.Array, num: int, path: str) -> list[str]:
    """Draws ``num`` samples with the family's sampler and writes them (PNG grid or text)."""
    sample = jax.jit(run.family.sample, static_argnums=2,
                     out_shardings=mesh_lib.replicated(run.mesh))
    samples = jax.device_get(sample(state, rng, num))
    if jax.process_index() != 0:
        return []
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return run.family.save_samples(samples, path)


# ----------------------------------------------------------------------------- workdir
def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """A workdir belongs to one experiment: refuse to mix runs of different experiments."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    if stored.get("experiment") != config.experiment:
        raise ValueError(f"workdir {workdir} belongs to experiment {stored.get('experiment')!r}, "
                         f"not {config.experiment!r}; choose another --workdir")


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{workdir} is not a jaxgen workdir (no config.json); train into it first")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_latest(run: Run, workdir: str, data_iterator: Any = None) -> tuple[int, Any]:
    """(step, state) of the newest readable checkpoint of ``workdir``."""
    ckpt = Checkpointer(workdir, keep=int(run.config.train.keep_ckpts), async_save=False)
    try:
        restored = ckpt.restore(run.abstract_state, data_iterator)
    finally:
        ckpt.close()
    if restored is None:
        raise ValueError(f"no readable checkpoint in {workdir}/checkpoints")
    return restored[0], restored[1]


def _sample_path(run: Run, workdir: str, step: int) -> str:
    return os.path.join(workdir, "samples", f"step_{step:07d}{run.family.sample_suffix}")


# ----------------------------------------------------------------------------- train
class _StopSignal:
    """SIGTERM (preemption) handler: finish the current step, save, exit cleanly."""

    def __init__(self):
        self.stop = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def should_stop(self, step: int) -> bool:
        """Single process: the signal flag. Multi-host: JAX's preemption sync point, so every
        process agrees on the step at which to save (a per-host flag could deadlock the save)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # preemption service not enabled
                return False
        return self.stop

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _log_step(writer, bar, step, metrics, t_last, step_last, batch_size):
    now = time.perf_counter()
    metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
    metrics.update(steps_per_s=steps_per_s, examples_per_s=steps_per_s * batch_size)
    writer.write(step, metrics, "train")
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{steps_per_s:.1f}",
                    ex_s=f"{metrics['examples_per_s']:.0f}", refresh=False)
    return now, step


def _phase_seconds(t: dict[str, float]) -> dict[str, float]:
    """Wall seconds of the phases of :func:`train`: set-up (build, restore or init), the step
    loop (compiles and checkpoints included), the final evaluation and the final samples."""
    return {"setup_s": t["loop"] - t["start"], "loop_s": t["eval"] - t["loop"],
            "eval_s": t["samples"] - t["eval"], "samples_s": t["end"] - t["samples"],
            "total_s": t["end"] - t["start"]}


def train(config: ml_collections.ConfigDict, workdir: str, *, devices: Optional[list] = None,
          datasets: Any = None, interrupt_at: Optional[int] = None, progress: bool = True) -> Any:
    """Trains (or resumes) the experiment ``config`` in ``workdir``; returns the final state."""
    # --- set-up: workdir, mesh, data, family, compiled steps
    timings = {"start": time.perf_counter()}
    check_workdir(workdir, config)
    run = build(config, devices, datasets)
    tc = config.train
    total = int(tc.steps)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config_to_dict(config), f, indent=2)
    ckpt = Checkpointer(workdir, keep=int(tc.keep_ckpts), async_save=bool(tc.async_ckpt))
    train_iter = run.datasets.train

    # --- state: resume from the newest readable checkpoint, or start fresh
    restored = ckpt.restore(run.abstract_state, train_iter)
    if restored is not None:
        start, state, _ = restored
        log.info("resumed %s from step %d", workdir, start)
    else:
        start, state = 0, init_state(run, next(iter(run.datasets.make_eval())))
    writer = MetricWriter(workdir)
    bar = tqdm(total=total, initial=start, disable=not progress or jax.process_index() != 0,
               desc=config.experiment or config.family, mininterval=1.0, dynamic_ncols=True)
    cfg_dict = config_to_dict(config)
    batch_size = int(config.data.batch_size)

    # --- the loop: metrics of a log step are fetched after the next step is dispatched
    pending = None
    timings["loop"] = t_last = time.perf_counter()
    step_last = start
    step = start
    try:
        with _StopSignal() as stop:
            while step < total:
                batch = mesh_lib.global_batch(next(train_iter), run.batch_sharding)
                state, metrics = run.train_step(state, batch)
                step += 1
                bar.update(1)
                if pending is not None:
                    t_last, step_last = _log_step(writer, bar, *pending, t_last, step_last, batch_size)
                    pending = None
                if step % int(tc.log_every) == 0 or step == total:
                    pending = (step, metrics)
                if tc.eval_every and step % int(tc.eval_every) == 0 and step != total:
                    writer.write(step, evaluate(run, state), "eval")
                if tc.sample_every and step % int(tc.sample_every) == 0 and step != total:
                    write_samples(run, state, jax.random.PRNGKey(step), int(tc.num_samples),
                                  _sample_path(run, workdir, step))
                preempted = stop.should_stop(step)
                if step % int(tc.ckpt_every) == 0 or step == total or preempted:
                    ckpt.save(step, state, train_iter, cfg_dict, force=True)
                if interrupt_at is not None and step >= interrupt_at:
                    raise Interrupted(f"interrupted at step {step}")
                if preempted:
                    log.warning("SIGTERM received: saved step %d, exiting", step)
                    return state
        if pending is not None:
            _log_step(writer, bar, *pending, t_last, step_last, batch_size)

        # --- end of training: evaluation and samples
        if start < total:
            timings["eval"] = time.perf_counter()
            writer.write(total, evaluate(run, state), "eval")
            timings["samples"] = time.perf_counter()
            write_samples(run, state, jax.random.PRNGKey(total), int(tc.num_samples),
                          _sample_path(run, workdir, total))
            timings["end"] = time.perf_counter()
            phases = _phase_seconds(timings)
            writer.write(total, phases, "time")
            log.info("wall seconds: " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in phases.items()))
        return state
    finally:
        bar.close()
        ckpt.close()
        writer.close()
