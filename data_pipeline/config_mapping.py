"""One way to build a settings dataclass from a mapping (a YAML section, a JSON file, a checkpoint's config).

Every stage's settings (``StreamConfig``, ``BackboneConfig``, ``ModelConfig``, the training sections) are
dataclasses built by :func:`from_mapping`: unknown keys are rejected with the nearest known key, values are
checked against the annotations (ints accepted for floats, YAML's ``'3e-4'`` strings too), nested dataclasses
are built recursively, and every problem is a :class:`BadInputError` naming the file, the dotted key and what
to do. A dataclass's own ``__post_init__`` checks (ranges, choices) raise ``BadInputError(field=name)``; they
reach the user under the dotted key as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

from data_pipeline.schema import BadInputError

T = TypeVar("T")


class ConfigOrigin:
    """Says where a dotted key came from: a file (or other named source) or a command-line override."""

    def __init__(self, path: str | None = None, overridden: set[str] | None = None) -> None:
        self.path = path
        self.overridden = overridden or set()

    def describe(self, key: str) -> str | None:
        for k in self.overridden:
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return "command-line override"
        return self.path

    def error(self, key: str, message: str) -> BadInputError:
        return BadInputError(message, path=self.describe(key), field=key or None)


def from_mapping(
    cls: type[T], raw: Any, *, source: str | None = None, prefix: str = "", origin: ConfigOrigin | None = None
) -> T:
    """Build dataclass ``cls`` from ``raw``; errors name ``source`` (or ``origin``) and ``prefix.key``."""
    origin = origin or ConfigOrigin(source)
    if raw is None:
        raw = {}
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        where = prefix or "top level"
        raise origin.error(prefix, f"section {where} must be a mapping, got {type(raw).__name__}")
    hints, fields = _annotations(cls)
    names = [f.name for f in fields]
    for key in raw:
        if key not in names:
            dotted = _join(prefix, str(key))
            raise origin.error(dotted, f"unknown key '{key}'{did_you_mean(str(key), names)}")
    values = {}
    for f in fields:
        dotted = _join(prefix, f.name)
        if f.name in raw:
            values[f.name] = coerce(hints[f.name], raw[f.name], dotted, origin)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise origin.error(dotted, f.metadata.get("missing", f"missing: set {dotted}"))
    try:
        return cls(**values)
    except BadInputError as err:
        raise origin.error(_join(prefix, err.field or ""), err.reason) from None


@functools.cache
def _annotations(cls: type) -> tuple[dict[str, Any], list[dataclasses.Field]]:
    """The resolved annotations and init fields of a dataclass, worked out once (a manifest has 20k entries)."""
    return typing.get_type_hints(cls), [f for f in dataclasses.fields(cls) if f.init]


def coerce(tp: Any, value: Any, key: str, origin: ConfigOrigin) -> Any:
    """Check ``value`` against the annotation ``tp``; accept ints for floats and YAML's '3e-4' strings."""
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, prefix=key, origin=origin)
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return coerce(inner, value, key, origin)
            except BadInputError as err:
                problems.append(err)
        if len(problems) == 1:
            raise problems[0]
        raise origin.error(key, f"expected {type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    base = typing.get_origin(tp) or tp
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    elif base is list or base is tuple:
        if isinstance(value, list | tuple):
            items = (
                [coerce(args[0], v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
                if args
                else list(value)
            )
            return items if base is list else tuple(items)
    elif base is dict:
        if isinstance(value, Mapping):
            return (
                {str(k): coerce(args[1], v, f"{key}.{k}", origin) for k, v in value.items()}
                if args
                else dict(value)
            )
    raise origin.error(key, f"expected {type_name(tp)}, got {value!r}")


def parse_override(item: str, *, where: str = "command line") -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` → ``(["optim", "lr"], 3e-4)``: the dotted key and the value read as YAML (an empty
    value is None); a malformed item or a value that is not YAML is a :class:`BadInputError` naming it."""
    if "=" not in item:
        raise BadInputError(f"override {item!r} is not of the form key.subkey=value", path=where)
    key, value = (part.strip() for part in item.split("=", 1))
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise BadInputError(f"override {item!r} has an empty key part", path=where)
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BadInputError(
            f"the value {value!r} is not valid YAML ({problem}); quote it or fix the brackets",
            path=where,
            field=key,
        ) from None
    return parts, parsed


def did_you_mean(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(candidates)}"


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key
