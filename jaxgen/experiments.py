"""Finding experiment recipes and applying ``--set key=value`` overrides.

A recipe is a Python file ``<name>.py`` with ``get_config(variant) -> ConfigDict`` and a
``VARIANTS`` tuple. Recipes are looked up, in order, in ``$JAXGEN_EXPERIMENTS`` (a path list),
``./experiments`` and the ``experiments/`` folder of the jaxgen source checkout; a path to a
``.py`` file also works.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any

import ml_collections

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


def format_value(value: Any) -> str:
    """The text of a config value that ``--set key=TEXT`` parses back to the same value."""
    if isinstance(value, str):
        import json
        return json.dumps(value)
    return repr(value)


def flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config, in order."""
    items = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            items += flat_items(v, f"{prefix}{k}.")
        else:
            items.append((prefix + k, v))
    return items


def get_config(spec: str) -> ml_collections.ConfigDict:
    """``"name[:variant]"`` -> the recipe's locked config, with ``experiment`` filled in."""
    name, _, variant = spec.partition(":")
    module = load_recipe(name)
    variants = tuple(getattr(module, "VARIANTS", ("default",)))
    variant = variant or variants[0]
    if variant not in variants:
        raise ValueError(f"experiment {name!r} has no variant {variant!r}; "
                         f"variants: {', '.join(variants)}")
    config = module.get_config(variant)
    with config.unlocked():
        config.experiment = f"{os.path.basename(name).removesuffix('.py')}:{variant}"
    config.lock()
    return config


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parses ``text`` to the type of the current value; raises a one-line ValueError."""
    kind = type(current)
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str) or current is None:
            # A JSON-quoted string ("\\n", what `jaxgen config` prints) is unquoted.
            if len(text) >= 2 and text[0] == text[-1] == '"':
                import json
                try:
                    return json.loads(text)
                except ValueError:
                    pass
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                value = (value,)
            return kind(value)
    except (ValueError, SyntaxError):
        pass
    else:
        raise ValueError(f"--set {key}: values of type {kind.__name__} cannot be overridden")
    raise ValueError(f"--set {key}={text}: expected a value of type {kind.__name__} "
                     f"(current value {current!r})")


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``key=value`` strings; unknown keys and wrong types raise one-line ValueErrors."""
    known = _flat_keys(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"--set {key}: unknown config key"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        value = _parse_value(text, node[leaf], key)
        with config.ignore_type():
            node[leaf] = value
    return config
