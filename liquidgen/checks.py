"""The value checks every stage's config dataclass runs in `__post_init__`, so a bad command-line
value (or a bad argument from Python) is one `LiquidgenError` naming the flag, raised before
anything is read or written. One wording for every command."""

from __future__ import annotations

import dataclasses
import math

from liquidgen.errors import LiquidgenError


def flag(cfg, name: str) -> str:
    """The command-line flag of a field: `--field-name`, unless the config's FLAGS names another."""
    return getattr(cfg, "FLAGS", {}).get(name) or "--" + name.replace("_", "-")


def _unset(cfg, name: str) -> bool:
    """None in a field whose type allows it (`int | None`): an optional value left out."""
    field = next(f for f in dataclasses.fields(cfg) if f.name == name)
    return getattr(cfg, name) is None and "None" in str(field.type)


def whole(cfg, **at_least: int) -> None:
    """Each named field a whole number of at least its bound."""
    for name, low in at_least.items():
        value = getattr(cfg, name)
        if _unset(cfg, name):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LiquidgenError(f"{flag(cfg, name)} must be a whole number of at least {low} (got {value!r})")


def finite(cfg, **bounds: tuple) -> None:
    """Each named field a finite number within (low, high): `(low, None)` is "at least low",
    `(low, high)` is [low, high), and a low written as `(">", 0)` excludes it ("above 0")."""
    for name, (low, high) in bounds.items():
        value = getattr(cfg, name)
        if _unset(cfg, name):
            continue
        strict = isinstance(low, tuple)
        low = low[1] if strict else low
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (value > low if strict else value >= low) and (high is None or value < high)
        if not ok:
            bound = f"in [{low}, {high})" if high is not None else (f"above {low}" if strict else f"at least {low}")
            raise LiquidgenError(f"{flag(cfg, name)} must be a finite number {bound} (got {value!r})")


def one_of(cfg, **choices: tuple) -> None:
    for name, allowed in choices.items():
        value = getattr(cfg, name)
        if not _unset(cfg, name) and value not in allowed:
            raise LiquidgenError(f"{flag(cfg, name)} {value!r} is not one of {', '.join(map(str, allowed))}")
