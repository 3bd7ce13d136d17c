"""Benchmark protocols: the paper's benchmarks end to end (prompt suites, official layouts, aggregation).

One file per benchmark, each with its suite (where milr ships the prompts), its on-disk layout
(``milr export --format``; read back by ``milr eval``) and its official aggregation:

==================  =====================================  ==========================================
name                layout                                 aggregation
==================  =====================================  ==========================================
``geneval``         ``NNNNN/metadata.jsonl`` + samples/    task = mean over images; overall = mean of tasks
``t2i-compbench``   ``samples/{prompt}_{NNNNNN}.png``      per-category mean (overall: MILR's mean of 6)
``wise``            ``<prompt_id>.png``                    WiScore; category-weighted overall
``dpg-bench``       (none)                                 refuses: question file not shipped
``none``            (none)                                 per-tag mean, mean of tag means
==================  =====================================  ==========================================

The oracle rule that marks runs searched with a benchmark's own scorer is :mod:`milr.benchmarks.oracle`.
"""

from __future__ import annotations

from milr.benchmarks.base import Benchmark, BenchmarkError, ImageItem
from milr.benchmarks.dpg_bench import DPGBench
from milr.benchmarks.geneval import GenEval
from milr.benchmarks.t2i_compbench import T2ICompBench
from milr.benchmarks.wise import WISE


class PlainMeans(Benchmark):
    """No benchmark: means by the prompts' ``tag`` and the mean of tag means (milr's run summary)."""

    name = "none"
    title = "plain means"


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (GenEval(), T2ICompBench(), WISE(), DPGBench(), PlainMeans())}
LAYOUTS: dict[str, Benchmark] = {b.layout: b for b in BENCHMARKS.values() if b.layout}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; allowed: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "LAYOUTS", "Benchmark", "BenchmarkError", "ImageItem", "get_benchmark"]
