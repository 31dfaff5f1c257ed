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
import re
import signal
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from jaxgen import data as data_lib
from jaxgen import experiments as experiments_lib
from jaxgen import settings, signals
from jaxgen.config import Experiment
from jaxgen.experiments import CONFIG_FILE
from jaxgen.errors import RunError, UsageError
from jaxgen.models.base import ABSTRACT_KEY, Family
from jaxgen.nn.kernels import dispatch
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.checkpoint import Checkpointer
from jaxgen.train.evaluate import evaluate, write_samples  # noqa: F401  (re-exported)
from jaxgen.train.logging import MetricWriter
from jaxgen.train.state import format_count, param_count
from jaxgen.train.workdir import RunLock, write_json

log = logging.getLogger("jaxgen")


FamilyFactory = Callable[[Any, dict], Family]

# Exit status of a run stopped by SIGTERM/SIGINT after saving: EX_TEMPFAIL, "try again later",
# which tells a scheduler to requeue the job (a finished run exits 0).
PREEMPTED_EXIT_STATUS = 75


class Interrupted(Exception):
    """Raised by the ``interrupt_at`` test hook: the run stops as if killed (no extra save)."""


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT stopped the run and its current step was saved."""

    def __init__(self, step: int, signal_name: str, state: Any):
        super().__init__(f"{signal_name} received: saved step {step}; run the same command "
                         "again to resume")
        self.step, self.signal_name, self.state = step, signal_name, state


class NonFiniteLoss(RunError):
    """Raised when ``train.nonfinite="stop"`` and a step's loss or gradients were not finite."""


@dataclasses.dataclass
class Run:
    """Everything built from a config: mesh, data, family and the compiled steps."""

    config: Experiment
    mesh: jax.sharding.Mesh
    datasets: Any
    family: Family
    abstract_state: Any
    state_sharding: Any
    batch_sharding: jax.sharding.NamedSharding
    train_step: Callable
    eval_step: Optional[Callable]
    _samplers: dict = dataclasses.field(default_factory=dict)

    def active(self):
        """The run's mesh as JAX's context (``jax.set_mesh``): trace and compile under it, so
        the model sees the devices it is compiled for (the attention kernel's choice)."""
        return jax.set_mesh(self.mesh)

    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of the data-parallel devices."""
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        return -(-n // shards) * shards

    def sampler(self, n: int) -> Callable:
        """``family.sample`` jitted for ``n`` samples (cached), sharded over the batch when the
        data-parallel devices divide ``n`` (:meth:`draw` pads to make them), else replicated."""
        if n not in self._samplers:
            out = self.batch_sharding if n == self.padded(n) else mesh_lib.replicated(self.mesh)
            self._samplers[n] = jax.jit(self.family.sample, static_argnums=(2, 3),
                                        out_shardings=out)
        return self._samplers[n]

    def draw(self, state: Any, rng: jax.Array, n: int, options: Any) -> jax.Array:
        """``n`` samples drawn sharded over the batch: the sampler runs on ``n`` rounded up to
        the data-parallel devices and the extra samples are dropped. With partitionable PRNG
        keys (JAX's default) every random array is drawn along the batch, so the samples are
        those of an unpadded draw (on any number of devices)."""
        m = self.padded(n)
        with self.active():
            samples = self.sampler(m)(state, rng, m, options)
        return samples if m == n else samples[:n]


def config_to_dict(config: Experiment) -> dict:
    return settings.to_dict(config)


def _as_family(family: Any, config: Experiment, data_info: dict) -> Family:
    """A Family from an instance, a Family subclass or a factory (config, data_info) -> Family."""
    return family if isinstance(family, Family) else family(config, data_info)


# ----------------------------------------------------------------------------- build
def build(config: Experiment, devices: Optional[list] = None,
          datasets: Any = None, *, family: Family | FamilyFactory,
          mesh: Optional[jax.sharding.Mesh] = None) -> Run:
    """Builds mesh, data pipelines, family, abstract sharded state and jitted steps.

    ``family`` is a :class:`Family`, a Family subclass or a factory ``(config, data_info) ->
    Family`` (such as :func:`jaxgen.models.make_family`, the registry, which the CLI passes).
    ``datasets`` replaces the pipelines of ``config.data`` (research code bringing its own
    data: any object with ``train``, ``make_eval()`` and ``info`` as in :mod:`jaxgen.data`).
    ``mesh`` replaces the mesh of ``config.mesh`` over ``devices`` (e.g. a topology's).
    """
    mesh = mesh_lib.make_mesh(config.mesh, devices) if mesh is None else mesh
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        size = int(getattr(config.data, key))
        if size % n_batch_shards:
            raise UsageError(f"data.{key}={size} is not divisible by the {n_batch_shards} "
                             f"data-parallel devices of the mesh {dict(mesh.shape)}")
    datasets = data_lib.make_datasets(config) if datasets is None else datasets
    family = _as_family(family, config, datasets.info)
    datasets = family.prepare_datasets(datasets)
    sample_batch = next(iter(datasets.make_eval()))
    sample_batch = {k: v for k, v in sample_batch.items() if k != "mask"}
    rng = jax.random.PRNGKey(config.seed)
    with jax.set_mesh(mesh), dispatch.silent():
        abstract = jax.eval_shape(family.init_state, rng, sample_batch)
        specs = family.param_specs(abstract.params, mesh)
    state_sh = mesh_lib.state_shardings(abstract, mesh, specs)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sh)
    batch_sh = mesh_lib.batch_sharding(mesh)
    rep = mesh_lib.replicated(mesh)
    train_step = jax.jit(family.train_step, in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, rep), donate_argnums=0)
    eval_step = None if family.eval_step is None else jax.jit(
        family.eval_step, in_shardings=(state_sh, batch_sh), out_shardings=rep)
    return Run(config, mesh, datasets, family, abstract, state_sh, batch_sh, train_step, eval_step)


def shape_param_count(config: Experiment, family: Family | FamilyFactory) -> int:
    """The parameter count of ``config``'s model from shapes alone: no data (the shapes come
    from :mod:`jaxgen.data.abstract`), no computation, one device. UsageError where the data's
    shape is only known from the data (e.g. a character vocabulary of a local text file)."""
    from jaxgen.data.abstract import abstract_datasets

    datasets = abstract_datasets(config)
    fam = _as_family(family, config, datasets.info)
    batch = {k: v for k, v in next(iter(datasets.make_eval())).items() if k != "mask"}
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
    with jax.set_mesh(mesh), dispatch.silent():
        abstract = jax.eval_shape(fam.init_state, ABSTRACT_KEY, batch)
    return param_count(abstract.params)


def init_state(run: Run, sample_batch: dict) -> Any:
    """Fresh step-0 state, created directly with its shardings (never whole on one device).

    On CPU devices the initialiser is compiled with XLA's backend optimisation off: it runs
    once, and LLVM's optimisation of its per-leaf random draws was most of its cost (12.2 s of
    compilation instead of 3.3 s for the diffusion smoke model, 2 cores). Accelerators compile
    it as any other program.
    """
    sample_batch = {k: v for k, v in sample_batch.items() if k != "mask"}
    init = jax.jit(run.family.init_state, out_shardings=run.state_sharding)
    cpu = run.mesh.devices.flat[0].platform == "cpu"
    options = {"xla_backend_optimization_level": 0} if cpu else None
    with run.active():
        rng = jax.random.PRNGKey(run.config.seed)
        return init.lower(rng, sample_batch).compile(compiler_options=options)(rng, sample_batch)


# ----------------------------------------------------------------------------- workdir
def check_workdir(workdir: str, config: Experiment) -> None:
    """A workdir belongs to one experiment: refuse to mix runs of different experiments."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} cannot be read ({e})") from None
    if stored.get("experiment") != config.experiment:
        raise UsageError(f"workdir {workdir} belongs to experiment {stored.get('experiment')!r}, "
                         f"not {config.experiment!r}; choose another --workdir")


load_config = experiments_lib.load_config

PATH_FIELDS = ("path", "eval_path", "data_dir", "tokenizer_path")
TOKENIZER_FILE = "tokenizer.json"


# Settings outside ``data`` that name a path ("group.key"): made absolute the same way.
OTHER_PATH_SETTINGS = ("latent.autoencoder",)
# "scheme:..." (two letters or more, so not a Windows drive): a URL (gs://...) or a reference
# such as latent.autoencoder=recipe:NAME, never made absolute
_NOT_A_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def _absolute(value: str) -> str:
    return value if _NOT_A_PATH.match(value) else os.path.abspath(os.path.expanduser(value))


def absolute_data_paths(config: Experiment) -> Experiment:
    """``config`` with its data paths (and :data:`OTHER_PATH_SETTINGS`) made absolute against
    the current directory, so the workdir's config.json finds them from anywhere; URLs and
    ``scheme:`` references are kept as they are."""
    changes = {f: _absolute(getattr(config.data, f))
               for f in PATH_FIELDS if getattr(config.data, f, "")}
    if changes:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **changes))
    for setting in OTHER_PATH_SETTINGS:
        group, key = setting.split(".")
        value = getattr(getattr(config, group, None), key, "")
        if value:
            group_value = dataclasses.replace(getattr(config, group), **{key: _absolute(value)})
            config = dataclasses.replace(config, **{group: group_value})
    return config


def workdir_paths(config: Experiment, workdir: str) -> Experiment:
    """``config`` as a run in ``workdir`` builds it: an empty ``data.tokenizer_path`` is the
    workdir's own tokenizer file (the workdir stays self-contained and can be moved)."""
    if getattr(config.data, "tokenizer_path", None) == "":
        path = os.path.join(os.path.abspath(workdir), TOKENIZER_FILE)
        return dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                    tokenizer_path=path))
    return config


def finished_step(workdir: str, config: Experiment) -> Optional[int]:
    """The newest checkpoint step of ``workdir`` when it already reaches ``train.steps`` (a
    run there would train nothing), else None. Reads the directory listing only."""
    directory = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] \
        if os.path.isdir(directory) else []
    return max(steps) if steps and max(steps) >= int(config.train.steps) else None


def restore_latest(run: Run, workdir: str, data_iterator: Any = None) -> tuple[int, Any]:
    """(step, state) of the newest readable checkpoint of ``workdir`` (see
    :meth:`Checkpointer.restore` for what counts as damage and what is an error)."""
    ckpt = Checkpointer(workdir, keep=int(run.config.train.keep_ckpts), async_save=False)
    try:
        restored = ckpt.restore(run.abstract_state, data_iterator, ema_of=run.family.ema_of,
                                config=config_to_dict(run.config))
    finally:
        ckpt.close()
    if restored is None:
        raise UsageError(f"{workdir} has no checkpoint yet; train into it first")
    return restored[0], restored[1]


def _sample_path(run: Run, workdir: str, step: int) -> str:
    return os.path.join(workdir, "samples", f"step_{step:07d}{run.family.sample_suffix}")


DATA_INFO_FILE = "data_info.json"  # what sampling needs to know of the data, without the data


def _write_json(workdir: str, name: str, obj: Any) -> None:
    """Writes workdir/name atomically (process 0)."""
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, name), obj)


def _write_config(workdir: str, config: Experiment) -> None:
    """Writes workdir/config.json (process 0): only once a restore has succeeded."""
    _write_json(workdir, CONFIG_FILE, config_to_dict(config))


def datasets_for_sampling(workdir: str, config: Experiment) -> Any:
    """Data-free datasets from the workdir's saved data info (None for older workdirs)."""
    path = os.path.join(workdir, DATA_INFO_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("kind") not in ("image", "text"):
        return None  # research code's own data: build it as training did
    return data_lib.info_datasets(config, info)


# ----------------------------------------------------------------------------- train
def _stop_requested(step: int) -> Optional[str]:
    """The signal that asks the loop to stop after ``step``, or None.

    Single process: SIGTERM and SIGINT recorded by :func:`jaxgen.signals.deferred`.
    Multi-host: SIGTERM is left to JAX's preemption notifier (its handler is not replaced) and
    every process stops at the step JAX's preemption sync point agrees on.
    """
    if signals.received() is not None:
        return signals.received()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        try:
            if multihost_utils.reached_preemption_sync_point(step):
                return "SIGTERM"
        except RuntimeError:  # preemption service not enabled
            return None
    return None


def _deferred_signals():
    """The signals the step loop defers (see :mod:`jaxgen.signals`)."""
    return signals.deferred(signals.SIGNALS if jax.process_count() == 1 else (signal.SIGINT,))


def _log_step(writer, bar, step, metrics, t_last, step_last, batch_size, extra):
    now = time.perf_counter()
    metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
    metrics.update(steps_per_s=steps_per_s, examples_per_s=steps_per_s * batch_size, **extra)
    writer.write(step, metrics, "train")
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{steps_per_s:.1f}",
                    ex_s=f"{metrics['examples_per_s']:.0f}", refresh=False)
    return now, step


def _extra(run: Run, step: int, skipped: int) -> dict[str, float]:
    """What the loop logs beside a step's own metrics: the non-finite steps skipped so far and
    the learning rates the family's schedules gave step ``step`` (its update ``step - 1``)."""
    return {"skipped_steps": skipped, **run.family.learning_rates(step - 1)}


def _nonfinite(metrics: dict) -> bool:
    """Whether a step reported a non-finite loss or gradient (steps without the metric: no)."""
    return "nonfinite" in metrics and float(np.asarray(jax.device_get(metrics["nonfinite"]))) > 0


def _phase_seconds(t: dict[str, float]) -> dict[str, float]:
    """Wall seconds of the phases of :func:`train`: set-up (build, restore or init), the step
    loop (compiles and checkpoints included), the final evaluation and the final samples."""
    return {"setup_s": t["loop"] - t["start"], "loop_s": t["eval"] - t["loop"],
            "eval_s": t["samples"] - t["eval"], "samples_s": t["end"] - t["samples"],
            "total_s": t["end"] - t["start"]}


def _periodic_eval(run: Run, writer: MetricWriter, state: Any, step: int) -> None:
    from jaxgen.train.evaluate import flat_scalars
    writer.write(step, flat_scalars(evaluate(run, state)), "eval")


def _log_sample_images(run: Run, writer: MetricWriter, files: list[str], step: int) -> None:
    for f in files:
        if f.endswith(".png"):
            writer.write_image(step, "samples", f)


def _compile_step(run: Run, state: Any, batch: dict) -> Callable:
    """The train step compiled ahead of time for these shardings (before the loop starts, so
    a signal during compilation meets nothing to save)."""
    t0 = time.perf_counter()
    log.info("compiling the train step")
    with run.active():
        compiled = run.train_step.lower(state, batch).compile()
    log.info("compiled the train step in %.1f s", time.perf_counter() - t0)
    return compiled


def train(config: Experiment, workdir: str, *, family: Family | FamilyFactory,
          devices: Optional[list] = None, datasets: Any = None,
          interrupt_at: Optional[int] = None, progress: bool = True) -> Any:
    """Trains (or resumes) the experiment ``config`` in ``workdir``; returns the final state.

    ``family`` is a :class:`Family` or a factory ``(config, data_info) -> Family`` (the CLI
    passes the registry, :func:`jaxgen.models.make_family`). The workdir is locked for the
    run (:class:`jaxgen.train.workdir.RunLock`): a second run on it is refused.

    Raises:
      Preempted: SIGTERM or SIGINT stopped the run; the current step was saved.
      NonFiniteLoss: ``train.nonfinite="stop"`` and a step was not finite (state saved).
      StateMismatch / RunError: the workdir's checkpoints cannot be resumed (nothing written).
      UsageError: the workdir is in use by another run, or cannot be written.
    """
    with RunLock(workdir):
        return _train_locked(config, workdir, family, devices, datasets, interrupt_at, progress)


def _train_locked(config, workdir, family, devices, datasets, interrupt_at, progress):
    # --- set-up: workdir, mesh, data, family, compiled steps
    timings = {"start": time.perf_counter()}
    check_workdir(workdir, config)
    tc = config.train
    total = int(tc.steps)
    nonfinite = tc.nonfinite
    log.info("building %s", config.experiment or config.family)
    run = build(workdir_paths(config, workdir), devices, datasets, family=family)
    train_iter = run.datasets.train
    cfg_dict = config_to_dict(config)
    n_params = param_count(run.abstract_state.params)
    log.info("%s parameters (%s)", f"{n_params:,}", format_count(n_params))

    # --- state: resume from the newest readable checkpoint, or start fresh. Nothing in the
    # workdir changes until this has succeeded.
    ckpt = Checkpointer(workdir, keep=int(tc.keep_ckpts), async_save=bool(tc.async_ckpt))
    try:
        restored = ckpt.restore(run.abstract_state, train_iter, ema_of=run.family.ema_of,
                                config=cfg_dict)
    except BaseException:
        ckpt.close()
        raise
    if restored is not None:
        start, state, _ = restored
        log.info("resumed %s from step %d", workdir, start)
    else:
        start, state = 0, init_state(run, next(iter(run.datasets.make_eval())))
    if start >= total:
        ckpt.close()
        log.info("%s is already trained to step %d (train.steps=%d): nothing to do", workdir,
                 start, total)
        return state
    _write_config(workdir, config)
    _write_json(workdir, DATA_INFO_FILE, data_lib.saved_info(run.datasets.info))
    first_batch = mesh_lib.global_batch(next(train_iter), run.batch_sharding)
    step_fn = _compile_step(run, state, first_batch)
    writer = MetricWriter(workdir, resume_step=start)
    bar = tqdm(total=total, initial=min(start, total), disable=not progress or jax.process_index() != 0,
               desc=config.experiment or config.family, mininterval=1.0, dynamic_ncols=True)
    batch_size = int(config.data.batch_size)

    # --- the loop: metrics of step n are read after step n+1 is dispatched (no device stall).
    # Signals are deferred here: the loop stops at a step boundary (or between the batches of
    # a periodic evaluation), saves that step and raises Preempted.
    pending = None       # (step, metrics) of the last step, read one step late
    skipped = 0          # non-finite steps whose update was skipped
    timings["loop"] = t_last = time.perf_counter()
    log.info("training from step %d to %d", start, total)
    step_last = start
    step = start
    # Reading one batch ahead is safe when the data position is the step (``seek``); an
    # iterator whose own state is checkpointed must not have moved past the saved step.
    read_ahead = hasattr(train_iter, "seek")
    try:
        with _deferred_signals():
            try:
                while step < total:
                    batch = first_batch if first_batch is not None else \
                        mesh_lib.global_batch(next(train_iter), run.batch_sharding)
                    first_batch = None
                    state, metrics = step_fn(state, batch)
                    step += 1
                    if read_ahead and step < total:
                        # the next batch is read and sent to the devices while this step runs
                        first_batch = mesh_lib.global_batch(next(train_iter), run.batch_sharding)
                    bar.update(1)
                    if pending is not None:
                        p_step, p_metrics, p_log = pending
                        if _nonfinite(p_metrics):
                            skipped += 1
                            if nonfinite == "stop":
                                ckpt.save(step, state, train_iter, cfg_dict, force=True)
                                raise NonFiniteLoss(
                                    f"the loss or gradients of step {p_step} were not finite "
                                    f"(NaN or Inf); its update was skipped and the last finite "
                                    f"state was saved at step {step}. Lower optim.lr, or set "
                                    "train.nonfinite=skip")
                            log.warning("step %d: non-finite loss or gradients, update skipped "
                                        "(%d so far)", p_step, skipped)
                        if p_log:
                            t_last, step_last = _log_step(writer, bar, p_step, p_metrics, t_last,
                                                          step_last, batch_size,
                                                          _extra(run, p_step, skipped))
                    pending = (step, metrics, step % int(tc.log_every) == 0 or step == total)
                    if tc.eval_every and step % int(tc.eval_every) == 0 and step != total:
                        _periodic_eval(run, writer, state, step)
                    if tc.sample_every and step % int(tc.sample_every) == 0 and step != total:
                        _log_sample_images(run, writer, write_samples(
                            run, state, jax.random.PRNGKey(step), int(tc.num_samples),
                            _sample_path(run, workdir, step)), step)
                    stop = _stop_requested(step)
                    if step % int(tc.ckpt_every) == 0 or step == total or stop:
                        ckpt.save(step, state, train_iter, cfg_dict, force=True)
                    if interrupt_at is not None and step >= interrupt_at:
                        raise Interrupted(f"interrupted at step {step}")
                    if stop:
                        ckpt.wait()
                        raise Preempted(step, stop, state)
            except signals.Stop as e:  # during a periodic evaluation or sample grid
                ckpt.save(step, state, train_iter, cfg_dict, force=True)
                ckpt.wait()
                raise Preempted(step, e.signal_name, state) from None
            if pending is not None:
                p_step, p_metrics, p_log = pending
                if _nonfinite(p_metrics):
                    skipped += 1
                    if nonfinite == "stop":
                        raise NonFiniteLoss(f"the loss or gradients of step {p_step} were not "
                                            f"finite; its update was skipped and step {step} saved")
                if p_log:
                    _log_step(writer, bar, p_step, p_metrics, t_last, step_last, batch_size,
                              _extra(run, p_step, skipped))
            ckpt.wait()  # the last step is on disk before signals stop being deferred

        # --- end of training: evaluation and samples (the last step is saved)
        log.info("final evaluation and samples (step %d is saved)", total)
        timings["eval"] = time.perf_counter()
        _periodic_eval(run, writer, state, total)
        timings["samples"] = time.perf_counter()
        _log_sample_images(run, writer, write_samples(
            run, state, jax.random.PRNGKey(total), int(tc.num_samples),
            _sample_path(run, workdir, total)), total)
        timings["end"] = time.perf_counter()
        phases = _phase_seconds(timings)
        writer.write(total, phases, "time")
        log.info("wall seconds: " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in phases.items()))
        return state
    finally:
        bar.close()
        ckpt.close()
        writer.close()
        if hasattr(train_iter, "close"):  # Grain's reader threads and worker processes
            train_iter.close()
