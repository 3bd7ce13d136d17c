"""Prompt suites: named, versioned prompt sets with GenEval-schema metadata.

A suite is a function ``suite(split=..., tags=...) -> list[dict]`` returning items
``{"id", "prompt", "metadata", "seed"}``. Built-ins: ``minimug-world`` (MiniMUG's scene world, with
a train/test split) and ``geneval`` (the 553 GenEval prompts, Ghosh et al. 2023, MIT licence,
shipped in ``milr/data/geneval``), ``t2i-compbench``, ``wise`` and ``dpg-bench`` (their loaders,
layouts and aggregation are in :mod:`milr.benchmarks`; data with attribution in ``milr/data``).

Each card also declares, as data, what the oracle rule (:mod:`milr.benchmarks.oracle`) reads: the
benchmark's own scorer per category (a run searched with it is flagged oracle), proxies of it
(labelled only) and privileged metadata fields (the answer; a critic reading them flags the run).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Optional

from milr.cards import SuiteCard
from milr.geneval import TAGS
from milr.registry import SUITES

SUITES.register_lazy(
    "minimug-world",
    "milr.world.suite:world_suite",
    card=SuiteCard(
        summary="MiniMUG's procedural shape world in GenEval's six categories, fixed seeds, train/test split",
        categories=TAGS,
        size=">=50 prompts per category per split",
        license="Apache-2.0 (this project)",
        benchmark="geneval",  # GenEval's categories, rules and aggregation
        scorers={"*": ("world_oracle",)},
        proxies={"detector": "a detector with GenEval's rules imitates the exact scorer"},
    ),
)
SUITES.register_lazy(
    "geneval",
    "milr.suites:geneval_suite",
    card=SuiteCard(
        summary="GenEval's 553 prompts with their metadata",
        categories=TAGS,
        size="553 prompts",
        license="MIT (c) 2023 Dhruba Ghosh",
        reference="Ghosh et al. 2023 (arXiv 2310.11513)",
        benchmark="geneval",
        scorers={"*": ("geneval",)},
        proxies={"detector": "GenEval-style proxy (YOLO detector + GenEval's rules, not GenEval's Mask2Former)"},
        images_per_prompt=4,
    ),
)
SUITES.register_lazy(
    "t2i-compbench",
    "milr.benchmarks.t2i_compbench:t2i_compbench_suite",
    card=SuiteCard(
        summary="T2I-CompBench val prompts (300 per category); numeracy and 3d_spatial (T2I-CompBench++) via tags; "
        "split val or val-before-2025-09-03 (the colour file before upstream de-duplicated it)",
        categories=("color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy", "3d_spatial"),
        size="1800 prompts (6 x 300), +600 with the ++ categories",
        license="MIT (c) 2023 HKU",
        reference="Huang et al. 2023 (arXiv 2307.06350)",
        benchmark="t2i-compbench",
        scorers={"color": ("t2i_blip_vqa",), "shape": ("t2i_blip_vqa",), "texture": ("t2i_blip_vqa",),
                 "spatial": ("t2i_spatial",), "non_spatial": ("t2i_clipscore",), "complex": ("t2i_3in1",)},
        proxies={"clip_score": "CLIP similarity; with ViT-B/32 OpenAI weights it is the non_spatial scorer itself",
                 "detector": "a detector critic; the spatial scorer applies T2I-CompBench's distance rule to detector boxes"},
        images_per_prompt=10,
    ),
)
SUITES.register_lazy(
    "wise",
    "milr.benchmarks.wise:wise_suite",
    card=SuiteCard(
        summary="WISE legacy prompts (1000) with categories, prompt ids and the answer ('explanation', privileged); "
        "split legacy or rewrite",
        categories=("culture", "time", "space", "biology", "physics", "chemistry"),
        size="1000 prompts",
        license="none stated upstream (research evaluation only; see milr/data/wise/SOURCE.md)",
        reference="Niu et al. 2025 (arXiv 2503.07265)",
        benchmark="wise",
        scorers={"*": ("wise_judge",)},
        proxies={"api_judge": "a generic API judge (not WISE's protocol)", "vlm_judge": "a local VLM judge (not WISE's protocol)"},
        privileged=("explanation",),
    ),
)
SUITES.register_lazy(
    "dpg-bench",
    "milr.benchmarks.dpg_bench:dpg_bench_suite",
    card=SuiteCard(
        summary="DPG-Bench dense prompts (1065); NOT scorable here: the question file dpg_bench.csv is missing",
        categories=("dpg",),
        size="1065 prompts",
        license="Apache-2.0 (TencentQQGYLab/ELLA)",
        reference="Hu et al. 2024 ELLA (arXiv 2403.05135)",
        benchmark="dpg-bench",
        images_per_prompt=4,
        note="dpg_bench/dpg_bench.csv (the question graph) is not shipped; milr eval refuses to compute a DPG score",
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
