"""The diffusion family: :class:`DiffusionFamily` (see jaxgen.models.base).

Training minimises the objective of :mod:`objectives` (eps / v / x0 prediction on a linear or
cosine schedule, Ho et al. 2020 / Nichol & Dhariwal 2021 / Salimans & Ho 2022, or EDM, Karras et
al. 2022) on images ``batch["image"]`` [B, H, W, C] in [0, 1], scaled to [-1, 1], with a UNet or
a DiT backbone (:mod:`jaxgen.nn.unet`, :mod:`jaxgen.nn.dit`). Class-conditional models see
``batch["label"]``, replaced by the null label with probability ``diffusion.cond_drop_prob``
(classifier-free guidance, Ho & Salimans 2022). An EMA of the weights with a warm-up is kept in
the state; sampling and evaluation use it (``sample.weights=raw`` for the raw weights).
With ``latent.autoencoder`` set, the model runs in a frozen autoencoder's latent instead of on
pixels (latent diffusion, Rombach et al. 2022; :mod:`jaxgen.models.diffusion.latent`): training
batches are encoded on the fly, samples decoded, and x0_hat is never clipped (latents have no
data range).

Evaluation: ``eval_step`` sums the training loss over the test split (fixed keys);
``final_eval`` reports bits per dimension from the DDPM variational bound (discrete-time
models), a Monte-Carlo estimate over ``eval.bpd_timesteps`` timesteps on ``eval.bpd_examples``
test digits; sample quality comes from the shared sample-based evaluation (jaxgen.eval).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import signals
from jaxgen.errors import UsageError
from jaxgen.models.base import (
    LossFamily,
    check_label,
    image_data,
    sample_labels,
    sampling_params,
)
from jaxgen.models.diffusion import samplers as samplers_lib
from jaxgen.models.diffusion.latent import encode_split, load_codec
from jaxgen.models.diffusion.likelihood import nll_bits_per_dim
from jaxgen.models.diffusion.objectives import diffusion_loss
from jaxgen.models.diffusion.settings import DiffusionExperiment, DiffusionSample
from jaxgen.nn.dit import DiT, DiTConfig
from jaxgen.nn.unet import UNet, check_image_size
from jaxgen.train.evaluate import sum_over_processes
from jaxgen.train.state import TrainState

log = logging.getLogger("jaxgen")


class DiffusionFamily(LossFamily):
    """A denoiser, its objective and its samplers (see the module docstring)."""

    name = "diffusion"
    settings = DiffusionExperiment

    def __init__(self, config: DiffusionExperiment, data_info: dict):
        self.image_shape, classes = image_data("diffusion", data_info)
        self.codec = (load_codec(config.latent.autoencoder, self.image_shape,
                                 config.latent.normalize, config.latent.scaling_factor,
                                 config.latent.recipe)
                      if config.latent.autoencoder else None)
        self.shape = self.codec.latent_shape if self.codec else self.image_shape
        m = config.model
        if m.conditional and classes < 2:
            raise UsageError("model.conditional=True needs a dataset with class labels; this one "
                             f"has {classes} classes")
        self.num_classes = classes if m.conditional else 0
        if m.num_classes not in (0, self.num_classes):
            raise UsageError(f"model.num_classes={m.num_classes} disagrees with the data "
                             f"({self.num_classes}); leave it 0 to take the data's")
        try:
            self.backbone = m.backbone_config(self.num_classes, self.shape[-1])
            h, w = self.shape[:2]
            if isinstance(self.backbone, DiTConfig):
                if h % m.patch_size or w % m.patch_size:
                    raise ValueError(f"DiT patch size {m.patch_size} does not divide the image "
                                     f"size {h}x{w}")
            else:
                check_image_size(h, w, self.backbone.levels, self.backbone.resblock_updown)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.objective = dataclasses.replace(
            config.diffusion, null_label=self.num_classes if self.num_classes else None,
            clip_x0=config.diffusion.clip_x0 and self.codec is None)  # latents have no range
        super().__init__(config, data_info)
        self.check_sample_options(config.sample)
        self._bpd = jax.jit(self._bits_per_dim)

    # --------------------------------------------------------------------------- the model
    @property
    def net(self):
        return DiT(self.backbone) if isinstance(self.backbone, DiTConfig) else UNet(self.backbone)

    def model_fn(self, params: Any, train: bool = False, rng: Optional[jax.Array] = None):
        """model_fn(x_in [B,H,W,C], noise_cond [B], labels [B] | None) -> out [B,H,W,C], float32."""
        rngs = {"dropout": rng} if train and rng is not None else None

        def fn(x, t, labels):
            return self.net.apply({"params": params}, x, t, labels, train,
                                  rngs=rngs).astype(jnp.float32)
        return fn

    def data_of(self, batch: dict, rng: jax.Array) -> jax.Array:
        """What the model diffuses: the images scaled to [-1, 1], or their normalised latents (a
        posterior sample drawn with ``rng``) for a latent model."""
        if "latent_moments" in batch:  # latent.cache: encoded once (prepare_datasets)
            return self.codec.from_moments(batch["latent_moments"], rng)
        if self.codec is not None:
            return self.codec.encode(batch["image"], rng)
        return batch["image"].astype(jnp.float32) * 2.0 - 1.0

    def prepare_datasets(self, datasets: Any) -> Any:
        """With ``latent.cache``: the training split encoded once (:func:`encode_split`), its
        train batches carrying ``latent_moments`` [B, h, w, 2L] instead of images."""
        if (self.codec is None or not self.config.latent.cache
                or getattr(datasets, "read_train", None) is None):
            return datasets
        t0 = time.perf_counter()
        n = int(datasets.info["num_train"])
        moments = encode_split(self.codec, datasets.read_train, n)
        try:
            datasets = datasets.with_train_features({"latent_moments": moments}, drop=("image",))
        except ValueError as e:
            raise UsageError(f"latent.cache=true: {e}; set latent.cache=false") from None
        log.info("encoded the %d training images once (latent.cache, %.1f MB) in %.1f s", n,
                 moments.nbytes / 1e6, time.perf_counter() - t0)
        return datasets

    def labels_of(self, batch: dict) -> Optional[jax.Array]:
        return batch["label"].astype(jnp.int32) if self.num_classes > 0 else None

    def init_params(self, rng: jax.Array) -> Any:
        x = jnp.zeros((1, *self.shape), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return self.net.init({"params": rng}, x, jnp.zeros((1,), jnp.float32), labels)["params"]

    # --------------------------------------------------------------------------- training
    def loss_fn(self, params, batch, rng, step):
        """Mean training loss over the batch (images scaled to [-1, 1], or their latents)."""
        del step
        k_model, k_loss = jax.random.split(rng)
        x0 = self.data_of(batch, jax.random.fold_in(rng, 2))
        per_example = diffusion_loss(self.model_fn(params, True, k_model), x0,
                                     self.labels_of(batch), k_loss, self.objective)
        return jnp.mean(per_example), {}

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.eval.seed), 1)
        x0 = self.data_of(batch, key)
        loss = diffusion_loss(self.model_fn(sampling_params(state)), x0, self.labels_of(batch),
                              jax.random.PRNGKey(self.config.eval.seed), self.objective)
        return {"denoise_loss": jnp.sum(loss * batch["mask"]), "count": jnp.sum(batch["mask"])}

    # --------------------------------------------------------------------------- sampling
    def check_sample_options(self, o: DiffusionSample) -> DiffusionSample:
        check_label(self.num_classes, o.label)
        if self.num_classes == 0 and o.guidance != 1.0:
            raise UsageError(f"sample.guidance={o.guidance}: classifier-free guidance needs a "
                             "class-conditional model")
        return o

    def sample(self, state: TrainState, rng: jax.Array, n: int,
               options: Optional[DiffusionSample] = None) -> jax.Array:
        """n images [n, H, W, C] in [0, 1] with ``options`` (default: the config's); a latent
        model's samples go through the autoencoder's decoder."""
        o = options or self.config.sample
        params = sampling_params(state, o.weights)
        if o.gather_fsdp:
            params = self.gathered_over_fsdp(params)
        x0 = samplers_lib.sample_model(self.model_fn(params), self.objective, o,
                                       (n, *self.shape), rng,
                                       sample_labels(self.num_classes, o.label, n))
        if self.codec is not None:
            return self.codec.decode(x0)
        return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)

    def grid_columns(self, n: int) -> Optional[int]:
        return self.num_classes if self.num_classes and n % self.num_classes == 0 else None

    # --------------------------------------------------------------------------- evaluation
    def _bits_per_dim(self, params, x, labels, key):
        return nll_bits_per_dim(self.model_fn(params), x, labels, key, self.objective,
                                self.config.eval.bpd_timesteps, clip_x0=self.objective.clip_x0)

    def final_eval(self, state: TrainState, batches: Iterable[dict]) -> dict:
        """Bits per dimension on the first ``eval.bpd_examples`` test images (DDPM bound)."""
        ec = self.config.eval
        if not self.objective.discrete or ec.bpd_examples == 0 or self.codec is not None:
            return {}  # the bound is of pixels: a latent model has none of its own
        params = sampling_params(state)
        total, count = 0.0, 0
        for i, batch in enumerate(batches):
            signals.check()
            keep = np.asarray(batch["mask"]) > 0
            x = np.asarray(batch["image"], np.float32)[keep][:ec.bpd_examples - count]
            if len(x) == 0:
                break
            labels = np.asarray(batch["label"])[keep][:len(x)] if self.num_classes else None
            bpd = self._bpd(params, jnp.asarray(x * 2.0 - 1.0),
                            None if labels is None else jnp.asarray(labels, jnp.int32),
                            jax.random.fold_in(jax.random.PRNGKey(ec.seed), i))
            total += float(np.sum(np.asarray(bpd, np.float64)))
            count += len(x)
            log.info("bits per dimension: %d/%d test images", count, ec.bpd_examples)
            if count >= ec.bpd_examples:
                break
        sums = sum_over_processes({"total": total, "count": float(count)})  # multi-host shares
        total, count = sums["total"], int(sums["count"])
        return {"bits_per_dim": total / count, "bpd_examples": count,
                "bpd_timesteps": ec.bpd_timesteps}
