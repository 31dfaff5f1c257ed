"""Finding experiment recipes, applying ``--set key=value`` overrides, reading a workdir's.

A recipe is a Python file ``<name>.py`` with ``get_config(variant) -> Experiment`` (a family's
settings dataclass, see :mod:`jaxgen.config`) and a ``VARIANTS`` tuple; its ``WHY`` dict names
the settings its default variant changes from the library's defaults, and why (``jaxgen
config`` prints the reason beside the value). Recipes are looked up, in order, in
``$JAXGEN_EXPERIMENTS`` (a path list), ``./experiments`` and the ``experiments/`` folder of the
jaxgen source checkout; a path to a ``.py`` file also works.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
from typing import Any, Sequence

from jaxgen import settings
from jaxgen.config import Experiment
from jaxgen.errors import UsageError

_REPO_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "experiments")


def search_path() -> list[str]:
    paths = [p for p in os.environ.get("JAXGEN_EXPERIMENTS", "").split(os.pathsep) if p]
    paths += [os.path.join(os.getcwd(), "experiments"), _REPO_EXPERIMENTS]
    seen, out = set(), []
    for p in paths:
        p = os.path.abspath(p)
        if p not in seen and os.path.isdir(p):
            seen.add(p)
            out.append(p)
    return out


def available() -> list[str]:
    names = set()
    for d in search_path():
        names.update(f[:-3] for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_"))
    return sorted(names)


def _find(name: str) -> str:
    if name.endswith(".py"):
        if os.path.isfile(name):
            return name
        raise ValueError(f"experiment file {name} does not exist")
    for d in search_path():
        path = os.path.join(d, name + ".py")
        if os.path.isfile(path):
            return path
    known = available()
    hint = difflib.get_close_matches(name, known, n=1)
    raise ValueError(f"unknown experiment {name!r}"
                     + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + f"; available: {', '.join(known) or 'none found'}")


def load_recipe(name: str) -> Any:
    path = _find(name)
    spec = importlib.util.spec_from_file_location(f"jaxgen_experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise ValueError(f"experiment file {path} has no get_config(variant) function")
    return module


def variant_descriptions(module: Any) -> dict[str, str]:
    """{variant: one-line description} of a recipe module.

    From its ``DESCRIPTIONS`` dict when it has one, else from the ``Variants:`` block of its
    docstring (lines ``  name   text``); a variant with neither gets the docstring's first line.
    """
    variants = tuple(getattr(module, "VARIANTS", ("default",)))
    found = dict(getattr(module, "DESCRIPTIONS", {}))
    doc = (module.__doc__ or "").strip()
    lines = doc.splitlines()
    if "Variants:" in lines:
        current = None
        for line in lines[lines.index("Variants:") + 1:]:
            parts = line.split(None, 1)
            if line.startswith("  ") and not line.startswith("   ") and parts and parts[0] in variants:
                current = parts[0] if parts[0] not in found else None
                if current:
                    found[current] = parts[1].strip() if len(parts) > 1 else ""
            elif current and line.startswith("   ") and line.strip():
                found[current] += " " + line.strip()  # a continuation line
            else:
                current = None
    headline = lines[0] if lines else ""
    return {v: found.get(v) or headline for v in variants}


def describe_all() -> list[tuple[str, str, str]]:
    """(experiment, variant, description) of every recipe on the search path."""
    rows = []
    for name in available():
        try:
            module = load_recipe(name)
        except Exception as e:  # noqa: BLE001 - a broken recipe is listed with its error
            rows.append((name, "?", f"cannot be loaded: {str(e).splitlines()[0] if str(e) else e}"))
            continue
        rows += [(name, v, d) for v, d in variant_descriptions(module).items()]
    return rows


def get_config(spec: str) -> Experiment:
    """``"name[:variant]"`` -> the recipe's settings, with ``experiment`` filled in."""
    name, _, variant = spec.partition(":")
    module = load_recipe(name)
    variants = tuple(getattr(module, "VARIANTS", ("default",)))
    variant = variant or variants[0]
    if variant not in variants:
        raise ValueError(f"experiment {name!r} has no variant {variant!r}; "
                         f"variants: {', '.join(variants)}")
    config = module.get_config(variant)
    if not isinstance(config, Experiment):
        raise UsageError(f"experiment {name!r}: get_config must return a jaxgen.config."
                         f"Experiment (a family's settings), got {type(config).__name__}")
    return dataclasses.replace(config,
                               experiment=f"{os.path.basename(name).removesuffix('.py')}:{variant}")


def apply_overrides(config: Experiment, overrides: Sequence[str]) -> Experiment:
    """``config`` with ``key=value`` strings applied (a new object); a mistake is a one-line
    UsageError (unknown key with "did you mean", a wrong type, a value out of range)."""
    return settings.apply_overrides(config, list(overrides))


def recipe_reasons(spec: str) -> dict[str, str]:
    """{dotted key: why} the recipe of ``spec`` changes that setting (its ``WHY`` dict)."""
    name = spec.partition(":")[0]
    try:
        return dict(getattr(load_recipe(name), "WHY", {}))
    except ValueError:
        return {}


def from_dict(data: dict, *, what: str = "config") -> Experiment:
    """An experiment's settings from their dict (e.g. a workdir's config.json): the family's
    settings class reads it, so every value is checked as ``--set`` checks it."""
    from jaxgen.models import family_class

    if not isinstance(data, dict) or not data.get("family"):
        raise UsageError(f"{what} names no model family")
    return settings.from_dict(family_class(data["family"]).settings, data, what=what)


CONFIG_FILE = "config.json"


def load_config(workdir: str) -> Experiment:
    """The settings a workdir was trained with."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UsageError(f"{workdir} is not a jaxgen workdir (no {CONFIG_FILE}); train into it "
                         "first")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} cannot be read ({e})") from None
    return from_dict(data, what=path)


format_value = settings.format_value
flat_items = settings.flat_items
