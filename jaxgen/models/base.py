"""The one interface every model family implements.

A family module exposes ``make_family(config, data_info) -> Family``. The training loop, the CLI
and the benchmarks only ever talk to a :class:`Family`; they never branch on which family it is.

Contract (shapes for a global batch of B examples):
  init_state(rng, sample_batch) -> TrainState
      ``sample_batch`` is one batch as the data pipeline yields it (numpy, leading dim B); the
      family reads shapes from it, never values that would make init data-dependent.
  train_step(state, batch) -> (state, metrics)
      pure, jitted by the loop with shardings and ``donate_argnums=0``; metrics are scalars.
  eval_step(state, batch) -> metrics
      pure; returns *sums* over the valid examples of the batch (``batch["mask"]`` is 1 for
      real examples, 0 for padding) plus ``"count"``; the loop sums and divides.
  sample(state, rng, n) -> samples
      pure and jittable with ``n`` static; returns an array (images in [0, 1], [n, H, W, C];
      or tokens [n, T]).
  save_samples(samples, path) -> list[str]
      host side: writes what ``sample`` produced (PNG grid, text) and returns the files written.
  final_eval(state, batches) -> dict  (optional)
      host-driven, expensive evaluation run by ``jaxgen eval`` (e.g. the IWAE bound with k=5000).
  visualize(state, rng, batch, path_prefix) -> list[str]  (optional)
      extra figures (reconstructions, interpolations), written by ``jaxgen sample`` and at eval.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import jax

from jaxgen.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family bound to one experiment config (see module docstring)."""

    name: str
    init_state: Callable[[jax.Array, Batch], TrainState]
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval_step: Callable[[TrainState, Batch], Metrics]
    sample: Callable[[TrainState, jax.Array, int], Any]
    save_samples: Callable[[Any, str], list[str]]
    final_eval: Optional[Callable[[TrainState, Iterable[Batch]], dict[str, float]]] = None
    visualize: Optional[Callable[[TrainState, jax.Array, Batch, str], list[str]]] = None
    # File suffix of what save_samples writes (".png" grids, ".txt" for text).
    sample_suffix: str = ".png"
    # Optional: PartitionSpecs for params (e.g. from logical axes); None = FSDP heuristic.
    param_specs: Optional[Callable[[Any], Any]] = None
