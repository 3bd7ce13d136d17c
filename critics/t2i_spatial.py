"""``t2i_spatial``: T2I-CompBench's 2D-spatial score, on the boxes of any detector critic.

Reference: Huang et al. 2023, "T2I-CompBench" (arXiv 2307.06350), github.com/Karine-Huang/T2I-CompBench
(``UniDet_eval``); rules paraphrased in ``docs/benchmarks.md`` section 3. The benchmark detects with
UniDet (``Unified_learned_OCIM_RS200_6x+2x`` on detectron2, score > 0.5) on images resized to a short
side of 479 (long side at most 480) and measures boxes there. This critic takes detections from any
critic exposing ``detect(images) -> list[list[Detection]]`` (``geneval``'s Mask2Former by default;
``detector``'s YOLO also works) and rescales its boxes to that same 479/480 frame, so the 150 px
threshold means what it means upstream.

The rule (:func:`spatial_score`): obj1 = the prompt's first NOUN and obj2 = its last NOUN (for
complex prompts, ``mode="complex"``: the nouns either side of the relation phrase); girl, boy, man and
woman count as person; each is matched to the first (highest-scoring) detection of that label. Both
found: ``0.25*conf1 + 0.25*conf2 + 0.5*pos``; one found: ``0.25*conf``; none: 0; any score below 0.5
becomes 0. ``pos`` from ``d = centre(obj2) - centre(obj1)``: "on the left of" needs dx > 0 and
|dx| > |dy| (then 1 if IoU < 0.1 else 0.1/IoU); "on the right of" dx < 0; "on the top of" dy > 0 and
"on the bottom of" dy < 0 with |dy| > |dx|; "next to", "near", "on side of": 1 if |dx| < 150 or
|dy| < 150 else 150/max(|dx|, |dy|); any other phrase (including "on top of") gives 0.

Known difference: the label vocabulary is the detector's (COCO for Mask2Former/YOLO) instead of
UniDet's unified one; ``label_map`` renames detector labels to the nouns prompts use.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import torch

from milr.image_inputs import check_batch, uint8_hwc
from milr.critics.t2i_text import TextAnalyzer, Token, check_chunker, load_analyzer
from milr.geneval import Detection, box_iou
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

VERSION = "1"
SCORE_THRESHOLD = 0.5  # UniDet's ROI_HEADS.SCORE_THRESH_TEST, and the final cut on the score
NEAR_PX = 150.0
IOU_CUT = 0.1
SHORT_SIDE, LONG_SIDE = 479, 480  # UniDet's test-time resize; boxes are measured in that frame
PERSON_WORDS = ("girl", "boy", "man", "woman")
# Relation phrases in the order they are looked for in a prompt.
DIRECTIONAL = {"on the left of": ("x", 1), "on the right of": ("x", -1), "on the top of": ("y", 1), "on the bottom of": ("y", -1)}
NEARBY = ("next to", "near", "on side of")
# COCO class names -> the noun T2I-CompBench prompts use for them.
COCO_NOUNS = {"dining table": "table", "potted plant": "plant", "cell phone": "phone", "wine glass": "glass",
              "computer mouse": "mouse", "computer keyboard": "keyboard", "tv remote": "remote", "teddy bear": "teddy",
              "sports ball": "ball", "traffic light": "light", "fire hydrant": "hydrant", "hair drier": "hair dryer",
              "motorcycle": "motorbike"}


def relation_of(prompt: str) -> Optional[str]:
    """The first relation phrase of T2I-CompBench's list found in the prompt, else None."""
    text = prompt.lower()
    for phrase in (*DIRECTIONAL, *NEARBY):
        if phrase in text:
            return phrase
    return None


def position_score(relation: Optional[str], box1: Sequence[float], box2: Sequence[float]) -> float:
    """``pos`` of obj1 (box1) relative to obj2 (box2), boxes (x1, y1, x2, y2) in the 479/480 frame."""
    dx = (box2[0] + box2[2]) / 2 - (box1[0] + box1[2]) / 2
    dy = (box2[1] + box2[3]) / 2 - (box1[1] + box1[3]) / 2
    if relation in DIRECTIONAL:
        axis, sign = DIRECTIONAL[relation]
        along, across = (dx, dy) if axis == "x" else (dy, dx)
        if sign * along > 0 and abs(along) > abs(across):
            iou = box_iou(box1, box2)
            return 1.0 if iou < IOU_CUT else IOU_CUT / iou
        return 0.0
    if relation in NEARBY:
        if abs(dx) < NEAR_PX or abs(dy) < NEAR_PX:
            return 1.0
        return NEAR_PX / max(abs(dx), abs(dy))
    return 0.0


def _noun(word: str) -> str:
    w = word.lower()
    return "person" if w in PERSON_WORDS else w


def object_names(tokens: Sequence[Token], prompt: str, mode: Literal["2d", "complex"] = "2d") -> tuple[Optional[str], Optional[str]]:
    """(obj1, obj2): first and last NOUN ("2d"), or the nouns either side of the relation phrase
    ("complex"); None where there is no such noun."""
    nouns = [(i, _noun(t.text)) for i, t in enumerate(tokens) if t.pos == "NOUN"]
    if mode == "2d":
        return (nouns[0][1], nouns[-1][1]) if nouns else (None, None)
    words = [t.text.lower() for t in tokens]
    rel = relation_of(prompt) or next((p for p in ("on top of",) if p in prompt.lower()), None)
    start = end = None
    if rel is not None:
        phrase = rel.split()
        for i in range(len(words) - len(phrase) + 1):
            if words[i : i + len(phrase)] == phrase:
                start, end = i, i + len(phrase)
                break
    # T2I-CompBench finds "the preposition" by its POS tag; the whole relation phrase is located first
    # here so "left"/"top" inside it are never taken as objects, and the first ADP is the fallback.
    if start is None:
        adp = [i for i, t in enumerate(tokens) if t.pos == "ADP"]
        if not adp:
            return (nouns[0][1], nouns[-1][1]) if nouns else (None, None)
        start, end = adp[0], adp[0] + 1
    before = [n for i, n in nouns if i < start]
    after = [n for i, n in nouns if i >= end]
    return (before[-1] if before else None, after[0] if after else None)


def spatial_score(relation: Optional[str], obj1: Optional[str], obj2: Optional[str],
                  detections: Sequence[Detection], threshold: float = SCORE_THRESHOLD) -> float:
    """The benchmark's image score from detections (boxes already in the 479/480 frame)."""
    kept = sorted((d for d in detections if d.score > threshold), key=lambda d: -d.score)
    first = lambda name: next((d for d in kept if d.cls == name), None)  # noqa: E731
    d1 = first(obj1) if obj1 else None
    d2 = first(obj2) if obj2 else None
    if d1 is not None and d2 is not None:
        score = 0.25 * d1.score + 0.25 * d2.score + 0.5 * position_score(relation, d1.box, d2.box)
    elif d1 is not None or d2 is not None:
        score = 0.25 * (d1 or d2).score
    else:
        score = 0.0
    return score if score >= SCORE_THRESHOLD else 0.0


def frame_scale(height: int, width: int) -> float:
    """Factor taking pixel coordinates to UniDet's frame: short side 479, long side at most 480."""
    short, long = min(height, width), max(height, width)
    return min(SHORT_SIDE / short, LONG_SIDE / long)


def detection_source(detector: Any) -> Callable[[torch.Tensor], list[list[Detection]]]:
    """``images -> detections`` from a critic with ``detect(images)``, or ``detector``'s YOLO critic."""
    if callable(getattr(detector, "detect", None)):
        return detector.detect
    if callable(getattr(detector, "_detect", None)):  # DetectorCritic: uint8 HWC arrays in
        def run(images: torch.Tensor) -> list[list[Detection]]:
            arr = uint8_hwc(images)
            return detector._detect(arr)

        return run
    raise ValueError(f"t2i_spatial: {type(detector).__name__} has no detect(images) method; use a detector critic "
                     "such as geneval or detector")


def _detector_spec(detector: Union[str, Mapping[str, Any]]) -> tuple[type, dict]:
    """(critic class, arguments) of a detector named or given as ``{name: ..., **args}``."""
    if isinstance(detector, str):
        detector = {"name": detector}
    if "name" not in detector:
        raise ValueError(f"t2i_spatial: detector spec needs 'name', got keys {sorted(detector)}")
    args = {k: v for k, v in detector.items() if k != "name"}
    if detector["name"] == "geneval":
        args.setdefault("colors", "none")  # boxes only: no colour CLIP to load
    return CRITICS.get(detector["name"]), args


def build_detector(detector: Union[str, Mapping[str, Any], Any], device: str, dtype: Optional[str] = None) -> Any:
    """A detector critic from a registered name, a ``{name: ..., **args}`` spec, or an object."""
    if not isinstance(detector, (str, Mapping)):
        return detector
    cls, args = _detector_spec(detector)
    params = inspect.signature(cls.__init__).parameters
    if "device" in params and "device" not in args:
        args["device"] = device
    if dtype is not None and "dtype" in params and "dtype" not in args:
        args["dtype"] = dtype
    return cls(**args)


@CRITICS.register("t2i_spatial")
class T2ISpatial(Critic):
    """T2I-CompBench's spatial score in [0, 1] (0.5 at least when not 0), higher is better.

    Args:
        detector: a detector critic: registered name (``geneval``), a spec ``{name: geneval,
            checkpoint: ...}``, or a loaded critic with ``detect(images)``.
        chunker: ``/path/to/en_core_web_sm`` or ``rules`` (see :mod:`milr.critics.t2i_text`).
        mode: ``"2d"`` (first/last noun, the spatial category) or ``"complex"`` (nouns around the relation).
        label_map: ``"coco"`` (COCO names -> prompt nouns, e.g. dining table -> table), ``"none"``, or
            a ``{detector_label: noun}`` mapping.
        threshold: detection score cut (UniDet's 0.5).
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Check the chunker and the detector's weights without loading them."""
        check_chunker(str(given_arg(cls, args, "chunker")))
        detector = given_arg(cls, args, "detector")
        if isinstance(detector, (str, Mapping)):
            det_cls, det_args = _detector_spec(detector)
            hook = getattr(det_cls, "preflight", None)
            if callable(hook):
                hook(det_args)

    def __init__(
        self,
        detector: Union[str, Mapping[str, Any], Any] = "geneval",
        chunker: str = "rules",
        mode: Literal["2d", "complex"] = "2d",
        label_map: Union[Literal["coco", "none"], Mapping[str, str]] = "coco",
        threshold: float = SCORE_THRESHOLD,
        device: str = "cpu",
        dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None,
    ):
        if mode not in ("2d", "complex"):
            raise ValueError(f"t2i_spatial: mode must be '2d' or 'complex', got {mode!r}")
        if label_map == "coco":
            label_map = COCO_NOUNS
        elif label_map == "none":
            label_map = {}
        elif isinstance(label_map, str):
            raise ValueError(f"t2i_spatial: label_map must be 'coco', 'none' or a mapping, got {label_map!r}")
        self.label_map = dict(label_map)
        self.analyzer: TextAnalyzer = load_analyzer(chunker)  # before the detector: cheap checks first
        self.mode = mode
        self.threshold = float(threshold)
        self.detector = build_detector(detector, device, dtype)
        self._detect = detection_source(self.detector)
        det_id = self.detector.identity() if hasattr(self.detector, "identity") else type(self.detector).__name__
        self.init_args = dict(mode=mode, chunker=self.analyzer.name, threshold=self.threshold,
                              label_map=sorted(self.label_map.items()))
        self._identity = f"t2i_spatial:v{VERSION}:{sorted(self.init_args.items())!r}:det={det_id}"
        self.last_details: list[dict] = []

    def identity(self) -> str:
        return self._identity

    def detect(self, images: torch.Tensor) -> list[list[Detection]]:
        """The detector's detections with labels mapped and boxes in UniDet's 479/480 frame."""
        s = frame_scale(images.shape[-2], images.shape[-1])
        return [[Detection(self.label_map.get(d.cls, d.cls), tuple(v * s for v in d.box), float(d.score))
                 for d in dets] for dets in self._detect(images)]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> torch.Tensor:
        check_batch(images, prompts, "t2i_spatial")
        detections = self.detect(images)
        if len(detections) != len(prompts):
            raise RuntimeError(f"t2i_spatial: the detector returned {len(detections)} lists for {len(prompts)} images")
        out, self.last_details = [], []
        for prompt, dets in zip(prompts, detections):
            obj1, obj2 = object_names(self.analyzer.tokens(prompt), prompt, self.mode)
            rel = relation_of(prompt)
            s = spatial_score(rel, obj1, obj2, dets, self.threshold)
            self.last_details.append({"obj1": obj1, "obj2": obj2, "relation": rel, "score": s})
            out.append(s)
        return torch.tensor(out, dtype=torch.float32, device=images.device)
