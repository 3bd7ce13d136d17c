"""Prompt suites: named, versioned prompt sets with GenEval-schema metadata.

A suite is a function ``suite(split=..., tags=...) -> list[dict]`` returning items
``{"id", "prompt", "metadata", "seed"}``. Built-ins: ``minimug-world`` (MiniMUG's scene world, with
a train/test split) and ``geneval`` (the 553 GenEval prompts, Ghosh et al. 2023, MIT licence,
shipped in ``milr/data/geneval``).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Optional

from milr.cards import SuiteCard
from milr.registry import SUITES

SUITES.register_lazy(
    "minimug-world",
    "milr.models.minimug.suite:world_suite",
    card=SuiteCard(
        summary="MiniMUG's procedural shape world in GenEval's six categories, fixed seeds, train/test split",
        categories=("single_object", "two_object", "counting", "colors", "position", "color_attr"),
        size=">=50 prompts per category per split",
        license="Apache-2.0 (this project)",
    ),
)
SUITES.register_lazy(
    "geneval",
    "milr.suites:geneval_suite",
    card=SuiteCard(
        summary="GenEval's 553 prompts with their metadata",
        categories=("single_object", "two_object", "counting", "colors", "position", "color_attr"),
        size="553 prompts",
        license="MIT (c) 2023 Dhruba Ghosh",
        reference="Ghosh et al. 2023 (arXiv 2310.11513)",
    ),
)


def geneval_suite(split: str = "test", tags: Optional[list[str]] = None) -> list[dict]:
    """GenEval's evaluation metadata; ``split`` is accepted for symmetry (GenEval has one split)."""
    text = resources.files("milr.data").joinpath("geneval/evaluation_metadata.jsonl").read_text()
    items = []
    for i, line in enumerate(text.splitlines()):
        md = json.loads(line)
        if tags and md["tag"] not in tags:
            continue
        items.append({"id": f"geneval-{i:05d}", "prompt": md["prompt"], "metadata": md, "seed": i})
    return items
