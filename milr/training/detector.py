"""The world detector: a multi-class YOLO trained with ultralytics on rendered MiniMUG scenes.

GenEval (Ghosh et al. 2023, arXiv 2310.11513) scores an image with an object detector, a colour
classifier and rules. On MiniMUG's world the ``detector`` critic runs that pipeline for real when it
has a detector that knows the world's five shapes: this module trains one with ultralytics
(Jocher et al., github.com/ultralytics/ultralytics; ``YOLO(arch).train(data=...)``), and the critic's
palette colour classifier reads each box's colour.

Training data is the world's *truth*, never the exact scorer's opinion of generated images (that
would hand the oracle to the critic): scenes are drawn from the world's generators (unconditional
scenes, and scenes that follow or narrowly violate TRAIN-split prompts). Because MiniMUG's images
come out of its patch tokenizer, a fraction of the rendered scenes is passed through the shipped
tokenizer (encode + decode, the "reconstruction" augmentation: the pixels generated images are made
of), and a fraction has patches on or beside objects replaced (a generator's mistakes).

Labels (``data.labels``): ``scene`` (default, the shipped detector) -- the scene's objects, an
object dropped when corruption left its pixels far from its mask; ``reading`` -- the world's reading of each training image's
own pixels (:func:`milr.world.scorer.detect`, which is exact on rendered scenes): a cross whose arm a
corrupted patch erased is labelled by what is left. An object read cleanly (score >= ``rough_below``)
gets its shape's class; one read roughly (``min_score`` <= score < ``rough_below``) the shape's
``/rough`` class, which the critic scores at most ``rough_score`` (card ``tiers``): an object GenEval's
0.3 cut keeps and its 0.9 counting cut drops, as Mask2Former's scores do for a malformed object. No
image MiniMUG generated is ever in the data.

Images are 32x32; YOLO sees them at ``imgsz`` (64 by default, a 2x upscale, so the smallest
8-pixel object spans 16 input pixels, two cells of the stride-8 head).

``milr train-detector recipes/train-world-detector.yaml [key.path=value ...]`` writes the YOLO
dataset, trains, and exports ``world_detector.pt`` + ``card.json`` + ``MODEL_CARD.md`` to
``output`` (and to ``export_to`` when set: the shipped copy lives in
``milr/critics/weights/world_detector``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEIGHTS_FILE = "world_detector.pt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectorData(_Strict):
    n_train: int = Field(12000, ge=1, le=1_000_000)
    n_val: int = Field(1000, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # Shares of the scene kinds (normalised): unconditional 1-4 objects; following a train prompt;
    # narrowly violating a train prompt (the mistakes generated images make).
    unconditional: float = Field(0.4, ge=0)
    follow: float = Field(0.3, ge=0)
    violate: float = Field(0.3, ge=0)
    reconstruct: float = Field(0.5, ge=0, le=1)  # share passed through MiniMUG's tokenizer
    # Share (of all images) whose tokens are corrupted like a generator's mistakes: 1..corrupt_tokens
    # of the 4x4 patches on or next to objects replaced by another image's object patch. An object
    # whose pixels then overlap its true mask with IoU < destroyed_iou is no longer that object:
    # its label is dropped (a rule on the scene's truth, not the exact scorer's verdict).
    corrupt: float = Field(0.0, ge=0, le=1)
    corrupt_tokens: int = Field(3, ge=1, le=16)
    destroyed_iou: float = Field(0.8, gt=0, le=1)
    labels: Literal["scene", "reading"] = "scene"
    # Share of images whose objects are redrawn as blends of their shape and another, stretched and
    # resized (the in-between shapes a generator draws); needs labels=reading, which names each blend.
    morph: float = Field(0.0, ge=0, le=1)
    # With labels=reading: an object read with score in [min_score, rough_below) is "<shape>/rough",
    # scored at most rough_score by the critic (between GenEval's 0.3 and 0.9 cuts); below min_score it
    # is background. rough_below=null: one class per shape, every object read at min_score or more.
    min_score: float = Field(0.3, ge=0, le=1)
    rough_below: Optional[float] = Field(0.9, gt=0, le=1)
    rough_score: float = Field(0.6, gt=0, lt=1)

    @model_validator(mode="after")
    def _morph_needs_reading(self) -> "DetectorData":
        if self.morph > 0 and self.labels != "reading":
            raise ValueError("morph > 0 needs labels: reading (a blend of two shapes has no scene label)")
        return self


class DetectorModel(_Strict):
    arch: str = "yolov8n.yaml"  # an ultralytics architecture file (random init) or a local .pt

    @field_validator("arch")
    @classmethod
    def _arch_exists(cls, v: str) -> str:
        # Checked here, before the dataset is written: a bad name would otherwise fail minutes later.
        if v.endswith(".pt"):
            if not Path(v).expanduser().is_file():
                raise ValueError(f"no such checkpoint {v!r} (a local YOLO .pt; never downloaded)")
        elif v.endswith((".yaml", ".yml")):
            if not Path(v).expanduser().is_file() and not _ultralytics_arch(Path(v).name):
                raise ValueError(f"{v!r} is neither a local file nor an ultralytics architecture (e.g. yolov8n.yaml)")
        else:
            raise ValueError(f"found {v!r}; expected an ultralytics architecture .yaml or a local .pt")
        return v


class DetectorTrain(_Strict):
    epochs: int = Field(20, ge=1, le=1000)
    batch: int = Field(64, ge=1, le=4096)
    imgsz: int = Field(64, ge=32, le=1280, multiple_of=32)
    optimizer: Literal["auto", "SGD", "Adam", "AdamW"] = "auto"  # auto: ultralytics picks by iteration count
    lr0: float = Field(0.01, gt=0, le=1)  # used unless optimizer is auto
    workers: int = Field(2, ge=0, le=64)
    patience: int = Field(100, ge=0)
    device: str = "cpu"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # World-specific augmentation: objects have one fixed scale and vertical flips make shapes the
    # world does not have (a downward triangle), so mosaic, scaling and flipud stay off.
    mosaic: float = Field(0.0, ge=0, le=1)
    scale: float = Field(0.1, ge=0, le=1)
    translate: float = Field(0.1, ge=0, le=1)
    fliplr: float = Field(0.5, ge=0, le=1)
    hsv_h: float = Field(0.0, ge=0, le=1)  # colour is read by the palette, but hue jitter would blur shapes' colour cues
    hsv_s: float = Field(0.3, ge=0, le=1)
    hsv_v: float = Field(0.3, ge=0, le=1)
    amp: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from milr.devices import check_device

        return check_device(v, gpu_indices=True)
    threads: Optional[int] = Field(None, ge=1, le=256)


def _ultralytics_arch(name: str) -> bool:
    """Is ``name`` an architecture file shipped inside ultralytics? (Found without importing it.)"""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(list(spec.submodule_search_locations)[0]) / "cfg" / "models"
    # Scale letters are resolved by ultralytics: yolov8n.yaml is yolov8.yaml at scale n.
    stem, suffix = Path(name).stem, Path(name).suffix
    candidates = {name, stem[:-1] + suffix} if stem and stem[-1] in "nslmx" else {name}
    return any(next(root.rglob(c), None) is not None for c in candidates)


class DetectorTrainConfig(_Strict):
    """``milr train-detector`` recipe (YAML; ``extends`` and dotted overrides as run recipes)."""

    task: Literal["detector"] = "detector"
    name: str = "world_detector"
    description: str = ""
    output: str = "runs/detectors/world_detector"
    export_to: Optional[str] = None
    data: DetectorData = DetectorData()
    model: DetectorModel = DetectorModel()
    train: DetectorTrain = DetectorTrain()


def load_detector_config(ref: Union[str, Path, dict], overrides: Sequence[str] = ()) -> DetectorTrainConfig:
    """Read, merge (``extends``), override and validate; raises :class:`milr.recipe.RecipeError`."""
    from milr.config import load_data, validate_schema

    data, file = load_data(ref, overrides)
    return validate_schema(DetectorTrainConfig, data, file)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _scene_for_kind(kind: str, rng: np.random.Generator):
    from milr import world
    from milr.world import suite

    if kind == "unconditional":
        return world.random_scene(rng)
    md = suite.sample_train_prompt(rng)
    if kind == "follow":
        return world.sample_scene_for(md, rng)
    return world.sample_scene_violating(md, rng)


def _yolo_line(cls: int, box: Sequence[float]) -> str:
    """One YOLO label line ``cls cx cy w h``, normalised to the world's canvas."""
    from milr import world

    size = float(world.IMAGE_SIZE)
    x1, y1, x2, y2 = box
    return f"{cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"


def yolo_labels(scene) -> list[str]:
    """YOLO label lines ``cls cx cy w h`` (normalised) from a scene's ground-truth objects."""
    from milr import world

    return [_yolo_line(world.SHAPES.index(obj.shape), world.obj_box(obj)) for obj in scene.objects]


def class_names(cfg: DetectorData) -> list[str]:
    """The detector's classes: the world's shapes, then their ``/rough`` tier when the data has one."""
    from milr import world

    return list(world.SHAPES) + ([f"{s}/rough" for s in world.SHAPES] if has_rough_tier(cfg) else [])


def has_rough_tier(cfg: DetectorData) -> bool:
    """Whether the labels split each shape into clean and ``/rough`` classes."""
    return cfg.labels == "reading" and cfg.rough_below is not None


def reading_labels(image: np.ndarray, cfg: DetectorData) -> list[str]:
    """YOLO label lines from the world's reading of ``image``'s own pixels (``uint8 [32, 32, 3]``)."""
    from milr import world
    from milr.world import scorer

    lines = []
    for det in scorer.detect(image):
        if det.score < cfg.min_score:
            continue
        rough = has_rough_tier(cfg) and det.score < cfg.rough_below
        lines.append(_yolo_line(world.SHAPES.index(det.cls) + (len(world.SHAPES) if rough else 0), det.box))
    return lines


def render_morphed(scene, rng: np.random.Generator) -> np.ndarray:
    """The scene with every object redrawn as a blend of its shape and a random other one.

    Pixel ``p`` of an object is on when ``a * A(p) + (1 - a) * B(p) + noise(p) > 0.5`` (``A``, ``B``
    the two shapes' masks at the object's box, ``a ~ U(0.35, 1)``, smooth noise), in a box whose
    sides are stretched or shrunk by up to 2 pixels: a continuum from clean shapes to ones the
    world's reading gives to the other shape or to none. Labels come from that reading.
    """
    from scipy import ndimage

    from milr import world
    from milr.world.palette import BACKGROUND, COLORS

    size = world.IMAGE_SIZE
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    for obj in scene.objects:
        x1, y1, x2, y2 = world.obj_box(obj)
        x1, y1 = x1 - int(rng.integers(-1, 2)), y1 - int(rng.integers(-1, 2))
        x2, y2 = x2 + int(rng.integers(-1, 2)), y2 + int(rng.integers(-1, 2))
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(size, x2), min(size, y2)
        h, w = y2 - y1, x2 - x1
        if h < 2 or w < 2:
            continue
        other = world.SHAPES[int(rng.integers(len(world.SHAPES)))]
        a = rng.uniform(0.35, 1.0)
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.0) * rng.uniform(0, 0.6)
        field = a * world.shape_mask(obj.shape, h, w) + (1 - a) * world.shape_mask(other, h, w) + noise
        img[y1:y2, x1:x2][field > 0.5] = COLORS[obj.color]
    return img


def corrupt_tokens(images: np.ndarray, scenes: list, tokenizer: Any, rng: np.random.Generator,
                   max_tokens: int, destroyed_iou: float) -> tuple[np.ndarray, list[list[bool]]]:
    """Replace 1..``max_tokens`` patches on or beside objects with other object patches.

    Returns the decoded images and, per scene, which objects survive: an object survives when the
    pixels of its colour within its box (grown by one patch) overlap its true mask with IoU >=
    ``destroyed_iou``.
    """
    import torch

    from milr import world
    from milr.models.minimug import tokenizer as tk
    from milr.world import palette

    codes = tokenizer.encode(images).numpy().copy()  # [B, 64]
    blank = int(tokenizer.encode(np.full((1, 32, 32, 3), 255, np.uint8))[0, 0])
    pool = codes[codes != blank]
    if pool.size == 0:
        return images, [[True] * len(s.objects) for s in scenes]
    p = tk.PATCH
    for b, scene in enumerate(scenes):
        near = set()
        for obj in scene.objects:
            x1, y1, x2, y2 = world.obj_box(obj)
            for gy in range(max(0, y1 // p - 1), min(tk.GRID, (y2 - 1) // p + 2)):
                for gx in range(max(0, x1 // p - 1), min(tk.GRID, (x2 - 1) // p + 2)):
                    near.add(gy * tk.GRID + gx)
        cells = sorted(near)
        k = int(rng.integers(1, max_tokens + 1))
        for c in rng.choice(cells, size=min(k, len(cells)), replace=False):
            codes[b, c] = int(rng.choice(pool))
    out = tokenizer.decode_uint8(torch.from_numpy(codes))
    kept = []
    for img, scene in zip(out, scenes):
        labels = palette.palette_labels(img)
        truth = world.render(scene)
        true_labels = palette.palette_labels(truth)
        flags = []
        for obj in scene.objects:
            x1, y1, x2, y2 = world.obj_box(obj)
            X1, Y1, X2, Y2 = max(0, x1 - p), max(0, y1 - p), min(32, x2 + p), min(32, y2 + p)
            colour = palette.COLOR_NAMES.index(obj.color) + 1
            want = np.zeros((32, 32), bool)
            want[y1:y2, x1:x2] = true_labels[y1:y2, x1:x2] == colour
            got = np.zeros((32, 32), bool)
            got[Y1:Y2, X1:X2] = labels[Y1:Y2, X1:X2] == colour
            union = (want | got).sum()
            flags.append(bool(union and (want & got).sum() / union >= destroyed_iou))
        kept.append(flags)
    return out, kept


def write_dataset(cfg: DetectorData, root: Union[str, Path], tokenizer: Any = None, log=print) -> Path:
    """Write a YOLO dataset (``images/{train,val}``, ``labels/{train,val}``, ``data.yaml``).

    ``tokenizer``: an object with ``round_trip(uint8 [B,32,32,3]) -> uint8`` (MiniMUG's); the
    shipped one when None and ``cfg.reconstruct > 0``. Seeded: the same config writes the same files.
    """
    import yaml
    from PIL import Image

    from milr import world

    root = Path(root)
    shares = np.array([cfg.unconditional, cfg.follow, cfg.violate], dtype=float)
    if shares.sum() <= 0:
        raise ValueError("data: unconditional + follow + violate must be > 0")
    shares = shares / shares.sum()
    if cfg.reconstruct > 0 and tokenizer is None:
        from milr.models.minimug.model import MiniMUG

        tokenizer = MiniMUG().tokenizer
    kinds = ("unconditional", "follow", "violate")
    for split, n, seed in (("train", cfg.n_train, cfg.seed), ("val", cfg.n_val, cfg.seed + 1_000_003)):
        rng = np.random.default_rng(seed)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        for start in range(0, n, 256):
            count = min(256, n - start)
            scenes = [_scene_for_kind(kinds[int(rng.choice(3, p=shares))], rng) for _ in range(count)]
            images = np.stack([world.render(s) for s in scenes])
            for j in np.flatnonzero(rng.random(count) < cfg.morph):
                images[j] = render_morphed(scenes[j], rng)
            u = rng.random(count)
            recon = u < cfg.reconstruct + cfg.corrupt
            keep = [[True] * len(s.objects) for s in scenes]
            if recon.any():
                images[recon] = tokenizer.round_trip(images[recon])
            bad = np.flatnonzero(u < cfg.corrupt)
            if len(bad):
                images[bad], kept = corrupt_tokens(images[bad], [scenes[i] for i in bad], tokenizer, rng,
                                                   cfg.corrupt_tokens, cfg.destroyed_iou)
                for i, k in zip(bad, kept):
                    keep[i] = k
            for j, (scene, img) in enumerate(zip(scenes, images)):
                stem = f"{split}_{start + j:07d}"
                Image.fromarray(img).save(root / "images" / split / f"{stem}.png")
                if cfg.labels == "reading":
                    lines = reading_labels(img, cfg)
                else:
                    lines = [line for line, k in zip(yolo_labels(scene), keep[j]) if k]
                (root / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
        log(f"train-detector: wrote {n} {split} images in {time.time() - t0:.0f}s")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(root.resolve()), "train": "images/train", "val": "images/val",
        "names": dict(enumerate(class_names(cfg))),
    }, sort_keys=False))
    return data_yaml


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _build_yolo(model: DetectorModel):
    from milr.critics.detector import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    return YOLO(model.arch)


def train_detector(cfg: DetectorTrainConfig, log=print) -> Path:
    """Write the data, train, export the weights and the card; returns the output folder."""
    import torch

    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t_start = time.time()
    data_yaml = write_dataset(cfg.data, out / "dataset", log=log)
    yolo = _build_yolo(cfg.model)
    t_train = time.time()
    t = cfg.train
    yolo.train(
        data=str(data_yaml), epochs=t.epochs, batch=t.batch, imgsz=t.imgsz, optimizer=t.optimizer, lr0=t.lr0, workers=t.workers,
        patience=t.patience, device=t.device, seed=t.seed, deterministic=True, project=str(out), name="yolo",
        exist_ok=True, mosaic=t.mosaic, close_mosaic=0, scale=t.scale, translate=t.translate, fliplr=t.fliplr,
        flipud=0.0, hsv_h=t.hsv_h, hsv_s=t.hsv_s, hsv_v=t.hsv_v, amp=t.amp, plots=False, verbose=False,
        pretrained=False,
    )
    train_minutes = (time.time() - t_train) / 60
    best = out / "yolo" / "weights" / "best.pt"
    if not best.is_file():
        best = out / "yolo" / "weights" / "last.pt"
    shutil.copy(best, out / WEIGHTS_FILE)
    metrics = _val_metrics(out / "yolo")
    calibration = fit_calibration(out / WEIGHTS_FILE, out / "dataset", t.imgsz)
    n_params = sum(p.numel() for p in yolo.model.parameters())
    card = {
        "name": cfg.name,
        "kind": "detector",
        "classes": class_names(cfg.data),
        # The critic caps a "<shape>/<tier>" detection's score at the tier's value.
        "tiers": {"rough": cfg.data.rough_score} if has_rough_tier(cfg.data) else {},
        "imgsz": t.imgsz,
        "arch": cfg.model.arch,
        "parameters": int(n_params),
        "train_minutes": round(train_minutes, 1),
        "total_minutes": round((time.time() - t_start) / 60, 1),
        "data": cfg.data.model_dump(),
        "train": cfg.train.model_dump(),
        "val": metrics,
        # Inference settings the detector critic takes from this card unless a recipe sets them:
        # world objects never overlap, so one box per place (class-agnostic NMS).
        "calibration": calibration,
        "nms": {"iou": 0.5, "agnostic": True},
        "recipe": cfg.model_dump(),
        "usage": "{name: detector, weights: world_detector, colors: palette, palette: minimug}",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))
    if cfg.export_to:
        dest = Path(cfg.export_to)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / WEIGHTS_FILE, dest / WEIGHTS_FILE)
        existing = dest / "card.json"
        merged = json.loads(existing.read_text()) if existing.is_file() else {}
        merged.update(card)
        existing.write_text(json.dumps(merged, indent=2))
    log(f"train-detector: {out / WEIGHTS_FILE} ({n_params} parameters, {train_minutes:.1f} min training)")
    return out


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``[N, 4]`` x ``[M, 4]`` (x1, y1, x2, y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def fit_calibration(weights: Union[str, Path], dataset: Union[str, Path], imgsz: int, split: str = "val",
                    iou: float = 0.5, batch: int = 64) -> Optional[dict]:
    """Platt scaling of the detector's confidence on labelled validation scenes.

    YOLOv8's class score is trained toward the box's alignment quality (IoU-weighted), not the
    probability that the detection is right, so a clean object often scores 0.85-0.95 -- under
    GenEval's 0.9 counting cut -- while GenEval's thresholds were set on Mask2Former's scores. The
    fit maps ``logit(conf)`` to ``a * logit(conf) + b`` by maximum likelihood of "this detection
    matches a ground-truth object of its class at IoU >= ``iou``" over every detection above 0.05
    on the validation split (rendered, reconstructed and corrupted scenes with their true labels;
    never generated images judged by the exact scorer). Returns ``{"type": "platt", "a", "b",
    "n", "positives", "nll_before", "nll_after"}``, or None with fewer than 20 detections or one class only.
    """
    import torch
    from PIL import Image

    from milr.critics.detector import load_yolo

    root = Path(dataset)
    files = sorted((root / "images" / split).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no images under {root / 'images' / split}")
    yolo = load_yolo(weights)
    confs, hits = [], []
    for start in range(0, len(files), batch):
        chunk = files[start: start + batch]
        imgs = [np.asarray(Image.open(f).convert("RGB"))[..., ::-1] for f in chunk]
        results = yolo.predict(imgs, conf=0.05, iou=0.7, imgsz=imgsz, verbose=False, device="cpu")
        for f, img, res in zip(chunk, imgs, results):
            h, w = img.shape[:2]
            gt = []
            label = root / "labels" / split / (f.stem + ".txt")
            for line in label.read_text().split("\n") if label.is_file() else []:
                if line.strip():
                    c, cx, cy, bw, bh = (float(v) for v in line.split())
                    gt.append((int(c), (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
            if res.boxes is None or not len(res.boxes):
                continue
            boxes = res.boxes.xyxy.cpu().numpy()
            cls = res.boxes.cls.cpu().numpy().astype(int)
            conf = res.boxes.conf.cpu().numpy()
            used = set()
            ious = _box_iou(boxes, np.array([g[1:] for g in gt])) if gt else np.zeros((len(boxes), 0))
            for j in np.argsort(-conf):
                hit = False
                for k in np.argsort(-ious[j]) if ious.shape[1] else []:
                    if ious[j, k] < iou:
                        break
                    if k not in used and gt[k][0] == cls[j]:
                        used.add(k)
                        hit = True
                        break
                confs.append(float(conf[j]))
                hits.append(hit)
    if len(confs) < 20 or all(hits) or not any(hits):
        return None  # too little to fit (an untrained smoke detector): the critic uses raw scores
    a, b, before, after = _fit_platt(np.array(confs), np.array(hits), return_nll=True)
    return {"type": "platt", "a": a, "b": b, "n": len(confs),
            "positives": int(np.sum(hits)), "nll_before": round(before, 4), "nll_after": round(after, 4),
            "fitted_on": f"{split} split of the training recipe's dataset (true labels), detections >= 0.05"}


def _fit_platt(conf: np.ndarray, hits: np.ndarray, return_nll: bool = False):
    """Maximum-likelihood ``(a, b)`` of ``P(hit) = sigmoid(a * logit(conf) + b)`` (L-BFGS)."""
    import torch

    x = torch.tensor(conf, dtype=torch.float64).clamp(1e-6, 1 - 1e-6).logit()
    y = torch.tensor(hits, dtype=torch.float64)
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def closure():
        opt.zero_grad()
        loss = bce(params[0] * x + params[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = float(params[0].detach()), float(params[1].detach())
    if not return_nll:
        return a, b
    with torch.no_grad():
        return a, b, float(bce(x, y)), float(bce(a * x + b, y))


def _val_metrics(run_dir: Path) -> dict:
    """The last epoch's validation metrics from ultralytics' ``results.csv``."""
    import csv

    f = run_dir / "results.csv"
    if not f.is_file():
        return {}
    rows = list(csv.DictReader(f.open()))
    if not rows:
        return {}
    last = {k.strip(): v for k, v in rows[-1].items()}
    keep = ("epoch", "metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)")
    return {k: float(last[k]) for k in keep if k in last and last[k] not in ("", None)}
