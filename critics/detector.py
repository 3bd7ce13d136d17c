"""``detector``: an ultralytics YOLO detector plus a colour classifier plus GenEval's rules.

GenEval (Ghosh et al. 2023, arXiv 2310.11513, github.com/djghosh13/geneval; rules paraphrased in
``docs/benchmarks.md`` section 1) scores an image by detecting the prompt's objects, classifying
their colours, and checking counts, colours and relative positions. This critic follows it, with
two documented differences:

* **Detector.** GenEval uses Mask2Former (mmdet 2.x); here any ultralytics YOLO checkpoint: a
  user's COCO ``.pt``, or one trained on MiniMUG's world. Class names come from the checkpoint;
  ``class_map`` renames them to the prompt's class names. Ultralytics' COCO names differ from
  GenEval's ``object_names.txt`` in three places (mouse, remote, keyboard vs. computer mouse, tv
  remote, computer keyboard); ``class_map: geneval`` applies exactly that mapping. GenEval runs no
  NMS on Mask2Former's output; YOLO needs its own NMS (ultralytics ``iou``, default 0.7).
  GenEval's thresholds (score > 0.3, > 0.9 for counting, at most 16 per class) are applied by
  :mod:`milr.geneval` on YOLO's confidences.
* **Colour crops.** GenEval pastes the object through its segmentation mask onto flat grey
  ``#999999`` and crops to the box. With a segmentation checkpoint (``*-seg.pt``) this critic
  does the same; with a boxes-only checkpoint it classifies the plain box crop, background
  included, which biases small or thin objects toward the background's colour.

Colour classifiers (``colors``):

* ``"clip"`` (GenEval's): open_clip zero-shot over GenEval's ten colours; each colour's text
  embedding is the normalised mean of three templates, "a photo of a {c} {cls}", "a photo of a
  {c}-colored {cls}", "a photo of a {c} object"; the prediction is the argmax. GenEval uses
  ``ViT-L-14`` with OpenAI weights (the default here); any open_clip model loads as in
  ``clip_score`` (architecture name or local config; tag or local checkpoint).
* ``"palette"``: the majority nearest-palette colour of the object's pixels (mask pixels, or the
  box's pixels that are not nearer the background colour). For synthetic worlds with known
  colours (``palette: minimug`` uses MiniMUG's), where a tiny CLIP would be the weak link.

Rewards in [0, 1], higher is better: ``mode="binary"`` gives GenEval's pass (1) / fail (0);
``mode="partial"`` gives 1 when correct, else ``partial_weight`` times the fraction of GenEval
sub-checks passed (the same convention as ``world_oracle``). ``mode="confident"`` is ``partial``
for a failing image and, for a passing one, ``partial_weight + (1 - partial_weight) * c`` with ``c``
the verdict's certainty: the least certain detection of a class the prompt names, a detection's
certainty being ``max(score, 1 - score)`` (a box near a cut could flip the verdict). Every pass
still outranks every failure, and a search that stops at a reward near 1 keeps looking after a
doubtful pass. Why: a learned detector's passes are often wrong when one of its boxes is unsure
(on MiniMUG TRAIN-split generations, false passes have median certainty 0.93 against 0.98 for
true passes), so stopping at the first pass stops at many of its mistakes.

Offline: :func:`ultralytics_offline` (called before ultralytics is imported) sets
``YOLO_OFFLINE``/``YOLO_AUTOINSTALL``, disables settings sync and puts matplotlib's DejaVuSans in
place of the Arial fonts ultralytics would otherwise download (``docs/dependencies.md`` section 3).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from milr.argtypes import Fraction, PositiveInt, check_choice
from milr.critics.shipped import resolve_shipped, shipped
from milr.geneval import Detection, GenEvalResult, evaluate
from milr.devices import DType
from milr.image_inputs import uint8_hwc
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

VERSION = "1"
MODES = ("binary", "partial", "confident")
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
GENEVAL_GREY = (0x99, 0x99, 0x99)
# Ultralytics' COCO class names -> GenEval's object_names.txt (the only three that differ).
YOLO_COCO_TO_GENEVAL = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


# ---------------------------------------------------------------------------------------------
# ultralytics, offline
# ---------------------------------------------------------------------------------------------
def ultralytics_offline() -> None:
    """Make ultralytics work without network; safe to call many times.

    Sets ``YOLO_OFFLINE=1`` (skips the online check at import and analytics) and
    ``YOLO_AUTOINSTALL=false`` unless already set, turns settings sync off, and copies matplotlib's
    DejaVuSans.ttf to ``<ultralytics config dir>/Arial.ttf`` and ``Arial.Unicode.ttf`` (training
    and plotting otherwise fetch Arial from GitHub even with ``YOLO_OFFLINE``).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if SETTINGS.get("sync", False):
        SETTINGS.update({"sync": False})
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists() and ttf.is_file():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ttf, target)
            except OSError as e:  # read-only config dir: ultralytics will try the network later
                warnings.warn(f"could not place a font at {target} ({e}); set YOLO_CONFIG_DIR to a writable folder")


def shipped_detectors() -> dict[str, Path]:
    """Detectors shipped with milr, by name: ``milr/critics/weights/<name>/<name>.pt``."""
    return shipped(lambda folder: folder / f"{folder.name}.pt" if (folder / f"{folder.name}.pt").is_file() else None)


def resolve_yolo_weights(weights: Union[str, Path]) -> Path:
    """A local ``.pt``/``.yaml`` path, or the name of a shipped detector (``world_detector``)."""
    path = Path(str(weights)).expanduser()
    if path.suffix == "" and not path.exists():
        return resolve_shipped(str(weights), shipped_detectors(), "detector weights {name}: not a file and not a "
                               "shipped detector (shipped: {shipped}); give a local YOLO .pt")
    return path


def detector_card(weights_file: Path) -> dict:
    """The ``card.json`` beside a detector's weights (``{}`` when there is none)."""
    import json

    card = Path(weights_file).parent / "card.json"
    if not Path(weights_file).is_file() or not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"detector: cannot read {card}: {e}") from None


def calibrate(conf: np.ndarray, calibration: Optional[Mapping[str, Any]]) -> np.ndarray:
    """Platt-scaled confidences ``sigmoid(a * logit(conf) + b)`` (unchanged without a calibration)."""
    if not calibration:
        return conf
    if calibration.get("type") != "platt":
        raise ValueError(f"detector: unknown calibration type {calibration.get('type')!r} (allowed: platt)")
    c = np.clip(conf.astype(np.float64), 1e-6, 1 - 1e-6)
    z = float(calibration["a"]) * np.log(c / (1 - c)) + float(calibration["b"])
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def load_yolo(weights: Union[str, Path]) -> Any:
    """An ultralytics ``YOLO`` from a local ``.pt``, a shipped detector's name, or an architecture
    ``.yaml`` (random weights)."""
    ultralytics_offline()
    from ultralytics import YOLO

    path = resolve_yolo_weights(weights)
    if path.suffix in (".yaml", ".yml"):
        # Architecture files ship inside ultralytics (yolov8n.yaml), so a bare name is fine here.
        warnings.warn(f"detector: {weights} is an architecture file; the detector has random weights")
        return YOLO(str(weights))
    if not path.is_file():
        raise FileNotFoundError(
            f"YOLO weights {weights} not found locally (the toolkit never downloads them). Download the checkpoint "
            f"(e.g. yolov8n.pt from https://github.com/ultralytics/assets/releases) on a machine with network, or "
            f"train one, and point the recipe at the file: `weights: /path/to/model.pt`"
        )
    return YOLO(str(path))


def file_sha256(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class MaskedDetection(Detection):
    """A detection with the detector's pixel mask (``bool [H, W]``), when it has one."""

    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# Colour classifiers
# ---------------------------------------------------------------------------------------------
def object_crop(image: np.ndarray, det: Detection, grey: Optional[Sequence[int]] = GENEVAL_GREY) -> np.ndarray:
    """The object's box crop of ``image`` (``uint8 [H, W, 3]``); outside its mask painted ``grey``."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = det.box
    x1, y1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    x2, y2 = min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2)))
    if x2 <= x1 or y2 <= y1:
        x2, y2 = min(w, x1 + 1), min(h, y1 + 1)
    mask = getattr(det, "mask", None)
    if mask is not None and grey is not None:
        canvas = np.empty_like(image)
        canvas[:] = np.asarray(grey, dtype=np.uint8)
        canvas[mask] = image[mask]
        image = canvas
    return image[y1:y2, x1:x2]


class ClipColorClassifier:
    """GenEval's zero-shot colour classifier on an open_clip model."""

    def __init__(self, arch: str = "ViT-L-14", pretrained: Optional[str] = "openai",
                 colors: Sequence[str] = GENEVAL_COLORS, device: str = "cpu", dtype: DType = "float32"):
        from milr.open_clip_loading import load_open_clip
        from milr.hub import module_fingerprint

        self.colors = list(colors)
        self.device = torch.device(device)
        self.model, self.tokenizer, self.pp_cfg = load_open_clip(arch, pretrained, self.device, dtype)
        self.fingerprint = f"clip:{arch}:{pretrained}:{module_fingerprint(self.model)}"
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _class_embeddings(self, cls: str) -> torch.Tensor:
        if cls not in self._text:
            feats = []
            for c in self.colors:
                tokens = self.tokenizer([t.format(c=c, cls=cls) for t in COLOR_TEMPLATES]).to(self.device)
                e = F.normalize(self.model.encode_text(tokens).float(), dim=-1).mean(0)
                feats.append(F.normalize(e, dim=-1))
            self._text[cls] = torch.stack(feats)  # [C, D]
        return self._text[cls]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, det: Detection) -> str:
        from milr.open_clip_loading import preprocess_tensor

        crop = object_crop(image, det)
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div(255).unsqueeze(0)
        x = preprocess_tensor(x.to(self.device), self.pp_cfg).to(next(self.model.parameters()).dtype)
        img = F.normalize(self.model.encode_image(x).float(), dim=-1)[0]
        return self.colors[int((self._class_embeddings(det.cls) @ img).argmax())]


class PaletteColorClassifier:
    """Majority nearest-palette colour of an object's pixels (background pixels ignored)."""

    def __init__(self, palette: Mapping[str, Sequence[int]], background: Optional[Sequence[int]] = (255, 255, 255)):
        if not palette:
            raise ValueError("palette colour classifier needs a non-empty {name: [r, g, b]} palette")
        self.names = list(palette)
        rgb = [list(palette[n]) for n in self.names]
        if any(len(v) != 3 for v in rgb):
            raise ValueError(f"palette values must be [r, g, b], got {dict(palette)}")
        self.rgb = np.asarray(rgb, dtype=np.float32)
        self.background = None if background is None else np.asarray(background, dtype=np.float32)
        self.fingerprint = f"palette:{sorted((n, tuple(v)) for n, v in zip(self.names, rgb))}:bg={background}"

    def __call__(self, image: np.ndarray, det: Detection) -> Optional[str]:
        mask = getattr(det, "mask", None)
        crop = object_crop(image, det, grey=None)
        px = crop.reshape(-1, 3).astype(np.float32)
        if mask is not None:
            x1, y1 = max(0, int(np.floor(det.box[0]))), max(0, int(np.floor(det.box[1])))
            m = mask[y1 : y1 + crop.shape[0], x1 : x1 + crop.shape[1]].reshape(-1)
            px = px[m]
        refs = self.rgb if self.background is None else np.vstack([self.rgb, self.background[None]])
        nearest = ((px[:, None, :] - refs[None]) ** 2).sum(-1).argmin(1)
        nearest = nearest[nearest < len(self.names)]  # drop background pixels
        if nearest.size == 0:
            return None
        return self.names[int(np.bincount(nearest, minlength=len(self.names)).argmax())]


def _resolve_palette(palette: Union[str, Mapping[str, Sequence[int]], None]) -> Mapping[str, Sequence[int]]:
    if palette is None or palette == "minimug":
        from milr.world import COLORS

        return COLORS
    if isinstance(palette, str):
        raise ValueError(f"detector: palette must be 'minimug' or a {{name: [r, g, b]}} mapping, got {palette!r}")
    return palette


def verdict_certainty(metadata: Mapping[str, Any], detections: Sequence[Detection]) -> float:
    """How sure the detector is of a verdict: the least ``max(score, 1 - score)`` over detections of
    classes the prompt names (included or excluded); 1.0 when there are none."""
    names = {c.get("class") for c in list(metadata.get("include", [])) + list(metadata.get("exclude", []))}
    sure = [max(d.score, 1.0 - d.score) for d in detections if d.cls in names]
    return float(min(sure)) if sure else 1.0


# ---------------------------------------------------------------------------------------------
# The critic
# ---------------------------------------------------------------------------------------------
@CRITICS.register("detector")
class DetectorCritic(Critic):
    """GenEval's verdict from a YOLO detector and a colour classifier; reward in [0, 1].

    ``weights``: a local YOLO ``.pt`` (or ``.yaml`` for random weights, tests only) or an already
    loaded ``ultralytics.YOLO``. ``imgsz``: inference size (default: the checkpoint's training
    size). ``conf``: YOLO's own pre-filter, below GenEval's 0.3 cut. ``tiers``: ``{tier: cap}`` for
    classes named ``"<class>/<tier>"`` (a ``circle/rough`` box is a circle scoring at most the cap;
    default: the card's). ``last_results`` keeps the
    :class:`~milr.geneval.GenEvalResult` of every image of the last call (with reasons).
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the weights the recipe names without loading them (called before any load)."""
        weights = given_arg(cls, args, "weights")
        if isinstance(weights, (str, Path)) and not resolve_yolo_weights(weights).is_file():
            raise FileNotFoundError(f"detector weights {str(weights)!r} do not exist; give a local YOLO .pt (never downloaded)")

    def __init__(
        self,
        weights: Any,
        class_map: Union[str, Mapping[str, Optional[str]], None] = None,
        mode: Literal["binary", "partial", "confident"] = "binary",
        partial_weight: Fraction = 0.5,
        colors: Literal["clip", "palette"] = "clip",
        clip_arch: str = "ViT-L-14",
        clip_pretrained: Optional[str] = "openai",
        palette: Union[str, Mapping[str, Sequence[int]], None] = None,
        background: Optional[Sequence[int]] = (255, 255, 255),
        color_names: Optional[Sequence[str]] = None,
        imgsz: Optional[int] = None,
        conf: Fraction = 0.25,
        iou: Optional[float] = None,
        max_det: PositiveInt = 300,
        device: str = "cpu",
        agnostic_nms: Optional[bool] = None,
        calibration: Literal["card", "none"] = "card",
        tiers: Optional[Mapping[str, Fraction]] = None,
    ):
        check_choice("detector", "mode", mode, MODES)
        if not 0.0 <= partial_weight <= 1.0:
            raise ValueError(f"detector: partial_weight must be in [0, 1], got {partial_weight}")
        check_choice("detector", "colors", colors, ("clip", "palette"))
        self.mode = mode
        self.partial_weight = float(partial_weight)
        if class_map == "geneval":
            class_map = YOLO_COCO_TO_GENEVAL
        elif isinstance(class_map, str):
            raise ValueError(f"detector: class_map must be 'geneval' or a {{detector_name: prompt_name}} mapping, got {class_map!r}")
        self.class_map = dict(class_map or {})
        self.imgsz, self.conf, self.max_det = imgsz, float(conf), int(max_det)
        self.device = device

        if isinstance(weights, (str, Path)):
            self.yolo = load_yolo(weights)
            p = resolve_yolo_weights(weights)
            card = detector_card(p)
            weights_id = file_sha256(p) if p.is_file() else str(weights)
        else:  # a loaded ultralytics model (or a stand-in exposing predict and names)
            ultralytics_offline()
            self.yolo = weights
            weights_id = f"object:{id(weights)}"
            card = {}
        # Settings a trained detector's card.json recommends (milr train-detector writes them),
        # unless the recipe sets them: NMS, and a confidence calibration fitted on labelled scenes.
        nms = card.get("nms", {})
        self.iou = float(iou if iou is not None else nms.get("iou", 0.7))
        self.agnostic_nms = bool(agnostic_nms if agnostic_nms is not None else nms.get("agnostic", False))
        self.calibration = card.get("calibration") if calibration == "card" else None
        self.names = {int(k): str(v) for k, v in dict(getattr(self.yolo, "names", {}) or {}).items()}
        # A trained detector may split a class into quality tiers, "<class>/<tier>" (card "tiers":
        # {tier: cap}): a "circle/rough" box is a circle whose score is at most the tier's cap.
        self.tiers = {str(k): float(v) for k, v in dict(card.get("tiers", {}) if tiers is None else tiers).items()}
        for name in self.names.values():
            tier = name.partition("/")[2]
            if tier and tier not in self.tiers:
                raise ValueError(f"detector: class {name!r} has tier {tier!r} but the tiers (argument or card) are {sorted(self.tiers)}")
        unknown = set(self.class_map) - {self._base(n) for n in self.names.values()}
        if self.names and unknown and class_map is not YOLO_COCO_TO_GENEVAL:
            raise ValueError(
                f"detector: class_map keys {sorted(unknown)} are not classes of the checkpoint "
                f"(its classes: {sorted(self.names.values())})"
            )

        if colors == "clip":
            self.color_classifier: Callable[[np.ndarray, Detection], Optional[str]] = ClipColorClassifier(
                clip_arch, clip_pretrained, color_names or GENEVAL_COLORS, device=device
            )
        else:
            pal = _resolve_palette(palette)
            if color_names is not None:
                missing = set(color_names) - set(pal)
                if missing:
                    raise ValueError(f"detector: color_names {sorted(missing)} are not in the palette {sorted(pal)}")
                pal = {n: pal[n] for n in color_names}
            self.color_classifier = PaletteColorClassifier(pal, background)
        self.init_args = {
            "weights": str(weights) if isinstance(weights, (str, Path)) else type(weights).__name__,
            "class_map": self.class_map, "mode": mode, "partial_weight": self.partial_weight, "colors": colors,
            "imgsz": imgsz, "conf": self.conf, "iou": self.iou, "max_det": self.max_det,
            "agnostic_nms": self.agnostic_nms, "calibration": self.calibration, "tiers": self.tiers,
        }
        self._identity = (
            f"detector:v{VERSION}:{sorted(self.init_args.items(), key=lambda kv: kv[0])!r}:w={weights_id}:"
            f"colors={self.color_classifier.fingerprint}"
        )
        self._warned: set[str] = set()
        self.last_results: list[GenEvalResult] = []

    def identity(self) -> str:
        return self._identity

    @staticmethod
    def _base(name: str) -> str:
        return name.partition("/")[0]

    # -- detection (the seam tests replace) ------------------------------------------------------
    def _detect(self, images: np.ndarray) -> list[list[Detection]]:
        """YOLO on ``uint8 [B, H, W, 3]`` RGB images; boxes in the images' pixels."""
        # ultralytics treats numpy input as BGR (OpenCV's order).
        batch = [np.ascontiguousarray(img[..., ::-1]) for img in images]
        kwargs: dict[str, Any] = dict(conf=self.conf, iou=self.iou, max_det=self.max_det, device=self.device,
                                      verbose=False, retina_masks=True, agnostic_nms=self.agnostic_nms)
        if self.imgsz is not None:
            kwargs["imgsz"] = self.imgsz
        out: list[list[Detection]] = []
        for res in self.yolo.predict(batch, **kwargs):
            dets: list[Detection] = []
            boxes = res.boxes
            if boxes is not None and len(boxes):
                xyxy = boxes.xyxy.cpu().numpy()
                scores = calibrate(boxes.conf.cpu().numpy(), self.calibration)
                classes = boxes.cls.cpu().numpy().astype(int)
                masks = res.masks.data.cpu().numpy() > 0.5 if getattr(res, "masks", None) is not None else None
                for j in range(len(xyxy)):
                    name = self.names.get(int(classes[j]), str(int(classes[j])))
                    base, _, tier = name.partition("/")
                    cls = self.class_map.get(base, base)
                    if cls is None:  # mapped away
                        continue
                    score = min(float(scores[j]), self.tiers[tier]) if tier else float(scores[j])
                    mask = masks[j] if masks is not None and masks[j].shape == images.shape[1:3] else None
                    dets.append(MaskedDetection(cls, tuple(float(v) for v in xyxy[j]), score, None, mask))
            out.append(dets)
        return out

    # -- scoring -------------------------------------------------------------------------------
    def _check_classes(self, metadata: list[dict]) -> None:
        if not self.names:
            return
        known = {self.class_map.get(self._base(n), self._base(n)) for n in self.names.values()} - {None}
        for md in metadata:
            for clause in list(md.get("include", [])) + list(md.get("exclude", [])):
                cls = clause.get("class")
                if cls not in known and cls not in self._warned:
                    self._warned.add(cls)
                    shown = sorted(known)
                    listed = ", ".join(shown[:20]) + (f", ... ({len(shown)} in all)" if len(shown) > 20 else "")
                    warnings.warn(
                        f"detector: prompt class {cls!r} is not a class of the detector (classes: {listed}); "
                        f"every image asking for it fails. Map detector names with class_map."
                    )

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError("detector: images must be a [B, 3, H, W] tensor in [0, 1]")
        if metadata is None or len(metadata) != images.shape[0]:
            raise ValueError(f"detector needs one metadata dict per image ({images.shape[0]} images)")
        for md in metadata:
            if not md or "include" not in md:
                raise ValueError("detector needs GenEval metadata with 'include' for every image (tag, include, exclude)")
        self._check_classes(metadata)
        arr = uint8_hwc(images)
        detections = self._detect(arr)
        if len(detections) != len(arr):
            raise RuntimeError(f"detector returned {len(detections)} detection lists for {len(arr)} images")
        self.last_results = []
        rewards = []
        for img, dets, md in zip(arr, detections, metadata):
            colour_cache: dict[int, Optional[str]] = {}

            def color_of(det: Detection, img: np.ndarray = img, cache: dict = colour_cache) -> Optional[str]:
                if det.color is not None:
                    return det.color
                if id(det) not in cache:
                    cache[id(det)] = self.color_classifier(img, det)
                return cache[id(det)]

            res = evaluate(md, dets, color_of=color_of)
            self.last_results.append(res)
            if not res.correct:
                rewards.append(0.0 if self.mode == "binary" else self.partial_weight * res.partial)
            elif self.mode == "confident":
                rewards.append(self.partial_weight + (1.0 - self.partial_weight) * verdict_certainty(md, dets))
            else:
                rewards.append(1.0)
        return torch.tensor(rewards, dtype=torch.float32, device=images.device)
