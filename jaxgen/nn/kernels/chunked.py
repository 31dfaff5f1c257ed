"""Memory-efficient blockwise attention with causal block skipping, tuned for XLA:CPU.

Forward: Rabe & Staats 2021, "Self-attention does not need O(n^2) memory" -- queries and keys are
cut into blocks and the softmax is accumulated online over key blocks (running max ``m``, running
denominator ``l``, running numerator ``acc``), so the [T_q, T_k] matrix is never materialised.

Backward: FlashAttention-2 (Dao 2023) -- a ``jax.custom_vjp`` that keeps only ``q, k, v``, the
output and the per-row log-sum-exp, and recomputes each score tile to form ``dq, dk, dv``.

Structure (what makes it fast on a CPU, measured against PyTorch's SDPA in
``python -m benchmarks attention``):
- A ``fori_loop`` over (example slot, key/value head); each step slices its head straight out
  of the BTNH inputs and writes its result straight into the BTNH output carry, so no
  full-size transposed copy of q, k, v or o is ever made (each costs a pass over memory and,
  for large arrays, fresh pages on every call). The batch is viewed as [B / S, S] and the loop
  runs over the S slots, so each matmul takes B / S examples (one per device by default, see
  :func:`default_batch_split`; tiles of one example stay in L2). The B / S axis stays a batch
  dimension of every op, so a batch sharded over devices stays sharded: each device loops over
  its own examples and nothing is gathered.
- Inside a step the tile plan is static (Python loops), so hidden causal tiles are never traced,
  query blocks are independent chains that XLA's thunk executor runs in parallel, and every
  matmul is a plain [rows, 64] x [64, keys] or [rows, keys] x [keys, 64] product (keys are
  transposed once per step, not per tile; the softmax scale is folded into q).
- The backward accumulates dK^T and dV^T per key block as sums of tile products (no scatter into
  a full-size buffer), with the small [H, rows] operand transposed instead of the score tile.
Block sizes need not divide the sequence lengths (the last block is shorter).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.nn.kernels.masks import check_qkv, mask_4d

# Tuned on a 2-core Xeon (AVX-512) at B=4, N=8, T=2048, H=64 against torch SDPA
# (see benchmarks/attention.py): 256 query rows x 512 keys keeps a score tile (512 KiB f32 per
# example) in L2 and each matmul large enough for XLA's CPU matmul library.
DEFAULT_BLOCK_Q = 256
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
        keys = tuple(KeyBlock(ks, min(ks + block_k, hi),
                              causal and min(ks + block_k, hi) - 1 > qs + offset)
                     for ks in range(0, max(hi, 0), block_k))
        plan.append(QueryBlock(qs, qe, keys))
    return tuple(plan)


class _Static(NamedTuple):
    causal: bool
    block_q: int
    block_k: int
    offset: int  # t_k - t_q
    group: int  # query heads per key/value head (G)
    heads_per_step: int  # key/value heads per loop step
    split: int  # examples per batch row taken one at a time (loop steps over example slots)
    safe: bool  # every query row sees a key in its first tile (no -inf running max)


def _dot(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _visible(mask_h: jax.Array | None, qb: QueryBlock, kb: KeyBlock,
             st: _Static) -> jax.Array | None:
    """bool tile broadcastable to [B, bq*G, bk] (rows ordered (t, g)), None if all visible.

    ``mask_h`` is this step's mask, [B|1, Tq|1, G|1, Tk|1]."""
    vis = None
    if kb.diagonal:
        rows = jnp.arange(qb.start, qb.stop)[:, None] + st.offset
        vis = (jnp.arange(kb.start, kb.stop)[None, :] <= rows)[None, :, None, :]
    if mask_h is not None:
        mq = mask_h if mask_h.shape[1] == 1 else mask_h[:, qb.start:qb.stop]
        mk = mq if mq.shape[3] == 1 else mq[..., kb.start:kb.stop]
        vis = mk if vis is None else vis & mk
    if vis is None:
        return None
    b, g = vis.shape[0], st.group
    shape = (b, qb.stop - qb.start, g, kb.stop - kb.start)
    return jnp.broadcast_to(vis, shape).reshape(b, shape[1] * g, shape[3])


def _rows(qb: QueryBlock, g: int) -> slice:
    return slice(qb.start * g, qb.stop * g)


def _forward_head(q, k_t, v, mask_h, st: _Static):
    """One kv head. q [B, Tq*G, H] (pre-scaled, rows (t, g)), k_t [B, H, Tk], v [B, Tk, H]
    -> (o [B, Tq*G, H] f32, lse [B, Tq*G] f32)."""
    plan = block_plan(q.shape[1] // st.group, k_t.shape[2], st.block_q, st.block_k, st.causal)
    outs, lses = [], []
    for qb in plan:
        q_blk = q[:, _rows(qb, st.group)]
        m = l = acc = None
        for kb in qb.keys:
            s = _dot("bqh,bhs->bqs", q_blk, k_t[:, :, kb.start:kb.stop])
            vis = _visible(mask_h, qb, kb, st)
            if vis is not None:
                s = jnp.where(vis, s, -jnp.inf)
            m_blk = jnp.max(s, axis=-1)
            m_new = m_blk if m is None else jnp.maximum(m, m_blk)
            m_use = m_new if st.safe else jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_use[..., None])
            pv = _dot("bqs,bsh->bqh", p.astype(v.dtype), v[:, kb.start:kb.stop])
            if m is None:
                l, acc = jnp.sum(p, axis=-1), pv
            else:
                corr = jnp.exp(m - m_use)
                l = l * corr + jnp.sum(p, axis=-1)
                acc = acc * corr[..., None] + pv
            m = m_new
        if m is None:  # no visible key at all (causal with T_q > T_k): zeros, lse = +inf
            shape = q_blk.shape
            outs.append(jnp.zeros(shape, jnp.float32))
            lses.append(jnp.full(shape[:2], jnp.inf, jnp.float32))
            continue
        if st.safe:
            outs.append(acc / l[..., None])
            lses.append(m + jnp.log(l))
        else:  # rows with no visible key: output 0, lse +inf so that backward p == 0
            empty = l == 0.0
            outs.append(acc / jnp.where(empty, 1.0, l)[..., None])
            lses.append(jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l))))
    return jnp.concatenate(outs, axis=1), jnp.concatenate(lses, axis=1)


def _accumulate(parts: dict[tuple[int, int], jax.Array], kb: KeyBlock, x: jax.Array) -> None:
    key = (kb.start, kb.stop)
    parts[key] = x if key not in parts else parts[key] + x


def _backward_head(q, k, v, mask_h, lse, delta, do, st: _Static):
    """One kv head, FlashAttention-2 backward by tile recomputation. Shapes as in
    :func:`_forward_head`, plus lse/delta [B, Tq*G], do [B, Tq*G, H]; k, v [B, Tk, H].
    Returns f32 (dq [B, Tq*G, H] w.r.t. the pre-scaled q, dk [B, Tk, H], dv [B, Tk, H])."""
    t_k = k.shape[1]
    plan = block_plan(q.shape[1] // st.group, t_k, st.block_q, st.block_k, st.causal)
    k_t, v_t = k.transpose(0, 2, 1), v.transpose(0, 2, 1)  # [B, H, Tk], once per head
    q_t, do_t = q.transpose(0, 2, 1), do.transpose(0, 2, 1)  # [B, H, Tq*G]
    dk_t: dict[tuple[int, int], jax.Array] = {}  # (start, stop) of a key tile -> dK^T part
    dv_t: dict[tuple[int, int], jax.Array] = {}
    dqs = []
    for qb in plan:
        rows = _rows(qb, st.group)
        q_blk, do_blk = q[:, rows], do[:, rows]
        lse_blk, delta_blk = lse[:, rows, None], delta[:, rows, None]
        dq_blk = None
        for kb in qb.keys:
            ksl = slice(kb.start, kb.stop)
            p = jnp.exp(_dot("bqh,bhs->bqs", q_blk, k_t[:, :, ksl]) - lse_blk)
            vis = _visible(mask_h, qb, kb, st)
            if vis is not None:
                p = jnp.where(vis, p, 0.0)
            dv_tile = _dot("bhq,bqs->bhs", do_t[:, :, rows], p.astype(do.dtype))
            ds = p * (_dot("bqh,bhs->bqs", do_blk, v_t[:, :, ksl]) - delta_blk)
            dq_tile = _dot("bqs,bsh->bqh", ds.astype(k.dtype), k[:, ksl])
            dk_tile = _dot("bhq,bqs->bhs", q_t[:, :, rows], ds.astype(q.dtype))
            dq_blk = dq_tile if dq_blk is None else dq_blk + dq_tile
            _accumulate(dk_t, kb, dk_tile)
            _accumulate(dv_t, kb, dv_tile)
        dqs.append(jnp.zeros(q_blk.shape, jnp.float32) if dq_blk is None else dq_blk)

    def assemble(parts: dict[tuple[int, int], jax.Array]) -> jax.Array:  # -> [B, Tk, H]
        b, h = k.shape[0], k.shape[2]
        cols = []
        for ks in range(0, t_k, st.block_k):
            pieces = sorted(((stop, x) for (start, stop), x in parts.items() if start == ks),
                            key=lambda item: -item[0])  # widest first
            if not pieces:
                cols.append(jnp.zeros((b, h, min(ks + st.block_k, t_k) - ks), jnp.float32))
                continue
            col = pieces[0][1]
            for stop, x in pieces[1:]:  # causal tiles cut at the diagonal are narrower
                col = col.at[:, :, :stop - ks].add(x)
            width = min(ks + st.block_k, t_k) - ks
            if col.shape[2] < width:  # keys after the last visible one get no gradient
                col = jnp.pad(col, ((0, 0), (0, 0), (0, width - col.shape[2])))
            cols.append(col)
        return jnp.concatenate(cols, axis=2).transpose(0, 2, 1)

    return jnp.concatenate(dqs, axis=1), assemble(dk_t), assemble(dv_t)


def _head_slices(x: jax.Array, j: jax.Array, i: jax.Array, size: int) -> jax.Array:
    """[B', S, T, heads, H] -> example slot ``j``, heads [i*size, (i+1)*size) as
    [B', T*size, H] (rows (t, head))."""
    b, _, t, _, h = x.shape
    x = jax.lax.dynamic_slice(x, (0, j, 0, i * size, 0), (b, 1, t, size, h))
    return x.reshape(b, t * size, h)


def _put_heads(out: jax.Array, x: jax.Array, j: jax.Array, i: jax.Array, size: int) -> jax.Array:
    b, _, t, _, h = out.shape
    x = x.reshape(b, 1, t, size, h).astype(out.dtype)
    return jax.lax.dynamic_update_slice(out, x, (0, j, 0, i * size, 0))


def _mask_step(mask: jax.Array | None, j: jax.Array, i: jax.Array) -> jax.Array | None:
    """Split grouped mask [B'|1, S|1, Tq|1, K|1, G|1, Tk|1] -> this step's
    [B'|1, Tq|1, G|1, Tk|1]."""
    if mask is None:
        return None
    mask = mask[:, 0] if mask.shape[1] == 1 else jax.lax.dynamic_index_in_dim(
        mask, j, axis=1, keepdims=False)
    if mask.shape[2] == 1:
        return mask[:, :, 0]
    return jax.lax.dynamic_index_in_dim(mask, i, axis=2, keepdims=False)


def _loop(st: _Static, kv_heads: int, body, init):
    """fori_loop over (example slot, group of ``heads_per_step`` kv heads);
    ``body(slot, kv_head, carry)``."""
    groups = kv_heads // st.heads_per_step

    def step(n, carry):
        j, first = n // groups, (n % groups) * st.heads_per_step
        for u in range(st.heads_per_step):
            carry = body(j, first + u, carry)
        return carry
    return jax.lax.fori_loop(0, st.split * groups, step, init)


def _forward(q, k, v, mask, st: _Static):
    """q [B',S,Tq,N,H] (pre-scaled), k/v [B',S,Tk,K,H] -> (o like q, lse [B',S,K,Tq*G] f32)."""
    b, split, t_q = q.shape[:3]
    kv_heads, g = k.shape[3], st.group

    def body(j, i, carry):
        o, lse = carry
        o_h, lse_h = _forward_head(
            _head_slices(q, j, i, g), _head_slices(k, j, i, 1).transpose(0, 2, 1),
            _head_slices(v, j, i, 1), _mask_step(mask, j, i), st)
        lse = jax.lax.dynamic_update_slice(lse, lse_h.reshape(b, 1, 1, -1), (0, j, i, 0))
        return _put_heads(o, o_h, j, i, g), lse

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((b, split, kv_heads, t_q * g), jnp.float32))
    return _loop(st, kv_heads, body, init)


def _backward(q, k, v, mask, o, lse, do, st: _Static):
    g = st.group
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B',S,Tq,N]
    delta = delta[..., None]  # as [B', S, Tq, N, 1] so that _head_slices applies

    def body(j, i, carry):
        dq, dk, dv = carry
        lse_h = jax.lax.dynamic_slice(lse, (0, j, i, 0), (lse.shape[0], 1, 1, lse.shape[3]))
        dq_h, dk_h, dv_h = _backward_head(
            _head_slices(q, j, i, g), _head_slices(k, j, i, 1), _head_slices(v, j, i, 1),
            _mask_step(mask, j, i), lse_h.reshape(lse.shape[0], -1),
            _head_slices(delta, j, i, g)[..., 0], _head_slices(do, j, i, g), st)
        return (_put_heads(dq, dq_h, j, i, g), _put_heads(dk, dk_h, j, i, 1),
                _put_heads(dv, dv_h, j, i, 1))

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros(k.shape, k.dtype), jnp.zeros(v.shape, v.dtype))
    return _loop(st, k.shape[3], body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _inner(q, k, v, mask, st: _Static):
    return _forward(q, k, v, mask, st)[0]


def _inner_fwd(q, k, v, mask, st: _Static):
    o, lse = _forward(q, k, v, mask, st)
    return o, (q, k, v, mask, o, lse)


def _inner_bwd(st: _Static, res, do):
    q, k, v, mask, o, lse = res
    dq, dk, dv = _backward(q, k, v, mask, o, lse, do, st)
    return dq, dk, dv, None


_inner.defvjp(_inner_fwd, _inner_bwd)


def _grouped_mask(mask: jax.Array, b: int, n: int, kv_heads: int, t_q: int, t_k: int) -> jax.Array:
    """Mask broadcastable to [B,N,Tq,Tk] -> bool [B|1, Tq|1, K|1, G|1, Tk|1]."""
    mb, mn, mq, mk = (mask := mask_4d(mask, b, n, t_q, t_k)).shape
    if mn == 1:
        return mask.reshape(mb, 1, 1, mq, mk).transpose(0, 3, 1, 2, 4)
    return mask.reshape(mb, kv_heads, n // kv_heads, mq, mk).transpose(0, 3, 1, 2, 4)


def default_batch_split(batch: int) -> int:
    """How many examples the CPU kernel takes one at a time: the largest S dividing ``batch``
    with ``batch / S`` a multiple of the device count, so a batch sharded over any mesh axis
    stays sharded (the loop runs over the S examples inside each device's shard). Matmuls on one
    example at a time were about 20% faster than on 4 at once (score tiles stay in L2). 1 off
    CPU, where the accelerator wants every example in one kernel."""
    devices = jax.device_count()
    if jax.default_backend() != "cpu" or batch % devices:
        return 1
    return max(s for s in range(1, batch + 1) if batch % s == 0 and (batch // s) % devices == 0)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                      mask: jax.Array | None = None, scale: float | None = None,
                      block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
                      heads_per_step: int | None = 1,
                      batch_split: int | None = None) -> jax.Array:
    """Blockwise attention with the semantics of ``reference_attention``.

    Args:
      q: [B, T_q, N, H]; k, v: [B, T_k, K, H] with N a multiple of K (GQA/MQA).
      causal: bottom-right aligned causal mask; fully hidden key blocks are skipped.
      mask: optional bool, broadcastable to [B, N, T_q, T_k]; True means "may attend".
      scale: score scale, default 1 / sqrt(H).
      block_q, block_k: tile sizes in query and key positions (any positive ints; need not
        divide T_q / T_k).
      heads_per_step: key/value heads per loop step (must divide K); None: all heads in one
        step (one traced program per head: long compiles for many heads). -1 means 1.
      batch_split: loop over this many example slots (must divide B; each step's matmuls then
        take B / batch_split examples); None: :func:`default_batch_split`.
    Returns:
      [B, T_q, N, H] in the dtype of ``q``; rows with no visible key are zero.
    Memory: O(B * heads_per_step * N/K * block_q * block_k) for scores, forward and backward,
    plus the inputs, outputs and one per-step copy of a head.
    """
    check_qkv(q, k, v)
    b, t_q, n, h = q.shape
    t_k, kv_heads = k.shape[1], k.shape[2]
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    if heads_per_step == -1:
        heads_per_step = 1
    if heads_per_step is None:
        heads_per_step = kv_heads
    if heads_per_step < 1 or kv_heads % heads_per_step:
        raise ValueError(f"heads_per_step={heads_per_step} must be a positive divisor of "
                         f"kv_heads = {kv_heads}")
    split = default_batch_split(b) if batch_split is None else batch_split
    if split < 1 or b % split:
        raise ValueError(f"batch_split={split} must be a positive divisor of batch = {b}")
    scale = h ** -0.5 if scale is None else scale
    safe = mask is None and (not causal or t_k >= t_q)
    st = _Static(causal=bool(causal), block_q=int(block_q), block_k=int(block_k),
                 offset=t_k - t_q, group=n // kv_heads, heads_per_step=int(heads_per_step),
                 split=int(split), safe=safe)
    m_in = None if mask is None else _grouped_mask(mask, b, n, kv_heads, t_q, t_k)
    if m_in is not None:  # [B|1, ...] -> [B'|1, S|1, ...]
        lead = (b // split, split) if m_in.shape[0] == b else (1, 1)
        m_in = m_in.reshape(*lead, *m_in.shape[1:])
    rows = lambda x: x.reshape(b // split, split, *x.shape[1:])
    o = _inner(rows(q * jnp.asarray(scale, q.dtype)), rows(k), rows(v), m_in, st)
    return o.reshape(q.shape)
