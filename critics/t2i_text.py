"""Prompt analysis for the T2I-CompBench scorers: noun chunks and part-of-speech tags.

T2I-CompBench (Huang et al. 2023, arXiv 2307.06350, github.com/Karine-Huang/T2I-CompBench; rules
paraphrased in ``docs/benchmarks.md`` section 3) reads its prompts with spaCy's ``en_core_web_sm``:
BLIP-VQA asks one question per noun chunk, the spatial score takes the first and last NOUN (or the
nouns either side of the relation, for complex prompts), and the 3-in-1 CLIP part drops ADJ tokens.

``en_core_web_sm`` is not on PyPI, so it is loaded from a local path the user gives
(``chunker: /path/to/en_core_web_sm``, a folder ``spacy.load`` accepts, with ``pip install spacy``).
``chunker: rules`` selects :class:`RuleAnalyzer`, a small documented stand-in used by the tests and
usable without spaCy; it is NOT what the benchmark uses and its chunks can differ on prompts with
verbs or unusual adjectives (see its docstring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Chunks T2I-CompBench's BLIP-VQA script skips (relation words spaCy reads as noun chunks).
DROPPED_CHUNKS = ("top", "the side", "the left", "the right")
MAX_CHUNKS = 8


@dataclass(frozen=True)
class Token:
    """A word and its universal part-of-speech tag (spaCy's ``pos_``: NOUN, ADJ, DET, ADP, ...)."""

    text: str
    pos: str


class TextAnalyzer(Protocol):
    """What the T2I-CompBench critics need from a tagger: tokens with POS tags, and noun chunks."""

    name: str

    def tokens(self, text: str) -> list[Token]: ...

    def noun_chunks(self, text: str) -> list[str]: ...


class SpacyAnalyzer:
    """spaCy pipeline loaded from a local folder (the benchmark's ``en_core_web_sm``)."""

    def __init__(self, path: str):
        folder = Path(path).expanduser()
        if not folder.exists():
            raise FileNotFoundError(
                f"spaCy model folder {path} does not exist; en_core_web_sm is not on PyPI: download it "
                "(https://github.com/explosion/spacy-models/releases, en_core_web_sm-3.x.tar.gz) on a machine with "
                "network, unpack it and set `chunker: /path/to/en_core_web_sm` (or `chunker: rules` for the stand-in)"
            )
        try:
            import spacy
        except ImportError:
            raise ImportError(
                "chunker: a spaCy model folder needs spaCy: `pip install spacy` (or `pip install milr[t2i-compbench]`), "
                "or use `chunker: rules`"
            ) from None
        self.nlp = spacy.load(folder)
        self.name = f"spacy:{self.nlp.meta.get('name', folder.name)}-{self.nlp.meta.get('version', '?')}"
        self._cache: dict[str, object] = {}

    def _doc(self, text: str):
        if text not in self._cache:
            self._cache[text] = self.nlp(text)
        return self._cache[text]

    def tokens(self, text: str) -> list[Token]:
        return [Token(t.text, t.pos_) for t in self._doc(text)]

    def noun_chunks(self, text: str) -> list[str]:
        return [c.text for c in self._doc(text).noun_chunks]


# ---------------------------------------------------------------------------------------------
# The rule-based stand-in
# ---------------------------------------------------------------------------------------------
_CLOSED = {
    "DET": "a an the this that these those some each every another any no",
    "PRON": "it he she they them him her its itself his their my your our we i you who which",
    "NUM": "one two three four five six seven eight nine ten",
    "ADP": "on of in at to near with under over above below behind beside besides between by from into onto "
           "inside outside across against along around through toward towards for atop beneath underneath upon",
    "CCONJ": "and or but",
    "AUX": "is are was were be being been am has have had does do did can will would",
    "VERB": "sits sit sat stands stand stood lies lie lay lying rests rest hangs hang hung holds hold held "
            "chases chase eats eat runs run plays play flies fly swims swim reads read looks look walks walk "
            "jumps jump rides ride carries carry wears wear watches watch placed hanging sitting standing resting "
            "leaning leans leaned",
    "ADJ": "red orange yellow green blue purple pink brown black white gray grey beige gold golden silver "
           "round square oval rectangular triangular circular cylindrical spherical conical cubic oblong teardrop "
           "pentagonal hexagonal octagonal big small large tiny tall short long huge little wide narrow "
           "wooden metallic fluffy furry soft hard smooth rough shiny glossy fuzzy leather rubber plastic glass "
           "fabric velvet woolen wool silky old new young bright dark",
}
_LEXICON = {w: pos for pos, words in _CLOSED.items() for w in words.split()}
# Suffixes that make an unknown word of 6+ letters an adjective (-ly an adverb); everything else is a
# noun. (-able, -ish are left out: table, vegetable, radish are nouns.)
_ADJ_SUFFIXES = ("ful", "ous", "ive", "less", "-shaped", "-colored", "-coloured")
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|\d+(?:\.\d+)?|[^\sA-Za-z\d]")


class RuleAnalyzer:
    """A small rule-based stand-in for spaCy (``chunker: rules``), for tests and spaCy-free use.

    Tagging: a closed word list gives DET, PRON, NUM, ADP, CCONJ, AUX, VERB and common colour,
    shape, size and texture adjectives (ADJ); words of 6+ letters ending in -ful/-ous/-ive/-less/
    -shaped/-colored are ADJ, -ly ADV, -ing VERB, digits NUM, punctuation PUNCT; every other word is
    a NOUN (so "left", "top", "side" are nouns, as spaCy usually tags them).

    Noun chunks: a maximal run of DET/NUM/ADJ/ADV/NOUN tokens (a DET only at its start) cut after its
    last NOUN; runs without a NOUN are not chunks. An adjective that ends a phrase after a
    determiner, number, adjective or preposition is its head noun ("a square", "made of glass").
    """

    name = "rules-v1"

    def _tag(self, word: str) -> str:
        w = word.lower()
        if w in _LEXICON:
            return _LEXICON[w]
        if w[0].isdigit():
            return "NUM"
        if not w[0].isalpha():
            return "PUNCT"
        if len(w) > 5 and w.endswith(_ADJ_SUFFIXES):
            return "ADJ"
        if w.endswith("ly") and len(w) > 4:
            return "ADV"
        if w.endswith("ing") and len(w) > 5:
            return "VERB"
        return "NOUN"

    def tokens(self, text: str) -> list[Token]:
        words = _WORD.findall(text)
        tags = [self._tag(w) for w in words]
        # An adjective ending a noun phrase is its head noun ("a square", "made of glass"): after a
        # determiner, number, adjective or preposition and before no noun or adjective.
        for i, t in enumerate(tags):
            if t == "ADJ":
                prev = tags[i - 1] if i > 0 else None
                nxt = tags[i + 1] if i + 1 < len(tags) else None
                if prev in ("DET", "NUM", "ADJ", "ADP") and nxt not in ("NOUN", "ADJ"):
                    tags[i] = "NOUN"
        return [Token(w, t) for w, t in zip(words, tags)]

    def noun_chunks(self, text: str) -> list[str]:
        chunks: list[str] = []
        run: list[Token] = []

        def close() -> None:
            last_noun = max((i for i, t in enumerate(run) if t.pos == "NOUN"), default=-1)
            if last_noun >= 0:
                chunks.append(" ".join(t.text for t in run[: last_noun + 1]))
            run.clear()

        for tok in self.tokens(text):
            if tok.pos == "DET":
                close()
                run.append(tok)
            elif tok.pos in ("NUM", "ADJ", "ADV", "NOUN"):
                run.append(tok)
            else:
                close()
        close()
        return chunks


def check_chunker(chunker: str) -> None:
    """What :func:`load_analyzer` checks before loading anything: the folder exists, spaCy is installed."""
    if chunker == "rules":
        return
    if chunker in ("en_core_web_sm", "spacy") or not Path(chunker).expanduser().exists():
        load_analyzer(chunker)  # raises the one-line message
    import importlib.util

    if importlib.util.find_spec("spacy") is None:
        raise ImportError("chunker: a spaCy model folder needs spaCy: `pip install spacy` (or `pip install milr[t2i-compbench]`), "
                          "or use `chunker: rules`")


def load_analyzer(chunker: str) -> TextAnalyzer:
    """``"rules"`` for :class:`RuleAnalyzer`, else a local spaCy model folder (checked at once)."""
    if chunker == "rules":
        return RuleAnalyzer()
    if chunker in ("en_core_web_sm", "spacy"):
        raise FileNotFoundError(
            f"chunker {chunker!r}: give the local folder of en_core_web_sm (not on PyPI; download it from "
            "https://github.com/explosion/spacy-models/releases on a machine with network), e.g. "
            "`chunker: /path/to/en_core_web_sm`, or `chunker: rules` for the rule-based stand-in"
        )
    return SpacyAnalyzer(chunker)


def blip_questions(analyzer: TextAnalyzer, prompt: str) -> list[str]:
    """T2I-CompBench's BLIP-VQA questions: one ``"<chunk>?"`` per noun chunk, relation chunks
    ("top", "the side", "the left", "the right") dropped, at most 8."""
    chunks = [c for c in analyzer.noun_chunks(prompt) if c not in DROPPED_CHUNKS]
    return [f"{c}?" for c in chunks[:MAX_CHUNKS]]


def without_adjectives(analyzer: TextAnalyzer, prompt: str) -> str:
    """The prompt with every ADJ token removed (the 3-in-1 score's CLIP text), tokens joined by spaces."""
    return " ".join(t.text for t in analyzer.tokens(prompt) if t.pos != "ADJ")
