"""One check for configuration values (TOML files and `--set key=value`) against a dataclass field's type.

Both the job config (flopwise.train.config) and the data pipeline config (flopwise.data.config) use it,
so a wrong type reads the same everywhere: one line naming the key, the value and what was expected."""

from __future__ import annotations

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
        return float(value)
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
