"""Sampling strategies: small frozen dataclasses in the style of gemma's sampler.

A strategy maps next-token logits float32 [B, V] and a PRNG key to tokens int32 [B]. Logit
processors (:class:`Temperature`, :class:`TopK`, :class:`TopP`) only reshape the distribution;
:class:`Sample` applies its processors in order and draws from the result, so strategies compose:
``Sample((Temperature(0.8), TopK(40), TopP(0.95)))``. :class:`Greedy` takes the argmax.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # a finite "minus infinity": keeps softmax and categorical free of NaNs


class Strategy(Protocol):
    def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array: ...


class Processor(Protocol):
    def __call__(self, logits: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The most likely token: ``argmax(logits)``."""

    def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        del rng
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
    """``logits / t``: t < 1 sharpens, t > 1 flattens the distribution."""

    t: float

    def __post_init__(self):
        if not self.t > 0:
            raise ValueError(f"temperature must be positive, got {self.t}")

    def __call__(self, logits: jax.Array) -> jax.Array:
        return logits / self.t


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keeps the ``k`` largest logits (ties with the k-th are kept too), masks the rest."""

    k: int

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"top-k needs k >= 1, got {self.k}")

    def __call__(self, logits: jax.Array) -> jax.Array:
        k = min(self.k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        return jnp.where(logits >= kth, logits, NEG_INF)


@dataclasses.dataclass(frozen=True)
class TopP:
    """Nucleus filtering (Holtzman et al. 2020): keeps the smallest set of most likely tokens
    whose probability mass reaches ``p`` (always at least the most likely one)."""

    p: float

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"top-p needs 0 < p <= 1, got {self.p}")

    def __call__(self, logits: jax.Array) -> jax.Array:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep = mass_before < self.p
        keep = keep.at[..., 0].set(True)
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(logits >= threshold, logits, NEG_INF)


@dataclasses.dataclass(frozen=True)
class Sample:
    """Applies ``processors`` in order, then draws from ``softmax(logits)``."""

    processors: tuple = ()

    def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        for proc in self.processors:
            logits = proc(logits)
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class VocabLimit:
    """``strategy`` over ids below ``n`` only: a model whose embedding table is padded past its
    tokenizer's vocabulary (as many checkpoints' are) never draws a padding id."""

    n: int
    strategy: Strategy

    def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        visible = jnp.arange(logits.shape[-1]) < self.n
        return self.strategy(jnp.where(visible, logits, -jnp.inf), rng)


def make_strategy(*, greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, vocab_limit: int = 0) -> Strategy:
    """Greedy (also for temperature 0), or temperature then top-k (k > 0) then top-p (p < 1);
    with ``vocab_limit`` > 0 only ids below it are drawn."""
    if vocab_limit:
        return VocabLimit(vocab_limit, make_strategy(greedy=greedy, temperature=temperature,
                                                     top_k=top_k, top_p=top_p))
    if greedy or temperature == 0:
        return Greedy()
    procs: list = []
    if temperature != 1.0:
        procs.append(Temperature(temperature))
    if top_k:
        procs.append(TopK(top_k))
    if top_p < 1.0:
        procs.append(TopP(top_p))
    return Sample(tuple(procs))
