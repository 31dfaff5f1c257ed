"""Decoder-only Transformer language models: model, KV-cache decoding, sampling, family."""
from jaxgen.models.lm.decode import check_prompt, generate, generate_long
from jaxgen.models.lm.family import make_family, mesh_param_specs, token_losses
from jaxgen.models.lm.model import LOGICAL_RULES, LMConfig, Transformer, make_cache, num_params
from jaxgen.models.lm.sampling import Greedy, Sample, Temperature, TopK, TopP, make_strategy

__all__ = [
    "LOGICAL_RULES", "Greedy", "LMConfig", "Sample", "Temperature", "TopK", "TopP", "Transformer",
    "check_prompt", "generate", "generate_long", "make_cache", "make_family", "make_strategy", "mesh_param_specs",
    "num_params", "token_losses",
]
