"""Typed, hashable settings of the diffusion family, read from an experiment's ConfigDict.

``DiffusionHParams`` gathers what training needs (backbone, objective); ``SampleOptions`` what
sampling needs (sampler, steps, guidance, label, weights): the family's ``sample_options``
builds it from the experiment's ``sample`` config with overrides, so sampler settings change at
sampling time without rebuilding the family. Invalid values raise a one-line ``UsageError``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

from jaxgen.errors import UsageError
from jaxgen.models.diffusion import samplers as samplers_lib
from jaxgen.models.diffusion import schedules as sch
from jaxgen.models.diffusion.objectives import PARAMETERIZATIONS, DiffusionConfig
from jaxgen.nn.dit import DiTConfig
from jaxgen.nn.layers import dtype_of
from jaxgen.nn.unet import UNetConfig

BACKBONES = ("unet", "dit")
WEIGHTS = ("ema", "raw")


def _usage(fn, *args, **kw):
    """Calls a config constructor, turning its ValueError into a one-line UsageError."""
    try:
        return fn(*args, **kw)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(str(e).splitlines()[0]) from e


def backbone_config(m: Any, num_classes: int, channels: int) -> Union[UNetConfig, DiTConfig]:
    """The UNet or DiT config of ``config.model`` (``m``) for images with ``channels`` channels."""
    name = str(m.backbone)
    if name not in BACKBONES:
        raise UsageError(f"unknown model.backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    dtype = _usage(dtype_of, str(m.get("dtype", "float32")))
    if name == "unet":
        levels = tuple(bool(a) for a in m.attention_levels)
        if len(levels) != len(m.block_channels):
            raise UsageError(f"model.attention_levels has {len(levels)} entries for "
                             f"{len(m.block_channels)} model.block_channels")
        return _usage(UNetConfig, block_channels=tuple(int(c) for c in m.block_channels),
                      layers_per_block=int(m.layers_per_block), attention_levels=levels,
                      mid_attention=bool(m.get("mid_attention", True)),
                      head_dim=int(m.get("head_dim", 8)), num_heads=int(m.get("num_heads", 0)),
                      dropout=float(m.get("dropout", 0.0)), num_classes=num_classes,
                      norm_groups=int(m.get("norm_groups", 32)),
                      scale_shift=bool(m.get("scale_shift", False)),
                      resblock_updown=bool(m.get("resblock_updown", False)),
                      out_channels=channels, attention_kernel=str(m.get("attention_kernel", "auto")),
                      dtype=dtype)
    return _usage(DiTConfig, patch_size=int(m.patch_size), hidden=int(m.hidden),
                  depth=int(m.depth), num_heads=int(m.dit_heads), mlp_ratio=float(m.get("mlp_ratio", 4.0)),
                  num_classes=num_classes, out_channels=channels,
                  attention_kernel=str(m.get("attention_kernel", "auto")), dtype=dtype)


def diffusion_config(d: Any, num_classes: int) -> DiffusionConfig:
    """The objective of ``config.diffusion`` (``d``); the null label is ``num_classes``."""
    if str(d.parameterization) not in PARAMETERIZATIONS:
        raise UsageError(f"unknown diffusion.parameterization {d.parameterization!r}; choose one "
                         f"of {', '.join(PARAMETERIZATIONS)}")
    schedule = _usage(sch.Schedule, str(d.schedule), int(d.timesteps))
    drop = float(d.get("cond_drop_prob", 0.0)) if num_classes > 0 else 0.0
    return _usage(DiffusionConfig, parameterization=str(d.parameterization), schedule=schedule,
                  x0_weighting=str(d.get("x0_weighting", "snr_trunc")), cond_drop_prob=drop,
                  null_label=num_classes if num_classes > 0 else None,
                  clip_x0=bool(d.get("clip_x0", True)),
                  sample_sigma_max=float(d.get("sample_sigma_max", 80.0)))


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Sampling settings (hashable; static under jit).

    Attributes:
      sampler: the sampler and its settings (name, steps, eta, guidance).
      label: -1 = classes cycled 0, 1, ..., C-1 over the samples (conditional models) or no
        label (unconditional); otherwise the class of every sample.
      weights: "ema" (the EMA of the weights, when the run keeps one) or "raw".
    """

    sampler: samplers_lib.SamplerConfig
    label: int = -1
    weights: str = "ema"


def sample_options(defaults: Any, num_classes: int, **overrides: Any) -> SampleOptions:
    """``SampleOptions`` from the ``sample`` config ``defaults`` with ``overrides`` applied.

    Keys: sampler, steps, eta, guidance, label, weights. Raises UsageError on an unknown key, an
    unknown sampler, steps < 1, a label out of range, or guidance on an unconditional model.
    """
    keys = ("sampler", "steps", "eta", "guidance", "label", "weights")
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise UsageError(f"unknown sample option(s) {', '.join(unknown)}; options: {', '.join(keys)}")
    s = {k: defaults.get(k) for k in keys}
    s.update(overrides)
    sampler = _usage(samplers_lib.SamplerConfig, name=str(s["sampler"]), steps=int(s["steps"]),
                     eta=float(s["eta"] or 0.0), guidance=float(s["guidance"]))
    label = int(s["label"])
    if num_classes == 0:
        if label != -1:
            raise UsageError(f"sample.label={label}: this model is unconditional (no class labels)")
        if sampler.guidance != 1.0:
            raise UsageError(f"sample.guidance={sampler.guidance}: classifier-free guidance needs "
                             "a class-conditional model")
    elif not -1 <= label < num_classes:
        raise UsageError(f"sample.label={label} is out of range: classes are 0..{num_classes - 1} "
                         "(-1 cycles through all)")
    if str(s["weights"]) not in WEIGHTS:
        raise UsageError(f"sample.weights={s['weights']!r}: choose one of {', '.join(WEIGHTS)}")
    return SampleOptions(sampler, label, str(s["weights"]))


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Bits per dimension settings: how many test examples and Monte-Carlo timesteps."""

    bpd_examples: int = 200
    bpd_timesteps: int = 50
    seed: int = 0

    @classmethod
    def from_config(cls, e: Optional[Any]) -> "EvalSettings":
        e = e or {}
        out = cls(int(e.get("bpd_examples", 200)), int(e.get("bpd_timesteps", 50)),
                  int(e.get("seed", 0)))
        if out.bpd_examples < 0 or out.bpd_timesteps < 1:
            raise UsageError("eval.bpd_examples must be >= 0 and eval.bpd_timesteps >= 1")
        return out
