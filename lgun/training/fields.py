"""Checking frozen config dataclasses against their annotations, and TOML tables against their
fields: one ``ValueError`` per problem, naming the key (``optim.learning_rate``).

A config class names its TOML table in a ``SECTION`` class variable and calls ``check_types``
first in its ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_origin, get_type_hints

__all__ = ["check_types", "from_table", "plain", "require"]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` (TOML lists become tuples), or a ValueError naming
    ``key``. Dataclasses with a ``from_dict`` accept a table."""
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise ValueError(f"{key} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args,
                                                                               strict=True)))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict) and hasattr(hint, "from_dict"):
            try:
                return hint.from_dict(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{key}: {e}") from e
        if isinstance(value, dict):
            return from_table(hint, value, key)
        raise ValueError(f"{key} must be a table, got {value!r}")
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise ValueError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return float(value) if hint is float else value


def check_types(obj: Any) -> None:
    """Coerce every field of the frozen dataclass ``obj`` to its annotated type."""
    hints = get_type_hints(type(obj))
    prefix = f"{obj.SECTION}." if getattr(obj, "SECTION", "") else ""
    for f in dataclasses.fields(obj):
        value = _coerce(getattr(obj, f.name), hints[f.name], prefix + f.name)
        object.__setattr__(obj, f.name, value)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def from_table(cls: type, table: Any, section: str) -> Any:
    """Build the sub-config ``cls`` from a TOML table, refusing unknown keys."""
    if not isinstance(table, dict):
        raise ValueError(f"[{section}] must be a table, got {table!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(names))
    if unknown:
        keys = ", ".join(f"{section}.{k}" for k in unknown)
        raise ValueError(f"unknown training config key(s) {keys} "
                         f"([{section}] has: {', '.join(names)})")
    return cls(**table)


def plain(value: Any) -> Any:
    """JSON/TOML-ready form: tuples -> lists, dataclasses -> dicts."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
