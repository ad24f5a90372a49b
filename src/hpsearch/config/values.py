"""Reading one raw YAML value: the `Reader` that checks it and raises `StudyFileError` for the
file, and the helpers every section shares (a value shown as written, cut to a couple of hundred
characters; "did you mean"; numeric bounds)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from hpsearch.errors import StudyFileError

# PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string; where a number is expected, take
# it as the float the user meant.
_EXP_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
SHOWN = 200  # characters of one value a message shows: a value can be megabytes long
# Budgets past these are typos (or attacks): 1e308 epochs overflows the sample count.
MAX_EPOCHS = 1e6
MAX_STEPS = 10**12

_S = TypeVar("_S", bound=str)


class _Full(Exception):
    """The message has shown enough of a value."""


def show(value: Any, limit: int = SHOWN) -> str:
    """A value as the user wrote it in YAML, cut after `limit` characters; a huge value is never
    rendered in full."""
    out: list[str] = []
    left = limit + 1

    def put(text: str) -> None:
        nonlocal left
        out.append(text[:left])
        left -= len(text)
        if left <= 0:
            raise _Full

    def walk(v: Any) -> None:
        if v is None:
            put("null")
        elif isinstance(v, bool):
            put("true" if v else "false")
        elif isinstance(v, dict):
            put("{")
            for i, (k, x) in enumerate(v.items()):
                put(", " if i else "")
                walk(k)
                put(": ")
                walk(x)
            put("}")
        elif isinstance(v, list | tuple):
            put("[")
            for i, x in enumerate(v):
                put(", " if i else "")
                walk(x)
            put("]")
        elif isinstance(v, str):
            put(repr(v[:left]) if len(v) > left else repr(v))
        else:
            put(repr(v))

    try:
        walk(value)
    except _Full:
        return "".join(out)[:limit] + "..."
    return "".join(out)


def clip(text: str, limit: int = SHOWN) -> str:
    """Text from elsewhere (an exception, a class's argument list) cut for a message."""
    return text if len(text) <= limit else text[:limit] + "..."


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word[: SHOWN + 1], list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def as_number(value: Any) -> Any:
    if isinstance(value, str) and _EXP_FLOAT.match(value):
        return float(value)
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Bounds:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def ok(self, v: float) -> bool:
        return not (
            (self.gt is not None and not v > self.gt)
            or (self.ge is not None and not v >= self.ge)
            or (self.lt is not None and not v < self.lt)
            or (self.le is not None and not v <= self.le)
        )

    def text(self) -> str:
        parts = [
            f"{op} {fmt(b)}"
            for op, b in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if b is not None
        ]
        return " and ".join(parts)


def fmt(v: Any) -> str:
    """A bound for a message: 0 rather than 0.0, 1e-05 as Python writes it."""
    return str(int(v)) if is_number(v) and float(v).is_integer() else repr(v)


# Sanity ranges of the hyperparameters hpsearch knows, applied to warm-up values and search ranges.
KNOWN_BOUNDS = {
    "lr": Bounds(gt=0),
    "dropout": Bounds(ge=0, lt=1),
    "weight_decay": Bounds(ge=0),
    "eps": Bounds(gt=0),
    "momentum": Bounds(ge=0, le=1),
}


class Reader:
    """Checks raw YAML values; every failure becomes a StudyFileError for this file."""

    def __init__(self, path: str, *, writable: bool = True) -> None:
        self.path = path
        self.writable = writable  # probe that the storage and checkpoint dirs take new files

    def fail(self, key: str, message: str) -> NoReturn:
        raise StudyFileError(self.path, key, message)

    def mapping(
        self,
        value: Any,
        key: str,
        allowed: Iterable[str],
        required: Mapping[str, str] | None = None,
        *,
        optional: bool = False,
    ) -> dict[str, Any]:
        """A mapping with only `allowed` keys; `required` maps each required key to an example."""
        allowed = list(allowed)
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping with keys {', '.join(allowed)}, got {show(value)}")
        for k in value:
            if not isinstance(k, str):
                self.fail(key, f"keys must be strings, got {show(k)}")
            if k not in allowed:
                self.fail(
                    join_key(key, clip(k)),
                    f"unknown key{did_you_mean(k, allowed)} (allowed here: {', '.join(allowed)})",
                )
        for k, example in (required or {}).items():
            if k not in value:
                self.fail(join_key(key, k), f"required key is missing; add it, e.g. `{example}`")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {show(value)}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {show(value)}")
        return value

    def choice(self, value: Any, key: str, options: Sequence[_S]) -> _S:
        if not isinstance(value, str) or value not in options:
            hint = did_you_mean(value, options) if isinstance(value, str) else ""
            self.fail(key, f"must be one of {', '.join(options)}, got {show(value)}{hint}")
        return options[options.index(value)]  # typed as the option (a Literal), not as str

    def real(self, value: Any, key: str, bounds: Bounds = Bounds(), fix: str = "") -> float:
        value = as_number(value)
        fix = f"; {fix}" if fix else ""
        if not is_number(value) or not math.isfinite(value):
            rule = f" {bounds.text()}" if bounds.text() else ""
            self.fail(key, f"must be a number{rule}, got {show(value)}{fix}")
        if not bounds.ok(value):
            self.fail(key, f"must be {bounds.text()}, got {show(value)}{fix}")
        return float(value)

    def integer(self, value: Any, key: str, bounds: Bounds = Bounds(), fix: str = "") -> int:
        fix = f"; {fix}" if fix else ""
        if isinstance(value, bool) or not isinstance(value, int):
            rule = f" {bounds.text()}" if bounds.text() else ""
            self.fail(key, f"must be an integer{rule}, got {show(value)}{fix}")
        if not bounds.ok(value):
            self.fail(key, f"must be an integer {bounds.text()}, got {show(value)}{fix}")
        return value

    def epochs(self, value: Any, key: str, what: str) -> float:
        """An epoch budget: finite, positive and of a size a run can reach."""
        return self.real(
            value, key, Bounds(gt=0, le=MAX_EPOCHS), f"give the epochs {what}, e.g. {key}: 2"
        )

    def steps(self, value: Any, key: str, what: str) -> int:
        """A step budget: a positive integer of a size a run can reach."""
        return self.integer(
            value, key, Bounds(gt=0, le=MAX_STEPS), f"give the optimizer steps {what}"
        )

    def exactly_one(
        self, section: dict[str, Any], key: str, a: str, b: str, *, required: bool
    ) -> str | None:
        """Which of the alternative keys `a`/`b` the section gives (an error if both)."""
        if a in section and b in section:
            self.fail(
                key,
                f"give either {a} or {b}, not both"
                f" (got {a}={show(section[a])}, {b}={show(section[b])})",
            )
        if a in section:
            return a
        if b in section:
            return b
        if required:
            self.fail(key, f"required: give {a}: <number> or {b}: <integer>")
        return None


def join_key(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub
