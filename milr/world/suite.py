"""The registered MiniMUG world prompt suite (``minimug-world``) and its train/test split.

Items follow the project's suite format ``{"id", "prompt", "metadata", "seed"}`` with metadata in
GenEval's schema (Ghosh et al. 2023, github.com/djghosh13/geneval). Every split holds
``n_per_tag`` (default 50) items per category with fixed seeds.

Split rule: a test prompt's *combination* never appears in any train prompt of the same tag, so
the test split measures compositional generalisation. The combination of a prompt, and which
combinations are held out (fixed index arithmetic, about a quarter of each category):

* ``two_object``: the unordered pair of shapes; held out when the shape indices sum to 4.
* ``counting``: (shape, count); held out when shape index + count is a multiple of 5 (one shape
  per count, so every count and every shape stays in training).
* ``colors``: (colour, shape) binding; held out when colour index + shape index is a multiple
  of 4 (``HELD_OUT_BINDINGS``).
* ``position``: the relation with the two objects, "A right of B" being the same combination as
  "B left of A" (and "below" as "above"); held out by index arithmetic on the canonical triple.
* ``color_attr``: the colour-shape bindings. A prompt is test when either binding is in
  ``HELD_OUT_BINDINGS`` (the same held-out bindings as ``colors``), so every test prompt binds a
  colour to a shape in a way no train prompt of the tag does.
* ``single_object`` is the explicit exception: with 5 shapes there is nothing to hold out, so
  test items share their prompt texts with train and differ only in seed
  (``SHARED_TEXT_TAGS``; tests check the exception stays this narrow).

``is_train_prompt`` lets the model's training-data generator skip test combinations;
``sample_train_prompt`` does the sampling. Nothing is written to disk.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import numpy as np

from .palette import COLORS
from .prompts import TAGS, all_prompts, sample_prompt
from .scenes import SHAPES

SPLITS = ("train", "test")
SHARED_TEXT_TAGS = ("single_object",)
DEFAULT_PER_TAG = 50
# Seeds: split base + 1000 * tag index + item index; train and test seeds never overlap.
_SEED_BASE = {"train": 100_000, "test": 200_000}
_ORDER_SEED = 20_240_601  # fixed shuffle of each split's prompts

_S = {s: i for i, s in enumerate(SHAPES)}
_C = {c: i for i, c in enumerate(COLORS)}
HELD_OUT_BINDINGS: frozenset[tuple[str, str]] = frozenset(
    (c, s) for c in COLORS for s in SHAPES if (_C[c] + _S[s]) % 4 == 0
)
# Canonical direction of each relation: "A right of B" == "B left of A", "A below B" == "B above A".
_CANONICAL = {"left of": ("left of", False), "right of": ("left of", True), "above": ("above", False), "below": ("above", True)}


def combination(metadata: Mapping[str, Any]) -> tuple:
    """The combination the split holds out for this prompt (see module docstring)."""
    tag = metadata["tag"]
    inc = metadata["include"]
    if tag == "single_object":
        return (inc[0]["class"],)
    if tag == "two_object":
        return tuple(sorted(c["class"] for c in inc))
    if tag == "counting":
        return (inc[0]["class"], int(inc[0]["count"]))
    if tag == "colors":
        return (inc[0]["color"], inc[0]["class"])
    if tag == "position":
        ref, other = inc[0]["class"], inc[1]["class"]
        rel, swap = _CANONICAL[inc[1]["position"][0]]
        a, b = (ref, other) if swap else (other, ref)
        return (a, rel, b)  # a <rel> b with rel in {left of, above}
    if tag == "color_attr":
        return tuple(sorted((c["color"], c["class"]) for c in inc))
    raise ValueError(f"unknown tag {tag!r}")


def is_test_combination(metadata: Mapping[str, Any]) -> bool:
    tag = metadata["tag"]
    key = combination(metadata)
    if tag in SHARED_TEXT_TAGS:
        return False
    if tag == "two_object":
        return (_S[key[0]] + _S[key[1]]) % 4 == 0
    if tag == "counting":
        return (_S[key[0]] + key[1]) % 5 == 0
    if tag == "colors":
        return key in HELD_OUT_BINDINGS
    if tag == "position":
        a, rel, b = key
        return (_S[a] + 2 * _S[b] + (rel == "above")) % 4 == 0
    if tag == "color_attr":
        return any(binding in HELD_OUT_BINDINGS for binding in key)
    raise ValueError(f"unknown tag {tag!r}")


def is_train_prompt(metadata: Mapping[str, Any]) -> bool:
    """True when the prompt may be used for training (its combination is not held out)."""
    return not is_test_combination(metadata)


def split_prompts(tag: str, split: str) -> list[dict]:
    """The distinct prompts of ``tag`` usable in ``split`` (single_object: all, in both)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    prompts = all_prompts(tag)
    if tag in SHARED_TEXT_TAGS:
        return prompts
    want_test = split == "test"
    return [p for p in prompts if is_test_combination(p) == want_test]


def sample_train_prompt(rng: np.random.Generator, tag: Optional[str] = None) -> dict:
    """A random training prompt of ``tag`` (random tag when None); test combinations skipped."""
    while True:
        md = sample_prompt(rng, tag)
        if is_train_prompt(md):
            return md


def world_suite(split: str = "test", tags: Optional[list[str]] = None, n_per_tag: int = DEFAULT_PER_TAG) -> list[dict]:
    """Suite items ``{"id", "prompt", "metadata", "seed"}``: ``n_per_tag`` per tag, fixed seeds.

    Items cycle through the split's prompts in a fixed shuffled order, so every distinct prompt
    appears before any repeats, and item ``i`` is the same whatever ``n_per_tag`` is.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    tags = list(TAGS) if tags is None else list(tags)
    items = []
    for tag in tags:
        if tag not in TAGS:
            raise ValueError(f"unknown tag {tag!r}; known: {TAGS}")
        ti = TAGS.index(tag)
        prompts = split_prompts(tag, split)
        order = np.random.default_rng([_ORDER_SEED, ti, SPLITS.index(split)]).permutation(len(prompts))
        for i in range(n_per_tag):
            md = prompts[int(order[i % len(prompts)])]
            items.append(
                {
                    "id": f"minimug-{split}-{tag}-{i:03d}",
                    "prompt": md["prompt"],
                    "metadata": copy.deepcopy(md),
                    "seed": _SEED_BASE[split] + 1000 * ti + i,
                }
            )
    return items


__all__ = [
    "HELD_OUT_BINDINGS",
    "SHARED_TEXT_TAGS",
    "combination",
    "is_test_combination",
    "is_train_prompt",
    "sample_train_prompt",
    "split_prompts",
    "world_suite",
]
