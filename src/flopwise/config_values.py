"""One check for configuration values (TOML files, `--set key=value`, command-line options): types,
finite numbers and ranges.

The job config (flopwise.train.config), the data pipeline config (flopwise.data.config), the layout
vocabulary, the planner's inputs and the CLI's options use it, so a wrong value reads the same everywhere:
one line naming the key, the value and what is allowed. NaN and infinity are never numbers here: they
pass every `<`/`>` comparison check by accident (nan <= 0 is False) and then poison every result."""

from __future__ import annotations

import math

from flopwise.errors import ConfigError


def check_value(name: str, value, expected):
    """Return `value` (ints widened to float where a float is expected) or raise ConfigError.

    `expected` is a type or an annotation string (`from __future__ import annotations` keeps annotations
    as strings); types other than bool, int, float, str and list[str] pass through unchecked."""
    kind = expected if isinstance(expected, str) else getattr(expected, "__name__", str(expected))
    got = type(value).__name__
    if kind.startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} = {value!r}: expected a list of strings")
        return list(value)
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{name} = {value!r}: expected true or false, got {got}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} = {value!r}: expected int, got {got}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} = {value!r}: expected float (a number), got {got}")
        return check_number(name, float(value))
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{name} = {value!r}: expected str, got {got}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(name: str, text) -> bool:
    """A boolean written as text (a CSV cell, a `key=value` item): true/false, yes/no, on/off or 1/0, any case.

    The one boolean parser of the package; anything else raises ConfigError naming the key and the value."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{name} = {text!r}: expected true or false (also yes/no, on/off, 1/0)")


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# the largest seed every generator here takes (torch.manual_seed: a 64-bit signed integer; numpy: non-negative)
SEED_LIMIT = 2**63
# the highest sampling temperature a request may ask for: far past it every distribution is uniform to float precision
MAX_TEMPERATURE = 100.0


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
):
    """Return `value` if it is a finite number (an int when `integer`) within [low, high] (open ends with
    low_open / high_open); else raise ConfigError naming the key, the value and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} = {value!r}: expected {'an integer' if integer else 'a number'}")
    if isinstance(value, float) and not math.isfinite(value):  # (an int is finite, and too large for isfinite)
        raise ConfigError(f"{name} = {value!r}: must be a finite number (not NaN or infinity)")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{name} = {value!r}: expected an integer")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {_bound(low)}"
        else:
            allowed = f"{'<' if high_open else '<='} {_bound(high)}"
        text = repr(value)
        shown = text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"
        raise ConfigError(f"{name} = {shown}: must be {allowed}")
    return value


def positive(name: str, value, *, integer: bool = False):
    """A finite number > 0 (an integer >= 1 when `integer`)."""
    return check_number(name, value, low=1 if integer else 0, low_open=not integer, integer=integer)


def non_negative(name: str, value, *, integer: bool = False):
    """A finite number >= 0."""
    return check_number(name, value, low=0, integer=integer)
