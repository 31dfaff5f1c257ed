"""Evaluators the trainer and ``jaxgen eval`` run, with one interface: ``(run, state) -> dict``.

  :func:`data_metrics`    the family's ``eval_step`` summed over the eval split (a likelihood);
  :func:`sample_metrics`  sample-quality metrics (:mod:`jaxgen.eval`) of ``eval.num_samples``
                          samples, for families whose samples are images of a dataset with a
                          reference set (the embedded MNIST), one entry per sample variant;
  :func:`evaluate`        both, as the config asks (``eval.sample_metrics`` during training).
Neither branches on the family: they ask what it offers (``eval_step``, ``sample_kind``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Optional

import jax
import numpy as np

from jaxgen import signals
from jaxgen.errors import UsageError
from jaxgen.train import mesh as mesh_lib

log = logging.getLogger("jaxgen")

# data.source -> the reference set of jaxgen.eval.sample_metrics
SAMPLE_REFERENCES = {"mnist_embedded": "mnist_embedded"}
SCALAR_SAMPLE_METRICS = ("fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
                         "classifier_score")


def data_metrics(run: Any, state: Any, batches: Optional[Iterable[dict]] = None) -> dict[str, float]:
    """Runs ``eval_step`` over the eval split; returns sums divided by the example count."""
    if run.eval_step is None:
        return {}
    totals: dict[str, float] = {}
    for batch in (run.datasets.make_eval() if batches is None else batches):
        signals.check()  # a deferred SIGTERM/SIGINT stops between batches
        with run.active():
            sums = run.eval_step(state, mesh_lib.global_batch(batch, run.batch_sharding))
        sums = jax.device_get(sums)
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
    count = totals.pop("count", 0.0)
    if count <= 0:
        raise ValueError("the evaluation split is empty")
    return {k: v / count for k, v in totals.items()}


def sum_over_processes(totals: dict[str, float]) -> dict[str, float]:
    """Host-side sums (e.g. over each process's share of the eval split) added up over all
    processes, so a multi-host evaluation reports the whole split; unchanged on one process."""
    if jax.process_count() == 1:
        return totals
    from jax.experimental import multihost_utils
    keys = sorted(totals)
    local = np.asarray([totals[k] for k in keys], np.float64)
    gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, keys]
    return dict(zip(keys, gathered.reshape(-1, len(keys)).sum(axis=0).tolist()))


def _to_host(x: jax.Array) -> np.ndarray:
    """A (possibly batch-sharded, multi-host) array as one numpy array on every process."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def draw_samples(run: Any, state: Any, rng: jax.Array, num: int, options: Any = None,
                 batch: int = 0) -> np.ndarray:
    """``num`` samples as a host numpy array, drawn in chunks of ``batch`` (0: all at once),
    each chunk sharded over the data-parallel devices (:meth:`Run.draw`)."""
    chunk = num if batch <= 0 else min(batch, num)
    out, i = [], 0
    while i * chunk < num:
        signals.check()
        n = min(chunk, num - i * chunk)
        key = rng if chunk == num else jax.random.fold_in(rng, i)
        out.append(_to_host(run.draw(state, key, n, options)))
        i += 1
    return np.concatenate(out) if len(out) > 1 else out[0]


def sample_reference(run: Any) -> Optional[str]:
    """The reference set sample metrics use for this run's data, or None when there is none."""
    if run.family.sample_kind != "image":
        return None
    return SAMPLE_REFERENCES.get(str(run.datasets.info.get("source", "")))


def sample_metrics(run: Any, state: Any, num: Optional[int] = None, seed: Optional[int] = None,
                   full: bool = True) -> dict[str, Any]:
    """Sample-quality metrics of each of the family's ``sample_eval_variants``.

    The default variant's metrics are at the top level, the others under their name. With
    ``full=False`` only the scalar metrics are returned (for TensorBoard during training).
    """
    reference = sample_reference(run)
    if reference is None:
        raise UsageError(f"sample metrics need image samples of a dataset with a reference set "
                         f"({', '.join(SAMPLE_REFERENCES)}); this run has data.source="
                         f"{run.datasets.info.get('source')!r}")
    from jaxgen import eval as eval_lib  # lazy: loads the shipped feature network

    ec = run.config.eval
    num = int(ec.num_samples) if num is None else int(num)
    seed = int(ec.sample_seed) if seed is None else int(seed)
    batch = int(ec.sample_batch)
    results: dict[str, Any] = {}
    for name, overrides in run.family.sample_eval_variants.items():
        options = run.family.sample_options(**dict(overrides))
        images = draw_samples(run, state, jax.random.PRNGKey(seed), num, options, batch)
        if jax.process_index() != 0:
            continue
        metrics = eval_lib.sample_metrics(images, reference=reference, seed=seed)
        if not full:
            metrics = {k: metrics[k] for k in SCALAR_SAMPLE_METRICS}
        if name:
            results[name] = metrics
        else:
            results.update(metrics)
    return results


def flat_scalars(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar entries of a (nested) result dict, with nested names joined by '/'."""
    out = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out.update(flat_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def evaluate(run: Any, state: Any, batches: Optional[Iterable[dict]] = None, *,
             samples: Optional[bool] = None) -> dict[str, Any]:
    """The family's data metrics, plus sample metrics when ``samples`` (default: the config's
    ``eval.sample_metrics``) and the run has a reference set."""
    results = data_metrics(run, state, batches)
    if samples is None:
        samples = bool(run.config.eval.sample_metrics)
    if samples and sample_reference(run) is not None:
        results.update(sample_metrics(run, state, full=False))
    return results


def write_samples(run: Any, state: Any, rng: jax.Array, num: int, path: str,
                  options: Any = None, scale: int = 1) -> list[str]:
    """Draws ``num`` samples with the family's sampler and writes them (PNG grid enlarged
    ``scale`` times, text or .npz)."""
    if options is None:
        options = run.family.sample_options()
    samples = draw_samples(run, state, rng, num, options)
    if jax.process_index() != 0:
        return []
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save_samples(run.family, samples, path, scale)


def save_samples(family: Any, samples: Any, path: str, scale: int = 1) -> list[str]:
    """``family.save_samples``, passing ``scale`` only when it is not 1 (a research family's
    own ``save_samples(samples, path)`` keeps working)."""
    if scale == 1:
        return family.save_samples(samples, path)
    return family.save_samples(samples, path, scale=scale)
