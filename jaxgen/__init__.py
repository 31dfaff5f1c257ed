"""jaxgen: generative models in JAX with one shared training stack.

Public API (re-exports only):
  jaxgen.TrainState, jaxgen.Family, jaxgen.make_family   the family interface and its registry
  jaxgen.get_config, jaxgen.apply_overrides              experiment recipes and --set overrides
  jaxgen.train                                           the training loop (workdir-based)
"""
from jaxgen.experiments import apply_overrides, get_config
from jaxgen.models import Family, make_family
from jaxgen.train.loop import train
from jaxgen.train.state import TrainState

__version__ = "0.1.0"

__all__ = ["Family", "TrainState", "__version__", "apply_overrides", "get_config", "make_family",
           "train"]
