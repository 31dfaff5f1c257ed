"""One call from a workdir to a model: ``run = jaxgen.load(workdir)``.

    import jaxgen
    run = jaxgen.load("workdirs/diffusion_mnist")
    images = run.sample(16, seed=0, sampler="ddim", steps=25, label=3)  # numpy [16, 28, 28, 1]
    metrics = run.evaluate()          # what `jaxgen eval` prints (without writing files)
    params = run.params               # the EMA weights where the run keeps them

Works for every family: ``sample`` returns what the family samples (images in [0, 1], or token
ids for language models; ``run.save_samples(x, path)`` writes a PNG grid or text), and its
keyword options are the family's sampler settings (the experiment's ``sample`` config keys).
``run.sample(n, seed=s)`` draws exactly what ``jaxgen sample --num n --seed s`` writes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from jaxgen.errors import UsageError


@dataclasses.dataclass
class Run:
    """A trained run restored from its workdir (see the module docstring)."""

    workdir: str
    step: int
    state: Any
    built: Any  # jaxgen.train.loop.Run: config, mesh, data, family, compiled steps

    @property
    def config(self):
        return self.built.config

    @property
    def family(self):
        return self.built.family

    @property
    def params(self) -> Any:
        """The weights sampling uses by default: the EMA where the run keeps one."""
        return self.state.ema_params if self.state.ema_params is not None else self.state.params

    def sample(self, n: int, seed: int = 0, **options: Any) -> np.ndarray:
        """``n`` samples as numpy (images [n, H, W, C] in [0, 1], or tokens [n, T])."""
        from jaxgen.train.evaluate import draw_samples
        if n <= 0:
            raise UsageError(f"the number of samples must be positive, got {n}")
        opts = self.family.sample_options(**options)
        return draw_samples(self.built, self.state, jax.random.PRNGKey(seed), n, opts)

    def save_samples(self, samples: np.ndarray, path: str) -> list[str]:
        """Writes samples as the family does (PNG grid or text); returns the files written."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return self.family.save_samples(samples, path)

    def evaluate(self, *, samples: bool = True, figures_prefix: Optional[str] = None) -> dict:
        """The metrics ``jaxgen eval`` reports: the family's data metrics, its final evaluation
        (IWAE, bits/dim) and, for image families with a reference set, sample metrics."""
        return full_evaluation(self.built, self.state, self.step, samples=samples,
                               figures_prefix=figures_prefix)


def class_balanced_batch(batches: Any, n: int = 32) -> dict:
    """Up to ``n`` valid eval examples cycling through the classes (0, 1, ..., 9, 0, 1, ...),
    so figures show every class even when the eval split is sorted by class. Without labels:
    the first ``n`` valid examples."""
    pools: dict[int, list] = {}
    keys = None
    for batch in batches:
        keys = [k for k in batch if k != "mask"]
        valid = np.asarray(batch.get("mask", np.ones(len(next(iter(batch.values())))))) > 0
        labels = np.asarray(batch["label"]) if "label" in batch else np.zeros(len(valid), int)
        for i in np.flatnonzero(valid):
            pools.setdefault(int(labels[i]), []).append({k: np.asarray(batch[k])[i] for k in keys})
    order, classes = [], sorted(pools)
    while len(order) < n and any(pools[c] for c in classes):
        for c in classes:
            if pools[c] and len(order) < n:
                order.append(pools[c].pop(0))
    if not order:
        raise UsageError("the evaluation split is empty")
    return {k: np.stack([o[k] for o in order]) for k in keys}


def full_evaluation(built: Any, state: Any, step: int, *, samples: bool = True,
                    figures_prefix: Optional[str] = None) -> dict:
    """Everything ``jaxgen eval`` computes for a restored state (shared by the CLI and Run)."""
    import logging

    from jaxgen.train import evaluate as evaluate_lib

    log = logging.getLogger("jaxgen")
    results: dict[str, Any] = {"experiment": built.config.experiment, "step": int(step)}
    results.update(evaluate_lib.evaluate(built, state, samples=False))
    if built.family.final_eval is not None:
        results.update(built.family.final_eval(state, built.datasets.make_eval()))
    if samples and evaluate_lib.sample_reference(built) is not None:
        log.info("scoring %d samples (eval.num_samples) with the LeNet feature network",
                 built.config.eval.num_samples)
        results.update(evaluate_lib.sample_metrics(built, state))
    if figures_prefix is not None and built.family.visualize is not None:
        batch = class_balanced_batch(built.datasets.make_eval())
        built.family.visualize(state, jax.random.PRNGKey(0), batch, figures_prefix)
    return results


def load(workdir: str, overrides: Sequence[str] = (), *, need_data: bool = True) -> Run:
    """Restores the newest checkpoint of ``workdir``.

    Args:
      workdir: a directory ``jaxgen train`` wrote (it holds config.json and checkpoints/).
      overrides: ``"key=value"`` evaluation/sampling settings (``eval.*``, ``sample.*``).
      need_data: False builds the run without its data files (sampling only).
    Raises:
      UsageError: not a workdir, or an override of a training key.
    """
    from jaxgen import experiments, models
    from jaxgen.train import loop

    if not os.path.isdir(workdir) or not os.path.exists(os.path.join(workdir, "config.json")):
        raise UsageError(f"{workdir} is not a jaxgen workdir (no config.json); train into it first")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(READ_ONLY_PREFIXES):
            raise UsageError(f"--set {key}: a trained run only takes evaluation and sampling "
                             f"settings (eval.*, sample.*, data.eval_batch_size); a model or "
                             f"training change needs jaxgen train")
    config = experiments.apply_overrides(loop.load_config(workdir), list(overrides))
    config = loop.workdir_paths(config, workdir)
    datasets = None if need_data else loop.datasets_for_sampling(workdir, config)
    built = loop.build(config, family=models.make_family, datasets=datasets)
    step, state = loop.restore_latest(built, workdir)
    return Run(workdir, int(step), state, built)


# Keys a restored run may change: they do not alter the trained state.
READ_ONLY_PREFIXES = ("eval.", "sample.", "data.eval_batch_size")
