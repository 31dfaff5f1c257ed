"""jaxgen: generative models in JAX (VAEs, GANs, Transformer LMs, diffusion) with one shared
training stack.

Public API (re-exports only, loaded on first use so that ``import jaxgen.nn`` stays light):
  jaxgen.load(workdir) -> Run            a trained run: .sample(n, seed, **options), .evaluate(),
                                         .params, .config, .step (jaxgen.api)
  jaxgen.TrainState, jaxgen.Family       the state pytree and the one family interface
  jaxgen.make_family                     the family registry (config, data_info) -> Family
  jaxgen.get_config, jaxgen.apply_overrides   experiment recipes and --set overrides
Subpackages: jaxgen.nn (layers, attention, UNet, DiT), jaxgen.models (the four families),
jaxgen.train (trainer: loop, step pieces, mesh, checkpoints), jaxgen.data, jaxgen.eval.
Training from Python: ``jaxgen.train.loop.train(config, workdir, family=jaxgen.make_family)``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "jaxgen.api",
    "Family": "jaxgen.models.base",
    "make_family": "jaxgen.models",
    "TrainState": "jaxgen.train.state",
    "get_config": "jaxgen.experiments",
    "apply_overrides": "jaxgen.experiments",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxgen' has no attribute {name!r}")
