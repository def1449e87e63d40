"""Config dataclasses from JSON-like dicts, checked the same way for every config (`TokenizerConfig`, `TrainConfig`).

A config file or a `--set key=value` override must fail where it is read, naming the key, not deep inside torch
(`lr="abc"` used to reach AdamW). The field annotations are the schema: bool, int, float (ints accepted), str,
`Literal[...]` (an enum), `X | None`, `tuple[T, ...]` / `tuple[T1, T2]` (JSON lists accepted), `list[T]`, `dict`.
torch-free (the CLI validates before loading torch).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


def from_dict(cls: type[T], d: dict, what: str, derived: dict[str, Any] | None = None) -> T:
    """`cls(**d)` after checking that every key is a field of `cls` (or one of `derived`: computed values a saved
    config carries, e.g. a model's factor, accepted only when they agree). `what` names the options in errors."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object of options, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - names - set(derived or {}))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(names)}")
    obj = cls(**{k: v for k, v in d.items() if k in names})
    for key, compute in (derived or {}).items():
        if key in d and d[key] != compute(obj):
            raise ValueError(f"{what} {key!r} is {d[key]!r} but the other options give {compute(obj)!r}; "
                             f"remove it (it is computed)")
    return obj


def check_fields(obj: Any, what: str) -> None:
    """Check (and normalise: lists → tuples, ints → floats) every field of a dataclass instance against its
    annotation, in place. Call from `__post_init__`. Raises ValueError naming the field and the expected type."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        try:
            new = _check(value, hints[f.name])
        except _Mismatch as err:
            raise ValueError(f"{what} {f.name!r} must be {err}, got {value!r}") from None
        if new is not value:
            object.__setattr__(obj, f.name, new)


class _Mismatch(Exception):
    """Carries the description of the expected type."""


def _check(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch("one of " + ", ".join(repr(a) for a in args))
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _check(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch(" or ".join(_describe(a) for a in args))
    if tp is type(None):
        if value is None:
            return value
        raise _Mismatch("null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(_describe(tp))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch(_describe(tp))
            items = [_check_item(v, a, tp) for v, a in zip(value, args)]
        else:
            items = [_check_item(v, args[0], tp) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a JSON object")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch(tp.__name__)
    return value


def _check_item(value: Any, tp: Any, whole: Any) -> Any:
    try:
        return _check(value, tp)
    except _Mismatch:
        raise _Mismatch(_describe(whole)) from None


_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if args and args[-1] is Ellipsis:
            return f"a list of {_PLURAL.get(args[0], _describe(args[0]))}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_PLURAL.get(args[0], _describe(args[0]))}" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
            dict: "a JSON object"}.get(tp, getattr(tp, "__name__", str(tp)))
