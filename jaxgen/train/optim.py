"""Optimizers built on Optax from a small typed config.

AdamW (Loshchilov & Hutter 2019) or Adam (Kingma & Ba 2015), linear warmup then cosine decay
(Loshchilov & Hutter 2017) or a constant rate, global-norm clipping (Pascanu et al. 2013).
Gradient accumulation lives in :mod:`jaxgen.train.step` (one compiled step over micro-batches).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer hyper-parameters (hashable, safe to close over in jitted code)."""

    name: str = "adamw"          # adamw | adam | muon
    lr: float = 1e-3
    schedule: str = "cosine"     # cosine | constant
    warmup_steps: int = 0
    total_steps: int = 1000      # length of the cosine decay, warmup included
    end_lr_factor: float = 0.1   # cosine ends at lr * end_lr_factor
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0       # 0 disables global-norm clipping
    grad_accum: int = 1          # micro-batches per update (see train.step)
    adam_lr: float = 1e-3        # muon only: peak rate of the AdamW part (non-matrix params)
    muon_exclude: tuple[str, ...] = ("embedding", "head")  # muon only: matrices left to AdamW
    muon_ns_steps: int = 5       # muon only: Newton-Schulz iterations per update

    @classmethod
    def from_config(cls, cfg: Any) -> "OptimConfig":
        """Builds from a ConfigDict/dict, ignoring keys this dataclass does not have."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        d = {k: v for k, v in d.items() if k in names}
        if "muon_exclude" in d:
            v = d["muon_exclude"]
            d["muon_exclude"] = tuple(x for x in v.split(",") if x) if isinstance(v, str) else tuple(v)
        return cls(**d)


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Learning rate as a function of the update count."""
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
            decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
            end_value=cfg.lr * cfg.end_lr_factor,
        )
    raise ValueError(f"unknown learning-rate schedule {cfg.schedule!r} (use 'cosine' or 'constant')")


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices and kernels only, not on biases, norms' scales or scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def muon_dimension_numbers(params: Any, exclude: tuple[str, ...]) -> Any:
    """Which parameters Muon updates: every matrix (input axis 0, output axis 1) whose path has
    no key named in ``exclude``; None (AdamW) for the rest. As in modded-nanogpt (Jordan et al.
    2024), the embedding and the output head stay with AdamW: they are lookup tables and a
    classifier, not linear maps between hidden states."""
    def rule(path, p):
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path}
        if getattr(p, "ndim", 0) == 2 and not names.intersection(exclude):
            return optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
        return None
    return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The full Optax chain: clipping, then the optimizer with its schedule."""
    sched = make_schedule(cfg)
    if cfg.name == "adamw":
        opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay, mask=_decay_mask)
    elif cfg.name == "adam":
        opt = optax.adam(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "muon":
        # Muon (Jordan et al. 2024) on matrices, AdamW on the rest; as in modded-nanogpt.
        # Adam gets its own schedule (Muon's ~0.02 would blow Adam up) and the same decay.
        adam_sched = make_schedule(dataclasses.replace(cfg, lr=cfg.adam_lr))
        opt = optax.contrib.muon(sched, ns_steps=cfg.muon_ns_steps, adam_b1=cfg.b1,
                                 adam_b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 weight_decay_mask=_decay_mask,
                                 adam_learning_rate=adam_sched, adam_weight_decay=cfg.weight_decay,
                                 muon_weight_dimension_numbers=lambda p: muon_dimension_numbers(
                                     p, cfg.muon_exclude))
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r} (use 'adamw', 'adam' or 'muon')")
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(opt)
    return optax.chain(*parts)


ScheduleFn = Callable[[int], float]
