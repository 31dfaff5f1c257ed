"""Training-time data augmentation inside the jitted step, driven by the step's PRNG key."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _shift_axis(x: jax.Array, offsets: jax.Array, max_shift: int, axis: int) -> jax.Array:
    """Shifts each x[b] along ``axis`` (1 or 2) by offsets[b] - max_shift, zero-filled.

    A one-hot mix of the 2 * max_shift + 1 shifted copies: plain slices and multiply-adds, which
    XLA on CPU runs much faster than a per-example gather (``vmap`` of ``dynamic_slice``).
    """
    s, n = max_shift, x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (s, s)
    padded = jnp.pad(x, pad)
    onehot = jax.nn.one_hot(offsets, 2 * s + 1, dtype=x.dtype)       # [B, 2s+1]
    out = jnp.zeros_like(x)
    for i in range(2 * s + 1):
        window = jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
        out = out + onehot[:, i, None, None, None] * window
    return out


def random_shift(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
    """Translates each image of x [B, H, W, C] by integer offsets in [-max_shift, max_shift]
    (independently along H and W, uniformly).

    Pixels shifted in from outside are 0 (the background of MNIST-like digits), so binarized
    images stay binary. ``max_shift = 0`` returns ``x`` unchanged.
    """
    if max_shift <= 0:
        return x
    offsets = jax.random.randint(key, (2, x.shape[0]), 0, 2 * max_shift + 1)
    x = _shift_axis(x, offsets[0], max_shift, axis=1)
    return _shift_axis(x, offsets[1], max_shift, axis=2)
