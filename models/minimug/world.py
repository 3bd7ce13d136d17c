"""MiniMUG's procedural scene world: shapes on a white 32x32 canvas, GenEval-style prompts.

The world mirrors GenEval (Ghosh et al. 2023, arXiv 2310.11513, github.com/djghosh13/geneval; the
rules are paraphrased in ``docs/benchmarks.md`` section 1) at toy scale, so a small model can be
trained on a CPU and judged exactly:

* images are ``np.uint8 [32, 32, 3]``, white background, 1 to 4 flat-coloured objects of 8 to 12
  pixels (square bounding boxes), fully inside the canvas and at least 2 pixels apart (their
  boxes are separated by 2 background pixels on at least one axis);
* 5 shapes whose pixel masks differ at every size (a template matcher separates them exactly) and
  7 GenEval colour names with RGB values chosen far from each other and from white;
* prompts come in GenEval's six categories with metadata in GenEval's exact schema (``tag``,
  ``include``, ``exclude`` for counting only, ``prompt``); truth is decided by the shared rule
  engine :mod:`milr.geneval` on ground-truth detections, the same engine the pixel scorer
  (:mod:`milr.models.minimug.scorer`) feeds, so the two can only disagree through detection;
* scenes that satisfy a prompt (training data), near-misses that fail it (preference and
  understanding data), a short word-level plan of a scene, and balanced yes/no questions.

Everything random takes a ``numpy.random.Generator``; the same seed gives the same output.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from milr.geneval import Detection, GenEvalResult, evaluate, relative_offset

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------
IMAGE_SIZE = 32
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
SHAPES: list[str] = ["circle", "square", "triangle", "diamond", "cross"]
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
# GenEval colour names. Values are >= 85 apart (RGB Euclidean) and >= 250 from white; every blend
# of a colour with white is nearer that colour or white than any other colour (checked in
# tests), so anti-aliased or decoded edge pixels never read as a third colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 0),
    "yellow": (240, 215, 0),
    "green": (20, 150, 40),
    "blue": (30, 70, 220),
    "purple": (130, 40, 170),
    "black": (20, 20, 20),
}
# 8 px is the smallest size at which every pair of shapes differs in >= 12 pixels (at 7 px a
# circle and a cross differ in 4), which keeps the classifier robust on generated images.
MIN_SIZE, MAX_SIZE = 8, 12
MIN_GAP = 2
MAX_OBJECTS = 4
TAGS: list[str] = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
RELATIONS: list[str] = ["left of", "right of", "above", "below"]
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
PROMPT_COUNTS = (2, 3, 4)  # GenEval's counting prompts use 2, 3 and 4
# Coarse 3x3 grid words of plans (columns, rows).
COLUMN_WORDS = ("left", "center", "right")
ROW_WORDS = ("top", "middle", "bottom")

# Largest object size allowed for n objects, so 4 objects always fit with their gaps.
_MAX_SIZE_FOR_N = {1: 12, 2: 12, 3: 11, 4: 10}
# Position scenes keep the asked relation clear of GenEval's 0.5 cut: main component beyond
# 0.5 + margin, the other axis below 0.5 - margin (one unambiguous relation).
POSITION_MARGIN = 0.15
DISTRACTOR_PROB = 0.35


# ---------------------------------------------------------------------------------------------
# Objects, scenes, rendering
# ---------------------------------------------------------------------------------------------
@dataclass
class Obj:
    """One object: shape, colour name, box centre ``(cx, cy)`` in pixels and side ``size``.

    The box is ``(cx - size/2, cy - size/2, cx + size/2, cy + size/2)`` snapped to whole pixels;
    use :func:`make_obj` to build one from its top-left corner.
    """

    shape: str
    color: str
    cx: float
    cy: float
    size: int


@dataclass
class Scene:
    objects: list[Obj] = field(default_factory=list)


def make_obj(shape: str, color: str, x1: int, y1: int, size: int) -> Obj:
    """An object whose box has top-left pixel ``(x1, y1)``."""
    return Obj(shape=shape, color=color, cx=x1 + size / 2, cy=y1 + size / 2, size=int(size))


def obj_box(obj: Obj) -> tuple[int, int, int, int]:
    """Pixel box ``(x1, y1, x2, y2)``, x2/y2 exclusive; the scorer returns the same box."""
    x1 = int(math.floor(obj.cx - obj.size / 2 + 0.5))
    y1 = int(math.floor(obj.cy - obj.size / 2 + 0.5))
    return x1, y1, x1 + obj.size, y1 + obj.size


@lru_cache(maxsize=None)
def _shape_mask_cached(shape: str, h: int, w: int) -> np.ndarray:
    # Pixel-centre coordinates normalised to [-1, 1] per axis; ``t`` is half a pixel step, used as
    # tolerance so that every shape touches all four sides of its box at every size (the box of
    # the rendered pixels is then exactly the object's box).
    def axis(n: int) -> tuple[np.ndarray, float]:
        if n == 1:
            return np.zeros(1), 1.0
        return (np.arange(n) - (n - 1) / 2) / ((n - 1) / 2), 1.0 / (n - 1)

    u, tu = axis(w)
    v, tv = axis(h)
    uu, vv = np.meshgrid(u, v)  # [h, w]
    eps = 1e-9
    if shape == "square":
        m = np.ones((h, w), bool)
    elif shape == "circle":
        m = uu**2 + vv**2 <= 1.1**2 + eps
    elif shape == "diamond":
        m = np.abs(uu) / (1 + tu) + np.abs(vv) / (1 + tv) <= 1 + eps
    elif shape == "triangle":  # apex up, base at the bottom
        m = np.abs(uu) <= (vv + 1) / 2 + tu + eps
    elif shape == "cross":  # plus sign, arms about a third of the side
        m = (np.abs(uu) <= 0.34 + eps) | (np.abs(vv) <= 0.34 + eps)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    m = np.ascontiguousarray(m)
    m.setflags(write=False)
    return m


def shape_mask(shape: str, h: int, w: Optional[int] = None) -> np.ndarray:
    """Boolean pixel mask ``[h, w]`` of a shape filling an ``h x w`` box (read-only, cached)."""
    return _shape_mask_cached(shape, int(h), int(h if w is None else w))


def render(scene: Scene) -> np.ndarray:
    """Draw the scene: ``np.uint8 [32, 32, 3]``, flat colours on white, no anti-aliasing."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    for obj in scene.objects:
        x1, y1, x2, y2 = obj_box(obj)
        if x1 < 0 or y1 < 0 or x2 > IMAGE_SIZE or y2 > IMAGE_SIZE:
            raise ValueError(f"object outside the canvas: {obj}")
        region = img[y1:y2, x1:x2]
        region[shape_mask(obj.shape, obj.size)] = COLORS[obj.color]
    return img


def _boxes_apart(a: Sequence[int], b: Sequence[int], gap: int = MIN_GAP) -> bool:
    # Boxes are [x1, x2) x [y1, y2); ``gap`` background pixels must separate them on some axis.
    gap_x = max(b[0] - a[2], a[0] - b[2])
    gap_y = max(b[1] - a[3], a[1] - b[3])
    return max(gap_x, gap_y) >= gap


def scene_is_valid(scene: Scene) -> bool:
    """World invariants: 1-4 known objects, sizes 8-12, inside the canvas, >= 2 px apart."""
    if not 1 <= len(scene.objects) <= MAX_OBJECTS:
        return False
    boxes = [obj_box(o) for o in scene.objects]
    for o, b in zip(scene.objects, boxes):
        if o.shape not in SHAPES or o.color not in COLORS or not MIN_SIZE <= o.size <= MAX_SIZE:
            return False
        if b[0] < 0 or b[1] < 0 or b[2] > IMAGE_SIZE or b[3] > IMAGE_SIZE:
            return False
    return all(_boxes_apart(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def gt_detections(scene: Scene) -> list[Detection]:
    """The scene's exact objects as detections (score 1.0, true colours).

    Sorted by box top-left (x, then y), the same canonical order the scorer uses, so GenEval's
    "top-count" choice among equal scores picks the same objects in both.
    """
    dets = [Detection(o.shape, tuple(obj_box(o)), 1.0, o.color) for o in scene.objects]
    return sorted(dets, key=lambda d: (d.box[0], d.box[1]))


def truth(scene: Scene, metadata: Mapping[str, Any]) -> bool:
    """Ground truth: does the scene satisfy the prompt under GenEval's rules?"""
    return evaluate(metadata, gt_detections(scene)).correct


def truth_result(scene: Scene, metadata: Mapping[str, Any]) -> GenEvalResult:
    """Like :func:`truth` but returns the full result (reason, partial)."""
    return evaluate(metadata, gt_detections(scene))


# ---------------------------------------------------------------------------------------------
# Prompts (GenEval schema)
# ---------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(word: str, *more: str) -> str:
    """'a circle', 'an orange square'."""
    return " ".join((_article(word), word) + more)


def _md(tag: str, prompt: str, include: list[dict], exclude: Optional[list[dict]] = None) -> dict:
    # Key order as in GenEval's evaluation_metadata.jsonl.
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
        return _md(tag, f"a photo of {_np(a)}", [{"class": a, "count": 1}])
    if tag == "two_object":
        a, b = kw["a"], kw["b"]
        return _md(tag, f"a photo of {_np(a)} and {_np(b)}", [{"class": a, "count": 1}, {"class": b, "count": 1}])
    if tag == "counting":
        a, n = kw["a"], int(kw["n"])
        return _md(
            tag,
            f"a photo of {COUNT_WORDS[n]} {PLURALS[a]}",
            [{"class": a, "count": n}],
            [{"class": a, "count": n + 1}],
        )
    if tag == "colors":
        a, c = kw["a"], kw["color"]
        return _md(tag, f"a photo of {_np(c, a)}", [{"class": a, "count": 1, "color": c}])
    if tag == "position":
        # GenEval: include[0] is the reference object, include[1] the one placed relative to it.
        a, rel, b = kw["a"], kw["rel"], kw["b"]
        return _md(
            tag,
            f"a photo of {_np(a)} {rel} {_np(b)}",
            [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
        )
    if tag == "color_attr":
        a, c, b, cb = kw["a"], kw["color"], kw["b"], kw["color_b"]
        return _md(
            tag,
            f"a photo of {_np(c, a)} and {_np(cb, b)}",
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
# Scene sampling
# ---------------------------------------------------------------------------------------------
def relation_clear(box_a: Sequence[float], box_b: Sequence[float], rel: str, margin: float = POSITION_MARGIN) -> bool:
    """A has ``rel`` to B with ``margin`` beyond GenEval's cut, and no relation on the other axis."""
    d = relative_offset(box_a, box_b)
    if d is None:
        return False
    dx, dy = d
    main, other = (dx, dy) if rel in ("left of", "right of") else (dy, dx)
    sign = -1.0 if rel in ("left of", "above") else 1.0
    return sign * main > 0.5 + margin and abs(other) < 0.5 - margin


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_ORTHOGONAL = {
    "left of": ("above", "below"),
    "right of": ("above", "below"),
    "above": ("left of", "right of"),
    "below": ("left of", "right of"),
}


@dataclass
class _Spec:
    shape: str
    color: str
    group: int  # include clause index, or -1 for a distractor


def _random_color(rng: np.random.Generator, exclude: Sequence[str] = ()) -> str:
    names = [c for c in COLORS if c not in exclude]
    return names[int(rng.integers(len(names)))]


def _random_shape(rng: np.random.Generator, exclude: Sequence[str] = ()) -> str:
    names = [s for s in SHAPES if s not in exclude]
    return names[int(rng.integers(len(names)))]


def _place(
    rng: np.random.Generator,
    specs: Sequence[_Spec],
    accept: Optional[Callable[[list[Obj]], bool]] = None,
    tries: int = 400,
) -> list[Obj]:
    """Random non-touching placement of ``specs`` (in order); ``accept`` filters whole layouts."""
    n = len(specs)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {n}")
    hi = _MAX_SIZE_FOR_N[n]
    for _ in range(tries):
        objs: list[Obj] = []
        for spec in specs:
            for _ in range(60):
                size = int(rng.integers(MIN_SIZE, hi + 1))
                x1 = int(rng.integers(0, IMAGE_SIZE - size + 1))
                y1 = int(rng.integers(0, IMAGE_SIZE - size + 1))
                obj = make_obj(spec.shape, spec.color, x1, y1, size)
                box = obj_box(obj)
                if all(_boxes_apart(box, obj_box(o)) for o in objs):
                    objs.append(obj)
                    break
            else:
                break
        if len(objs) == n and (accept is None or accept(objs)):
            return objs
    raise RuntimeError(f"could not place {[(s.shape, s.color) for s in specs]} in {tries} tries")


def _specs_for(metadata: Mapping[str, Any], rng: np.random.Generator) -> list[_Spec]:
    """One spec per object the include clauses ask for (colour as asked, else random)."""
    specs = []
    for gi, clause in enumerate(metadata.get("include", [])):
        for _ in range(int(clause["count"])):
            specs.append(_Spec(clause["class"], clause.get("color") or _random_color(rng), gi))
    return specs


def _prompt_classes(metadata: Mapping[str, Any]) -> set[str]:
    return {c["class"] for c in metadata.get("include", [])} | {c["class"] for c in metadata.get("exclude", [])}


def _position_accept(specs: Sequence[_Spec], constraints: Sequence[tuple[int, str, int]]) -> Callable[[list[Obj]], bool]:
    """Layout filter: every object of group g has ``rel`` (clearly) to every object of group k."""

    def accept(objs: list[Obj]) -> bool:
        for g, rel, k in constraints:
            for sa, oa in zip(specs, objs):
                if sa.group != g:
                    continue
                for sb, ob in zip(specs, objs):
                    if sb.group == k and not relation_clear(obj_box(oa), obj_box(ob), rel):
                        return False
        return True

    return accept


def _finish(
    rng: np.random.Generator,
    specs: list[_Spec],
    metadata: Mapping[str, Any],
    constraints: Sequence[tuple[int, str, int]],
    distractor_prob: float,
) -> Scene:
    # Optionally add one distractor of a class the prompt never mentions (never a counted class).
    others = [s for s in SHAPES if s not in _prompt_classes(metadata)]
    if len(specs) < MAX_OBJECTS and others and (not specs or rng.random() < distractor_prob):
        specs = specs + [_Spec(_random_shape(rng, _prompt_classes(metadata)), _random_color(rng), -1)]
    order = rng.permutation(len(specs))  # object order in the scene carries no meaning
    specs = [specs[i] for i in order]
    objs = _place(rng, specs, _position_accept(specs, constraints) if constraints else None)
    return Scene(objs)


def _constraints(metadata: Mapping[str, Any]) -> list[tuple[int, str, int]]:
    return [
        (gi, c["position"][0], int(c["position"][1]))
        for gi, c in enumerate(metadata.get("include", []))
        if "position" in c
    ]


def sample_scene_for(metadata: Mapping[str, Any], rng: np.random.Generator) -> Scene:
    """A random scene that satisfies the prompt (training data for the generator).

    Included objects get the asked colour (else a random one); positions hold with a margin and
    on one axis only; with probability 0.35 one distractor of an unmentioned class is added.
    """
    for _ in range(20):
        scene = _finish(rng, _specs_for(metadata, rng), metadata, _constraints(metadata), DISTRACTOR_PROB)
        if truth(scene, metadata):
            return scene
    raise RuntimeError(f"could not sample a scene satisfying {metadata.get('prompt')!r}")


VIOLATION_KINDS = ("missing", "fewer", "more", "wrong_color", "swap_colors", "swap_position", "orthogonal_position")


def _violation_kinds(metadata: Mapping[str, Any]) -> list[str]:
    inc = metadata.get("include", [])
    kinds = ["missing"]
    if any(c["count"] > 1 for c in inc):
        kinds.append("fewer")
    if metadata.get("exclude") and sum(c["count"] for c in inc) < MAX_OBJECTS:
        kinds.append("more")
    colored = [c for c in inc if "color" in c]
    if colored:
        kinds.append("wrong_color")
    if len(colored) >= 2 and len({c["color"] for c in colored}) >= 2:
        kinds.append("swap_colors")
    if any("position" in c for c in inc):
        kinds += ["swap_position", "orthogonal_position"]
    return kinds


def sample_scene_violating(
    metadata: Mapping[str, Any], rng: np.random.Generator, kind: Optional[str] = None
) -> Scene:
    """A near-miss scene that fails the prompt (preference / understanding data).

    ``kind`` (random among those that apply when None): ``missing`` (one asked object absent,
    sometimes replaced by an unmentioned shape), ``fewer`` / ``more`` (count off by one),
    ``wrong_color``, ``swap_colors`` (colour binding swapped), ``swap_position`` (opposite
    relation), ``orthogonal_position`` (relation on the other axis).
    """
    kinds = _violation_kinds(metadata)
    if kind is not None and kind not in kinds:
        raise ValueError(f"violation {kind!r} does not apply to {metadata.get('prompt')!r}; options: {kinds}")
    inc = metadata.get("include", [])
    for _ in range(50):
        k = kind or kinds[int(rng.integers(len(kinds)))]
        specs = _specs_for(metadata, rng)
        constraints = _constraints(metadata)
        if k == "missing":
            g = int(rng.integers(len(inc)))
            specs = [s for s in specs if s.group != g]
            # Position constraints that involve the removed group no longer apply.
            constraints = [c for c in constraints if g not in (c[0], c[2])]
        elif k == "fewer":
            g = int(rng.choice([i for i, c in enumerate(inc) if c["count"] > 1]))
            drop = next(i for i, s in enumerate(specs) if s.group == g)
            specs.pop(drop)
        elif k == "more":
            g = int(rng.integers(len(inc)))
            specs.append(_Spec(inc[g]["class"], _random_color(rng), g))
        elif k == "wrong_color":
            g = int(rng.choice([i for i, c in enumerate(inc) if "color" in c]))
            i = next(i for i, s in enumerate(specs) if s.group == g)
            specs[i].color = _random_color(rng, exclude=[inc[g]["color"]])
        elif k == "swap_colors":
            gs = [i for i, c in enumerate(inc) if "color" in c]
            g1, g2 = rng.choice(gs, size=2, replace=False)
            for s in specs:
                if s.group == g1:
                    s.color = inc[g2]["color"]
                elif s.group == g2:
                    s.color = inc[g1]["color"]
        elif k in ("swap_position", "orthogonal_position"):
            new = []
            for g, rel, t in constraints:
                if k == "swap_position":
                    bad = _OPPOSITE[rel]
                else:
                    bad = _ORTHOGONAL[rel][int(rng.integers(2))]
                new.append((g, bad, t))
            constraints = new
        if len(specs) > MAX_OBJECTS:
            continue
        try:
            scene = _finish(rng, specs, metadata, constraints, DISTRACTOR_PROB)
        except RuntimeError:
            continue
        if not truth(scene, metadata):
            return scene
    raise RuntimeError(f"could not sample a scene violating {metadata.get('prompt')!r} ({kind})")


def random_scene(rng: np.random.Generator, n_objects: Optional[int] = None) -> Scene:
    """An unconditional scene: 1-4 objects of random shapes and colours (repeats allowed)."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else int(n_objects)
    specs = [_Spec(_random_shape(rng), _random_color(rng), -1) for _ in range(n)]
    return Scene(_place(rng, specs))


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
# Understanding: yes/no questions with GenEval-schema metadata
# ---------------------------------------------------------------------------------------------
def _q_presence(a: str) -> str:
    return f"is there {_np(a)} ?"


def _q_color(a: str, c: str) -> str:
    return f"is there {_np(c, a)} ?"


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
        table[q] = ("presence", _md("single_object", q, [{"class": a, "count": 1}]))
    for a in SHAPES:
        for c in COLORS:
            q = _q_color(a, c)
            table[q] = ("color", _md("colors", q, [{"class": a, "count": 1, "color": c}]))
    for a in SHAPES:
        for n in COUNT_WORDS:
            q = _q_count(a, n)
            table[q] = ("count", _md("counting", q, [{"class": a, "count": n}], [{"class": a, "count": n + 1}]))
    for a in SHAPES:
        for rel in RELATIONS:
            for b in SHAPES:
                if a != b:
                    q = _q_relation(a, rel, b)
                    inc = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
                    table[q] = ("relation", _md("position", q, inc))
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
    "BACKGROUND",
    "COLORS",
    "IMAGE_SIZE",
    "PLURALS",
    "RELATIONS",
    "SHAPES",
    "TAGS",
    "VOCAB",
    "Obj",
    "Scene",
    "all_prompts",
    "all_questions",
    "answer",
    "gt_detections",
    "make_obj",
    "make_prompt",
    "obj_box",
    "plan_text",
    "question_metadata",
    "questions_for",
    "random_scene",
    "render",
    "sample_prompt",
    "sample_question",
    "sample_scene_for",
    "sample_scene_violating",
    "scene_is_valid",
    "shape_mask",
    "truth",
]
