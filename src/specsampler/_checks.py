"""Range checks of scalar options, shared by every entry point (verify, sample, generate, the patched generate, the
CLI).

Each check names the argument as the caller wrote it and returns the value normalised (a Python int, float or bool):
numpy scalars are accepted wherever Python numbers are, strings and bools never stand for numbers. A value out of
range raises a ValueError; a wrong type an :class:`OptionTypeError`, a TypeError that is also a ValueError (a bad
option value either way: callers catching either see it, as numpy's AxisError is both a ValueError and an IndexError).
"""

from __future__ import annotations

import math
import numbers


class OptionTypeError(TypeError, ValueError):
    """An option of the wrong type."""


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None, what: str = "") -> int:
    """`value` as an int in [minimum, maximum]; `what` is appended to the message (e.g. "(0: off)")."""
    bound = "" if minimum is None else f" >= {minimum}"
    bound += "" if maximum is None else f"{' and' if bound else ''} <= {maximum}"
    note = f" {what}" if what else ""
    if not _is_integer(value):
        raise OptionTypeError(f"{name} must be an integer{bound}{note}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{bound}{note}, got {value}")
    return value


def real(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
         what: str = "") -> float:
    """`value` as a float in the interval from `low` to `high` (open at an end where asked; math.inf is always
    open: a value must be finite)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
    note = f" {what}" if what else ""
    if not _is_real(value):
        raise OptionTypeError(f"{name} must be a number in {interval}{note}, got {value!r} ({type(value).__name__})")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open or high == math.inf else value <= high
    if not (above and below):  # (NaN fails both)
        raise ValueError(f"{name} must be a number in {interval}{note}, got {value!r}")
    return value


def boolean(name: str, value) -> bool:
    """`value` as a bool (True, False or a numpy bool)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise OptionTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def choice(name: str, value, choices) -> str:
    """`value` if it is one of the strings `choices`, else a ValueError naming `name` (an OptionTypeError for a
    non-string) that lists them."""
    listed = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}" if len(choices) > 1 else repr(choices[0])
    if not isinstance(value, str):
        raise OptionTypeError(f"{name} must be {listed}, got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{name} must be {listed}, got {value!r}")
    return value


def temperature(value, name: str = "temperature") -> float:
    """A temperature: finite and >= 0 (0: greedy)."""
    return real(name, value, 0.0, math.inf, what="(0: greedy)")


def top_k(value, name: str = "top_k") -> int | None:
    """top_k: None or an integer >= 0; 0 is off (None returned)."""
    if value is None:
        return None
    return integer(name, value, 0, what="(0: off)") or None


def top_p(value, name: str = "top_p") -> float | None:
    """top_p: None or a number in [0, 1]; 1 is off (None returned). 0 keeps the most likely token only, as
    transformers' TopPLogitsWarper does (it keeps at least one)."""
    if value is None:
        return None
    value = real(name, value, 0.0, 1.0, what="(1: off)")
    return None if value == 1.0 else value


def min_p(value, name: str = "min_p") -> float | None:
    """min_p: None or a number in [0, 1]; 0 is off (None returned)."""
    if value is None:
        return None
    return real(name, value, 0.0, 1.0, what="(0: off)") or None


def seed(value, name: str = "seed") -> int | None:
    """A seed: None or any integer (Python or numpy)."""
    if value is None:
        return None
    if not _is_integer(value):
        raise OptionTypeError(f"{name} must be None or an integer, got {value!r} ({type(value).__name__})")
    return int(value)
