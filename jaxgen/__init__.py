"""jaxgen: generative models in JAX (VAEs, GANs, Transformer LMs, diffusion) with one shared
training stack.

Public API (re-exports only, loaded on first use so that ``import jaxgen.nn`` stays light):
  jaxgen.load(workdir) -> Run            a trained run: .sample(n, seed, **options), .evaluate(),
                                         .params, .config, .step (jaxgen.api)
  jaxgen.train(config, workdir, ...)     trains or resumes (jaxgen.train.loop.train; the
                                         family defaults to the registry's)
  jaxgen.compile(spec, topology, ...)    compiles for a TPU/GPU topology here (jaxgen.aot)
  jaxgen.TrainState, jaxgen.Family       the state pytree and the one family interface
  jaxgen.make_family                     the family registry (config, data_info) -> Family
  jaxgen.get_config, jaxgen.apply_overrides   experiment recipes and --set overrides
Subpackages: jaxgen.nn (layers, attention, UNet, DiT), jaxgen.models (the four families),
jaxgen.train (trainer: loop, step pieces, mesh, checkpoints), jaxgen.data, jaxgen.eval.
Training from Python: ``jaxgen.train(config, workdir)``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "jaxgen.api",
    "compile": "jaxgen.aot.experiment:compile_experiment",
    "train": "jaxgen.train:",  # the subpackage, callable as the trainer
    "Family": "jaxgen.models.base",
    "make_family": "jaxgen.models",
    "TrainState": "jaxgen.train.state",
    "get_config": "jaxgen.experiments",
    "apply_overrides": "jaxgen.experiments",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, sep, attr = _EXPORTS[name].partition(":")
        value = importlib.import_module(module)
        value = value if sep and not attr else getattr(value, attr or name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxgen' has no attribute {name!r}")
