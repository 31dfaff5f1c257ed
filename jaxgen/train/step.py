"""Pure train/eval step builders shared by every family that trains from one loss.

A loss function has the signature ``loss_fn(params, batch, rng, step) -> (loss, metrics)`` where
``loss`` is a scalar mean over the batch and ``metrics`` a dict of scalars. A metric function for
evaluation has ``metric_fn(params, batch, rng) -> dict`` of *sums* over the valid examples of the
batch plus ``"count"``; the evaluation loop adds batches up and divides by the total count, so
padded examples (``batch["mask"] == 0``) never bias a result.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxgen.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Metrics]]


def _split_microbatches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B // n, ...], micro-batch i taking examples i, i+n, i+2n, ...

    Strided rather than contiguous, so a batch sharded over devices along B keeps every
    micro-batch spread over all devices (no data movement).
    """
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} does not split into {n} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def loss_and_grads(loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array, step: jax.Array,
                   grad_accum: int = 1) -> tuple[jax.Array, Metrics, Any]:
    """Mean loss, mean metrics and mean gradients, accumulated over micro-batches with a scan."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng, step)
        return loss, metrics, grads

    micro = _split_microbatches(batch, grad_accum)

    def body(carry, xs):
        i, mb = xs
        (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i), step)
        acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
        return acc, None

    zero_out = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng, step))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ((zero_out[0][0], zero_out[0][1], zero_out[1])))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
    loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, total)
    return loss, metrics, grads


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """Exponential moving average of parameters (Polyak & Juditsky 1992)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, grad_accum: int = 1,
                    ema_decay: float | None = None) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds ``train_step(state, batch) -> (state, metrics)``: one optimizer update.

    The step's PRNG key is ``fold_in(state.rng, state.step)``. Metrics include ``loss``,
    ``grad_norm`` and every metric ``loss_fn`` reports.
    """
    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        loss, metrics, grads = loss_and_grads(loss_fn, state.params, batch, state.step_rng(),
                                              state.step, grad_accum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None and ema_decay is not None:
            ema = ema_update(ema, params, ema_decay)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step
