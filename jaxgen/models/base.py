"""The one interface every model family implements: :class:`Family`.

A family is a plain object built from its experiment settings and the data's info,
``Family(config, data_info)``, whose methods are the pure functions the trainer jits. The
training loop, the CLI and the benchmarks only ever talk to a :class:`Family`; they never branch
on which family it is. Research code passes its own subclass (or instance) to
``jaxgen.train.loop.train``.

Contract (shapes for a global batch of B examples):
  init_state(rng, sample_batch) -> TrainState
      ``sample_batch`` is one batch as the data pipeline yields it (numpy, leading dim B); the
      family reads shapes from it, never values that would make init data-dependent.
  train_step(state, batch) -> (state, metrics)
      pure, jitted by the loop with shardings and ``donate_argnums=0``; metrics are scalars.
      Built from the pieces of :mod:`jaxgen.train.step` (one loss: ``make_train_step``; a GAN
      composes ``loss_and_grads``, ``apply_gradients`` and ``ema_update`` itself).
  eval_step(state, batch) -> metrics  (None for families with no likelihood)
      pure; returns *sums* over the valid examples of the batch (``batch["mask"]`` is 1 for
      real examples, 0 for padding) plus ``"count"``; the loop sums and divides.
  sample(state, rng, n, options) -> samples
      pure and jittable with ``n`` and ``options`` static; returns an array (images in [0, 1],
      [n, H, W, C]; or tokens [n, T]). ``options`` is what ``sample_options`` returned.
  sample_options(**overrides) -> options
      the experiment's ``sample`` settings with ``overrides`` applied and validated (a frozen,
      hashable dataclass); a bad value is a one-line ``UsageError``. This is how sampler
      settings change at sampling time without rebuilding the family.
  save_samples(samples, path, scale=1) -> list[str]
      host side: writes what ``sample`` produced (PNG grid enlarged ``scale`` times, text, .npz)
      and returns the files.
  final_eval(state, batches) -> dict  (None when there is none)
      host-driven, expensive evaluation run by ``jaxgen eval`` (e.g. the IWAE bound, k=5000).
  visualize(state, rng, batch, path_prefix) -> list[str]  (None when there is none)
      extra figures (reconstructions, interpolations), written by ``jaxgen sample`` and at eval.
  param_specs(abstract_params, mesh) -> PartitionSpecs of the parameters, from the logical axis
      names every parameter carries (:mod:`jaxgen.nn.partitioning`).
  sample_kind: "image" (sample-quality metrics apply), "text" or "array".
  sample_eval_variants: {name: sample_options overrides} scored by sample-based evaluation;
      "" is the default (reported at the top level), others are nested under their name
      (e.g. the GAN's {"": EMA generator, "raw": raw generator}).
  learning_rates(step) -> {name: rate} scheduled at train step ``step`` (host side; the loop
      logs them with the step's metrics as ``lr``, or ``lr_gen``/``lr_disc`` for the GAN).
  ema_of(params) -> the subtree ``state.ema_params`` tracks (all params by default; the GAN's
      generator only).
"""
from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Hashable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import settings
from jaxgen.config import Experiment
from jaxgen.errors import UsageError
from jaxgen.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, Any]
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a PRNG key's shape: no computation


class Family:
    """A model family bound to one experiment (see the module docstring for the contract).

    Subclasses set ``name`` and ``settings`` (the :class:`jaxgen.config.Experiment` subclass
    they read) and implement ``init_state``, ``train_step`` and ``sample``; ``eval_step``,
    ``final_eval`` and ``visualize`` are optional (None: not offered).
    """

    name: ClassVar[str] = ""
    settings: ClassVar[type] = Experiment
    sample_suffix: ClassVar[str] = ".png"      # what save_samples writes by default
    sample_kind: ClassVar[str] = "image"
    sample_eval_variants: Mapping[str, Mapping[str, Any]] = {"": {}}
    eval_step: Optional[Callable[[TrainState, Batch], Metrics]] = None
    final_eval: Optional[Callable[..., dict]] = None
    visualize: Optional[Callable[..., list]] = None

    def __init__(self, config: Experiment, data_info: dict):
        from jaxgen.nn.precision import check_trainable

        check_trainable(config.model)  # the one precision policy (jaxgen.nn.precision)
        self.config = config
        self.data_info = dict(data_info)

    # ------------------------------------------------------------------ what subclasses add
    def init_state(self, rng: jax.Array, sample_batch: Batch) -> TrainState:
        raise NotImplementedError

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        raise NotImplementedError

    def sample(self, state: TrainState, rng: jax.Array, n: int, options: Hashable = None):
        raise NotImplementedError

    def prepare_datasets(self, datasets: Any) -> Any:
        """The datasets the run trains on, given those of ``config.data`` (a
        :class:`jaxgen.data.pipeline.Datasets`); called once by the trainer after the family is
        built. The default keeps them; a family may precompute per-example features
        (``Datasets.with_train_features``), as latent diffusion's ``latent.cache`` does."""
        return datasets

    def init_params(self, rng: jax.Array) -> Any:
        """The parameters as ``init`` returns them, logical-axis boxes included (shapes only
        are needed: :meth:`param_specs` calls it under ``jax.eval_shape``). Families that
        override it get rule-based sharding of every parameter."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared defaults
    def learning_rates(self, step: int) -> dict[str, float]:
        """The scheduled learning rates at train step ``step`` (none by default)."""
        return {}

    def check_sample_options(self, options: Any) -> Any:
        """Validation of sample options against the model (a label out of range, ...)."""
        return options

    def sample_options(self, **overrides: Any) -> Hashable:
        """The experiment's ``sample`` settings with ``overrides`` applied (validated)."""
        base = self.config.sample
        if overrides:
            known = {f for f in getattr(base, "__dataclass_fields__", {})}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise UsageError(f"unknown sample option(s) {', '.join(unknown)}; this "
                                 f"{self.name or 'model'}'s sampler takes "
                                 f"{', '.join(sorted(known)) or 'no options'}")
            base = settings.replace(base, **overrides)
        return self.check_sample_options(base)

    def save_samples(self, samples: Any, path: str, scale: int = 1) -> list[str]:
        """PNG grid (images, enlarged ``scale`` times) or .npz (``path`` ending in .npz, key
        ``images``/``samples``, the values themselves)."""
        from jaxgen.train.images import save_image_grid

        if path.endswith(".npz"):
            return [save_npz(path, samples, "images" if self.sample_kind == "image" else
                             "samples")]
        return [save_image_grid(np.asarray(samples), path, ncols=self.grid_columns(len(samples)),
                                scale=scale)]

    def grid_columns(self, n: int) -> Optional[int]:
        """Columns of a sample grid (None: square)."""
        return None

    def ema_of(self, params: Any) -> Any:
        return params

    def model_flops(self, batch_size: int) -> Optional[float]:
        """The model's FLOPs in one training step of ``batch_size`` examples (forward and
        backward, all chips), for MFU; None when the family does not count them."""
        return None

    def logical_axes(self) -> Optional[Any]:
        """The parameters' logical axis names (a tree of PartitionSpecs, shapes only), or None
        when the family gives no :meth:`init_params`."""
        import flax.linen as nn

        try:
            return nn.get_partition_spec(_abstract_init(self))
        except NotImplementedError:
            return None

    def param_specs(self, abstract_params: Any, mesh: Any, rules: Any = None) -> Optional[Any]:
        """PartitionSpecs of the (unboxed) parameters from their logical axes (under ``rules``,
        default :data:`jaxgen.nn.partitioning.RULES`), on a mesh or an abstract mesh; None when
        the family gives no :meth:`init_params` (the trainer then falls back to a size rule)."""
        from jaxgen.nn import partitioning

        try:
            boxed = _abstract_init(self)
        except NotImplementedError:
            return None
        return partitioning.mesh_specs(boxed, mesh, partitioning.RULES if rules is None else rules)

    def gathered_over_fsdp(self, params: Any) -> Any:
        """``params`` constrained to their layout without the "fsdp" mesh axis, on the mesh the
        caller is traced under: for a sampler's loop (one all-gather per weight before it, none
        per iteration). Unchanged without a mesh, with ``mesh.fsdp`` = 1, or for a family
        without logical axes."""
        from jaxgen.nn import partitioning

        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or dict(mesh.shape).get("fsdp", 1) == 1:
            return params
        specs = self.param_specs(params, mesh, partitioning.rules_without("fsdp"))
        return params if specs is None else jax.lax.with_sharding_constraint(params, specs)


class LossFamily(Family):
    """A family trained by one loss (the VAE, the LM, the diffusion model): a subclass gives
    :meth:`init_params` and :meth:`loss_fn`; the optimizer (``config.optim`` over
    ``config.train.steps`` updates), the EMA (``config.train.ema_decay``) and the one-loss step
    of :func:`jaxgen.train.step.make_train_step` come from here."""

    def __init__(self, config: Experiment, data_info: dict):
        super().__init__(config, data_info)
        from jaxgen.train.optim import make_optimizer
        from jaxgen.train.step import EMAConfig, make_train_step

        self.tx = make_optimizer(config.optim, config.train.steps, self.logical_axes())
        self.ema = EMAConfig.from_train(config.train)
        self._step = make_train_step(self.loss_fn, self.tx, grad_accum=config.optim.grad_accum,
                                     ema=self.ema, ema_of=self.ema_of)

    def learning_rates(self, step: int) -> dict[str, float]:
        """``{"lr": rate}`` of ``config.optim``'s schedule at update ``step``."""
        from jaxgen.train.optim import learning_rates

        return learning_rates(self.config.optim, self.config.train.steps, step)

    def loss_fn(self, params: Any, batch: Batch, rng: jax.Array, step: jax.Array
                ) -> tuple[jax.Array, Metrics]:
        """(mean loss over the batch, metrics) of ``params`` on ``batch``."""
        raise NotImplementedError

    def init_state(self, rng: jax.Array, sample_batch: Batch) -> TrainState:
        """Step-0 state: parameters from one half of ``rng``, the steps' keys from the other."""
        import flax.linen as nn

        from jaxgen.train.state import create_state

        k_params, k_steps = jax.random.split(rng)
        params = nn.meta.unbox(self.init_params(k_params))
        return create_state(params, self.tx, k_steps, ema=self.ema is not None)

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        """One optimizer update of :meth:`loss_fn` (see ``make_train_step``)."""
        return self._step(state, batch)


def _abstract_init(family: Family) -> Any:
    """The boxed parameters of ``family.init_params`` as shapes: no computation, and no
    attention-kernel log lines (a shape-only trace, maybe off the mesh the model runs on)."""
    from jaxgen.nn.kernels import dispatch

    with dispatch.silent():
        return jax.eval_shape(family.init_params, ABSTRACT_KEY)


def sampling_params(state: TrainState, weights: str = "ema") -> Any:
    """The weights sampling and evaluation use: the EMA when asked for and kept, else raw."""
    return state.ema_params if weights == "ema" and state.ema_params is not None else state.params


def image_data(family: str, data_info: dict) -> tuple[tuple[int, ...], int]:
    """(image shape (H, W, C), number of classes) of image data; UsageError otherwise."""
    if data_info.get("kind", "image") != "image" or "shape" not in data_info:
        raise UsageError(f"the {family} family needs image data with a 'shape', got kind "
                         f"{data_info.get('kind')!r}")
    return tuple(int(s) for s in data_info["shape"]), int(data_info.get("num_classes", 0) or 0)


def valid_images(batch: dict) -> np.ndarray:
    """The batch's images [n, H, W, C] (host float32) without its padding (``batch["mask"]``
    0), or all of them when the batch has no mask (a training batch)."""
    x = np.asarray(batch["image"], np.float32)
    if "mask" in batch:
        x = x[np.asarray(batch["mask"]) > 0]
    return x


def sample_labels(num_classes: int, label: int, n: int) -> Optional[jax.Array]:
    """Labels [n] of ``n`` samples: None (unconditional), ``label``, or i mod C when -1."""
    if num_classes == 0:
        return None
    if label >= 0:
        return jnp.full((n,), label, jnp.int32)
    return jnp.arange(n, dtype=jnp.int32) % num_classes


def check_label(num_classes: int, label: int) -> None:
    """UsageError unless ``label`` is -1 or a class of a conditional model."""
    if num_classes == 0 and label != -1:
        raise UsageError(f"sample.label={label}: this model is unconditional (no class labels)")
    if num_classes and not -1 <= label < num_classes:
        raise UsageError(f"sample.label={label} is out of range: classes are "
                         f"0..{num_classes - 1} (-1 cycles through all)")


def save_npz(path: str, samples: Any, key: str) -> str:
    """Writes samples to an .npz file atomically; returns ``path``."""
    import io

    from jaxgen.train.workdir import write_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{key: np.asarray(samples)})
    write_atomic(path, buf.getvalue())
    return path
