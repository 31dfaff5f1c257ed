"""The one registry of model families. Look families up by name only here, at the edges."""
from __future__ import annotations

import importlib
from typing import Any

from jaxgen.models.base import Family

# name -> module providing make_family(config, data_info) -> Family
FAMILIES = {
    "vae": "jaxgen.models.vae",
    "lm": "jaxgen.models.lm",
    "diffusion": "jaxgen.models.diffusion.family",
    "gan": "jaxgen.models.gan",
}


def make_family(config: Any, data_info: dict) -> Family:
    """Builds the family named by ``config.family`` for this experiment and its data."""
    name = config.family
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; available: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name]).make_family(config, data_info)


__all__ = ["FAMILIES", "Family", "make_family"]
