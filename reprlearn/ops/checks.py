"""Argument checks shared by the losses: a named number in range, or a ValueError that names it.

Example:
    scale = check_positive_number("scale", 64.0)
"""

from __future__ import annotations

import math
import numbers


def check_finite_number(name: str, value, what: str = "") -> float:
    """`value` as a float when it is a finite number; ValueError naming `name` (and what it is for) otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{what}. Received: {name}={value!r}")
    return float(value)


def check_positive_number(name: str, value) -> float:
    """`value` as a float when it is a finite number > 0; ValueError naming `name` otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def check_non_negative_number(name: str, value) -> float:
    """`value` as a float when it is a finite number >= 0; ValueError naming `name` otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def check_number_in(name: str, value, low: float, high: float, what: str) -> float:
    """`value` as a float when `low <= value < high`; ValueError naming `name` and the range (`what`) otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or not (
            low <= value < high):
        raise ValueError(f"{name} must be in {what}. Received: {name}={value!r}")
    return float(value)
