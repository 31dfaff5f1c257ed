"""The one registry of model families. Look families up by name only here, at the edges.

A name is a key of :data:`FAMILIES` or, for research code's own families, ``"module:Class"``
(an importable :class:`~jaxgen.models.base.Family` subclass), so a workdir of any family can
be loaded, evaluated and sampled from by the CLI.
"""
from __future__ import annotations

import importlib
from typing import Any

from jaxgen.errors import UsageError
from jaxgen.models.base import Family

# name -> "module:Class" of its Family subclass
FAMILIES = {
    "vae": "jaxgen.models.vae.family:VAEFamily",
    "gan": "jaxgen.models.gan.family:GANFamily",
    "lm": "jaxgen.models.lm.family:LMFamily",
    "diffusion": "jaxgen.models.diffusion.family:DiffusionFamily",
    "autoencoder": "jaxgen.models.autoencoder.family:AutoencoderFamily",
}


def family_class(name: str) -> type[Family]:
    """The Family subclass of a registered name or of a ``"module:Class"`` path."""
    target = FAMILIES.get(name, name)
    module, sep, attr = target.partition(":")
    if not sep:
        raise UsageError(f"unknown model family {name!r}; available: "
                         f"{', '.join(sorted(FAMILIES))} (or 'module:Class')")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"model family {name!r} cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise UsageError(f"model family {name!r} is not a jaxgen.models.base.Family subclass")
    return cls


def make_family(config: Any, data_info: dict) -> Family:
    """Builds the family named by ``config.family`` for this experiment and its data."""
    return family_class(config.family)(config, data_info)


__all__ = ["FAMILIES", "Family", "family_class", "make_family"]
