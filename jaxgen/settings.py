"""Typed settings: frozen dataclasses, validated by pydantic, changed by dotted ``key=value``.

Every setting of jaxgen is defined once, as a field of a frozen dataclass: its type (``Literal``
for a choice), its default, its validation (``__post_init__``) and its description (the
``Attributes:`` section of the class docstring). Recipes build these objects; this module is
the machinery that the CLI (``--set``, ``jaxgen config``), the workdir (``config.json``) and the
Python API share:

  :func:`from_dict`        a (JSON) dict -> the dataclass, types checked and coerced (pydantic);
  :func:`to_dict`          the dataclass -> a JSON-able dict;
  :func:`apply_overrides`  ``["model.dtype=bfloat16", ...]`` -> a new object (frozen: nothing
                           changes in place); unknown keys get "did you mean";
  :func:`flat_items`       (dotted key, value, :class:`FieldInfo`) of every leaf, for listings.

Every mistake is a one-line :class:`jaxgen.errors.UsageError`. The objects are hashable, so
jitted code may close over them.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

from jaxgen.errors import UsageError


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return tp, False


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.lru_cache(maxsize=None)
def _adapter(cls: type):
    import pydantic
    return pydantic.TypeAdapter(cls)


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int))


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_keys(cls: type, data: Mapping, prefix: str = "") -> None:
    """Unknown keys anywhere in ``data`` are a UsageError with the closest known key."""
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints or not any(f.name == key for f in dataclasses.fields(cls)):
            known = [f.name for f in dataclasses.fields(cls)]
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise UsageError(f"unknown setting {prefix}{key}"
                             + (f" (did you mean {prefix}{hint[0]}?)" if hint else "")
                             + f"; {type_name(cls)} has {', '.join(known)}")
        tp, _ = _strip_optional(hints[key])
        if _is_settings(tp) and isinstance(value, Mapping):
            _check_keys(tp, value, f"{prefix}{key}.")


def from_dict(cls: type, data: Mapping, *, what: str = "config") -> Any:
    """``cls`` built from a nested dict (e.g. JSON), every field validated and coerced.

    Raises UsageError naming the first wrong key.
    """
    import pydantic

    _check_keys(cls, data)
    try:
        return _adapter(cls).validate_python(dict(data))
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = _where(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UsageError(f"{what}: {where + ': ' if where else ''}{msg}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"{what}: {_one_line(e)}") from None


def to_dict(obj: Any) -> dict:
    """A settings object as a JSON-able nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` with validation of the new values (coerced like :func:`from_dict`)."""
    return from_dict(type(obj), {**to_dict(obj), **{k: _plain(v) for k, v in changes.items()}})


def update(obj: Any, changes: Mapping[str, Any]) -> Any:
    """``obj`` with ``{"dotted.key": value}`` changes applied (values, not text; validated).

    ``update(config, {"train.steps": 100, "model.dtype": "bfloat16"})``. Unknown keys are a
    UsageError with the closest known key, as ``--set`` gives.
    """
    tree = to_dict(obj)
    for key, value in changes.items():
        _leaf(obj, key)
        _set_path(tree, key, _plain(value))
    return from_dict(type(obj), tree)


def _plain(v: Any) -> Any:
    return to_dict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v


# ---------------------------------------------------------------------------- descriptions
@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What ``jaxgen config`` says of one setting."""

    type: str
    choices: tuple = ()
    doc: str = ""


def type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        args = typing.get_args(tp)
        name = type(args[0]).__name__ if args else "str"
    elif origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        name = f"tuple[{type_name(args[0]) if args else 'Any'}]"
    elif isinstance(tp, type):
        name = tp.__name__
    else:
        name = str(tp).replace("typing.", "")
    return name + ("|None" if optional else "")


_ATTR = re.compile(r"^(\s+)([A-Za-z_][\w, ]*):\s*(.*)$")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field: description} from the ``Attributes:`` sections of ``cls`` and its bases
    (Google style: ``  name: text`` or ``  a, b: text``, continuation lines indented deeper)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        lines = (klass.__doc__ or "").splitlines()
        if not any(line.strip() == "Attributes:" for line in lines):
            continue
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
        names: list[str] = []
        indent = None
        for line in lines[start + 1:]:
            if not line.strip():
                names = []
                continue
            m = _ATTR.match(line)
            depth = len(line) - len(line.lstrip())
            if m and (indent is None or depth == indent):
                indent = depth
                names = [n.strip() for n in m.group(2).split(",") if n.strip()]
                for n in names:
                    docs[n] = m.group(3).strip()
            elif names and indent is not None and depth > indent:
                for n in names:
                    docs[n] += " " + line.strip()
            elif indent is not None and depth < indent:
                break
    return docs


def field_info(cls: type, name: str) -> FieldInfo:
    tp = _hints(cls)[name]
    base, _ = _strip_optional(tp)
    choices = typing.get_args(base) if typing.get_origin(base) is Literal else ()
    return FieldInfo(type_name(tp), tuple(choices), field_docs(cls).get(name, ""))


def flat_items(obj: Any, prefix: str = "") -> list[tuple[str, Any, FieldInfo]]:
    """(dotted key, value, FieldInfo) of every leaf setting of ``obj``, in field order."""
    items = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            items += flat_items(value, f"{prefix}{f.name}.")
        else:
            items.append((prefix + f.name, value, field_info(type(obj), f.name)))
    return items


def format_value(value: Any) -> str:
    """The text of a value that ``--set key=TEXT`` parses back to the same value."""
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


# ---------------------------------------------------------------------------- overrides
def _leaf(obj: Any, key: str) -> tuple[type, str, Any]:
    """(owning settings class, field name, current value) of a dotted key; UsageError if none."""
    known = [k for k, _, _ in flat_items(obj)]
    *parents, name = key.split(".")
    node = obj
    for p in parents:
        child = getattr(node, p, None) if dataclasses.is_dataclass(node) else None
        if not (dataclasses.is_dataclass(child) and not isinstance(child, type)):
            node = None
            break
        node = child
    if node is None or name not in {f.name for f in dataclasses.fields(node)} or \
            (dataclasses.is_dataclass(getattr(node, name)) and
             not isinstance(getattr(node, name), type)):
        hint = difflib.get_close_matches(key, known, n=1)
        group = [k for k in known if k.startswith(key + ".")]
        if group:
            raise UsageError(f"--set {key}: a group of settings; set one of them, e.g. "
                             f"{group[0]}")
        raise UsageError(f"--set {key}: unknown config key"
                         + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return type(node), name, getattr(node, name)


def parse_text(text: str, tp: Any) -> Any:
    """The Python value ``--set`` text stands for, given the field's type (validation comes
    after, from :func:`from_dict`): tuples are Python literals, quoted strings are JSON."""
    base, optional = _strip_optional(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    origin = typing.get_origin(base)
    if origin is tuple:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [t.strip() for t in text.strip("()[] ").split(",") if t.strip()]
        return list(value) if isinstance(value, (tuple, list)) else [value]
    is_str = base is str or (origin is Literal and all(isinstance(a, str)
                                                       for a in typing.get_args(base)))
    if is_str and len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _set_path(tree: dict, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    for p in parents:
        tree = tree[p]
    tree[name] = value


def apply_overrides(obj: Any, overrides: Sequence[str]) -> Any:
    """``obj`` with ``"key=value"`` strings applied (a new object; ``obj`` is unchanged).

    All values are applied, then validated together (so related keys can change at once).
    Unknown keys, values of the wrong type or outside a field's choices, and values a class's
    validation rejects each raise a one-line UsageError naming the key.
    """
    import pydantic

    tree = to_dict(obj)
    given: dict[str, tuple[str, Any, FieldInfo]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected key=value")
        owner, name, current = _leaf(obj, key)
        value = parse_text(text, _hints(owner)[name])
        _set_path(tree, key, value)
        given[key] = (text, current, field_info(owner, name))
    try:
        return _adapter(type(obj)).validate_python(tree)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        key = where if where in given else next(
            (k for k in reversed(given) if k.startswith(where)), None)
        msg = err["msg"].removeprefix("Value error, ")
        if key is None or err["type"] == "value_error":
            keys = key or ", ".join(f"{k}={given[k][0]}" for k in given)
            head = f"--set {key}={given[key][0]}" if key else f"--set {keys}"
            raise UsageError(f"{head}: {msg}") from None
        text, current, info = given[key]
        if info.choices:
            hint = difflib.get_close_matches(text.strip('"'), [str(c) for c in info.choices], n=1)
            raise UsageError(f"--set {key}={text}: expected one of "
                             f"{', '.join(map(str, info.choices))}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "")) from None
        raise UsageError(f"--set {key}={text}: expected a value of type {info.type} "
                         f"(current value {current!r})") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"--set {', '.join(given)}: {_one_line(e)}") from None
