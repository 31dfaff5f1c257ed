"""The GAN's compiled training step, composed from the shared pieces of
:mod:`jaxgen.train.step` (``loss_and_grads``, ``apply_gradients`` with the ``all_finite`` guard,
``ema_update``).

One step = :meth:`GANStep.disc_phase` (``n_disc`` discriminator updates, the i-th on the i-th
strided slice of the global batch, so every slice stays spread over the
devices) then :meth:`GANStep.gen_phase` (one generator update against the updated
discriminator, then the EMA of the generator). Each phase maps a whole ``TrainState`` to a new
one and touches only its own player: the discriminator phase changes ``params["disc"]``,
``opt_state["disc"]`` and the spectral-norm state ``extra["sn"]``; the generator phase changes
``params["gen"]``, ``opt_state["gen"]`` and ``ema_params``. Both are separately callable (and
tested to be so).

State layout: ``params = {"gen", "disc"}``, ``opt_state = {"gen", "disc"}``, ``ema_params`` =
the generator's EMA (or None), ``extra = {"sn": batch_stats}`` with spectral norm, else None.

Spectral norm: every forward pass inside a loss runs with ``update_stats=False`` (a pure
function of params and the stored ``u``); the power iteration advances once per discriminator
update, before its loss, by :meth:`GANModel.power_iterate` (the iteration depends on the
weights only, not on the input). A non-finite update also keeps the old ``u``.

Metrics (scalars): ``loss`` = ``g_loss``; ``d_loss`` (the adversarial part, mean over the D
updates); ``d_real``, ``d_fake`` (mean raw D outputs on real and generated images);
``penalty`` (the weighted R1/GP value, mean over the D updates that computed it, 0 when none
did); ``d_grad_norm``, ``g_grad_norm``; ``nonfinite`` (1.0 when any update of the step was
skipped because a loss or gradient was not finite).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxgen.models.gan import losses
from jaxgen.models.gan.settings import NetConfig, ObjectiveConfig
from jaxgen.models.gan.modules import STANDING_BATCH, Discriminator, Generator
from jaxgen.train.state import TrainState
from jaxgen.train.step import (
    EMAConfig,
    all_finite,
    apply_gradients,
    ema_update,
    global_norm,
    loss_and_grads,
    select_tree,
)
from jaxgen.train.step import split_microbatches as split_strided  # slice i: i, i+n, i+2n, ...

Batch = dict[str, jax.Array]


def to_signed(images: jax.Array) -> jax.Array:
    """[0, 1] -> [-1, 1], the networks' image range."""
    return images * 2.0 - 1.0


@dataclasses.dataclass(frozen=True)
class GANModel:
    """The two networks as pure functions of their variables."""

    net: NetConfig

    def init(self, rng: jax.Array) -> tuple[Any, Any, Any]:
        """(generator params, discriminator params, spectral-norm state or None)."""
        k_g, k_d = jax.random.split(rng)
        c = self.net
        z = jnp.zeros((2, c.z_dim), jnp.float32)
        y = jnp.zeros((2,), jnp.int32)
        x = jnp.zeros((2, *c.image_shape), jnp.float32)
        g_vars = Generator(c).init({"params": k_g}, z, y)
        d_vars = Discriminator(c).init({"params": k_d}, x, y)
        return g_vars["params"], d_vars["params"], d_vars.get("batch_stats")

    def init_params(self, rng: jax.Array) -> dict:
        """{"gen", "disc"} parameters as ``init`` returns them (logical-axis boxes included)."""
        g, d, _ = self.init(rng)
        return {"gen": g, "disc": d}

    def generate(self, g_params: Any, z: jax.Array, y: jax.Array | None) -> jax.Array:
        """z [B, z_dim], labels [B] -> images [B, H, W, C] in [-1, 1], normalised with the
        statistics of this batch (training)."""
        if self.net.gen_norm == "none":
            return Generator(self.net).apply({"params": g_params}, z, y)
        x, _ = Generator(self.net).apply({"params": g_params}, z, y, mutable=["batch_stats"])
        return x

    def sample(self, g_params: Any, z: jax.Array, y: jax.Array | None) -> jax.Array:
        """Like :meth:`generate`, but with the standing statistics of ``g_params`` (computed on
        a fixed batch of latents), so each image depends on its own z only."""
        if self.net.gen_norm == "none":
            return self.generate(g_params, z, y)
        n = STANDING_BATCH
        zs = jax.random.normal(jax.random.PRNGKey(0), (n, self.net.z_dim), jnp.float32)
        ys = jnp.arange(n, dtype=jnp.int32) % max(self.net.num_classes, 1)
        _, stats = Generator(self.net).apply({"params": g_params}, zs, ys,
                                             mutable=["batch_stats"])
        return Generator(self.net).apply({"params": g_params, **stats}, z, y,
                                         use_running_average=True)

    def discriminate(self, d_params: Any, sn: Any, x: jax.Array,
                     y: jax.Array | None) -> jax.Array:
        """Images [B, H, W, C] in [-1, 1], labels [B] -> logits [B] (stored ``u``, no update)."""
        variables = {"params": d_params} if sn is None else {"params": d_params, "batch_stats": sn}
        return Discriminator(self.net).apply(variables, x, y)

    def power_iterate(self, d_params: Any, sn: Any) -> Any:
        """The spectral-norm state after one more power iteration of every layer."""
        if sn is None:
            return None
        x = jnp.zeros((1, *self.net.image_shape), jnp.float32)
        y = jnp.zeros((1,), jnp.int32)
        _, updated = Discriminator(self.net).apply({"params": d_params, "batch_stats": sn}, x, y,
                                                   update_stats=True, mutable=["batch_stats"])
        return updated["batch_stats"]


def _labels(batch: Batch) -> jax.Array:
    """The batch's labels [B] (zeros when it has none; unconditional models ignore them)."""
    if "label" in batch:
        return jnp.maximum(batch["label"].astype(jnp.int32), 0)
    return jnp.zeros((batch["image"].shape[0],), jnp.int32)


def _sn_state(state: TrainState) -> Any:
    return None if state.extra is None else state.extra["sn"]


@dataclasses.dataclass(frozen=True)
class GANStep:
    """The training step of a GAN: ``disc_phase``, ``gen_phase`` and ``__call__`` (both)."""

    model: GANModel
    obj: ObjectiveConfig
    tx_gen: optax.GradientTransformation
    tx_disc: optax.GradientTransformation
    ema: EMAConfig | None = None
    grad_accum: int = 1

    def _cond(self, y: jax.Array) -> jax.Array | None:
        return y if self.model.net.conditional else None

    # ----------------------------------------------------------------- the two players' losses
    def disc_loss(self, d_params: Any, batch: Batch, rng: jax.Array, d_index: jax.Array, *,
                  g_params: Any, sn: Any) -> tuple[jax.Array, dict]:
        """The discriminator's loss on one slice ``batch`` (image [b, H, W, C], label [b]):
        adversarial loss + (lazily) the penalty. ``d_index`` counts D updates over the run."""
        o, m = self.obj, self.model
        k_z, k_gp = jax.random.split(rng)
        y = self._cond(batch["label"])
        x_real = to_signed(batch["image"])
        z = jax.random.normal(k_z, (x_real.shape[0], m.net.z_dim), x_real.dtype)
        x_fake = jax.lax.stop_gradient(m.generate(g_params, z, y))
        real = m.discriminate(d_params, sn, x_real, y)
        fake = m.discriminate(d_params, sn, x_fake, y)
        adv = losses.d_loss(o.loss, real, fake)
        d_fn = lambda x: m.discriminate(d_params, sn, x, y)
        if o.penalty == "r1":
            pen_fn = lambda: losses.r1_penalty(d_fn, x_real, o.penalty_weight)
        elif o.penalty == "gp":
            pen_fn = lambda: losses.gradient_penalty(d_fn, x_real, x_fake, k_gp,
                                                     o.penalty_weight)
        else:
            pen_fn = lambda: jnp.zeros((), adv.dtype)
        applied = ((d_index + 1) % o.penalty_every == 0) & (o.penalty != "none")
        if o.penalty_every == 1:
            penalty = pen_fn()
        else:  # lazy: computed only every k-th update, weighted by k (Karras et al. 2020)
            penalty = jax.lax.cond(applied, pen_fn, lambda: jnp.zeros((), adv.dtype))
        total = adv + o.penalty_every * penalty
        return total, {"d_loss": adv, "d_real": jnp.mean(real), "d_fake": jnp.mean(fake),
                       "penalty": penalty, "penalty_applied": applied.astype(jnp.float32)}

    def gen_loss(self, g_params: Any, batch: Batch, rng: jax.Array, step: jax.Array, *,
                 d_params: Any, sn: Any) -> tuple[jax.Array, dict]:
        """The generator's loss for ``batch["label"]`` [b] fresh samples."""
        del step
        m = self.model
        y = self._cond(batch["label"])
        z = jax.random.normal(rng, (batch["label"].shape[0], m.net.z_dim), jnp.float32)
        fake = m.discriminate(d_params, sn, m.generate(g_params, z, y), y)
        loss = losses.g_loss(self.obj.loss, fake)
        return loss, {"g_loss": loss}

    # ----------------------------------------------------------------- the two phases
    def disc_phase(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        """``n_disc`` discriminator updates, the i-th on the i-th strided slice of the batch."""
        n = self.obj.n_disc
        rng = jax.random.fold_in(state.step_rng(), 0)
        slices = split_strided({"image": batch["image"], "label": _labels(batch)}, n)
        g_params = state.params["gen"]

        def update(carry, xs):
            d_params, opt, sn = carry
            i, sl = xs
            sn_new = self.model.power_iterate(d_params, sn)
            loss_fn = functools.partial(self.disc_loss, g_params=g_params, sn=sn_new)
            d_index = state.step * n + i
            loss, metrics, grads = loss_and_grads(loss_fn, d_params, sl, jax.random.fold_in(rng, i),
                                                  d_index, self.grad_accum)
            ok = all_finite(loss, grads)
            d_params, opt = apply_gradients(self.tx_disc, d_params, opt, grads, ok)
            if sn is not None:
                sn_new = select_tree(ok, sn_new, sn)
            metrics = {**metrics, "d_grad_norm": global_norm(grads),
                       "nonfinite": 1.0 - ok.astype(jnp.float32)}
            return (d_params, opt, sn_new), metrics

        # A Python loop, not lax.scan: inside an XLA:CPU while loop (jax 0.10) the kernel
        # gradients of convolutions ran over 100x slower (3 s instead of 22 ms for one
        # [32, 14, 14, 64] -> 128 conv), which made the whole step 10x slower. n_disc is small,
        # so unrolling costs only compile time.
        carry = (state.params["disc"], state.opt_state["disc"], _sn_state(state))
        outs = []
        for i in range(n):
            carry, metrics = update(carry, (i, jax.tree.map(lambda x, i=i: x[i], slices)))
            outs.append(metrics)
        d_params, opt, sn = carry
        per = {k: jnp.stack([o[k] for o in outs]) for k in outs[0]}
        applied = jnp.sum(per.pop("penalty_applied"))
        metrics = {k: jnp.mean(v) for k, v in per.items()}
        metrics["penalty"] = jnp.sum(per["penalty"]) / jnp.maximum(applied, 1.0)
        metrics["nonfinite"] = jnp.max(per["nonfinite"])
        new = state.replace(params={**state.params, "disc": d_params},
                            opt_state={**state.opt_state, "disc": opt},
                            extra=None if sn is None else {**state.extra, "sn": sn})
        return new, metrics

    def gen_phase(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        """One generator update (on B / n_disc samples, labelled like the first slice of the
        batch), then the EMA of the generator."""
        rng = jax.random.fold_in(state.step_rng(), 1)
        labels = split_strided({"label": _labels(batch)}, self.obj.n_disc)["label"][0]
        loss_fn = functools.partial(self.gen_loss, d_params=state.params["disc"],
                                    sn=_sn_state(state))
        loss, metrics, grads = loss_and_grads(loss_fn, state.params["gen"], {"label": labels},
                                              rng, state.step, self.grad_accum)
        ok = all_finite(loss, grads)
        g_params, opt = apply_gradients(self.tx_gen, state.params["gen"], state.opt_state["gen"],
                                        grads, ok)
        ema_params = state.ema_params
        if ema_params is not None and self.ema is not None:
            ema_params = ema_update(ema_params, g_params, self.ema.decay_at(state.step))
        new = state.replace(params={**state.params, "gen": g_params},
                            opt_state={**state.opt_state, "gen": opt}, ema_params=ema_params)
        metrics = {**metrics, "g_grad_norm": global_norm(grads),
                   "nonfinite": 1.0 - ok.astype(jnp.float32)}
        return new, metrics

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        """``train_step(state, batch) -> (state, metrics)``: D phase, G phase, step + 1."""
        state, d_metrics = self.disc_phase(state, batch)
        state, g_metrics = self.gen_phase(state, batch)
        metrics = {**d_metrics, **g_metrics, "loss": g_metrics["g_loss"],
                   "nonfinite": jnp.maximum(d_metrics["nonfinite"], g_metrics["nonfinite"])}
        return state.replace(step=state.step + 1), metrics
