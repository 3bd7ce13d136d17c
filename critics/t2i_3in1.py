"""``t2i_3in1``: T2I-CompBench's score for the complex category (BLIP-VQA, spatial and CLIP combined).

Reference: Huang et al. 2023, "T2I-CompBench" (arXiv 2307.06350), github.com/Karine-Huang/T2I-CompBench
(``3_in_1_eval``); rules paraphrased in ``docs/benchmarks.md`` section 3. Per image:

* ``blip``: the BLIP-VQA score (:mod:`milr.critics.t2i_blip_vqa`);
* ``spatial``: the spatial score in complex mode, with the two nouns either side of the relation
  (:mod:`milr.critics.t2i_spatial`, ``mode="complex"``);
* ``clip``: CLIP ViT-B/32 cosine with the prompt stripped of every ADJ token (:mod:`milr.critics.t2i_clipscore`).

Prompts of ``complex_val_spatial`` score ``(spatial + blip) / 2``, of ``complex_val_action``
``(clip + blip) / 2``, all others ``(blip + spatial + clip) / 3``; prompts are matched on their
lowercased text up to the first ".". The subset comes from ``metadata["complex_subset"]``
("spatial", "action" or "spatialaction") when given, else from the benchmark's prompt lists
(``prompt_lists``: a folder with ``complex_val_spatial.txt`` and ``complex_val_action.txt``).
Only the parts a prompt's formula uses are computed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import torch

from milr.image_inputs import check_batch
from milr.critics.t2i_blip_vqa import T2IBlipVQA
from milr.critics.t2i_clipscore import T2ICLIPScore
from milr.critics.t2i_spatial import T2ISpatial
from milr.critics.t2i_text import without_adjectives
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

VERSION = "1"
SUBSETS = ("spatial", "action", "spatialaction")
LIST_FILES = {"spatial": "complex_val_spatial.txt", "action": "complex_val_action.txt"}
PARTS = {"spatial": ("blip", "spatial"), "action": ("blip", "clip"), "spatialaction": ("blip", "spatial", "clip")}


def prompt_key(prompt: str) -> str:
    """How the benchmark matches complex prompts: lowercased text up to the first '.'."""
    return prompt.lower().split(".")[0].strip()


def _default_lists() -> Optional[Path]:
    """The T2I-CompBench dataset folder shipped with the suite, if installed."""
    root = Path(__file__).resolve().parents[1] / "milr" / "data"
    for name in ("t2i-compbench", "t2i_compbench"):
        for sub in ("", "dataset"):
            folder = root / name / sub
            if all((folder / f).is_file() for f in LIST_FILES.values()):
                return folder
    return None


def load_prompt_lists(folder: str | Path) -> dict[str, str]:
    """``{prompt_key: subset}`` from a folder with complex_val_spatial.txt and complex_val_action.txt."""
    folder = Path(folder).expanduser()
    out: dict[str, str] = {}
    for subset, name in LIST_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"t2i_3in1: prompt_lists folder {folder} has no {name} (T2I-CompBench's dataset/ folder)")
        for line in path.read_text(encoding="utf-8").splitlines():  # the files use CRLF
            if line.strip():
                out[prompt_key(line)] = subset
    return out


@CRITICS.register("t2i_3in1")
class T2I3in1(Critic):
    """T2I-CompBench's 3-in-1 complex score in [0, 1], higher is better.

    Args:
        blip: arguments of ``t2i_blip_vqa`` (checkpoint, image_size, ...).
        spatial: arguments of ``t2i_spatial`` (detector, label_map, ...); its mode is "complex".
        clip: arguments of ``t2i_clipscore`` (arch, pretrained, ...).
        chunker: shared by the three parts (``/path/to/en_core_web_sm`` or ``rules``).
        prompt_lists: folder with ``complex_val_spatial.txt`` and ``complex_val_action.txt``
            (default: the suite's copy when installed); ``metadata["complex_subset"]`` wins.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Check the three parts' weights and the prompt lists without loading anything."""
        chunker = given_arg(cls, args, "chunker")
        T2IBlipVQA.preflight({"chunker": chunker, **dict(given_arg(cls, args, "blip") or {})})
        T2ISpatial.preflight({"chunker": chunker, **dict(given_arg(cls, args, "spatial") or {})})
        clip_hook = getattr(T2ICLIPScore, "preflight", None)
        if callable(clip_hook):
            clip_hook(dict(given_arg(cls, args, "clip") or {}))
        lists = given_arg(cls, args, "prompt_lists")
        if lists is not None:
            load_prompt_lists(lists)

    def __init__(
        self,
        blip: Optional[Mapping[str, Any]] = None,
        spatial: Optional[Mapping[str, Any]] = None,
        clip: Optional[Mapping[str, Any]] = None,
        chunker: str = "rules",
        prompt_lists: Optional[str] = None,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ):
        folder = Path(prompt_lists) if prompt_lists is not None else _default_lists()
        self.subsets = load_prompt_lists(folder) if folder is not None else {}
        common = {"device": device, "dtype": dtype}
        self.blip = T2IBlipVQA(**{"chunker": chunker, **common, **dict(blip or {})})
        self.spatial = T2ISpatial(**{"chunker": chunker, "device": device, **dict(spatial or {}), "mode": "complex"})
        self.clip = T2ICLIPScore(**{**common, **dict(clip or {})})
        self.init_args = dict(chunker=chunker, listed_prompts=len(self.subsets))
        self._identity = (f"t2i_3in1:v{VERSION}:{self.blip.identity()}|{self.spatial.identity()}|{self.clip.identity()}|"
                          f"lists={hashlib.sha256(repr(sorted(self.subsets.items())).encode()).hexdigest()[:16]}")
        self.last_parts: list[dict[str, float]] = []

    def identity(self) -> str:
        return self._identity

    def subset_of(self, prompt: str, metadata: Optional[Mapping[str, Any]]) -> str:
        given = (metadata or {}).get("complex_subset")
        if given is not None:
            if given not in SUBSETS:
                raise ValueError(f"t2i_3in1: metadata complex_subset must be one of {SUBSETS}, got {given!r}")
            return given
        if not self.subsets:
            raise ValueError("t2i_3in1: no prompt lists; give `prompt_lists: /path/to/T2I-CompBench/dataset` or "
                             "metadata complex_subset per prompt")
        return self.subsets.get(prompt_key(prompt), "spatialaction")

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> torch.Tensor:
        check_batch(images, prompts, "t2i_3in1")
        md = list(metadata) if metadata is not None else [{}] * len(prompts)
        kinds = [self.subset_of(p, m) for p, m in zip(prompts, md)]
        parts: list[dict[str, float]] = [{} for _ in prompts]
        for part, critic in (("blip", self.blip), ("spatial", self.spatial), ("clip", self.clip)):
            rows = [i for i, k in enumerate(kinds) if part in PARTS[k]]
            if not rows:
                continue
            texts = [prompts[i] for i in rows]
            if part == "clip":
                texts = [without_adjectives(self.blip.analyzer, t) for t in texts]
            values = critic.score(images[rows], texts, [md[i] for i in rows])
            for i, v in zip(rows, values.tolist()):
                parts[i][part] = v
        self.last_parts = parts
        return torch.tensor([sum(p.values()) / len(p) for p in parts], dtype=torch.float32, device=images.device)
