"""``geneval``: GenEval's own protocol without mmdet -- Mask2Former on transformers, CLIP colours, GenEval rules.

Reference: Ghosh et al. 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image
Alignment" (arXiv 2310.11513, github.com/djghosh13/geneval, MIT); the protocol is paraphrased in
``docs/benchmarks.md`` section 1. GenEval detects with Mask2Former Swin-S on COCO (Cheng et al. 2022,
arXiv 2112.01527) through mmdet 2.x; here the same architecture runs on transformers
(``Mask2FormerForUniversalSegmentation``; checkpoint ``facebook/mask2former-swin-small-coco-instance``
or any local folder), so no mmdet/mmcv build is needed and it runs on CPU.

Pipeline per image:

1. Mask2Former's instance read-out (as mmdet's Mask2Former head does it, :func:`instances`): class
   probabilities without the no-object column, the top 100 (query, class) pairs over all queries,
   each mask binarised at sigmoid > 0.5, score = class probability x the mean sigmoid inside the
   binary mask, box = the mask's bounding box. NMS is off, as in GenEval.
2. Class names (:func:`class_names`): detector class index i is line i of GenEval's
   ``object_names.txt`` (GenEval's own mapping; the three names COCO spells differently are
   "computer mouse", "tv remote", "computer keyboard").
3. GenEval's filter (:func:`postprocess`, the shared :mod:`milr.geneval`): score > 0.3 (> 0.9 for
   ``counting``), best first, at most 16 per class.
4. Colour: each object needing a colour is pasted through its mask onto flat grey #999999, cropped
   to its box and classified zero-shot by open_clip ViT-L-14 (OpenAI weights) over GenEval's ten
   colours (the ``detector`` critic's classifier, reused).
5. GenEval's per-image rules (:func:`milr.geneval.evaluate`).

Input: as mmdet's Mask2Former test pipeline (``test_scale=(1333, 800)``): resize keeping the aspect
ratio so the long side is at most 1333 and the short side at most 800 (bilinear), normalise with the
checkpoint's mean/std, pad to a multiple of 32; mask logits are upsampled to the padded input, cropped
to the image and resized to its original size. ``test_scale: null`` uses the checkpoint's own image
processor instead.

Known differences from the official evaluator: torch's bilinear resize instead of OpenCV's, and
open_clip's tensor preprocessing of the colour crop instead of PIL's (interpolation details), so
scores very near the 0.3/0.9 cuts can differ.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from milr.argtypes import Fraction, PositiveInt, check_choice
from milr.open_clip_loading import _resolve_tag
from milr.devices import torch_dtype
from milr.hub import hub_offline, module_fingerprint
from milr.critics.detector import YOLO_COCO_TO_GENEVAL, ClipColorClassifier, DetectorCritic, MaskedDetection
from milr.critics.vlm_judge import resolve_pretrained
from milr.geneval import Detection, filter_detections
from milr.image_inputs import uint8_hwc
from milr.interfaces import given_arg
from milr.registry import CRITICS

VERSION = "1"
DEFAULT_CHECKPOINT = "facebook/mask2former-swin-small-coco-instance"
TOP_K = 100  # mmdet's Mask2Former test_cfg max_per_image
MASK_THRESHOLD = 0.5  # sigmoid cut of the mask logits
TEST_SCALE = (1333, 800)  # mmdet's Mask2Former test pipeline: Resize(img_scale=(1333, 800), keep_ratio=True)
SIZE_DIVISOR = 32  # ... then Pad(size_divisor=32)
# Other spellings of COCO names a checkpoint may use -> GenEval's object_names.txt.
COCO_ALIASES = {**YOLO_COCO_TO_GENEVAL, "tvmonitor": "tv", "tv monitor": "tv", "sofa": "couch", "aeroplane": "airplane",
                "motorbike": "motorcycle", "diningtable": "dining table", "pottedplant": "potted plant",
                "hair dryer": "hair drier", "cellphone": "cell phone", "donut": "donut", "doughnut": "donut"}


@lru_cache(maxsize=1)
def geneval_object_names() -> tuple[str, ...]:
    """GenEval's ``object_names.txt``: the 80 COCO classes in detector order, GenEval's spelling."""
    path = Path(__file__).resolve().parents[1] / "milr" / "data" / "geneval" / "object_names.txt"
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _canonical(name: str) -> str:
    n = name.strip().lower().replace("_", " ").replace("-", " ")
    return COCO_ALIASES.get(n, n)


def class_names(id2label: Mapping[int, str], class_map: Union[str, Mapping[str, Optional[str]]] = "geneval") -> dict[int, Optional[str]]:
    """Detector class id -> GenEval object name (``None``: ignored).

    ``"geneval"``: id i -> line i of ``object_names.txt`` (GenEval's rule; needs 80 classes; a label
    that does not read as that name, even through :data:`COCO_ALIASES`, is reported).
    ``"names"``: the checkpoint's own labels through :data:`COCO_ALIASES`.
    A mapping ``{label: name or None}`` renames labels; unlisted labels keep their names.
    """
    labels = {int(k): str(v) for k, v in id2label.items()}
    if class_map == "geneval":
        names = geneval_object_names()
        if sorted(labels) != list(range(len(names))):
            raise ValueError(
                f"geneval: class_map 'geneval' maps class i to line i of GenEval's object_names.txt and needs the "
                f"{len(names)} COCO classes; this checkpoint has {len(labels)} labels. Use `class_map: names` or a "
                "{label: object name} mapping"
            )
        off = [(i, labels[i], names[i]) for i in sorted(labels) if _canonical(labels[i]) != names[i]]
        if off:
            shown = ", ".join(f"{i}: {a!r} vs {b!r}" for i, a, b in off[:5])
            raise ValueError(
                f"geneval: the checkpoint's labels are not in GenEval's COCO order ({len(off)} differ: {shown}); "
                "use `class_map: names` (map by name) or a {label: object name} mapping"
            )
        return {i: names[i] for i in sorted(labels)}
    if class_map == "names":
        return {i: _canonical(n) for i, n in labels.items()}
    if isinstance(class_map, Mapping):
        return {i: class_map.get(n, n) for i, n in labels.items()}
    raise ValueError(f"geneval: class_map must be 'geneval', 'names' or a {{label: name}} mapping, got {class_map!r}")


def instances(class_logits: torch.Tensor, mask_logits: torch.Tensor, top_k: int = TOP_K,
              mask_threshold: float = MASK_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask2Former's instance read-out for one image: ``(labels [k], scores [k], masks bool [k, H, W])``.

    ``class_logits`` ``[Q, C + 1]`` (last column: no object); ``mask_logits`` ``[Q, H, W]`` at the
    image's resolution. Top-``k`` (query, class) pairs by class probability; score = probability x
    mean sigmoid inside the binary mask (0 for an empty mask).
    """
    probs = class_logits.float().softmax(-1)[:, :-1]
    n_classes = probs.shape[1]
    k = min(int(top_k), probs.numel())
    top, flat = probs.flatten().topk(k)
    query, labels = flat // n_classes, flat % n_classes
    sig = mask_logits[query].float().sigmoid()
    masks = sig > mask_threshold
    area = masks.flatten(1).sum(1)
    mask_score = (sig * masks).flatten(1).sum(1) / area.clamp(min=1)
    return labels, top * mask_score, masks


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The box ``(x1, y1, x2, y2)`` of a boolean mask, x2/y2 exclusive (pixel edges); zeros when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def detections_from_instances(labels: Sequence[int], scores: Sequence[float], masks: Sequence[np.ndarray],
                              names: Mapping[int, Optional[str]]) -> list[MaskedDetection]:
    """Named detections (box from the mask), in the given order; classes mapped to None dropped."""
    out = []
    for label, score, mask in zip(labels, scores, masks):
        name = names.get(int(label))
        if name is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        out.append(MaskedDetection(name, mask_box(mask), float(score), None, mask))
    return out


def postprocess(labels: Sequence[int], scores: Sequence[float], masks: Sequence[np.ndarray],
                names: Mapping[int, Optional[str]], tag: str) -> dict[str, list[Detection]]:
    """GenEval's objects per class: names mapped, boxes from masks, score > 0.3 (> 0.9 for
    ``counting``), best first, at most 16 per class."""
    return filter_detections(detections_from_instances(labels, scores, masks, names), tag)


def resolve_clip_weights(arch: str, pretrained: Optional[str]) -> None:
    """Check open_clip weights are local (a file, or a tag in the cache) without loading them."""
    if pretrained is None:
        return
    path = os.path.expanduser(str(pretrained))
    if os.path.isfile(path):
        return
    if os.path.sep in str(pretrained) or str(pretrained).endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise FileNotFoundError(f"open_clip checkpoint {pretrained} does not exist")
    if os.path.sep not in str(arch) and not str(arch).endswith(".json"):  # a built-in architecture and a tag
        _resolve_tag(str(arch), str(pretrained), None)


def _no_colors(image: np.ndarray, det: Detection) -> str:
    raise ValueError("geneval: this prompt asks for a colour but the critic was built with `colors: none`")


@CRITICS.register("geneval")
class GenEvalCritic(DetectorCritic):
    """GenEval's verdict on Mask2Former detections and CLIP colours; reward in [0, 1].

    Args:
        checkpoint: a transformers Mask2Former instance-segmentation folder (model + image processor)
            or a hub name already in the local cache.
        class_map: ``"geneval"`` (class i -> object_names.txt line i), ``"names"`` or a mapping.
        mode / partial_weight: ``binary`` is GenEval's pass/fail; ``partial`` gives failed images
            ``partial_weight`` x the fraction of sub-checks passed (a dense signal for search).
        colors: ``clip`` (GenEval's classifier) or ``none`` (boxes only, e.g. for ``t2i_spatial``: no
            CLIP is loaded and a prompt asking for a colour is an error).
        clip_arch / clip_pretrained: the colour classifier's open_clip model (GenEval: ViT-L-14, openai).
        top_k / mask_threshold: the instance read-out (100 and 0.5 as mmdet's Mask2Former).
        test_scale: ``(long, short)`` resize bounds of mmdet's test pipeline, or ``None`` for the
            checkpoint's image processor.
        batch_size: images per Mask2Former forward pass.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the Mask2Former and (with colours) CLIP weights without loading them."""
        resolve_pretrained(str(given_arg(cls, args, "checkpoint")))
        if given_arg(cls, args, "colors") == "clip":
            resolve_clip_weights(str(given_arg(cls, args, "clip_arch")), given_arg(cls, args, "clip_pretrained"))

    def __init__(
        self,
        checkpoint: str = DEFAULT_CHECKPOINT,
        class_map: Union[Literal["geneval", "names"], Mapping[str, Optional[str]]] = "geneval",
        mode: Literal["binary", "partial"] = "binary",
        partial_weight: Fraction = 0.5,
        colors: Literal["clip", "none"] = "clip",
        clip_arch: str = "ViT-L-14",
        clip_pretrained: Optional[str] = "openai",
        top_k: int = TOP_K,
        mask_threshold: float = MASK_THRESHOLD,
        test_scale: Optional[tuple[int, int]] = TEST_SCALE,
        batch_size: PositiveInt = 4,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ):
        check_choice("geneval", "mode", mode, ("binary", "partial"))
        if not 0.0 <= partial_weight <= 1.0:
            raise ValueError(f"geneval: partial_weight must be in [0, 1], got {partial_weight}")
        if int(top_k) < 1 or int(batch_size) < 1 or not 0.0 < mask_threshold < 1.0:
            raise ValueError("geneval: need top_k >= 1, batch_size >= 1 and 0 < mask_threshold < 1")
        # Cheap checks first: both weights must be local before either model loads.
        path, _ = resolve_pretrained(checkpoint)
        self.mode, self.partial_weight = mode, float(partial_weight)
        self.top_k, self.mask_threshold, self.batch_size = int(top_k), float(mask_threshold), int(batch_size)
        if test_scale is not None and (len(test_scale) != 2 or min(test_scale) < 32):
            raise ValueError(f"geneval: test_scale must be [long, short] (>= 32 each) or null, got {test_scale}")
        self.test_scale = None if test_scale is None else (int(test_scale[0]), int(test_scale[1]))
        self.device = device
        self.dtype = torch_dtype(dtype)
        check_choice("geneval", "colors", colors, ("clip", "none"))
        self.color_classifier = (ClipColorClassifier(clip_arch, clip_pretrained, device=device, dtype=dtype)
                                 if colors == "clip" else _no_colors)
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        with hub_offline():
            self.processor = AutoImageProcessor.from_pretrained(path)
            self.segmenter = Mask2FormerForUniversalSegmentation.from_pretrained(path, dtype=self.dtype)
        self.segmenter.to(device).eval()
        self.id_names = class_names(self.segmenter.config.id2label, class_map)
        # What DetectorCritic.score reads: names (for the class check) and an identity class map.
        self.names = {i: n for i, n in self.id_names.items() if n is not None}
        self.class_map = {}
        self.init_args = {"checkpoint": str(checkpoint), "class_map": class_map if isinstance(class_map, str) else dict(class_map),
                          "mode": mode, "partial_weight": self.partial_weight, "colors": colors, "top_k": self.top_k,
                          "mask_threshold": self.mask_threshold, "test_scale": self.test_scale, "dtype": dtype}
        self._identity = (f"geneval:v{VERSION}:{sorted(self.init_args.items(), key=lambda kv: kv[0])!r}:"
                          f"w={module_fingerprint(self.segmenter)}:colors={getattr(self.color_classifier, 'fingerprint', colors)}")
        self._warned: set[str] = set()
        self.last_results = []

    @torch.no_grad()
    def _detect(self, images: np.ndarray) -> list[list[Detection]]:
        """Mask2Former on ``uint8 [B, H, W, 3]`` RGB images; masks and boxes at the images' size."""
        out: list[list[Detection]] = []
        h, w = images.shape[1:3]
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            pixels, valid = self.preprocess(batch)
            pixels = pixels.to(self.device, self.dtype)
            res = self.segmenter(pixel_values=pixels, pixel_mask=valid.to(self.device))
            size = pixels.shape[-2:]
            for b in range(len(batch)):
                labels_scores = res.class_queries_logits[b]
                logits = F.interpolate(res.masks_queries_logits[b : b + 1].float(), size=size, mode="bilinear",
                                       align_corners=False)[0]
                rows, cols = valid[b].bool().any(1), valid[b].bool().any(0)  # crop the processor's padding
                logits = logits[:, : int(rows.sum()), : int(cols.sum())]
                logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                labels, scores, masks = instances(labels_scores, logits, self.top_k, self.mask_threshold)
                out.append(detections_from_instances(labels.tolist(), scores.tolist(), list(masks.cpu().numpy()),
                                                     self.id_names))
        return out

    def preprocess(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values [B, 3, H', W'], pixel_mask [B, H', W'])`` for ``uint8 [B, H, W, 3]`` images."""
        if self.test_scale is None:
            inputs = self.processor(images=[np.ascontiguousarray(img) for img in images], return_tensors="pt")
            pixels = inputs["pixel_values"]
            mask = inputs.get("pixel_mask")
            return pixels, mask if mask is not None else torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long)
        h, w = images.shape[1:3]
        scale = min(max(self.test_scale) / max(h, w), min(self.test_scale) / min(h, w))
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.processor.image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255
        x = (x - mean) / std
        ph, pw = -(-nh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-nw // SIZE_DIVISOR) * SIZE_DIVISOR
        pixels = F.pad(x, (0, pw - nw, 0, ph - nh))  # zeros after normalising, as mmdet's Pad
        mask = torch.zeros(len(images), ph, pw, dtype=torch.long)
        mask[:, :nh, :nw] = 1
        return pixels, mask

    def detect(self, images: torch.Tensor) -> list[list[Detection]]:
        """All read-out detections (before GenEval's filter) of ``[B, 3, H, W]`` images in [0, 1]."""
        arr = uint8_hwc(images)
        return self._detect(arr)
