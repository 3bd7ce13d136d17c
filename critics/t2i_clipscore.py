"""``t2i_clipscore``: T2I-CompBench's non-spatial score, CLIPScore with OpenAI CLIP ViT-B/32.

Reference: Huang et al. 2023, "T2I-CompBench" (arXiv 2307.06350), github.com/Karine-Huang/T2I-CompBench
(``CLIPScore_eval``); rules paraphrased in ``docs/benchmarks.md`` section 3: the raw cosine
similarity between the OpenAI CLIP ViT-B/32 embeddings of the image and the whole prompt (no x100,
no 2.5 factor); the category score is the mean over images (typically about 0.30).

This is :class:`milr.critics.clip_score.CLIPScore` pinned to that setting (``ViT-B-32`` with the
``openai`` tag, cosine). The benchmark uses the ``clip`` package's PIL preprocessing; here open_clip's
transform runs on tensors (agreement to interpolation details, see ``clip_score``).
"""

from __future__ import annotations

from typing import Literal, Optional

from milr.argtypes import PositiveInt
from milr.critics.clip_score import CLIPScore
from milr.registry import CRITICS


@CRITICS.register("t2i_clipscore")
class T2ICLIPScore(CLIPScore):
    """Cosine similarity of OpenAI CLIP ViT-B/32 image and prompt embeddings, in [-1, 1].

    ``arch``/``pretrained`` accept a local config/folder and checkpoint as in ``clip_score`` (the
    default tag must be in the local cache: the toolkit never downloads).
    """

    def __init__(
        self,
        arch: str = "ViT-B-32",
        pretrained: Optional[str] = "openai",
        batch_size: PositiveInt = 32,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        cache_dir: Optional[str] = None,
    ):
        super().__init__(arch=arch, pretrained=pretrained, variant="cosine", batch_size=batch_size,
                         device=device, dtype=dtype, cache_dir=cache_dir)

    def identity(self) -> str:
        return "t2i_" + super().identity()
