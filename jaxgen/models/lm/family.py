"""The "lm" family: a decoder-only Transformer trained by next-token cross-entropy.

Batches are ``{"tokens": int32 [B, T + 1]}``: inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``
(eval batches add ``"mask"`` float32 [B]). The loss is the mean next-token cross-entropy in nats;
evaluation returns its sum and the token count, plus bits per character (``bpc``, for char and
byte tokenizers) or bits per token. Evaluation and sampling use the EMA of the weights when the
run keeps one (``train.ema_decay > 0``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.errors import UsageError
from jaxgen.models.base import LossFamily, sampling_params
from jaxgen.models.lm.decode import check_prompt, generate_long
from jaxgen.models.lm.model import LMConfig, Transformer
from jaxgen.models.lm.sampling import make_strategy
from jaxgen.models.lm.settings import LMExperiment, LMSample
from jaxgen.train.state import TrainState
from jaxgen.train.workdir import write_atomic


def lm_config(config: LMExperiment, data_info: dict) -> LMConfig:
    """The model's :class:`LMConfig` with, unless set, the data's vocabulary and length (a
    model's own vocabulary may be larger than its tokenizer's: padded, as many checkpoints'
    embeddings are)."""
    m = config.model
    vocab = int(data_info["vocab_size"])
    if 0 < m.vocab_size < vocab:
        raise UsageError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                         f"{vocab}; leave it 0 to take the data's")
    return dataclasses.replace(m, vocab_size=m.vocab_size or vocab,
                               max_len=m.max_len or int(data_info.get("seq_len", 0)))


def token_losses(config: LMConfig, params: Any, tokens: jax.Array,
                 rng: Optional[jax.Array] = None) -> jax.Array:
    """Per-token next-token cross-entropy (nats), float32 [B, T], of tokens int32 [B, T + 1].

    Dropout is active iff ``rng`` is given and ``config.dropout > 0``.
    """
    train = rng is not None and config.dropout > 0
    logits = Transformer(config).apply({"params": params}, tokens[:, :-1], deterministic=not train,
                                       rngs={"dropout": rng} if train else None)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])


class LMFamily(LossFamily):
    """A Transformer LM and its KV-cache decoder (see the module docstring)."""

    name = "lm"
    settings = LMExperiment
    sample_suffix = ".txt"
    sample_kind = "text"

    def __init__(self, config: LMExperiment, data_info: dict):
        if data_info.get("kind", "text") != "text":
            raise UsageError(f"the lm family needs text data, got {data_info.get('kind')!r}")
        self.cfg = lm_config(config, data_info)
        self.tokenizer = data_info.get("tokenizer")
        self.bits_key = "bpc" if config.data.tokenizer in ("char", "byte") else "bits_per_token"
        super().__init__(config, data_info)
        self.check_sample_options(config.sample)

    @property
    def model(self) -> Transformer:
        return Transformer(self.cfg)

    def init_params(self, rng: jax.Array) -> Any:
        return self.model.init(rng, jnp.zeros((1, self.cfg.max_len), jnp.int32))["params"]

    def model_flops(self, batch_size: int) -> float:
        """FLOPs of one training step: 6 per matmul parameter per token (forward and backward;
        Kaplan et al. 2020) plus causal attention's 6 T^2 D per layer and sequence (PaLM's
        12 L T D per token, halved for the causal mask; Chowdhery et al. 2022, App. B)."""
        c = self.cfg
        d, h, t = c.d_model, c.head_dim, c.max_len
        attn = d * c.num_heads * h * 2 + 2 * d * c.kv_heads * h
        mlp = (3 if c.mlp == "swiglu" else 2) * d * c.hidden
        n_matmul = c.num_layers * (attn + mlp) + c.vocab_size * d
        return 6.0 * batch_size * t * n_matmul + 6.0 * batch_size * c.num_layers * t * t * d

    def loss_fn(self, params, batch, rng, step):
        del step
        loss = jnp.mean(token_losses(self.cfg, params, batch["tokens"], rng))
        return loss, {"bits_per_token": loss / math.log(2)}

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        losses = token_losses(self.cfg, sampling_params(state), batch["tokens"])
        mask = batch["mask"].astype(jnp.float32)[:, None] * jnp.ones_like(losses)
        total = jnp.sum(losses * mask)
        return {"val_loss": total, self.bits_key: total / math.log(2), "count": jnp.sum(mask)}

    # --------------------------------------------------------------------------- decoding
    def encode(self, text: str) -> np.ndarray:
        """Token ids int32 [T] of ``text`` under the run's tokenizer."""
        if self.tokenizer is None:
            raise UsageError("this run has no tokenizer")
        return np.asarray(self.tokenizer.encode(text), np.int32)

    def decode(self, tokens: Any) -> str:
        """The text of token ids [T]."""
        if self.tokenizer is None:
            raise UsageError("this run has no tokenizer")
        return self.tokenizer.decode([int(t) for t in np.asarray(tokens).reshape(-1)])

    def _prompt(self, o: LMSample) -> np.ndarray:
        return self.encode(o.prompt)[None] if self.tokenizer is not None else np.zeros((1, 1), np.int32)

    def _stop(self, o: LMSample) -> Optional[int]:
        if not o.stop_token:
            return None
        ids = self.encode(o.stop_token)
        if len(ids) != 1:
            raise UsageError(f"sample.stop_token {o.stop_token!r} is not a single token")
        return int(ids[0])

    def _max_new(self, o: LMSample, prompt_len: int) -> int:
        return o.max_new_tokens or self.cfg.max_len - prompt_len

    def check_sample_options(self, o: LMSample) -> LMSample:
        prompt = self._prompt(o)
        max_new = self._max_new(o, prompt.shape[1])
        try:
            check_prompt(self.cfg, prompt, min(max_new, self.cfg.max_len - prompt.shape[1]))
        except ValueError as e:
            raise UsageError(str(e)) from None
        if prompt.shape[1] + max_new > self.cfg.max_len and self.cfg.positions != "rope":
            raise UsageError(f"sample.max_new_tokens={max_new} goes past the model context of "
                             f"{self.cfg.max_len}, which needs rotary positions "
                             "(model.positions=rope)")
        self._stop(o)
        return o

    def sample(self, state: TrainState, rng: jax.Array, n: int,
               options: Optional[LMSample] = None) -> jax.Array:
        """Tokens int32 [n, P + max_new_tokens]: the prompt and its continuations."""
        o = options or self.config.sample
        prompt = self._prompt(o)
        tok_vocab = getattr(self.tokenizer, "vocab_size", self.cfg.vocab_size)
        strategy = make_strategy(greedy=o.greedy, temperature=o.temperature, top_k=o.top_k,
                                 top_p=o.top_p,
                                 vocab_limit=tok_vocab if tok_vocab < self.cfg.vocab_size else 0)
        params = sampling_params(state)
        if o.gather_fsdp:
            params = self.gathered_over_fsdp(params)
        return generate_long(self.cfg, params, jnp.asarray(np.repeat(prompt, n, 0)),
                             rng, strategy, max_new_tokens=self._max_new(o, prompt.shape[1]),
                             stop_token=self._stop(o))

    def texts(self, tokens: Any, options: Optional[LMSample] = None) -> list[str]:
        """The texts of sampled tokens [n, T], each cut after its stop token."""
        o = options or self.config.sample
        p, stop = self._prompt(o).shape[1], self._stop(o)
        texts = []
        for row in np.asarray(tokens).tolist():
            gen = row[p:]
            if stop is not None and stop in gen:
                gen = gen[:gen.index(stop) + 1]
            texts.append(self.decode(row[:p] + gen))
        return texts

    def save_samples(self, samples: Any, path: str, scale: int = 1) -> list[str]:
        if scale != 1:
            raise UsageError("--scale enlarges image grids; language-model samples are text")
        if path.endswith(".npz"):
            return super().save_samples(samples, path)
        write_atomic(path, "\n\n==========\n\n".join(self.texts(samples)) + "\n")
        return [path]
