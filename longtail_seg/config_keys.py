"""The checks every config section goes through: keys a module does not know fail loudly, naming the allowed
ones, so a typo in config.yaml never silently falls back to a default; and values of the wrong type or out of range
fail with the key's path and the allowed range, in one wording for every section."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def reject_unknown_keys(section: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``section``, the unknown keys of ``given`` and the ``allowed`` ones."""
    allowed = sorted(set(allowed))
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed: {allowed}")


# --- value checks: one wording for every section ------------------------------------------------------------------
# ``name`` is how the message names the key: a full path (``retrain.batch_size``, ``models.bgs.retrain.lr``) or a
# section and key (``tests.single_scale: min_size``). Every message reads "NAME must be WHAT, got VALUE".


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool. Plain ints take the fast path: results and annotation files hold
    millions of them, and an ABC ``isinstance`` costs several times an exact type test."""
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def is_number(value: Any) -> bool:
    """A finite int or float (Python or NumPy), not a bool; plain ints and floats (what JSON parses to) take the
    fast path."""
    kind = type(value)
    if kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False) -> None:
    """``value`` is an integer in [minimum, maximum] (or None when ``allow_none``); else ``ValueError``."""
    if value is None and allow_none:
        return
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(_must_be(name, "an integer" + _range(minimum, maximum, False, False), value, allow_none))


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False, exclusive_maximum: bool = False, allow_none: bool = False) -> None:
    """``value`` is a finite number in the range (bounds inclusive unless ``exclusive_*``), or None when
    ``allow_none``; else ``ValueError``."""
    if value is None and allow_none:
        return
    ok = is_number(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive_maximum else value <= maximum
    if not ok:
        what = "a number" + _range(minimum, maximum, exclusive_minimum, exclusive_maximum)
        raise ValueError(_must_be(name, what, value, allow_none))


def check_bool(name: str, value: Any) -> None:
    """``value`` is true or false; else ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(_must_be(name, "true or false", value, False))


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``; else ``ValueError``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _range(minimum: float | None, maximum: float | None, exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    """`` >= 1``, `` > 0``, `` in [0, 1)``, ...: the range part of a message."""
    if minimum is not None and maximum is not None:
        return f" in {'(' if exclusive_minimum else '['}{minimum}, {maximum}{')' if exclusive_maximum else ']'}"
    if minimum is not None:
        return f" {'>' if exclusive_minimum else '>='} {minimum}"
    if maximum is not None:
        return f" {'<' if exclusive_maximum else '<='} {maximum}"
    return ""


def _must_be(name: str, what: str, value: Any, allow_none: bool) -> str:
    """``NAME must be WHAT[ or null], got VALUE`` with a hint for a number or a bool written as a string."""
    return f"{name} must be {what}{' or null' if allow_none else ''}, got {value!r}{string_hint(value)}"


def string_hint(value: Any) -> str:
    """`` (a string: ...)`` when ``value`` is a number or a bool written as a string (quoted, or YAML's 1e-4 without
    a dot), else ``""``."""
    if not isinstance(value, str):
        return ""
    try:
        if not math.isfinite(float(value)):
            return ""
    except ValueError:
        if value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return " (a string: write true or false without quotes)"
        return ""
    if "e" in value.lower():
        return " (a string: write the number without quotes; YAML reads 1e-4 as a string, write 1.0e-4)"
    return " (a string: write the number without quotes)"
