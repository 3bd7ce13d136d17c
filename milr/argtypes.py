"""Constrained argument types for component constructors: the recipe validator reads them.

A constructor annotated ``partial_weight: Fraction = 0.5`` or ``batch_size: PositiveInt = 32`` has
its range checked from the signature, with the key path, before anything loads (pydantic's
``Annotated`` constraints, read by :func:`milr.recipe.component_signature`); a Python caller who
bypasses recipes is checked by the constructor's own line where it is cheap.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A float in [0, 1] (a weight, a share of something)."""

PositiveInt = Annotated[int, Field(ge=1)]
"""An int >= 1 (a batch size, a count)."""

NonNegativeFloat = Annotated[float, Field(ge=0.0)]



def check_choice(who: str, arg: str, value: Any, choices: Any) -> Any:
    """``value`` if it is one of ``choices`` (a sequence, or a ``Literal`` annotation), else a
    ValueError naming the argument and what is allowed: the constructor-side twin of the recipe
    validator's check, for Python callers."""
    allowed = tuple(get_args(choices)) if get_origin(choices) is Literal else tuple(choices)
    if value not in allowed:
        raise ValueError(f"{who}: {arg} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


__all__ = ["Fraction", "PositiveInt", "NonNegativeFloat", "check_choice"]
