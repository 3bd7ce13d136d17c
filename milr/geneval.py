"""GenEval's per-image rules, written once and shared by every detector-based scorer.

GenEval (Ghosh et al. 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image
Alignment", arXiv 2310.11513, github.com/djghosh13/geneval, MIT) judges an image against a prompt's
metadata (``tag``, ``include`` [{class, count, color?, position?: [rel, k]}], ``exclude``
[{class, count}]) using an object detector and a colour classifier. The rules are paraphrased in
the project's ``docs/benchmarks.md`` section 1; this module implements them from that text (no
upstream code is copied) and is model-agnostic: it consumes a list of :class:`Detection` from any
detector (MiniMUG's exact scorer, a YOLO/CLIP critic, ground truth).

Rules, in short:

* keep detections with score strictly above 0.3 (strictly above 0.9 for the ``counting`` tag),
  sort each class by score (highest first; ties keep the detector's order, as upstream) and keep
  at most 16 per class;
* include clauses are checked in order: the top-``count`` detections of the class must exist;
  if the clause has a colour, at least ``count`` of those objects must have it; if it has
  ``position: [rel, k]``, every one of those objects must stand in relation ``rel`` to every
  object matched by clause k (and clause k must itself have passed);
* an exclude clause fails when its class has at least ``count`` detections;
* :func:`relpos` shrinks the centre offset per axis by 0.1 * (size_A + size_B), divides by the
  norm of the *original* offset and cuts at 0.5 (y points down).

:func:`evaluate` also returns ``partial``, the fraction of sub-checks passed, as a dense signal
for search (not part of GenEval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

# Thresholds from GenEval's evaluation script (docs/benchmarks.md section 1).
SCORE_THRESHOLD = 0.3
COUNTING_SCORE_THRESHOLD = 0.9
MAX_PER_CLASS = 16
POSITION_SHRINK = 0.1
RELATION_CUT = 0.5
NO_OFFSET_EPS = 1e-3

RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

Box = tuple[float, float, float, float]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0 when the union is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, box ``(x1, y1, x2, y2)`` in pixels (y down), score.

    ``color`` is whatever a colour classifier said about the object (``None`` when unknown).
    """

    cls: str
    box: Box
    score: float = 1.0
    color: Optional[str] = None


@dataclass
class GenEvalResult:
    """Verdict on one image.

    ``correct`` is GenEval's pass/fail; ``reason`` explains failures in GenEval's style (one line
    per failed check, empty when correct); ``partial`` in [0, 1] is the fraction of sub-checks
    passed (1.0 exactly when ``correct``); ``checks`` lists ``(name, passed)`` per sub-check.
    """

    correct: bool
    reason: str
    partial: float
    checks: list[tuple[str, bool]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Relative position
# ---------------------------------------------------------------------------------------------
def relative_offset(box_a: Sequence[float], box_b: Sequence[float]) -> Optional[tuple[float, float]]:
    """GenEval's normalised offset ``(dx, dy)`` of A's centre from B's, or None when negligible.

    Each axis of the centre offset is pulled toward 0 by 0.1 * (size_A + size_B) (sizes along
    that axis) but not past 0; the result is divided by the norm of the original offset. If both
    shrunk components are below 1e-3 the pair has no relation (None).
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    off_x = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    off_y = (ay1 + ay2) / 2 - (by1 + by2) / 2
    shrink_x = POSITION_SHRINK * ((ax2 - ax1) + (bx2 - bx1))
    shrink_y = POSITION_SHRINK * ((ay2 - ay1) + (by2 - by1))
    rev_x = math.copysign(max(abs(off_x) - shrink_x, 0.0), off_x)
    rev_y = math.copysign(max(abs(off_y) - shrink_y, 0.0), off_y)
    if abs(rev_x) < NO_OFFSET_EPS and abs(rev_y) < NO_OFFSET_EPS:
        return None
    norm = math.hypot(off_x, off_y)  # the ORIGINAL offset, as GenEval does
    return rev_x / norm, rev_y / norm


def relpos(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """The relations A has to B under GenEval's rule; may hold two at once (e.g. diagonal)."""
    d = relative_offset(box_a, box_b)
    rels: set[str] = set()
    if d is None:
        return rels
    dx, dy = d
    if dx < -RELATION_CUT:
        rels.add("left of")
    if dx > RELATION_CUT:
        rels.add("right of")
    if dy < -RELATION_CUT:
        rels.add("above")
    if dy > RELATION_CUT:
        rels.add("below")
    return rels


# ---------------------------------------------------------------------------------------------
# The per-image rule
# ---------------------------------------------------------------------------------------------
def filter_detections(detections: Iterable[Detection], tag: str) -> dict[str, list[Detection]]:
    """Per-class detections above the tag's score cut, best first, at most 16 per class."""
    cut = COUNTING_SCORE_THRESHOLD if tag == "counting" else SCORE_THRESHOLD
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        if det.score > cut:  # strict, as GenEval
            by_class.setdefault(det.cls, []).append(det)
    for cls, dets in by_class.items():
        # sorted() is stable: equal scores keep the detector's order.
        by_class[cls] = sorted(dets, key=lambda d: -d.score)[:MAX_PER_CLASS]
    return by_class


def evaluate(
    metadata: Mapping[str, Any],
    detections: Iterable[Detection],
    color_of: Optional[Callable[[Detection], str]] = None,
) -> GenEvalResult:
    """Judge one image's detections against GenEval metadata.

    ``color_of``, when given, is called lazily on the top-``count`` objects of clauses that ask
    for a colour (GenEval classifies colour on the object's crop); otherwise ``Detection.color``
    is used.
    """
    tag = metadata.get("tag", "")
    objects = filter_detections(detections, tag)
    checks: list[tuple[str, bool]] = []
    reasons: list[str] = []
    groups: list[Optional[list[Detection]]] = []  # objects matched by each include clause

    for i, clause in enumerate(metadata.get("include", [])):
        cls, count = clause["class"], int(clause["count"])
        found = objects.get(cls, [])[:count]
        matched = len(found) >= count
        checks.append((f"include[{i}] count", matched))
        if not matched:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")

        if "color" in clause:
            target = clause["color"]
            color_ok = False
            if matched:  # GenEval only classifies colours of objects it found
                colors = [color_of(d) if color_of is not None else d.color for d in found]
                n_target = sum(c == target for c in colors)
                color_ok = n_target >= count
                if not color_ok:
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(f"expected {target} {cls}>={count}, found {n_target} {target}; and {seen}")
            matched = matched and color_ok
            checks.append((f"include[{i}] color", color_ok))

        if "position" in clause:
            rel, k = clause["position"][0], int(clause["position"][1])
            pos_ok = False
            if matched:  # GenEval checks position only when count (and colour) passed
                targets = groups[k] if 0 <= k < len(groups) else None
                if targets is None:
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    pos_ok = True
                    for a in found:
                        for b in targets:
                            rels = relpos(a.box, b.box)
                            if rel not in rels:
                                pos_ok = False
                                found_rels = " and ".join(sorted(rels)) or "no relation to"
                                reasons.append(f"expected {cls} {rel} target, found {found_rels} target")
                                break
                        if not pos_ok:
                            break
            matched = matched and pos_ok
            checks.append((f"include[{i}] position", pos_ok))

        groups.append(found if matched else None)

    for i, clause in enumerate(metadata.get("exclude", [])):
        cls, count = clause["class"], int(clause["count"])
        n = len(objects.get(cls, []))
        ok = n < count
        checks.append((f"exclude[{i}]", ok))
        if not ok:
            reasons.append(f"expected {cls}<{count}, found {n}")

    correct = all(ok for _, ok in checks)
    partial = sum(ok for _, ok in checks) / len(checks) if checks else 1.0
    return GenEvalResult(correct=correct, reason="\n".join(reasons), partial=float(partial), checks=checks)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
def _record_tag_correct(record: Any) -> tuple[str, bool]:
    if isinstance(record, Mapping):
        tag = record.get("tag") or record.get("metadata", {}).get("tag")
        correct = record["correct"]
    else:
        tag = getattr(record, "tag", None) or getattr(record, "metadata", {}).get("tag")
        correct = getattr(record, "correct")
    if tag is None:
        raise ValueError(f"record has no tag: {record!r}")
    return str(tag), bool(correct)


def geneval_summary(records: Iterable[Any]) -> dict[str, float]:
    """GenEval's aggregation: per-tag mean over images, Overall = unweighted mean over tags present.

    ``records`` are mappings (or objects) with ``tag`` (or ``metadata["tag"]``) and ``correct``,
    one per image. Returns ``{tag: score, ..., "overall": score}``, tags in GenEval's order first.
    """
    totals: dict[str, list[int]] = {}
    for rec in records:
        tag, correct = _record_tag_correct(rec)
        t = totals.setdefault(tag, [0, 0])
        t[0] += int(correct)
        t[1] += 1
    order = [t for t in TAGS if t in totals] + sorted(t for t in totals if t not in TAGS)
    out = {tag: totals[tag][0] / totals[tag][1] for tag in order}
    out["overall"] = sum(out.values()) / len(out) if out else 0.0
    return out


__all__ = [
    "Detection",
    "box_iou",
    "GenEvalResult",
    "RELATIONS",
    "TAGS",
    "evaluate",
    "filter_detections",
    "geneval_summary",
    "relative_offset",
    "relpos",
]
