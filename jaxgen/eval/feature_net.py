"""The feature network behind jaxgen's offline sample-quality metrics: architecture, training
recipe and feature extraction.

Standard FID uses Inception-v3 features (Heusel et al. 2017), whose weights must be downloaded.
jaxgen uses its own small classifier instead: a LeNet-style CNN (LeCun et al. 1998) fitted on
the 4,000 training digits of the embedded MNIST with jaxgen's own training pieces, and uses its
penultimate layer's pre-activations (128-d) as the feature space. The metrics built on it are
named for what they are (``fd_lenet``, ``kid_lenet``, ...): comparable with each other, never
with FID.

One yardstick everywhere: the parameters trained by this recipe ship inside the package,
checksum-verified at load (:mod:`jaxgen.eval.lenet_weights`, which also retrains them:
``python -m jaxgen.eval --retrain OUT.msgpack``), and features are computed on one CPU device
with one fixed batch shape (:func:`extract`), so they depend neither on the device count, nor on
the mesh, nor on the accelerator.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.train.optim import OptimConfig, make_optimizer
from jaxgen.train.state import create_state
from jaxgen.train.step import make_train_step

NET_VERSION = 1            # version of the shipped weights (part of the file name)
MIN_TEST_ACCURACY = 0.985  # shipped (and retrained) weights must reach this on the test digits
EXTRACT_BATCH = 250  # fixed batch of feature extraction: the last batch is zero-padded
DATASETS = ("mnist_embedded",)


@dataclasses.dataclass(frozen=True)
class FeatureNetConfig:
    """Architecture and training recipe of the feature network. The shipped weights were trained
    with the defaults; changing any of them means new weights and a new :data:`NET_VERSION`."""

    channels: tuple[int, ...] = (16, 32, 64)  # conv widths at 28x28, 14x14 and 7x7
    features: int = 128        # width of the penultimate layer: the metrics' feature space
    num_classes: int = 10
    epochs: int = 16
    batch_size: int = 100
    lr: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 1e-4
    dropout: float = 0.25      # on the penultimate ReLU outputs while training
    max_shift: float = 2.0     # augmentation: translations of up to this many pixels,
    max_rotation: float = 0.15  # rotations of up to this many radians (about 9 degrees),
    max_scale: float = 0.1     # and scalings by 1 +- this
    seed: int = 0              # init, dropout, augmentation and batch order


def _max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, of non-negative ``x`` [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].

    Odd edges are zero-padded (a no-op for max over ReLU outputs). Written as reshape + max,
    whose gradient XLA:CPU runs about twice as fast as the select-and-scatter of ``nn.max_pool``.
    """
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


class LeNet(nn.Module):
    """LeNet-style classifier (LeCun et al. 1998): three 3x3 conv + 2x2 max-pool stages, then a
    128-d hidden layer and the class logits.

    ``__call__(x)`` with ``x``: float32 [B, 28, 28, 1] in [0, 1] returns ``(features [B, F],
    logits [B, num_classes])``, ``features`` being the penultimate layer *before* its ReLU.
    Pre-activations keep the directions ReLU zeroes: after it, noise and blurred digits collapse
    onto a small cluster that a few outlying real digits' k-NN balls cover (precision 0.96 for
    uniform noise against 0.88 for real digits); before it they lie apart (0.03).
    """

    channels: tuple[int, ...] = (16, 32, 64)
    features: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, dropout_rng: jax.Array | None = None,
                 dropout: float = 0.0) -> tuple[jax.Array, jax.Array]:
        x = x - 0.5
        for i, c in enumerate(self.channels):  # 28x28 -> 14x14 -> 7x7 -> 4x4
            x = _max_pool2(nn.relu(nn.Conv(c, (3, 3), name=f"conv{i + 1}")(x)))
        x = x.reshape(x.shape[0], -1)
        a = nn.Dense(self.features, name="hidden")(x)
        h = nn.relu(a)
        if dropout_rng is not None and dropout > 0:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout), 0.0)
        return a, nn.Dense(self.num_classes, name="head")(h)


@dataclasses.dataclass(frozen=True)
class FeatureNet:
    """A trained feature network: parameters plus what it was trained on and how well it does.

    ``sha256`` is the checksum of the weights file it was read from (its identity: equal
    checksums, equal features).
    """

    params: Any
    config: FeatureNetConfig
    dataset: str
    test_accuracy: float
    sha256: str

    def apply(self, images: np.ndarray, batch_size: int = EXTRACT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """``images`` float [N, 28, 28, 1] in [0, 1] -> (features float32 [N, F], logits [N, C])."""
        return extract(self.params, images, self.config, batch_size)


def augment(images: jax.Array, rng: jax.Array, cfg: FeatureNetConfig) -> jax.Array:
    """Random affine jitter of each image [B, H, W, 1]: rotation, scaling and translation drawn
    uniformly within the config's bounds, bilinear resampling, zeros outside (the distortions
    of Simard et al. 2003, without the elastic part)."""
    b, h, w, _ = images.shape
    k_rot, k_scale, k_shift = jax.random.split(rng, 3)
    angle = jax.random.uniform(k_rot, (b,), minval=-cfg.max_rotation, maxval=cfg.max_rotation)
    scale = jax.random.uniform(k_scale, (b,), minval=1 - cfg.max_scale, maxval=1 + cfg.max_scale)
    shift = jax.random.uniform(k_shift, (b, 2), minval=-cfg.max_shift, maxval=cfg.max_shift)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx, indexing="ij")

    def one(img, a, s, t):  # output pixel -> source coordinate (the inverse map)
        c, si = jnp.cos(a) / s, jnp.sin(a) / s
        src_y = c * yy - si * xx + cy - t[0]
        src_x = si * yy + c * xx + cx - t[1]
        out = jax.scipy.ndimage.map_coordinates(img[..., 0], [src_y, src_x], order=1,
                                                mode="constant")
        return out[..., None]

    return jax.vmap(one)(images, angle, scale, shift)


def _make_loss_fn(cfg: FeatureNetConfig):
    model = LeNet(cfg.channels, cfg.features, cfg.num_classes)

    def loss_fn(params, batch, rng, step):
        del step
        aug_rng, drop_rng = jax.random.split(rng)
        x = augment(batch["image"], aug_rng, cfg)
        _, logits = model.apply({"params": params}, x, dropout_rng=drop_rng, dropout=cfg.dropout)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        acc = (logits.argmax(-1) == batch["label"]).mean()
        return loss, {"accuracy": acc}

    return loss_fn


@functools.lru_cache(maxsize=4)
def _optimizer_and_step(cfg: FeatureNetConfig, total_steps: int):
    """The Optax chain and the jitted train step (seed-free: runs differing only in their seed
    share one compilation)."""
    tx = make_optimizer(OptimConfig(name="adamw", lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                                    end_lr_factor=0.01, weight_decay=cfg.weight_decay),
                        total_steps)
    return tx, jax.jit(make_train_step(_make_loss_fn(cfg), tx), donate_argnums=0)


def train_feature_net(images: np.ndarray, labels: np.ndarray,
                      cfg: FeatureNetConfig = FeatureNetConfig()) -> Any:
    """Trains :class:`LeNet` with jaxgen's train step (AdamW, warmup + cosine; Loshchilov & Hutter
    2017, 2019) and returns its parameters.

    Args:
      images: float32 [N, 28, 28, 1] in [0, 1]; labels: int [N].
      cfg: the recipe; ``cfg.seed`` fixes init, augmentation, dropout and the batch order.
    """
    n = len(images) - len(images) % cfg.batch_size
    steps_per_epoch = n // cfg.batch_size
    tx, step = _optimizer_and_step(dataclasses.replace(cfg, seed=0), cfg.epochs * steps_per_epoch)
    init_key, state_key = jax.random.split(jax.random.key(cfg.seed))
    model = LeNet(cfg.channels, cfg.features, cfg.num_classes)
    params = model.init(init_key, jnp.zeros((1, *images.shape[1:]), jnp.float32))["params"]
    state = create_state(params, tx, jax.random.key_data(state_key))
    order_rng = np.random.default_rng(cfg.seed)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    for _ in range(cfg.epochs):
        perm = order_rng.permutation(len(images))[:n].reshape(steps_per_epoch, cfg.batch_size)
        for idx in perm:
            state, _ = step(state, {"image": images[idx], "label": labels[idx]})
    return jax.device_get(state.params)


# ------------------------------------------------------------------------------------ extraction
def extraction_device() -> jax.Device:
    """The device features are computed on: this process's first CPU device, whatever the
    default backend, the device count or the mesh (a fixed device and batch shape give the
    same features everywhere; the network is small enough that a CPU computes 1,000 images'
    features in well under a second). Falls back to the first local device when JAX was
    started without its CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


@functools.partial(jax.jit, static_argnums=(2,))
def _apply_batch(params: Any, x: jax.Array, cfg: FeatureNetConfig) -> tuple[jax.Array, jax.Array]:
    return LeNet(cfg.channels, cfg.features, cfg.num_classes).apply({"params": params}, x)


def extract(params: Any, images: np.ndarray, cfg: FeatureNetConfig = FeatureNetConfig(),
            batch_size: int = EXTRACT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Features (penultimate pre-activations) and logits of ``images``, in batches of exactly
    ``batch_size`` on :func:`extraction_device`.

    Args:
      params: the network's parameters (host arrays).
      images: float [N, 28, 28, 1] in [0, 1].
    Returns:
      (features float32 [N, cfg.features], logits float32 [N, cfg.num_classes]). Every call runs
      the same compiled batch shape on the same single device (the last batch is zero-padded),
      so a row's result depends neither on N, nor on the rows around it, nor on how many devices
      the process has or which mesh is active.
    """
    images = np.asarray(images, np.float32)
    dev = extraction_device()
    feats, logits = [], []
    # A one-device mesh of its own (a caller's mesh context would otherwise claim the jit) and
    # full f32 matmuls wherever the device is (no TF32).
    with (jax.set_mesh(jax.sharding.Mesh(np.array([dev]), ("extract",))),
          jax.default_matmul_precision("float32")):
        params = jax.device_put(params, dev)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            f, lg = jax.device_get(_apply_batch(params, jax.device_put(chunk, dev), cfg))
            feats.append(f[:batch_size - pad])
            logits.append(lg[:batch_size - pad])
    if not feats:
        return (np.zeros((0, cfg.features), np.float32), np.zeros((0, cfg.num_classes), np.float32))
    return np.concatenate(feats), np.concatenate(logits)


@functools.lru_cache(maxsize=2)
def load_dataset(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), images float32 [N, 28, 28, 1] in
    [0, 1]; read once per process, returned read-only."""
    if dataset != "mnist_embedded":
        raise ValueError(f"unknown reference dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    from jaxgen.data.images import mnist_embedded

    s = mnist_embedded()
    out = (s.train_images.astype(np.float32) / s.scale, s.train_labels,
           s.eval_images.astype(np.float32) / s.scale, s.eval_labels)
    for a in out:
        a.flags.writeable = False
    return out


def test_accuracy(params: Any, dataset: str = "mnist_embedded",
                  cfg: FeatureNetConfig = FeatureNetConfig()) -> float:
    """Top-1 accuracy of the network on the dataset's test digits (1,000 for the embedded MNIST)."""
    _, _, x_te, y_te = load_dataset(dataset)
    _, logits = extract(params, x_te, cfg)
    return float((logits.argmax(-1) == y_te).mean())


test_accuracy.__test__ = False  # not a pytest test, whatever its name
