"""The settings of the language-model family: one definition each (see :mod:`jaxgen.settings`)."""
from __future__ import annotations

import dataclasses

from jaxgen.config import EvalConfig, Experiment, TextData, field
from jaxgen.models.lm.model import LMConfig


@dataclasses.dataclass(frozen=True)
class LMSample:
    """Decoding settings (hashable; static under jit).

    Attributes:
      prompt: the text every sample continues (encoded with the run's tokenizer).
      max_new_tokens: tokens to generate (0: fill the context; more than the context slides a
        window, which needs rotary positions).
      greedy: take the most likely token (also with temperature 0).
      temperature: divide the logits by this before sampling.
      top_k: keep the k most likely tokens (0: all).
      top_p: nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens whose
        probability reaches p (1: all).
      stop_token: a sequence ends after emitting this token ("": none; must be one token).
      gather_fsdp: on a mesh with ``mesh.fsdp`` > 1, gather the parameters over that axis once,
        before the first token (each chip then holds its tensor-parallel share of the whole
        model), instead of re-gathering every weight for every token. False keeps them sharded,
        for a model whose gathered share does not fit a chip.
    """

    prompt: str = "\n"
    max_new_tokens: int = 0
    greedy: bool = False
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    stop_token: str = ""
    gather_fsdp: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 0 or self.top_k < 0 or self.temperature < 0:
            raise ValueError("sample.max_new_tokens, sample.top_k and sample.temperature must "
                             "be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sample.top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass(frozen=True)
class LMExperiment(Experiment):
    """A decoder-only Transformer language model on a text corpus."""

    family: str = "lm"
    data: TextData = field(TextData)
    model: LMConfig = field(LMConfig)
    eval: EvalConfig = field(EvalConfig)
    sample: LMSample = field(LMSample)
