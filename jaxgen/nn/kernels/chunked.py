"""Memory-efficient blockwise attention with causal block skipping.

Forward: Rabe & Staats 2021, "Self-attention does not need O(n^2) memory" -- queries and keys are
cut into blocks and the softmax is accumulated online over key blocks (running max ``m``, running
denominator ``l``, running numerator ``acc``), so at most one [block_q, block_k] score tile per
(batch, head) exists at a time and the [T_q, T_k] matrix is never materialised.

Backward: FlashAttention-2 (Dao 2023) -- a ``jax.custom_vjp`` that keeps only ``q, k, v``, the
output and the per-row log-sum-exp, and recomputes each score tile to form ``dq, dk, dv``.

Causal attention skips every key block that lies entirely above the diagonal and trims the last
visible block to the diagonal, so it does about half the work of the dense kernel. The block
plan is static (Python loops over blocks), so the skipped work is never traced at all; block
sizes need not divide the sequence lengths (the last block is shorter).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.nn.kernels.masks import mask_4d

# Tuned on a 2-core AMD EPYC CPU at B=4, N=8, T=2048, H=64 (see benchmarks/attention.py).
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


class KeyBlock(NamedTuple):
    start: int
    stop: int
    diagonal: bool  # some (query, key) pairs in this tile are hidden by the causal mask


class QueryBlock(NamedTuple):
    start: int
    stop: int
    keys: tuple[KeyBlock, ...]  # the key blocks this query block can see, in order


def block_plan(t_q: int, t_k: int, block_q: int, block_k: int,
               causal: bool) -> tuple[QueryBlock, ...]:
    """Static tiling of the [t_q, t_k] score matrix into visible tiles.

    With ``causal`` (bottom-right aligned, query i sees key j iff j <= i + t_k - t_q) key blocks
    entirely above the diagonal are dropped and the last block is cut at the last visible key.
    """
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    offset = t_k - t_q
    plan = []
    for qs in range(0, t_q, block_q):
        qe = min(qs + block_q, t_q)
        hi = min(t_k, qe + offset) if causal else t_k  # keys [0, hi) are visible to some query
        keys = tuple(KeyBlock(ks, min(ks + block_k, hi), causal and min(ks + block_k, hi) - 1 > qs + offset)
                     for ks in range(0, max(hi, 0), block_k))
        plan.append(QueryBlock(qs, qe, keys))
    return tuple(plan)


class _Static(NamedTuple):
    causal: bool
    block_q: int
    block_k: int
    offset: int  # t_k - t_q


def _dot(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _visible(mask: jax.Array | None, qb: QueryBlock, kb: KeyBlock, st: _Static) -> jax.Array | None:
    """bool tile broadcastable to [B, K, G, bq, bk], or None when everything is visible."""
    vis = None
    if kb.diagonal:
        rows = jnp.arange(qb.start, qb.stop)[:, None] + st.offset
        vis = jnp.arange(kb.start, kb.stop)[None, :] <= rows
    if mask is not None:
        mq = mask if mask.shape[3] == 1 else mask[:, :, :, qb.start:qb.stop]
        mk = mq if mq.shape[4] == 1 else mq[..., kb.start:kb.stop]
        vis = mk if vis is None else vis & mk
    return vis


def _scores(q_blk, k_blk, vis):
    s = _dot("bkgqh,bksh->bkgqs", q_blk, k_blk)
    return s if vis is None else jnp.where(vis, s, -jnp.inf)


def _forward(q, k, v, mask, st: _Static):
    """q [B,K,G,Tq,H] (pre-scaled), k/v [B,K,Tk,H] -> (o [B,K,G,Tq,H] f32, lse [B,K,G,Tq] f32)."""
    plan = block_plan(q.shape[3], k.shape[2], st.block_q, st.block_k, st.causal)
    outs, lses = [], []
    for qb in plan:
        q_blk = q[:, :, :, qb.start:qb.stop]
        shape = q_blk.shape[:-1]
        m = jnp.full(shape, -jnp.inf, jnp.float32)
        l = jnp.zeros(shape, jnp.float32)
        acc = jnp.zeros(q_blk.shape, jnp.float32)
        for i, kb in enumerate(qb.keys):
            s = _scores(q_blk, k[:, :, kb.start:kb.stop], _visible(mask, qb, kb, st))
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])
            pv = _dot("bkgqs,bksh->bkgqh", p.astype(v.dtype), v[:, :, kb.start:kb.stop])
            if i == 0:
                l, acc = jnp.sum(p, axis=-1), pv
            else:
                corr = jnp.exp(m - m_safe)
                l = l * corr + jnp.sum(p, axis=-1)
                acc = acc * corr[..., None] + pv
            m = m_new
        empty = l == 0.0  # rows with no visible key: output 0, lse +inf so backward p == 0
        outs.append(acc / jnp.where(empty, 1.0, l)[..., None])
        lses.append(jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l))))
    return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _backward(q, k, v, mask, o, lse, do, st: _Static):
    """FlashAttention-2 backward by tile recomputation; returns f32 (dq, dk, dv) in the inner
    layout, dq w.r.t. the pre-scaled q."""
    plan = block_plan(q.shape[3], k.shape[2], st.block_q, st.block_k, st.causal)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B,K,G,Tq]
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    dqs = []
    for qb in plan:
        sl = slice(qb.start, qb.stop)
        q_blk, do_blk = q[:, :, :, sl], do[:, :, :, sl]
        lse_blk, delta_blk = lse[:, :, :, sl, None], delta[:, :, :, sl, None]
        dq_blk = jnp.zeros(q_blk.shape, jnp.float32)
        for kb in qb.keys:
            ksl = slice(kb.start, kb.stop)
            k_blk, v_blk = k[:, :, ksl], v[:, :, ksl]
            p = jnp.exp(_scores(q_blk, k_blk, _visible(mask, qb, kb, st)) - lse_blk)
            dv = dv.at[:, :, ksl].add(_dot("bkgqs,bkgqh->bksh", p.astype(do.dtype), do_blk))
            dp = _dot("bkgqh,bksh->bkgqs", do_blk, v_blk)
            ds = p * (dp - delta_blk)
            dq_blk = dq_blk + _dot("bkgqs,bksh->bkgqh", ds.astype(k.dtype), k_blk)
            dk = dk.at[:, :, ksl].add(_dot("bkgqs,bkgqh->bksh", ds.astype(q.dtype), q_blk))
        dqs.append(dq_blk)
    return jnp.concatenate(dqs, axis=3), dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _inner(q, k, v, mask, st: _Static):
    return _forward(q, k, v, mask, st)[0].astype(q.dtype)


def _inner_fwd(q, k, v, mask, st: _Static):
    o, lse = _forward(q, k, v, mask, st)
    o = o.astype(q.dtype)
    return o, (q, k, v, mask, o, lse)


def _inner_bwd(st: _Static, res, do):
    q, k, v, mask, o, lse = res
    dq, dk, dv = _backward(q, k, v, mask, o, lse, do, st)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_inner.defvjp(_inner_fwd, _inner_bwd)


def _grouped_mask(mask: jax.Array, b: int, n: int, kv_heads: int, t_q: int, t_k: int) -> jax.Array:
    """Mask broadcastable to [B,N,Tq,Tk] -> bool [B|1, K|1, G|1, Tq|1, Tk|1]."""
    mb, mn, mq, mk = (mask := mask_4d(mask, b, n, t_q, t_k)).shape
    if mn == 1:
        return mask.reshape(mb, 1, 1, mq, mk)
    return mask.reshape(mb, kv_heads, n // kv_heads, mq, mk)


def _default_heads_per_step(batch_kv_heads: int) -> int | None:
    # CPU: two (batch, kv-head) pairs per step keep the score tiles near cache and were fastest
    # at B=4, N=8, T=2048 (about 1.5-4x faster than all heads at once); accelerators want all
    # heads in one kernel.
    if jax.default_backend() != "cpu":
        return None
    return 2 if batch_kv_heads % 2 == 0 else 1


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                      mask: jax.Array | None = None, scale: float | None = None,
                      block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
                      heads_per_step: int | None = -1) -> jax.Array:
    """Blockwise attention with the semantics of ``reference_attention``.

    Args:
      q: [B, T_q, N, H]; k, v: [B, T_k, K, H] with N a multiple of K (GQA/MQA).
      causal: bottom-right aligned causal mask; fully hidden key blocks are skipped.
      mask: optional bool, broadcastable to [B, N, T_q, T_k]; True means "may attend".
      scale: score scale, default 1 / sqrt(H).
      block_q, block_k: tile sizes (any positive ints; need not divide T_q / T_k).
      heads_per_step: process this many (batch, kv-head) pairs at a time in a ``lax.map``
        (must divide B * K); None processes all at once; -1 (default) picks 2 (or 1) on CPU,
        else None.
    Returns:
      [B, T_q, N, H] in the dtype of ``q``; rows with no visible key are zero.
    Memory: O(heads_per_step * N/K * block_q * block_k) for scores, forward and backward.
    """
    b, t_q, n, h = q.shape
    t_k, kv_heads = k.shape[1], k.shape[2]
    if n % kv_heads:
        raise ValueError(f"query heads ({n}) must be a multiple of key/value heads ({kv_heads})")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    bk = b * kv_heads
    if heads_per_step == -1:
        heads_per_step = _default_heads_per_step(bk)
    if heads_per_step is not None and (heads_per_step < 1 or bk % heads_per_step):
        raise ValueError(f"heads_per_step={heads_per_step} must be a positive divisor of "
                         f"batch * kv_heads = {bk}")
    scale = h ** -0.5 if scale is None else scale
    g = n // kv_heads
    st = _Static(bool(causal), int(block_q), int(block_k), t_k - t_q)
    q_in = (q * jnp.asarray(scale, q.dtype)).reshape(b, t_q, kv_heads, g, h).transpose(0, 2, 3, 1, 4)
    k_in, v_in = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    m_in = None if mask is None else _grouped_mask(mask, b, n, kv_heads, t_q, t_k)
    if heads_per_step is None or heads_per_step == bk:
        o = _inner(q_in, k_in, v_in, m_in, st)  # [B,K,G,Tq,H]
    else:
        steps, c = bk // heads_per_step, heads_per_step
        q_s = q_in.reshape(steps, c, 1, g, t_q, h)
        k_s, v_s = (x.reshape(steps, c, 1, t_k, h) for x in (k_in, v_in))
        if m_in is None:
            o = jax.lax.map(lambda a: _inner(*a, None, st), (q_s, k_s, v_s))
        else:
            m_s = jnp.broadcast_to(m_in, (b, kv_heads) + m_in.shape[2:]).reshape(
                (steps, c, 1) + m_in.shape[2:])
            o = jax.lax.map(lambda a: _inner(*a, st), (q_s, k_s, v_s, m_s))
        o = o.reshape(b, kv_heads, g, t_q, h)
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t_q, n, h)
