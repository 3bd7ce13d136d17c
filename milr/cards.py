"""Component cards: small, import-free metadata records shown by ``milr list``.

Inspired by timm's pretrained configs (github.com/huggingface/pytorch-image-models,
``timm/models/_registry.py``): each registered component carries a card so a user can pick a
critic, model or search strategy without loading it, and recipes can be checked against it.

Reward convention for every critic: **higher is better**; ``score_range`` states the range.

The built-in critics, searches and models are listed as data, one ``index.yaml`` per component
package (name -> ``target``, ``card``, optional ``aliases`` and ``tags``), read by
:func:`register_index`, which checks every card field against the card dataclass's type.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
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


# ---------------------------------------------------------------------------------------------
# The built-in indexes (index.yaml)
# ---------------------------------------------------------------------------------------------
class CardIndexError(ValueError):
    """A malformed ``index.yaml``: names the file and the entry's key path."""


def _typed(value: Any, tp: Any, where: str) -> Any:
    """``value`` read from YAML as type ``tp`` (lists become tuples where the card wants tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _typed(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1:] != (...,) and len(value) != len(args)):
            raise CardIndexError(f"{where}: expected a list of {len(args) if args[-1:] != (...,) else 'any'} items, got {value!r}")
        kinds = [args[0]] * len(value) if args[-1:] == (...,) else list(args)
        return tuple(_typed(v, k, f"{where}.{i}") for i, (v, k) in enumerate(zip(value, kinds)))
    if origin is dict:
        if not isinstance(value, dict):
            raise CardIndexError(f"{where}: expected a mapping, got {value!r}")
        return {_typed(k, args[0], where): _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise CardIndexError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def read_card(data: Any, card_type: type, where: str) -> Any:
    """A card dataclass from a YAML mapping, every field type-checked; unknown keys are errors."""
    if not isinstance(data, dict):
        raise CardIndexError(f"{where}: expected a mapping of card fields, got {data!r}")
    hints = typing.get_type_hints(card_type)
    known = [f.name for f in fields(card_type)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise CardIndexError(f"{where}: unknown card field(s) {unknown}; known: {known}")
    return card_type(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def register_index(registry: Any, card_type: type, path: Path, package: str) -> None:
    """Declare, lazily, every component listed in ``path`` (an ``index.yaml``) on ``registry``.

    Each entry: ``target`` (``module:Attr`` inside ``package``), ``card`` (fields of ``card_type``),
    optional ``aliases`` (names) and ``tags`` (timm-style presets: tag -> argument defaults).
    """
    import yaml

    entries = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    where = f"{package.replace('.', '/')}/{path.name}"
    for name, entry in entries.items():
        at = f"{where}: {name}"
        unknown = sorted(set(entry) - {"target", "card", "aliases", "tags"}) if isinstance(entry, dict) else None
        if unknown is None or unknown or not isinstance(entry.get("target"), str):
            raise CardIndexError(f"{at}: expected target (module:Attr), card, and optional aliases, tags; got {entry!r}")
        registry.register_lazy(
            name, f"{package}.{entry['target']}", card=read_card(entry.get("card") or {}, card_type, f"{at}.card"),
            aliases=_typed(entry.get("aliases") or [], tuple[str, ...], f"{at}.aliases"),
            tags=_typed(entry.get("tags") or {}, dict[str, dict[str, Any]], f"{at}.tags"),
        )
