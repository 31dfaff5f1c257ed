"""The one precision policy of every jaxgen model.

A model's settings name two dtypes: ``model.dtype``, the compute dtype of its matmuls and
convolutions, and ``model.param_dtype``, the dtype its parameters are stored and updated in.
Everything else is fixed, the same in every family:
- float32 where precision decides the result: normalisation statistics (Flax's norms reduce in
  float32; :class:`jaxgen.nn.layers.GroupNorm` too), attention softmax and scores (every kernel
  accumulates in float32), the LM head's matmul (``preferred_element_type=float32``: logits are
  never rounded to bfloat16), every model output a loss reads (logits, denoiser outputs,
  likelihood parameters, discriminator logits), losses and metrics;
- float32 optimizer state: Adam's first moments are float32 whatever the parameters
  (``mu_dtype``; the second moments follow the gradients, float32 for float32 parameters);
- accelerator recipes (``:tpu``, ``:gpu``) compute in bfloat16 with float32 parameters, the
  mixed precision of Micikevicius et al. (2018) without loss scaling, which bfloat16's float32
  exponent range makes unnecessary.
float16 compute would need dynamic loss scaling to keep small gradients from flushing to zero;
jaxgen does not do it, so a float16 model is refused for training in one line (it may still be
used for inference).
"""
from __future__ import annotations

from typing import Any

from jaxgen.errors import UsageError


def check_trainable(model: Any) -> None:
    """UsageError if ``model`` (a model settings dataclass) asks for float16 compute or
    float16 parameters, which training cannot take without loss scaling."""
    for field in ("dtype", "param_dtype"):
        if getattr(model, field, None) == "float16":
            raise UsageError(f"model.{field}=float16 needs dynamic loss scaling, which jaxgen does "
                             "not do: use bfloat16 (float32's exponent range, the same speed on "
                             "TPUs and on GPUs since Ampere)")
