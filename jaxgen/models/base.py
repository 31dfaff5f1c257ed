"""The one interface every model family implements.

A family module exposes ``make_family(config, data_info) -> Family``. The training loop, the CLI
and the benchmarks only ever talk to a :class:`Family`; they never branch on which family it is.

Contract (shapes for a global batch of B examples):
  init_state(rng, sample_batch) -> TrainState
      ``sample_batch`` is one batch as the data pipeline yields it (numpy, leading dim B); the
      family reads shapes from it, never values that would make init data-dependent.
  train_step(state, batch) -> (state, metrics)
      pure, jitted by the loop with shardings and ``donate_argnums=0``; metrics are scalars.
      Built from the pieces of :mod:`jaxgen.train.step` (one loss: ``make_train_step``; a GAN
      composes ``loss_and_grads``, ``apply_gradients`` and ``ema_update`` itself).
  eval_step(state, batch) -> metrics  (optional: None for families with no likelihood)
      pure; returns *sums* over the valid examples of the batch (``batch["mask"]`` is 1 for
      real examples, 0 for padding) plus ``"count"``; the loop sums and divides.
  sample(state, rng, n, options) -> samples
      pure and jittable with ``n`` and ``options`` static; returns an array (images in [0, 1],
      [n, H, W, C]; or tokens [n, T]). ``options`` is what ``sample_options`` returned.
  sample_options(**overrides) -> options
      a hashable value (a frozen dataclass, or None) holding the sampler settings: the
      experiment's ``sample`` config with ``overrides`` applied (sampler, steps, guidance, label,
      temperature, which weights...). Invalid values raise a one-line ``UsageError``. This is how
      sampler settings change at sampling time without rebuilding the family.
  save_samples(samples, path) -> list[str]
      host side: writes what ``sample`` produced (PNG grid, text) and returns the files written.
  final_eval(state, batches) -> dict  (optional)
      host-driven, expensive evaluation run by ``jaxgen eval`` (e.g. the IWAE bound with k=5000).
  visualize(state, rng, batch, path_prefix) -> list[str]  (optional)
      extra figures (reconstructions, interpolations), written by ``jaxgen sample`` and at eval.
  sample_kind: "image" (sample-quality metrics apply), "text" or "array".
  sample_eval_variants: {name: sample_options overrides} scored by sample-based evaluation;
      "" is the default (reported at the top level), others are nested under their name
      (e.g. the GAN's {"": ema generator, "raw": raw generator}).
  ema_of(params) -> the subtree ``state.ema_params`` tracks (all params by default; the GAN's
      generator only).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional

import jax

from jaxgen.errors import UsageError
from jaxgen.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family bound to one experiment config (see module docstring)."""

    name: str
    init_state: Callable[[jax.Array, Batch], TrainState]
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval_step: Optional[Callable[[TrainState, Batch], Metrics]]
    sample: Callable[[TrainState, jax.Array, int, Hashable], Any]
    save_samples: Callable[[Any, str], list[str]]
    final_eval: Optional[Callable[[TrainState, Iterable[Batch]], dict[str, float]]] = None
    visualize: Optional[Callable[[TrainState, jax.Array, Batch, str], list[str]]] = None
    # File suffix of what save_samples writes (".png" grids, ".txt" for text).
    sample_suffix: str = ".png"
    # Optional: PartitionSpecs for params (e.g. from logical axes); None = FSDP heuristic.
    param_specs: Optional[Callable[[Any], Any]] = None
    sample_options: Callable[..., Hashable] = dataclasses.field(default=None)  # type: ignore[assignment]
    sample_kind: str = "image"
    sample_eval_variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=lambda: {"": {}})
    ema_of: Callable[[Any], Any] = lambda params: params

    def __post_init__(self):
        if self.sample_options is None:
            object.__setattr__(self, "sample_options", no_sample_options)


def no_sample_options(**overrides: Any) -> None:
    """``sample_options`` of a family whose sampler has no settings."""
    if overrides:
        raise UsageError(f"this family's sampler takes no options, got {', '.join(sorted(overrides))}")
    return None
