"""Yes/no questions about MiniMUG scenes, each answered by GenEval's rules on its own metadata.

A question is a world sentence ("is there a red circle ?", "is the square left of the cross ?") with
GenEval-schema metadata (Ghosh et al. 2023) whose verdict is the answer, so the same question can be
answered from a scene's truth or from detections on a generated image. Questions decompose a prompt
(:func:`questions_for`) the way decomposed-question scorers such as TIFA (Hu et al. 2023) and
Davidsonian Scene Graph (Cho et al. 2024) do, and train the model's understanding head.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from milr.geneval import relative_offset

from .palette import COLORS
from .prompts import COUNT_WORDS, PLURALS, RELATIONS, geneval_metadata, noun_phrase
from .scenes import SHAPES, Scene, obj_box, truth


def _q_presence(a: str) -> str:
    return f"is there {noun_phrase(a)} ?"


def _q_color(a: str, c: str) -> str:
    return f"is there {noun_phrase(c, a)} ?"


def _q_count(a: str, n: int) -> str:
    if n == 1:
        return f"is there exactly one {a} ?"
    return f"are there exactly {COUNT_WORDS[n]} {PLURALS[a]} ?"


def _q_relation(a: str, rel: str, b: str) -> str:
    return f"is the {a} {rel} the {b} ?"


@lru_cache(maxsize=None)
def _question_table() -> dict[str, tuple[str, dict]]:
    """question text -> (kind, GenEval metadata). The metadata decides the answer."""
    table: dict[str, tuple[str, dict]] = {}
    for a in SHAPES:
        q = _q_presence(a)
        table[q] = ("presence", geneval_metadata("single_object", q, [{"class": a, "count": 1}]))
    for a in SHAPES:
        for c in COLORS:
            q = _q_color(a, c)
            table[q] = ("color", geneval_metadata("colors", q, [{"class": a, "count": 1, "color": c}]))
    for a in SHAPES:
        for n in COUNT_WORDS:
            q = _q_count(a, n)
            table[q] = ("count", geneval_metadata("counting", q, [{"class": a, "count": n}], [{"class": a, "count": n + 1}]))
    for a in SHAPES:
        for rel in RELATIONS:
            for b in SHAPES:
                if a != b:
                    q = _q_relation(a, rel, b)
                    inc = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
                    table[q] = ("relation", geneval_metadata("position", q, inc))
    return table


QUESTION_KINDS = ("presence", "color", "count", "relation")


def all_questions() -> list[str]:
    """Every question the world can ask, in a fixed order."""
    return list(_question_table())


def question_metadata(question: str) -> dict:
    """GenEval metadata whose verdict is the answer to ``question`` (works on detected images too)."""
    try:
        return copy.deepcopy(_question_table()[question.strip()][1])
    except KeyError:
        raise ValueError(f"not a world question: {question!r}") from None


def question_kind(question: str) -> str:
    """``presence``, ``color``, ``count`` or ``relation``."""
    try:
        return _question_table()[question.strip()][0]
    except KeyError:
        raise ValueError(f"not a world question: {question!r}") from None


def answer(scene: Scene, question: str) -> bool:
    """Ground-truth answer: GenEval's verdict on the question's metadata for the scene's objects."""
    return truth(scene, question_metadata(question))


def questions_for(metadata: Mapping[str, Any]) -> list[str]:
    """Decomposed yes/no questions whose answers are all "yes" exactly when the prompt holds.

    Presence of each included class, then its colour, exact count (counting) or relation.
    """
    inc = metadata.get("include", [])
    excl = {c["class"]: int(c["count"]) for c in metadata.get("exclude", [])}
    qs: list[str] = []
    for clause in inc:
        a, n = clause["class"], int(clause["count"])
        if excl.get(a) == n + 1:
            qs.append(_q_count(a, n))
            continue
        if n != 1:
            raise ValueError(f"no world question for {n} x {a} without an exact-count exclude")
        qs.append(_q_presence(a))
        if "color" in clause:
            qs.append(_q_color(a, clause["color"]))
    for clause in inc:
        if "position" in clause:
            rel, k = clause["position"][0], int(clause["position"][1])
            qs.append(_q_relation(clause["class"], rel, inc[k]["class"]))
    return list(dict.fromkeys(qs))


def _unambiguous(scene: Scene, question: str) -> bool:
    """Skip questions whose GenEval answer hinges on detector order or a near-cut relation."""
    kind = question_kind(question)
    md = question_metadata(question)
    counts = {s: sum(o.shape == s for o in scene.objects) for s in SHAPES}
    if kind == "color":
        # With two objects of the class, "top-1" is an arbitrary one of them.
        return counts[md["include"][0]["class"]] <= 1
    if kind == "relation":
        b, a = md["include"][0]["class"], md["include"][1]["class"]
        if counts[a] > 1 or counts[b] > 1:
            return False
        if counts[a] == 1 and counts[b] == 1:
            oa = next(o for o in scene.objects if o.shape == a)
            ob = next(o for o in scene.objects if o.shape == b)
            d = relative_offset(obj_box(oa), obj_box(ob)) or (0.0, 0.0)
            rel = md["include"][1]["position"][0]
            comp = d[0] if rel in ("left of", "right of") else d[1]
            cut = -0.5 if rel in ("left of", "above") else 0.5
            return abs(comp - cut) >= 0.1
    return True


@lru_cache(maxsize=None)
def _questions_by_kind() -> dict[str, tuple[str, ...]]:
    table = _question_table()
    return {k: tuple(q for q, (kind, _) in table.items() if kind == k) for k in QUESTION_KINDS}


def sample_question(scene: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    """A yes/no question about the scene and its answer, yes and no equally likely.

    The kind (presence, colour, exact count, relation) is drawn uniformly; if no question of that
    kind has the drawn answer (e.g. a "yes" relation in a one-object scene), other kinds are
    tried. Questions whose GenEval answer would be order-dependent or within 0.1 of a relation
    cut are not asked.
    """
    want = bool(rng.random() < 0.5)
    by_kind = _questions_by_kind()
    for kind_i in rng.permutation(len(QUESTION_KINDS)):
        qs = by_kind[QUESTION_KINDS[int(kind_i)]]
        for qi in rng.permutation(len(qs)):
            q = qs[int(qi)]
            if answer(scene, q) == want and _unambiguous(scene, q):
                return q, want
    raise RuntimeError("no question with the wanted answer")  # unreachable for valid scenes



__all__ = [
    "QUESTION_KINDS",
    "all_questions",
    "answer",
    "question_kind",
    "question_metadata",
    "questions_for",
    "sample_question",
]
