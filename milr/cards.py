"""Component cards: small, import-free metadata records shown by ``milr list``.

Inspired by timm's pretrained configs (github.com/huggingface/pytorch-image-models,
``timm/models/_registry.py``): each registered component carries a card so a user can pick a
critic, model or search strategy without loading it, and recipes can be checked against it.

Reward convention for every critic: **higher is better**; ``score_range`` states the range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CriticCard:
    """What a critic scores and what it needs."""

    summary: str
    score_range: tuple[float, float] = (0.0, 1.0)
    higher_is_better: bool = True
    differentiable: bool = False
    needs_metadata: tuple[str, ...] = ()  # e.g. ("include",) for GenEval-rule critics
    input_size: int | None = None  # pixels the critic resizes to, if any
    max_text_tokens: int | None = None  # prompt truncation of the underlying model, if any
    cost: str = "cheap"  # "cheap" | "moderate" | "expensive" | "api"
    weights: str = ""  # where weights come from
    reference: str = ""  # paper or upstream reference
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        lo, hi = self.score_range
        bits = [
            f"range [{lo:g}, {hi:g}] {'higher' if self.higher_is_better else 'lower'} is better",
            "differentiable" if self.differentiable else "not differentiable",
            f"cost {self.cost}",
        ]
        if self.needs_metadata:
            bits.append("needs " + ",".join(self.needs_metadata))
        if self.input_size:
            bits.append(f"input {self.input_size}px")
        if self.max_text_tokens:
            bits.append(f"truncates prompts to {self.max_text_tokens} tokens")
        return "; ".join(bits)


@dataclass(frozen=True)
class ModelCard:
    """Structure of a MUG model, as the latent search sees it."""

    summary: str
    image_tokens: int | None = None  # per image, e.g. 576 for Janus-Pro, 64 for MiniMUG
    hidden_size: int | None = None
    latents: tuple[str, ...] = ("text", "image")  # which last-layer latents it exposes
    image_size: int | None = None
    default_cfg: float | None = None
    default_temperature: float | None = None
    weights: str = ""
    reference: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        bits = []
        if self.image_tokens:
            bits.append(f"{self.image_tokens} image tokens")
        if self.hidden_size:
            bits.append(f"hidden {self.hidden_size}")
        if self.image_size:
            bits.append(f"{self.image_size}px")
        bits.append("latents: " + "+".join(self.latents))
        if self.default_cfg is not None:
            bits.append(f"cfg {self.default_cfg:g}")
        return "; ".join(bits)


@dataclass(frozen=True)
class SearchCard:
    """How a search strategy uses the model and the critic."""

    summary: str
    needs_latents: bool = False  # needs MUGModel latents/heads (vs. only sampling)
    needs_differentiable_critic: bool = False
    reference: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        return ("optimises latents" if self.needs_latents else "samples only") + (
            "; needs a differentiable critic" if self.needs_differentiable_critic else ""
        )


@dataclass(frozen=True)
class SuiteCard:
    summary: str
    categories: tuple[str, ...] = ()
    size: str = ""
    license: str = ""
    reference: str = ""
    # The benchmark protocol the suite's prompts come from (a name in milr.benchmarks.BENCHMARKS),
    # and what the oracle rule (milr.benchmarks.oracle) reads: which critic names are the
    # benchmark's own scorer, per category ("*" = every category); critics that only imitate it
    # (labelled, never flagged); and metadata fields that hold the answer (privileged).
    benchmark: str = ""
    scorers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    proxies: dict[str, str] = field(default_factory=dict)
    privileged: tuple[str, ...] = ()
    images_per_prompt: int = 1  # the benchmark protocol's number of images per prompt
    note: str = ""  # e.g. what is missing to score it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        line = f"{self.size}; categories: {', '.join(self.categories)}"
        names = list(dict.fromkeys(n for group in self.scorers.values() for n in group))
        return line + (f"; benchmark scorer (oracle if searched with): {', '.join(names)}" if names else "")
