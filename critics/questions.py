"""Yes/no questions for VQA-style judges, shared by ``vlm_judge``, ``self_judge`` and ``api_judge``.

Two ways to ask about an image:

* **whole prompt** (VQAScore, Lin et al. 2024, arXiv 2404.01291): one question, 'Does this figure
  show "{prompt}"? Please answer yes or no.', with the template chosen by the prompt's category
  (GenEval ``tag``);
* **decomposed** (in the spirit of TIFA/DSG, Hu et al. 2023, arXiv 2303.11897; Cho et al. 2024,
  arXiv 2310.18235): one question per clause of GenEval metadata (Ghosh et al. 2023,
  arXiv 2310.11513) -- each object, its count, its colour and its relation to another object, and
  each excluded count -- combined by product (all must hold) or mean (fraction that holds).

Metadata follows GenEval's schema: ``{"tag", "include": [{"class", "count", "color"?, "position"?:
[relation, index]}], "exclude": [{"class", "count"}]}``, where ``position = ["left of", 0]`` means
"this object is left of include[0]". Questions whose expected answer is "no" (excluded counts) carry
``expect_yes=False``; a judge scores them by ``1 - P(yes)``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from milr.argtypes import check_choice
from milr.interfaces import Critic

if TYPE_CHECKING:
    import torch

SUFFIX = " Please answer yes or no."

# Whole-prompt questions, by GenEval tag ("default" for any other tag or none).
PROMPT_TEMPLATES: dict[str, str] = {
    "default": 'Does this figure show "{prompt}"?' + SUFFIX,
    "counting": 'Does this figure show exactly the number of objects in "{prompt}"?' + SUFFIX,
    "colors": 'Does this figure show "{prompt}", with the colour as stated?' + SUFFIX,
    "color_attr": 'Does this figure show "{prompt}", with each object in the stated colour?' + SUFFIX,
    "position": 'Does this figure show "{prompt}", with the objects placed as stated?' + SUFFIX,
}

# Decomposed questions, by clause kind. Fields: {a_object} ("a cat"), {object} ("cat"),
# {objects} ("cats"), {count} ("two"), {color}, {relation} ("on the left of"), {other} ("dog").
CLAUSE_TEMPLATES: dict[str, str] = {
    "object": "Is there {a_object} in the image?" + SUFFIX,
    "count": "Are there exactly {count} {objects} in the image?" + SUFFIX,
    "color": "Is the {object} {color}?" + SUFFIX,
    "color_plural": "Are the {objects} {color}?" + SUFFIX,
    "position": "Is the {object} {relation} the {other}?" + SUFFIX,
    "exclude": "Are there {count} or more {objects} in the image?" + SUFFIX,
}

RELATION_PHRASES = {"left of": "on the left of", "right of": "on the right of", "above": "above", "below": "below"}
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
                      "scissors": "scissors", "child": "children", "man": "men", "woman": "women", "fish": "fish"}
COMBINES = ("product", "mean")


@dataclass(frozen=True)
class Question:
    """One yes/no question; ``kind`` names the clause it checks."""

    text: str
    kind: str
    expect_yes: bool = True


def number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def plural(noun: str) -> str:
    """English plural of an object name, inflecting its last word ("wine glass" -> "wine glasses")."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        word = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def with_article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def prompt_question(prompt: str, tag: str | None = None, templates: Mapping[str, str] | None = None) -> Question:
    """The single whole-prompt question, with the template of the prompt's category."""
    table = {**PROMPT_TEMPLATES, **(templates or {})}
    template = table.get(tag or "default", table["default"])
    return Question(template.format(prompt=prompt), kind="prompt")


def _check_item(item: object, where: str) -> Mapping:
    if not isinstance(item, Mapping) or not isinstance(item.get("class"), str) or not item["class"]:
        raise ValueError(f"{where} must be a dict with a non-empty 'class', got {item!r}")
    count = item.get("count", 1)
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"{where}: 'count' must be a non-negative int, got {count!r}")
    return item


def decomposed_questions(metadata: Mapping, templates: Mapping[str, str] | None = None) -> list[Question]:
    """One question per GenEval clause: object (or exact count), colour, relation, excluded count."""
    table = {**CLAUSE_TEMPLATES, **(templates or {})}
    include = metadata.get("include")
    if not include:
        raise ValueError(f"decomposed questions need GenEval metadata with a non-empty 'include', got {dict(metadata)!r}")
    items = [_check_item(it, f"include[{i}]") for i, it in enumerate(include)]
    out: list[Question] = []
    for i, item in enumerate(items):
        name, count = item["class"], item.get("count", 1)
        fields = dict(object=name, objects=plural(name), a_object=with_article(name), count=number_word(count))
        if count == 1:
            out.append(Question(table["object"].format(**fields), kind="object"))
        else:
            out.append(Question(table["count"].format(**fields), kind="count"))
        if item.get("color"):
            key = "color" if count == 1 else "color_plural"
            out.append(Question(table[key].format(color=item["color"], **fields), kind="color"))
        if item.get("position"):
            pos = item["position"]
            if not (isinstance(pos, Sequence) and len(pos) == 2 and pos[0] in RELATION_PHRASES):
                raise ValueError(f"include[{i}].position must be [relation, index] with relation in {list(RELATION_PHRASES)}, got {pos!r}")
            j = pos[1]
            if not isinstance(j, int) or not 0 <= j < len(items) or j == i:
                raise ValueError(f"include[{i}].position refers to include[{j!r}], which does not exist")
            other = items[j]["class"]
            out.append(Question(table["position"].format(relation=RELATION_PHRASES[pos[0]], other=other, **fields), kind="position"))
    included = {(it["class"], it.get("count", 1)) for it in items}
    for k, item in enumerate(metadata.get("exclude") or []):
        item = _check_item(item, f"exclude[{k}]")
        name, count = item["class"], item.get("count", 1)
        if (name, count - 1) in included and count > 2:
            continue  # "exactly count-1" already rules out count or more
        fields = dict(object=name, objects=plural(name) if count != 1 else name, a_object=with_article(name),
                      count=number_word(count))
        out.append(Question(table["exclude"].format(**fields), kind="exclude", expect_yes=False))
    return out


def build_questions(
    prompt: str,
    metadata: Mapping | None,
    mode: str = "decomposed",
    prompt_templates: Mapping[str, str] | None = None,
    clause_templates: Mapping[str, str] | None = None,
) -> list[Question]:
    """Questions for one (prompt, metadata): ``mode`` is "prompt", "decomposed" or "auto"
    (decomposed when the metadata has ``include``, else the whole-prompt question)."""
    metadata = metadata or {}
    if mode not in ("prompt", "decomposed", "auto"):
        raise ValueError(f"question mode must be 'prompt', 'decomposed' or 'auto', got {mode!r}")
    if mode == "prompt" or (mode == "auto" and not metadata.get("include")):
        return [prompt_question(prompt, metadata.get("tag"), prompt_templates)]
    return decomposed_questions(metadata, clause_templates)


def check_combine(combine: str) -> str:
    return check_choice("judge", "combine", combine, COMBINES)


def combine_scores(per_question: "torch.Tensor", combine: str) -> "torch.Tensor":
    """Product (every clause must hold) or mean (fraction of clauses that hold) of answer probabilities."""
    if per_question.numel() == 0:
        raise ValueError("no questions to combine")
    if combine == "product":
        return per_question.prod()
    if combine == "mean":
        return per_question.mean()
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


class YesNoJudge(Critic):
    """A critic that asks yes/no questions about each image and combines ``P(expected answer)``.

    Subclasses implement :meth:`answer` (``P(yes)`` for image/question pairs). Scores are in [0, 1],
    higher is better; with ``combine="product"`` a score is the probability that every clause holds
    (treating answers as independent), with ``"mean"`` the expected fraction of clauses that hold.
    """

    def __init__(
        self,
        questions: Literal["prompt", "decomposed", "auto"] = "auto",
        combine: Literal["product", "mean"] = "product",
        prompt_templates: Mapping[str, str] | None = None,
        clause_templates: Mapping[str, str] | None = None,
    ):
        check_choice(type(self).__name__, "questions", questions, ("prompt", "decomposed", "auto"))
        unknown = set(clause_templates or {}) - set(CLAUSE_TEMPLATES)
        if unknown:
            raise ValueError(f"unknown clause template keys {sorted(unknown)}; known: {sorted(CLAUSE_TEMPLATES)}")
        self.question_mode = questions
        self.combine = check_combine(combine)
        self.prompt_templates = dict(prompt_templates or {})
        self.clause_templates = dict(clause_templates or {})
        self.last_questions: list[list[Question]] = []  # what was asked in the last score() call

    def questions_for(self, prompts: Sequence[str], metadata: Sequence[Mapping] | None) -> list[list[Question]]:
        metadata = list(metadata) if metadata is not None else [{}] * len(prompts)
        if len(metadata) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(metadata)} metadata items")
        return [
            build_questions(p, m, self.question_mode, self.prompt_templates, self.clause_templates)
            for p, m in zip(prompts, metadata)
        ]

    @abstractmethod
    def answer(self, images: "torch.Tensor", questions: list[str]) -> "torch.Tensor":
        """``P(yes)`` in [0, 1] for each (image, question) pair, in order; ``Tensor[len(questions)]``."""

    def score(self, images: "torch.Tensor", prompts: list[str], metadata: list[dict] | None = None) -> "torch.Tensor":
        import torch

        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a tensor [B, 3, H, W] in [0, 1], got {getattr(images, 'shape', type(images))}")
        if images.shape[0] != len(prompts):
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
        asked = self.questions_for(prompts, metadata)
        self.last_questions = asked
        rows = [b for b, qs in enumerate(asked) for _ in qs]
        flat = [q for qs in asked for q in qs]
        if not flat:
            return torch.zeros(0)
        p_yes = self.answer(images[torch.tensor(rows, device=images.device)], [q.text for q in flat]).float().cpu()
        if p_yes.shape != (len(flat),):
            raise RuntimeError(f"{type(self).__name__}.answer returned shape {tuple(p_yes.shape)}, expected ({len(flat)},)")
        expect = torch.tensor([q.expect_yes for q in flat])
        p_ok = torch.where(expect, p_yes, 1.0 - p_yes)
        out, start = [], 0
        for qs in asked:
            out.append(combine_scores(p_ok[start : start + len(qs)], self.combine))
            start += len(qs)
        return torch.stack(out)
