"""Decoder-only Transformer language models: model, KV-cache decoding, sampling, family."""
from jaxgen.models.lm.decode import check_prompt, generate, generate_long
from jaxgen.models.lm.family import LMFamily, token_losses
from jaxgen.models.lm.model import LMConfig, Transformer, make_cache
from jaxgen.models.lm.sampling import Greedy, Sample, Temperature, TopK, TopP, make_strategy
from jaxgen.models.lm.settings import LMExperiment, LMSample

__all__ = [
    "Greedy", "LMConfig", "LMExperiment", "LMFamily", "LMSample", "Sample", "Temperature",
    "TopK", "TopP", "Transformer", "check_prompt", "generate", "generate_long", "make_cache",
    "make_strategy", "token_losses",
]
