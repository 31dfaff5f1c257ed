"""Times the U-Net's CPU attention and GroupNorm against the layouts they replaced.

    python -m benchmarks.unet_parts [--batch 16] [--repeats 20]

At the shapes of the ``denoise`` benchmark's U-Net (diffusers' ``UNet2DModel`` 64/128/128 at
28x28): attention over 14x14 = 196 tokens, 16 heads of width 8, and GroupNorm(32) + SiLU at each
level. Rows: ``jaxgen.nn.kernels.short_attention`` (batched [B,N,T,H] x [B,N,H,S] matmuls), the
same softmax contracted over the minor axis of both operands (``einsum("btnh,bsnh->bnst")``, the
layout it replaced), ``jax.nn.dot_product_attention`` and, where torch is installed, PyTorch's
``scaled_dot_product_attention``; ``jaxgen.nn.layers.GroupNorm`` against ``flax.linen.GroupNorm``.
Prints the median of ``--repeats`` calls in milliseconds and the largest difference from the
reference row, in one process (one CPU device, as ``python`` runs).
"""
from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import peers
from benchmarks.common import time_fn
from jaxgen.nn.layers import GroupNorm
from jaxgen.nn.kernels import short_attention


def _median_ms(fn, *args, repeats: int) -> float:
    return time_fn(fn, *args, repeats=repeats)["median_s"] * 1e3


def minor_axis_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The layout ``short_attention`` replaced: scores [B, N, S, T] from a contraction over the
    minor axis of both [B, T, N, H] operands."""
    s = jnp.einsum("btnh,bsnh->bnst", q * q.shape[-1] ** -0.5, k)
    e = jnp.exp(s - jnp.max(s, axis=2, keepdims=True))
    o = jnp.einsum("bnst,bsnh->btnh", e, v)
    return o / jnp.moveaxis(jnp.sum(e, axis=2), 1, 2)[..., None]


def attention_rows(batch: int, repeats: int) -> list[tuple[str, float, float]]:
    b, t, n, h = batch, 196, 16, 8
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32) for _ in range(3))
    want = short_attention(q, k, v)
    rows = []
    for name, fn in (("short_attention", short_attention),
                     ("minor-axis einsum", minor_axis_attention),
                     ("jax.nn.dot_product_attention", jax.nn.dot_product_attention)):
        jitted = jax.jit(fn)
        err = float(jnp.max(jnp.abs(jitted(q, k, v) - want)))
        rows.append((f"attention [{b},{t},{n},{h}]: {name}",
                     _median_ms(jitted, q, k, v, repeats=repeats), err))
    if peers.torch_unavailable_reason() is not None:
        return rows
    import torch
    host = [np.asarray(x) for x in (q, k, v)]
    call, results = peers.torch_sdpa(*host, host[0], causal=False, dtype_name="float32",
                                     backward=False)
    err = float(np.max(np.abs(results()[0] - np.asarray(want))))
    rows.append((f"attention [{b},{t},{n},{h}]: torch SDPA ({torch.get_num_threads()} threads)",
                 _median_ms(call, repeats=repeats), err))
    return rows


def group_norm_rows(batch: int, repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    rng = np.random.default_rng(0)
    for shape in ((batch, 28, 28, 64), (batch, 14, 14, 128), (batch, 28, 28, 192)):
        x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.5, jnp.float32)
        ref = nn.GroupNorm(32)
        params = ref.init(jax.random.key(0), x)
        timed = {}
        for name, module in (("jaxgen GroupNorm", GroupNorm(32)), ("flax GroupNorm", ref)):
            fn = jax.jit(lambda p, x, m=module: nn.silu(m.apply(p, x)))
            timed[name] = (fn(params, x), _median_ms(fn, params, x, repeats=repeats))
        want = timed["flax GroupNorm"][0]
        for name, (out, ms) in timed.items():
            rows.append((f"GroupNorm(32)+SiLU {list(shape)}: {name}", ms,
                         float(jnp.max(jnp.abs(out - want)))))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    for name, ms, err in (attention_rows(args.batch, args.repeats)
                          + group_norm_rows(args.batch, args.repeats)):
        print(f"{name:70s} {ms:8.2f} ms   max |diff| {err:.1e}")


if __name__ == "__main__":
    main()
