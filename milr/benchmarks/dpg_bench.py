"""DPG-Bench (Hu et al. 2024, ELLA, arXiv 2403.05135, github.com/TencentQQGYLab/ELLA): prompts only.

Suite ``dpg-bench``: the 1065 dense prompts shipped in ``milr/data/dpg-bench/prompts.jsonl``
(Apache-2.0; one line per upstream ``prompts/<item_id>.txt``). The benchmark's question graph
(``dpg_bench/dpg_bench.csv``) is **not shipped** (it was not available when the data was copied),
so a DPG score cannot be computed: :meth:`DPGBench.aggregate` refuses with a one-line error
saying where to get the file. Generation from these prompts works as for any suite.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Optional, Sequence

from milr.benchmarks.base import Benchmark, BenchmarkError, ImageItem

N_PROMPTS = 1065
MISSING = ("DPG-Bench cannot be scored: its question file dpg_bench/dpg_bench.csv is not shipped with milr "
           "(get it from https://github.com/TencentQQGYLab/ELLA and run its compute_dpg_bench.py); "
           "use --benchmark none to aggregate other critics' scores by plain means")


@lru_cache(maxsize=None)
def _records() -> tuple[dict, ...]:
    text = resources.files("milr.data").joinpath("dpg-bench/prompts.jsonl").read_text()
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def dpg_bench_suite(split: str = "test", tags: Optional[list[str]] = None) -> list[dict]:
    """The dense prompts (one split; ``tags`` only accepts ``dpg``)."""
    if split not in ("test", "all"):
        raise ValueError(f"unknown split {split!r} of suite 'dpg-bench'; allowed: test (= all)")
    if tags and set(tags) - {"dpg"}:
        raise ValueError(f"unknown tag {sorted(set(tags) - {'dpg'})[0]!r} of suite 'dpg-bench'; allowed: dpg")
    items = []
    for i, r in enumerate(_records()):
        prompt = r["prompt"].strip()  # the files' text; a few end with a newline
        md = {"tag": "dpg", "benchmark": "dpg-bench", "item_id": r["item_id"], "prompt": prompt}
        items.append({"id": f"dpg-{r['item_id']}", "prompt": prompt, "metadata": md, "seed": i})
    return items


class DPGBench(Benchmark):
    name = "dpg-bench"
    title = "DPG-Bench"
    suite = "dpg-bench"
    categories = ("dpg",)
    unscorable = MISSING

    def aggregate(self, items: Sequence[ImageItem], scores: Sequence[Optional[float]], confidence: float = 0.95,
                  n_resamples: int = 2000) -> dict:
        raise BenchmarkError(MISSING)
