"""The training state every family shares: a plain pytree, safe to jit, shard and checkpoint."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly.

    Attributes:
      step: int32 scalar, the number of optimizer updates applied so far.
      params: the model parameters (a pytree; for the GAN a dict {"gen": ..., "disc": ...}).
      opt_state: the Optax state for ``params`` (for the GAN one per network).
      rng: uint32[2] raw PRNG key. The key of step ``n`` is ``fold_in(rng, n)``: no global RNG,
        so a resumed run draws the same numbers as an uninterrupted one.
      ema_params: optional exponential moving average of ``params`` (None when unused).
      extra: optional family-specific state that is not trained by gradients (e.g. batch stats).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None
    extra: Any = None

    def step_rng(self) -> jax.Array:
        """The PRNG key of the current step: ``fold_in(rng, step)``."""
        return jax.random.fold_in(self.rng, self.step)


def param_count(params: Any) -> int:
    """Number of parameters (scalars) of a parameter tree: arrays, ShapeDtypeStructs or Flax
    boxed (logically partitioned) leaves."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(params)))


def format_count(n: int) -> str:
    """``1235814400`` -> ``"1.24B"``, ``7635149`` -> ``"7.64M"``, ``912`` -> ``"912"``."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def create_state(params: Any, tx, rng: jax.Array, *, ema: bool = False, extra: Any = None) -> TrainState:
    """Builds step-0 state from parameters and an Optax transformation."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jnp.asarray(rng, jnp.uint32),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        extra=extra,
    )
