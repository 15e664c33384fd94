"""Checks of attack and defense options, run when the object is built, before any file is loaded or any target
attacked: a bad value stops the run at once, with a message that quotes the option as the user typed it (not a
value derived from it, such as a radius scaled by a tensor's size) and says what it must be."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def is_number(value: Any) -> bool:
    """A finite int or float (``bool`` is not a number here, although Python says it is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_count(name: str, value: Any, minimum: int) -> None:
    """``value`` is an integer >= ``minimum``."""
    if not (is_number(value) and value == int(value) and value >= minimum):
        raise ValueError(f"`{name}` {value!r} must be an integer >= {minimum}")


def check_number(name: str, value: Any, *, positive: bool = False, below: float | None = None) -> None:
    """``value`` is a finite number, > 0 when ``positive`` else >= 0, and < ``below`` when given."""
    bad = not is_number(value) or (value <= 0 if positive else value < 0) or (below is not None and value >= below)
    if bad:
        bounds = "> 0" if positive else ">= 0"
        if below is not None:
            bounds += f" and < {below}"
        raise ValueError(f"`{name}` {value!r} must be a finite number {bounds}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` {value!r} must be one of {', '.join(choices)}")
