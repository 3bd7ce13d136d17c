"""MiniMUG's scenes: objects on a white 32x32 canvas, rendering, ground truth and scene sampling.

The world mirrors GenEval's image side (Ghosh et al. 2023, arXiv 2310.11513) at toy scale:

* images are ``np.uint8 [32, 32, 3]``, white background, 1 to 4 flat-coloured objects of 8 to 12
  pixels (square bounding boxes), fully inside the canvas and at least 2 pixels apart (their
  boxes are separated by 2 background pixels on at least one axis);
* 5 shapes whose pixel masks differ at every size (a template matcher separates them exactly),
  coloured from :mod:`milr.world.palette`;
* truth is decided by the shared rule engine :mod:`milr.geneval` on ground-truth detections, the
  same engine the pixel scorer (:mod:`milr.world.scorer`) feeds, so the two can only disagree
  through detection;
* scenes that satisfy a prompt (training data) and near-misses that fail it (preference and
  understanding data).

Everything random takes a ``numpy.random.Generator``; the same seed gives the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from milr.geneval import Detection, GenEvalResult, evaluate, relative_offset

from .palette import BACKGROUND, COLORS

IMAGE_SIZE = 32
SHAPES: list[str] = ["circle", "square", "triangle", "diamond", "cross"]
# 8 px is the smallest size at which every pair of shapes differs in >= 12 pixels (at 7 px a
# circle and a cross differ in 4), which keeps the classifier robust on generated images.
MIN_SIZE, MAX_SIZE = 8, 12
MIN_GAP = 2
MAX_OBJECTS = 4

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


def violation_kinds(metadata: Mapping[str, Any]) -> list[str]:
    """The kinds of near miss (:data:`VIOLATION_KINDS`) that apply to a prompt."""
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
    kinds = violation_kinds(metadata)
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


__all__ = [
    "IMAGE_SIZE",
    "MAX_OBJECTS",
    "MAX_SIZE",
    "MIN_SIZE",
    "SHAPES",
    "VIOLATION_KINDS",
    "Obj",
    "Scene",
    "gt_detections",
    "make_obj",
    "obj_box",
    "random_scene",
    "relation_clear",
    "render",
    "sample_scene_for",
    "sample_scene_violating",
    "scene_is_valid",
    "shape_mask",
    "truth",
    "truth_result",
    "violation_kinds",
]
