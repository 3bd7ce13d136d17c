"""MiniMUG's prompts in GenEval's six categories and schema, scene plans, and the word vocabulary.

Prompt texts and metadata follow GenEval's ``evaluation_metadata.jsonl`` (Ghosh et al. 2023,
github.com/djghosh13/geneval): ``tag``, ``include``, ``exclude`` for counting only, ``prompt``; the
categories are :data:`milr.geneval.TAGS`. A plan is a short word-level description of a scene
(colour, shape and a coarse 3x3 grid cell per object) that the model writes before drawing.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from milr.geneval import TAGS

from .palette import COLORS
from .scenes import IMAGE_SIZE, SHAPES, Obj, Scene

PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
RELATIONS: list[str] = ["left of", "right of", "above", "below"]
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
PROMPT_COUNTS = (2, 3, 4)  # GenEval's counting prompts use 2, 3 and 4
# Coarse 3x3 grid words of plans (columns, rows).
COLUMN_WORDS = ("left", "center", "right")
ROW_WORDS = ("top", "middle", "bottom")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(word: str, *more: str) -> str:
    """'a circle', 'an orange square'."""
    return " ".join((_article(word), word) + more)


def geneval_metadata(tag: str, prompt: str, include: list[dict], exclude: Optional[list[dict]] = None) -> dict:
    """GenEval-schema metadata, keys in the order of GenEval's ``evaluation_metadata.jsonl``."""
    md: dict[str, Any] = {"tag": tag, "include": include}
    if exclude is not None:
        md["exclude"] = exclude
    md["prompt"] = prompt
    return md


def make_prompt(tag: str, **kw: Any) -> dict:
    """Metadata for one prompt. Keyword arguments per tag:

    single_object(a) | two_object(a, b) | counting(a, n) | colors(a, color) |
    position(a, rel, b): "a photo of a {a} {rel} a {b}" | color_attr(a, color, b, color_b).
    """
    if tag == "single_object":
        a = kw["a"]
        return geneval_metadata(tag, f"a photo of {noun_phrase(a)}", [{"class": a, "count": 1}])
    if tag == "two_object":
        a, b = kw["a"], kw["b"]
        return geneval_metadata(tag, f"a photo of {noun_phrase(a)} and {noun_phrase(b)}", [{"class": a, "count": 1}, {"class": b, "count": 1}])
    if tag == "counting":
        a, n = kw["a"], int(kw["n"])
        return geneval_metadata(
            tag,
            f"a photo of {COUNT_WORDS[n]} {PLURALS[a]}",
            [{"class": a, "count": n}],
            [{"class": a, "count": n + 1}],
        )
    if tag == "colors":
        a, c = kw["a"], kw["color"]
        return geneval_metadata(tag, f"a photo of {noun_phrase(c, a)}", [{"class": a, "count": 1, "color": c}])
    if tag == "position":
        # GenEval: include[0] is the reference object, include[1] the one placed relative to it.
        a, rel, b = kw["a"], kw["rel"], kw["b"]
        return geneval_metadata(
            tag,
            f"a photo of {noun_phrase(a)} {rel} {noun_phrase(b)}",
            [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
        )
    if tag == "color_attr":
        a, c, b, cb = kw["a"], kw["color"], kw["b"], kw["color_b"]
        return geneval_metadata(
            tag,
            f"a photo of {noun_phrase(c, a)} and {noun_phrase(cb, b)}",
            [{"class": a, "count": 1, "color": c}, {"class": b, "count": 1, "color": cb}],
        )
    raise ValueError(f"unknown tag {tag!r}; known: {TAGS}")


@lru_cache(maxsize=None)
def _all_prompts_cached(tag: str) -> tuple[dict, ...]:
    out: list[dict] = []
    if tag == "single_object":
        out = [make_prompt(tag, a=a) for a in SHAPES]
    elif tag == "two_object":
        out = [make_prompt(tag, a=a, b=b) for a in SHAPES for b in SHAPES if a != b]
    elif tag == "counting":
        out = [make_prompt(tag, a=a, n=n) for n in PROMPT_COUNTS for a in SHAPES]
    elif tag == "colors":
        out = [make_prompt(tag, a=a, color=c) for c in COLORS for a in SHAPES]
    elif tag == "position":
        out = [make_prompt(tag, a=a, rel=r, b=b) for r in RELATIONS for a in SHAPES for b in SHAPES if a != b]
    elif tag == "color_attr":
        out = [
            make_prompt(tag, a=a, color=c, b=b, color_b=cb)
            for a in SHAPES
            for b in SHAPES
            if a != b
            for c in COLORS
            for cb in COLORS
            if c != cb
        ]
    else:
        raise ValueError(f"unknown tag {tag!r}; known: {TAGS}")
    return tuple(out)


def all_prompts(tag: str) -> list[dict]:
    """Every distinct prompt of a tag, in a fixed order (fresh copies)."""
    return copy.deepcopy(list(_all_prompts_cached(tag)))


def sample_prompt(rng: np.random.Generator, tag: Optional[str] = None) -> dict:
    """A uniformly random prompt of ``tag`` (a uniformly random tag when None)."""
    if tag is None:
        tag = TAGS[int(rng.integers(len(TAGS)))]
    prompts = _all_prompts_cached(tag)
    return copy.deepcopy(prompts[int(rng.integers(len(prompts)))])


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------
def grid_words(obj: Obj) -> tuple[str, str]:
    """Coarse position of the object's centre on a 3x3 grid: (column word, row word)."""
    col = min(2, int(obj.cx * 3 // IMAGE_SIZE))
    row = min(2, int(obj.cy * 3 // IMAGE_SIZE))
    return COLUMN_WORDS[col], ROW_WORDS[row]


def plan_text(scene: Scene) -> str:
    """Canonical plan, e.g. "red circle left top ; blue square right bottom".

    Objects from left to right (then top to bottom); 4 words per object plus ";" separators,
    so at most 19 words for 4 objects.
    """
    parts = []
    for o in sorted(scene.objects, key=lambda o: (o.cx, o.cy)):
        col, row = grid_words(o)
        parts.append(f"{o.color} {o.shape} {col} {row}")
    return " ; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------
def _build_vocab() -> list[str]:
    words = ["a", "an", "photo", "of", "and"]
    words += SHAPES + [PLURALS[s] for s in SHAPES] + list(COLORS)
    words += list(COUNT_WORDS.values())
    words += ["left", "right", "above", "below"]  # relations ("left of" = two words)
    words += list(COLUMN_WORDS) + list(ROW_WORDS) + [";"]  # plans
    words += ["is", "are", "there", "exactly", "the", "?"]  # questions
    return list(dict.fromkeys(words))


VOCAB: list[str] = _build_vocab()


def words(text: str) -> list[str]:
    """Word-level tokens of any prompt, plan or question (whitespace split)."""
    return text.split()




__all__ = [
    "COLUMN_WORDS",
    "COUNT_WORDS",
    "PLURALS",
    "RELATIONS",
    "ROW_WORDS",
    "TAGS",
    "VOCAB",
    "all_prompts",
    "geneval_metadata",
    "grid_words",
    "make_prompt",
    "noun_phrase",
    "plan_text",
    "sample_prompt",
    "words",
]
