"""Argument checks shared by the losses and layers: a named number in range, or a ValueError that names it.

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


def check_positive_integer(name: str, value) -> int:
    """`value` as an int when it is an integer >= 1 (not a bool); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)
