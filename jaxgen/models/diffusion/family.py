"""The diffusion family: ``make_family(config, data_info) -> Family`` (see jaxgen.models.base).

Training minimises the objective of :mod:`objectives` (eps / v / x0 prediction on a linear or
cosine schedule, Ho et al. 2020 / Nichol & Dhariwal 2021 / Salimans & Ho 2022, or EDM, Karras et
al. 2022) on images ``batch["image"]`` [B, H, W, C] in [0, 1], scaled to [-1, 1], with a UNet or
a DiT backbone (:mod:`jaxgen.nn.unet`, :mod:`jaxgen.nn.dit`). Class-conditional models see
``batch["label"]``, replaced by the null label with probability ``diffusion.cond_drop_prob``
(classifier-free guidance, Ho & Salimans 2022). An EMA of the weights with a warm-up is kept in
the state; sampling and evaluation use it (``sample.weights=raw`` for the raw weights).

Evaluation: ``eval_step`` sums the training loss over the test split (fixed keys);
``final_eval`` reports bits per dimension from the DDPM variational bound (discrete-time
models), a Monte-Carlo estimate over ``eval.bpd_timesteps`` timesteps on ``eval.bpd_examples``
test digits; sample quality comes from the shared sample-based evaluation (jaxgen.eval).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import signals
from jaxgen.errors import UsageError
from jaxgen.models.base import Family
from jaxgen.models.diffusion import hparams
from jaxgen.models.diffusion import samplers as samplers_lib
from jaxgen.models.diffusion.likelihood import nll_bits_per_dim
from jaxgen.models.diffusion.objectives import denoiser, diffusion_loss, sampling_sigmas
from jaxgen.nn.dit import DiT
from jaxgen.nn.unet import UNet
from jaxgen.train.evaluate import sum_over_processes
from jaxgen.train.images import save_image_grid
from jaxgen.train.optim import OptimConfig, make_optimizer
from jaxgen.train.state import TrainState, create_state
from jaxgen.train.step import EMAConfig, make_train_step

log = logging.getLogger("jaxgen")


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
    """A backbone with its objective: the pure functions every step is built from."""

    backbone: Any            # UNetConfig | DiTConfig
    objective: Any           # DiffusionConfig
    num_classes: int

    @property
    def net(self):
        return UNet(self.backbone) if type(self.backbone).__name__ == "UNetConfig" else DiT(self.backbone)

    def model_fn(self, params: Any, train: bool = False, rng: jax.Array | None = None):
        """model_fn(x_in [B,H,W,C], noise_cond [B], labels [B] | None) -> out [B,H,W,C], float32."""
        rngs = {"dropout": rng} if train and rng is not None else None

        def fn(x, t, labels):
            return self.net.apply(params, x, t, labels, train, rngs=rngs).astype(jnp.float32)
        return fn

    def labels_of(self, batch: dict) -> jax.Array | None:
        return batch["label"].astype(jnp.int32) if self.num_classes > 0 else None

    def loss_fn(self, params, batch, rng, step):
        """Mean training loss over the batch (images scaled to [-1, 1])."""
        del step
        k_model, k_loss = jax.random.split(rng)
        x0 = batch["image"].astype(jnp.float32) * 2.0 - 1.0
        per_example = diffusion_loss(self.model_fn(params, True, k_model), x0,
                                     self.labels_of(batch), k_loss, self.objective)
        return jnp.mean(per_example), {}


def _sampling_params(state: TrainState, weights: str) -> Any:
    return state.ema_params if weights == "ema" and state.ema_params is not None else state.params


def _sample_labels(num_classes: int, label: int, n: int) -> jax.Array | None:
    if num_classes == 0:
        return None
    if label >= 0:
        return jnp.full((n,), label, jnp.int32)
    return jnp.arange(n, dtype=jnp.int32) % num_classes


def make_family(config: Any, data_info: dict) -> Family:
    """Builds the diffusion family for ``config`` (model, diffusion, optim, train, sample, eval)
    and image data (``data_info``: kind "image", shape, num_classes)."""
    if data_info.get("kind", "image") != "image" or "shape" not in data_info:
        raise UsageError(f"the diffusion family needs image data with a 'shape', got kind "
                         f"{data_info.get('kind')!r}")
    shape = tuple(int(s) for s in data_info["shape"])
    conditional = bool(config.model.get("conditional", False))
    num_classes = int(data_info.get("num_classes", 0)) if conditional else 0
    if conditional and num_classes < 2:
        raise UsageError("model.conditional=True needs a dataset with class labels; this one "
                         f"has {data_info.get('num_classes', 0)} classes")
    model = DiffusionModel(hparams.backbone_config(config.model, num_classes, shape[-1]),
                           hparams.diffusion_config(config.diffusion, num_classes), num_classes)
    sample_defaults = config.get("sample", {})
    default_options = hparams.sample_options(sample_defaults, num_classes)
    ecfg = hparams.EvalSettings.from_config(config.get("eval"))
    optim = dataclasses.replace(OptimConfig.from_config(config.optim),
                                total_steps=int(config.train.steps))
    tx = make_optimizer(optim)
    ema = EMAConfig.from_config(config.train)

    def init_state(rng: jax.Array, sample_batch: dict) -> TrainState:
        k_init, k_state = jax.random.split(rng)
        x = jnp.zeros((1, *shape), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32) if num_classes else None
        params = model.net.init({"params": k_init}, x, jnp.zeros((1,), jnp.float32), labels)
        return create_state(params, tx, k_state, ema=ema is not None)

    train_step = make_train_step(model.loss_fn, tx, grad_accum=optim.grad_accum, ema=ema)

    def eval_step(state: TrainState, batch: dict) -> dict:
        params = _sampling_params(state, "ema")
        x0 = batch["image"].astype(jnp.float32) * 2.0 - 1.0
        loss = diffusion_loss(model.model_fn(params), x0, model.labels_of(batch),
                              jax.random.PRNGKey(ecfg.seed), model.objective)
        return {"denoise_loss": jnp.sum(loss * batch["mask"]), "count": jnp.sum(batch["mask"])}

    def sample(state: TrainState, rng: jax.Array, n: int,
               options: hparams.SampleOptions | None = None) -> jax.Array:
        """n images [n, H, W, C] in [0, 1] with ``options`` (default: the config's)."""
        o = options or default_options
        params = _sampling_params(state, o.weights)
        labels = _sample_labels(num_classes, o.label, n)
        x0 = samplers_lib.sample(denoiser(model.model_fn(params), model.objective), (n, *shape),
                                 rng, o.sampler, sampling_sigmas(model.objective, o.sampler.steps),
                                 labels, model.objective.null_label)
        return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)

    def make_options(**overrides: Any) -> hparams.SampleOptions:
        return hparams.sample_options(sample_defaults, num_classes, **overrides)

    def save_samples(samples, path: str) -> list[str]:
        ncols = num_classes if num_classes and len(samples) % num_classes == 0 else None
        return [save_image_grid(np.asarray(samples), path, ncols=ncols)]

    @jax.jit
    def _bpd(params, x, labels, key):
        return nll_bits_per_dim(model.model_fn(params), x, labels, key, model.objective,
                                ecfg.bpd_timesteps, clip_x0=model.objective.clip_x0)

    def final_eval(state: TrainState, batches: Iterable[dict]) -> dict:
        """Bits per dimension on the first ``eval.bpd_examples`` test images (DDPM bound)."""
        if not model.objective.discrete or ecfg.bpd_examples == 0:
            return {}
        params = _sampling_params(state, "ema")
        total, count = 0.0, 0
        for i, batch in enumerate(batches):
            signals.check()
            keep = np.asarray(batch["mask"]) > 0
            x = np.asarray(batch["image"], np.float32)[keep][:ecfg.bpd_examples - count]
            if len(x) == 0:
                break
            labels = np.asarray(batch["label"])[keep][:len(x)] if num_classes else None
            bpd = _bpd(params, jnp.asarray(x * 2.0 - 1.0),
                       None if labels is None else jnp.asarray(labels, jnp.int32),
                       jax.random.fold_in(jax.random.PRNGKey(ecfg.seed), i))
            total += float(np.sum(np.asarray(bpd, np.float64)))
            count += len(x)
            log.info("bits per dimension: %d/%d test images", count, ecfg.bpd_examples)
            if count >= ecfg.bpd_examples:
                break
        sums = sum_over_processes({"total": total, "count": float(count)})  # multi-host shares
        total, count = sums["total"], int(sums["count"])
        return {"bits_per_dim": total / count, "bpd_examples": count,
                "bpd_timesteps": ecfg.bpd_timesteps}

    return Family("diffusion", init_state, train_step, eval_step, sample, save_samples,
                  final_eval=final_eval, sample_options=make_options)
