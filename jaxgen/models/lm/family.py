"""The "lm" family: a decoder-only Transformer trained by next-token cross-entropy.

Batches are ``{"tokens": int32 [B, T + 1]}``: inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``
(eval batches add ``"mask"`` float32 [B]). The loss is the mean next-token cross-entropy in nats;
evaluation returns its sum and the token count, plus bits per character (``bpc``, for char and
byte tokenizers) or bits per token.

Config keys read: ``model.*`` (fields of :class:`LMConfig`, ``vocab_size`` comes from the data,
``max_len`` 0 = the data's ``seq_len``), ``optim.*``, ``train.steps``, ``mesh.fsdp/tensor``,
``data.tokenizer`` and ``sample.*`` (``prompt``, ``max_new_tokens`` 0 = fill the context,
``greedy``, ``temperature``, ``top_k``, ``top_p``, ``stop_token`` "" = none).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxgen.models.base import Family
from jaxgen.models.lm.decode import check_prompt, generate_long
from jaxgen.models.lm.model import LOGICAL_RULES, LMConfig, Transformer
from jaxgen.models.lm.sampling import make_strategy
from jaxgen.train.optim import OptimConfig, make_optimizer
from jaxgen.train.state import create_state
from jaxgen.train.step import EMAConfig, make_train_step
from jaxgen.train.workdir import write_atomic


def lm_config(config: Any, data_info: dict) -> LMConfig:
    """The model's :class:`LMConfig` from ``config.model`` and the data's vocabulary and length."""
    model = config.model
    max_len = int(model.get("max_len", 0) or data_info.get("seq_len", 0))
    return LMConfig.from_config(model, vocab_size=int(data_info["vocab_size"]), max_len=max_len)


def token_losses(config: LMConfig, params: Any, tokens: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Per-token next-token cross-entropy (nats), float32 [B, T], of tokens int32 [B, T + 1].

    Dropout is active iff ``rng`` is given and ``config.dropout > 0``.
    """
    train = rng is not None and config.dropout > 0
    logits = Transformer(config).apply({"params": params}, tokens[:, :-1], deterministic=not train,
                                       rngs={"dropout": rng} if train else None)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])


def mesh_param_specs(config: LMConfig, mesh_sizes: dict[str, int]) -> Any:
    """PartitionSpecs (mesh axis names) of the unboxed params, from their logical axes.

    A mesh axis that does not divide a dimension is dropped for that dimension (replicated).
    """
    boxed = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0),
                           jnp.zeros((1, config.max_len), jnp.int32))["params"]
    logical = nn.get_partition_spec(boxed)
    mesh_specs = nn.logical_to_mesh(logical, LOGICAL_RULES)
    shapes = nn.meta.unbox(boxed)

    def fit(spec, shape):
        axes = []
        for dim, axis in zip(shape.shape, tuple(spec) + (None,) * (len(shape.shape) - len(spec))):
            size = math.prod(mesh_sizes.get(a, 1) for a in ((axis,) if isinstance(axis, str) else axis or ()))
            axes.append(axis if axis is not None and dim % size == 0 else None)
        return P(*axes)

    return jax.tree.map(fit, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def make_family(config: Any, data_info: dict) -> Family:
    """Builds the LM family for ``config`` (an experiment ConfigDict) and the text data's info."""
    if data_info.get("kind", "text") != "text":
        raise ValueError(f"the lm family needs text data, got {data_info.get('kind')!r}")
    cfg = lm_config(config, data_info)
    model = Transformer(cfg)
    optim = dataclasses.replace(OptimConfig.from_config(config.optim), total_steps=int(config.train.steps))
    tx = make_optimizer(optim)
    tokenizer = data_info.get("tokenizer")
    bits_key = "bpc" if config.data.get("tokenizer", "char") in ("char", "byte") else "bits_per_token"

    sc = config.get("sample", {})
    prompt_text = sc.get("prompt", "\n")
    prompt = np.asarray([tokenizer.encode(prompt_text) if tokenizer is not None else [0]], np.int32)
    max_new = int(sc.get("max_new_tokens", 0)) or cfg.max_len - prompt.shape[1]
    check_prompt(cfg, prompt, min(max_new, cfg.max_len - prompt.shape[1]))
    if prompt.shape[1] + max_new > cfg.max_len and cfg.positions != "rope":
        raise ValueError(f"sample.max_new_tokens={max_new} goes past the model context of "
                         f"{cfg.max_len}, which needs rotary positions (model.positions=rope)")
    strategy = make_strategy(greedy=bool(sc.get("greedy", False)), temperature=float(sc.get("temperature", 1.0)),
                             top_k=int(sc.get("top_k", 0)), top_p=float(sc.get("top_p", 1.0)))
    stop_text = sc.get("stop_token", "")
    stop = None
    if stop_text:
        ids = tokenizer.encode(stop_text)
        if len(ids) != 1:
            raise ValueError(f"sample.stop_token {stop_text!r} is not a single token")
        stop = int(ids[0])

    def loss_fn(params, batch, rng, step):
        del step
        loss = jnp.mean(token_losses(cfg, params, batch["tokens"], rng))
        return loss, {"bits_per_token": loss / math.log(2)}

    def init_state(rng, batch):
        params = model.init(rng, jnp.asarray(batch["tokens"][:1, :-1], jnp.int32))["params"]
        return create_state(nn.meta.unbox(params), tx, rng,
                            ema=EMAConfig.from_config(config.train) is not None)

    def eval_step(state, batch):
        losses = token_losses(cfg, state.params, batch["tokens"])
        mask = batch["mask"].astype(jnp.float32)[:, None] * jnp.ones_like(losses)
        total = jnp.sum(losses * mask)
        return {"val_loss": total, bits_key: total / math.log(2), "count": jnp.sum(mask)}

    def sample(state, rng, n, options=None):
        prompts = jnp.asarray(np.repeat(prompt, n, axis=0))
        return generate_long(cfg, state.params, prompts, rng, strategy, max_new_tokens=max_new,
                             stop_token=stop)

    def save_samples(tokens, path):
        texts = []
        for row in np.asarray(tokens).tolist():
            gen = row[prompt.shape[1]:]
            if stop is not None and stop in gen:
                gen = gen[:gen.index(stop) + 1]
            texts.append(tokenizer.decode(row[:prompt.shape[1]] + gen))
        write_atomic(path, "\n\n==========\n\n".join(texts) + "\n")
        return [path]

    mesh_sizes = {"fsdp": int(config.mesh.get("fsdp", 1)), "tensor": int(config.mesh.get("tensor", 1))}
    ema = EMAConfig.from_config(config.train)
    return Family(
        name="lm",
        init_state=init_state,
        train_step=make_train_step(loss_fn, tx, grad_accum=optim.grad_accum, ema=ema),
        eval_step=eval_step,
        sample=sample,
        save_samples=save_samples,
        sample_suffix=".txt",
        param_specs=lambda abstract_params: mesh_param_specs(cfg, mesh_sizes),
    )
