"""Value specs: small, composable descriptions of what one config key may hold.

A spec is called with the resolved value and returns ``None`` when it is acceptable, else the
phrase that completes "``key`` must be ...". :mod:`.schema` maps every key to one of these.
Numbers follow YAML as Hydra parses overrides: ``5`` is an int, ``5.0`` and ``1e-3`` are floats,
``true`` is a bool; a bool is never accepted as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _bounds(integer: bool, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    """The phrasing the rest of the code base uses: "positive", "in (0, 1]", "an integer >= -1"."""
    low = (f"{ge:g}", "[") if ge is not None else (f"{gt:g}", "(") if gt is not None else None
    high = (f"{le:g}", "]") if le is not None else (f"{lt:g}", ")") if lt is not None else None
    if low and high:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if integer:
        if (ge is not None and ge == 1) or (gt is not None and gt == 0):
            return "a positive integer"
        what = "an integer"
    else:
        if gt is not None and gt == 0:
            return "positive"
        what = "a number"
    if low:
        return f"{what} {'>=' if low[1] == '[' else '>'} {low[0]}"
    if high:
        return f"{what} {'<=' if high[1] == ']' else '<'} {high[0]}"
    return what


@dataclass(frozen=True)
class Num:
    """An int (``integer=True``) or any finite number, optionally bounded."""

    integer: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    not_: float | None = None  # one excluded value (max_steps: 0)

    def describe(self) -> str:
        text = _bounds(self.integer, self.ge, self.gt, self.le, self.lt)
        return text + (f" other than {self.not_:g}" if self.not_ is not None else "")

    def __call__(self, v: Any) -> str | None:
        ok = _is_int(v) if self.integer else _is_number(v)
        if ok:
            ok = not ((self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                      or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt)
                      or (self.not_ is not None and v == self.not_))
        return None if ok else self.describe()


def Int(**bounds: float) -> Num:  # noqa: N802 - reads as a type in the schema table
    return Num(integer=True, **bounds)


def Float(**bounds: float) -> Num:  # noqa: N802
    return Num(integer=False, **bounds)


@dataclass(frozen=True)
class Bool:
    def describe(self) -> str:
        return "true or false"

    def __call__(self, v: Any) -> str | None:
        return None if isinstance(v, bool) else self.describe()


@dataclass(frozen=True)
class Str:
    def describe(self) -> str:
        return "a string"

    def __call__(self, v: Any) -> str | None:
        return None if isinstance(v, str) and v != "" else self.describe()


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(dict.fromkeys(str(x) for x in self.values))

    def __call__(self, v: Any) -> str | None:
        # 16 and "16" are different YAML values; compare with their types (True is not 1).
        ok = any(type(v) is type(x) and v == x for x in self.values)
        return None if ok else self.describe()


@dataclass(frozen=True)
class ListOf:
    item: Any
    length: int | None = None
    min_length: int = 0

    def describe(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        return f"a list of {n}items, each {self.item.describe()}"

    def __call__(self, v: Any) -> str | None:
        if not isinstance(v, (list, tuple)):
            return self.describe()
        if (self.length is not None and len(v) != self.length) or len(v) < self.min_length:
            return self.describe()
        return self.describe() if any(self.item(x) is not None for x in v) else None


@dataclass(frozen=True)
class AnyOf:
    options: tuple[Any, ...]

    def describe(self) -> str:
        words: list[str] = []
        for o in self.options:
            if isinstance(o, Bool):
                words += ["true", "false"]
            elif isinstance(o, Choice) and len(o.values) == 1:
                words.append(str(o.values[0]))
            else:
                words.append(o.describe())
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]

    def __call__(self, v: Any) -> str | None:
        return None if any(o(v) is None for o in self.options) else self.describe()


@dataclass(frozen=True)
class Null:
    def describe(self) -> str:
        return "null"

    def __call__(self, v: Any) -> str | None:
        return None if v is None else "null"


def maybe(spec: Any) -> AnyOf:
    """``spec`` or null."""
    return AnyOf((spec, Null()))


def one_of(*specs: Any) -> AnyOf:
    return AnyOf(tuple(specs))


def choice(*values: Any) -> Choice:
    return Choice(tuple(values))
