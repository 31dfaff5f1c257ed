"""One call from a workdir to a model: ``run = jaxgen.load(workdir)``.

    import jaxgen
    run = jaxgen.load("workdirs/diffusion_mnist")
    images = run.sample(16, seed=0, sampler="ddim", steps=25, label=3)  # numpy [16, 28, 28, 1]
    metrics = run.evaluate()          # what `jaxgen eval` prints (without writing files)
    params = run.params               # the EMA weights where the run keeps them
    run.num_params                    # parameters trained (generator + discriminator for a GAN)

Works for every family: ``sample`` returns what the family samples (images in [0, 1], or token
ids for language models, which ``run.decode(tokens)`` turns into texts; ``run.save_samples(x,
path)`` writes a PNG grid, text or .npz), and its
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
    missing_data: str = ""  # why the run was built without its data ("": it has its data)

    @property
    def has_data(self) -> bool:
        return not self.missing_data

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

    @property
    def num_params(self) -> int:
        """The number of trained parameters (for the GAN: generator and discriminator)."""
        from jaxgen.train.state import param_count

        return param_count(self.state.params)

    def encode(self, text: str) -> np.ndarray:
        """Token ids int32 [T] of ``text`` under the run's tokenizer (language models: a prompt
        for ``sample(n, prompt=text)`` is encoded the same way)."""
        return self._text_family("encode").encode(text)

    def decode(self, tokens: Any, **options: Any) -> list[str]:
        """The texts of token rows [n, T] (what ``sample`` returns for a language model), each
        cut after the sampler's stop token as ``jaxgen sample`` writes them; ``options``: the
        sampler options the tokens were drawn with (the prompt and stop token matter)."""
        family = self._text_family("decode")
        tokens = np.asarray(tokens)
        return family.texts(tokens[None] if tokens.ndim == 1 else tokens,
                            family.sample_options(**options))

    def _text_family(self, what: str) -> Any:
        if self.family.sample_kind != "text":
            raise UsageError(f"Run.{what} is for language models; this run is a "
                             f"{self.family.name or 'model'} of {self.family.sample_kind}s")
        return self.family

    def sample(self, n: int, seed: int = 0, **options: Any) -> np.ndarray:
        """``n`` samples as numpy (images [n, H, W, C] in [0, 1], or tokens [n, T])."""
        from jaxgen.train.evaluate import draw_samples
        if n <= 0:
            raise UsageError(f"the number of samples must be positive, got {n}")
        opts = self.family.sample_options(**options)
        return draw_samples(self.built, self.state, jax.random.PRNGKey(seed), n, opts)

    def save_samples(self, samples: np.ndarray, path: str, scale: int = 1) -> list[str]:
        """Writes samples as the family does (a PNG grid enlarged ``scale`` times, text, or
        .npz by the suffix of ``path``); returns the files written."""
        from jaxgen.train.evaluate import save_samples

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return save_samples(self.family, samples, path, scale)

    def evaluate(self, *, samples: bool = True, figures_prefix: Optional[str] = None) -> dict:
        """The metrics ``jaxgen eval`` reports: the family's data metrics, its final evaluation
        (IWAE, bits/dim) and, for image families with a reference set, sample metrics."""
        if not self.has_data:
            raise UsageError(f"evaluating {self.workdir} needs its data ({self.missing_data}); "
                             "sampling needs none")
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


def load(workdir: str, overrides: Sequence[str] = (), *, need_data: Optional[bool] = None
         ) -> Run:
    """Restores the newest checkpoint of ``workdir``, from any directory: the workdir keeps
    absolute data paths and its own tokenizer, so it can be loaded (and moved) on its own.

    Args:
      workdir: a directory ``jaxgen train`` wrote (it holds config.json and checkpoints/).
      overrides: ``"key=value"`` evaluation/sampling settings (``eval.*``, ``sample.*``).
      need_data: True builds the run with its data (``evaluate`` needs it), False without it
        (sampling only), None (default) with it where its files are found, else without.
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
    missing = missing_data_file(config)
    if need_data is None:
        need_data = not missing
    datasets = None if need_data else loop.datasets_for_sampling(workdir, config)
    built = loop.build(config, family=models.make_family, datasets=datasets)
    step, state = loop.restore_latest(built, workdir)
    without = f"{missing} was not found" if missing else "loaded with need_data=False"
    return Run(workdir, int(step), state, built, "" if need_data else without)


def missing_data_file(config: Any) -> str:
    """``"data.KEY=PATH"`` of the first data file of ``config`` that does not exist, or ""."""
    from jaxgen.train.loop import PATH_FIELDS

    for key in PATH_FIELDS:
        path = getattr(config.data, key, "")
        if key != "tokenizer_path" and path and not os.path.exists(path):
            return f"data.{key}={path}"
    return ""


# Keys a restored run may change: they do not alter the trained state.
READ_ONLY_PREFIXES = ("eval.", "sample.", "data.eval_batch_size")
