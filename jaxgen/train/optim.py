"""Optimizers built on Optax from a small typed config.

AdamW (Loshchilov & Hutter 2019) or Adam (Kingma & Ba 2015), linear warmup then cosine decay
(Loshchilov & Hutter 2017) or a constant rate, global-norm clipping (Pascanu et al. 2013).
Gradient accumulation lives in :mod:`jaxgen.train.step` (one compiled step over micro-batches).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule (hashable, safe to close over in jit).

    Attributes:
      name: adamw (Loshchilov & Hutter 2019), adam (Kingma & Ba 2015) or muon (Jordan et al.
        2024: Newton-Schulz orthogonalised momentum on matrices, AdamW on the rest).
      lr: the peak learning rate.
      schedule: cosine (linear warm-up, then cosine decay to lr * end_lr_factor over the run)
        or constant (after the warm-up).
      warmup_steps: steps of linear warm-up from 0.
      end_lr_factor: where the cosine decay ends, as a fraction of lr.
      b1, b2, eps: Adam's moment decays and epsilon.
      weight_decay: decoupled weight decay, on matrices and kernels only.
      clip_norm: clip gradients to this global norm (0: no clipping).
      grad_accum: micro-batches per update (one compiled step over them).
      adam_lr: muon only: the peak rate of the AdamW part (non-matrix parameters).
      muon_exclude: muon only: matrices (by key name) left to AdamW.
      muon_ns_steps: muon only: Newton-Schulz iterations per update.
    """

    name: Literal["adamw", "adam", "muon"] = "adamw"
    lr: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    end_lr_factor: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    grad_accum: int = 1
    adam_lr: float = 1e-3
    muon_exclude: tuple[str, ...] = ("embedding", "head")
    muon_ns_steps: int = 5

    def __post_init__(self):
        if not self.lr > 0 or not self.adam_lr > 0:
            raise ValueError(f"optim.lr and optim.adam_lr must be positive, got {self.lr} and "
                             f"{self.adam_lr}")
        if self.warmup_steps < 0 or self.grad_accum < 1 or self.muon_ns_steps < 1:
            raise ValueError("optim.warmup_steps must be >= 0, optim.grad_accum and "
                             "optim.muon_ns_steps >= 1")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0) or self.eps <= 0:
            raise ValueError(f"optim.b1 and optim.b2 must be in [0, 1) and optim.eps positive, "
                             f"got {self.b1}, {self.b2}, {self.eps}")
        if self.weight_decay < 0 or self.clip_norm < 0 or self.end_lr_factor < 0:
            raise ValueError("optim.weight_decay, optim.clip_norm and optim.end_lr_factor must "
                             "be >= 0")


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the update count, for a run of ``total_steps``."""
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
                [cfg.warmup_steps])
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if cfg.warmup_steps else cfg.lr,
            peak_value=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            decay_steps=max(total_steps, cfg.warmup_steps + 1),
            end_value=cfg.lr * cfg.end_lr_factor,
        )
    raise ValueError(f"unknown learning-rate schedule {cfg.schedule!r} (use 'cosine' or 'constant')")


def learning_rates(cfg: OptimConfig, total_steps: int, updates: int, prefix: str = "lr"
                   ) -> dict[str, float]:
    """The scheduled learning rates after ``updates`` optimizer updates of a run of
    ``total_steps``, as the metrics log them: ``{prefix: rate}``, and for Muon also the rate
    of its AdamW part (``adam_<prefix>``). Host-side (the schedules are plain functions)."""
    rates = {prefix: float(make_schedule(cfg, total_steps)(updates))}
    if cfg.name == "muon":
        adam = dataclasses.replace(cfg, lr=cfg.adam_lr)
        rates[f"adam_{prefix}"] = float(make_schedule(adam, total_steps)(updates))
    return rates


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices and kernels only, not on biases, norms' scales or scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def _kernel_axes(axes: tuple) -> Optional[Any]:
    """Muon's (reduction, output) axes of a kernel from its logical axis names: the stacked
    "layers" axis and unnamed inner axes (the q/k/v or gate/up index) are batch axes, so each
    matrix is orthogonalised on its own; a kernel back into the residual stream (last axis
    "embed", e.g. an attention output [heads, kv, embed]) reduces over all its other axes, any
    other kernel over its first (input) axis."""
    named = [i for i, a in enumerate(axes) if a not in (None, "layers")]
    if len(named) < 2:
        return None
    if axes[named[-1]] == "embed":
        return optax.contrib.MuonDimensionNumbers(tuple(named[:-1]), (named[-1],))
    return optax.contrib.MuonDimensionNumbers((named[0],), tuple(named[1:]))


def muon_dimension_numbers(params: Any, exclude: tuple[str, ...],
                           logical_axes: Optional[Any] = None) -> Any:
    """Which parameters Muon updates, and how: None (AdamW) for a leaf whose path has a key
    named in ``exclude``, else its reduction/output axes. As in modded-nanogpt (Jordan et al.
    2024), the embedding and the output head stay with AdamW: they are lookup tables and a
    classifier, not linear maps between hidden states.

    ``logical_axes`` (the parameters' logical axis names, a tree of PartitionSpecs) lets
    multi-axis kernels ([D, heads, kv], [D, 2, F], stacked layers) be split into their matrices
    (:func:`_kernel_axes`); without it every 2-d leaf is one matrix (input axis 0) and the rest
    goes to AdamW."""
    def name_set(path):
        return {str(getattr(k, "key", getattr(k, "name", k))) for k in path}

    if logical_axes is None:
        def rule(path, p):
            if getattr(p, "ndim", 0) == 2 and not name_set(path).intersection(exclude):
                return optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
            return None
        return jax.tree_util.tree_map_with_path(rule, params)

    def rule_named(path, p, axes):
        if name_set(path).intersection(exclude) or getattr(p, "ndim", 0) < 2:
            return None
        axes = tuple(axes) + (None,) * (p.ndim - len(tuple(axes)))
        return _kernel_axes(axes)
    return jax.tree_util.tree_map_with_path(rule_named, params, logical_axes)


def make_optimizer(cfg: OptimConfig, total_steps: int, logical_axes: Optional[Any] = None
                   ) -> optax.GradientTransformation:
    """The full Optax chain: clipping, then the optimizer with its schedule over
    ``total_steps`` updates. ``logical_axes``: the parameters' logical axis names (Muon splits
    multi-axis kernels by them, see :func:`muon_dimension_numbers`)."""
    sched = make_schedule(cfg, total_steps)
    f32 = jnp.float32  # Adam's first moments in float32 whatever the parameters' dtype
    if cfg.name == "adamw":
        opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=f32,
                          weight_decay=cfg.weight_decay, mask=_decay_mask)
    elif cfg.name == "adam":
        opt = optax.adam(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=f32)
    elif cfg.name == "muon":
        # Muon (Jordan et al. 2024) on matrices, AdamW on the rest; as in modded-nanogpt.
        # Adam gets its own schedule (Muon's ~0.02 would blow Adam up) and the same decay.
        adam_sched = make_schedule(dataclasses.replace(cfg, lr=cfg.adam_lr), total_steps)
        opt = optax.contrib.muon(sched, ns_steps=cfg.muon_ns_steps, adam_b1=cfg.b1,
                                 adam_b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 weight_decay_mask=_decay_mask,
                                 adam_learning_rate=adam_sched, adam_weight_decay=cfg.weight_decay,
                                 muon_weight_dimension_numbers=lambda p: muon_dimension_numbers(
                                     p, cfg.muon_exclude, logical_axes))
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r} (use 'adamw', 'adam' or 'muon')")
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(opt)
    return optax.chain(*parts)


ScheduleFn = Callable[[int], float]
