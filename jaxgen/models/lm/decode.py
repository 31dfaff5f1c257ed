"""Autoregressive generation with a KV cache, the whole loop compiled.

One forward pass over the prompt fills the cache (prefill); then each step feeds the last sampled
token alone, appends its keys and values to the cache and samples the next token from its logits.
The loop is a ``lax.while_loop`` that ends when every sequence has emitted the stop token or the
requested number of tokens exists. All sequences of the batch share the prompt length.

:func:`generate_long` goes past the model's context with a sliding window: once the context is
full, the last half of it becomes the prompt of a fresh cache (recomputed by one prefill) and
generation goes on; every token still sees at least half a context of history. RoPE encodes
relative positions only, so restarting positions at 0 in the new window is sound.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.lm.model import LMConfig, Transformer, make_cache
from jaxgen.models.lm.sampling import Strategy


def check_prompt(config: LMConfig, prompt: Any, max_new_tokens: int) -> None:
    """Raises a one-line ValueError for a prompt the model cannot continue.

    Value checks (token ids in range) run only on concrete prompts (numpy, or jax arrays outside
    ``jit``); shape checks always run.
    """
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be int tokens [batch, length >= 1], got shape {tuple(prompt.shape)}")
    if prompt.shape[1] >= config.max_len:
        raise ValueError(f"prompt of {prompt.shape[1]} tokens leaves no room in the model context "
                         f"of {config.max_len}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    total = prompt.shape[1] + max_new_tokens
    if total > config.max_len:
        raise ValueError(f"prompt of {prompt.shape[1]} tokens + {max_new_tokens} new tokens = {total} "
                         f"exceeds the model context of {config.max_len}")
    if not isinstance(prompt, jax.core.Tracer):
        p = np.asarray(prompt)
        if p.size and (p.min() < 0 or p.max() >= config.vocab_size):
            bad = int(p.min()) if p.min() < 0 else int(p.max())
            raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {config.vocab_size})")


def generate(config: LMConfig, params: Any, prompt: jax.Array, rng: jax.Array, strategy: Strategy, *,
             max_new_tokens: int, stop_token: Optional[int] = None, pad_token: int = 0) -> jax.Array:
    """Continues each row of ``prompt`` [B, P] by ``max_new_tokens`` sampled tokens.

    Args:
      config, params: the model (params unboxed, as in the train state).
      prompt: int32 [B, P], P + max_new_tokens <= config.max_len.
      rng: PRNG key; step i draws with ``fold_in(rng, i)``.
      strategy: a :mod:`jaxgen.models.lm.sampling` strategy.
      stop_token: a sequence that emits it stops; the stop token is kept and ``pad_token`` fills
        the rest of its row.
    Returns:
      int32 [B, P + max_new_tokens]: the prompt followed by the generated tokens.
    """
    check_prompt(config, prompt, max_new_tokens)
    model = Transformer(config)
    prompt = jnp.asarray(prompt, jnp.int32)
    b, p = prompt.shape
    cache = make_cache(config, b, p + max_new_tokens)
    logits, cache = model.apply({"params": params}, prompt, cache=cache, cache_index=jnp.int32(0))
    out = jnp.full((b, max_new_tokens), pad_token, jnp.int32)
    done = jnp.zeros((b,), bool)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, last_logits, cache, done, out = carry
        tok = strategy(last_logits, jax.random.fold_in(rng, i))
        tok = jnp.where(done, pad_token, tok)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        if stop_token is not None:
            done = done | (tok == stop_token)
        logits, cache = model.apply({"params": params}, tok[:, None], cache=cache, cache_index=p + i)
        return i + 1, logits[:, -1], cache, done, out

    carry = (jnp.int32(0), logits[:, -1], cache, done, out)
    out = jax.lax.while_loop(cond, body, carry)[-1]
    return jnp.concatenate([prompt, out], axis=1)


def generate_long(config: LMConfig, params: Any, prompt: jax.Array, rng: jax.Array,
                  strategy: Strategy, *, max_new_tokens: int, stop_token: Optional[int] = None,
                  pad_token: int = 0) -> jax.Array:
    """Like :func:`generate`, but ``P + max_new_tokens`` may exceed ``config.max_len``.

    The first window is exactly :func:`generate` with the same key (so the first
    ``config.max_len`` tokens equal the ordinary decoder's); each later window re-prefills the
    last ``max_len // 2`` tokens and draws with ``fold_in(rng, window)``. Tokens after a row's
    stop token are ``pad_token``. Returns int32 [B, P + max_new_tokens].
    """
    b, p = prompt.shape
    if p + max_new_tokens <= config.max_len:
        return generate(config, params, prompt, rng, strategy, max_new_tokens=max_new_tokens,
                        stop_token=stop_token, pad_token=pad_token)
    if config.positions != "rope":
        raise ValueError(f"sampling past the context of {config.max_len} needs rotary positions "
                         f"(model.positions=rope), not {config.positions!r}")
    check_prompt(config, prompt, config.max_len - p)
    keep = max(config.max_len // 2, 1)
    seq = generate(config, params, prompt, rng, strategy, max_new_tokens=config.max_len - p,
                   stop_token=stop_token, pad_token=pad_token)
    remaining, window = max_new_tokens - (config.max_len - p), 1
    while remaining > 0:
        n = min(config.max_len - keep, remaining)
        out = generate(config, params, seq[:, -keep:], jax.random.fold_in(rng, window), strategy,
                       max_new_tokens=n, stop_token=stop_token, pad_token=pad_token)
        seq = jnp.concatenate([seq, out[:, keep:]], axis=1)
        remaining, window = remaining - n, window + 1
    if stop_token is not None:  # rows that stopped in an earlier window stay padded
        gen = seq[:, p:]
        stopped = jnp.cumsum(gen == stop_token, axis=1) - (gen == stop_token) > 0
        seq = jnp.concatenate([seq[:, :p], jnp.where(stopped, pad_token, gen)], axis=1)
    return seq
