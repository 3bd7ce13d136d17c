"""Constrained argument types for component constructors: the recipe validator reads them.

A constructor annotated ``partial_weight: Fraction = 0.5`` or ``batch_size: PositiveInt = 32`` has
its range checked from the signature, with the key path, before anything loads (pydantic's
``Annotated`` constraints, read by :func:`milr.recipe.component_signature`); a Python caller who
bypasses recipes is checked by the constructor's own line where it is cheap.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A float in [0, 1] (a weight, a share of something)."""

PositiveInt = Annotated[int, Field(ge=1)]
"""An int >= 1 (a batch size, a count)."""

NonNegativeFloat = Annotated[float, Field(ge=0.0)]

__all__ = ["Fraction", "PositiveInt", "NonNegativeFloat"]
