"""``wise_judge``: WISE's judge protocol (legacy, the paper setting) through an OpenAI-compatible endpoint.

Reference: Niu et al. 2025, "WISE: A World Knowledge-Informed Semantic Evaluation for Text-to-Image
Generation" (arXiv 2503.07265, github.com/PKU-YuanGroup/WISE); the protocol is paraphrased in
``docs/benchmarks.md`` section 2 (the wording below is ours; the structure follows it). One chat call
per image (temperature 0, max_tokens 2000; the paper's judge is ``gpt-4o-2024-05-13``): a system line
casting the judge as a strict image-quality auditor, then a user message with the protocol text and
the image as a base64 PNG data URL. The judge scores Consistency, Realism and Aesthetic Quality on
0-2 (0 Rejected, 1 Conditional, 2 Exemplary) and answers in three lines.

Per image: **WiScore = (0.7 C + 0.2 R + 0.1 A) / 2** in [0, 1]; categories are means over their
images and the overall is ``0.4 Cultural + 0.167 Time + 0.133 Space + 0.1 Biology + 0.1 Physics +
0.1 Chemistry`` (:func:`wise_overall`).

The prompt's ``Explanation`` (the intended answer, e.g. "Mooncakes") is WISE's: the official judge
always sees it. Here it is sent only with ``use_explanation: true``; such a critic sees a privileged
field (``privileged_fields == ("explanation",)``), and a search guided by it is an oracle run.

Parsing (:func:`parse_scores`): "Consistency", "Realism", "Aesthetic Quality" (any case, optional
``**`` and colon) each followed by a number; failing that, the first three lines that are a bare
0, 1 or 2. A value that is not an integer in 0-2 is a parse failure. A failed parse is re-asked, up
to ``parse_attempts`` calls in all (3, as WISE); an image still unparsed is dropped by WISE
(``unparsed: drop`` returns NaN for it, which aggregation skips; ``zero`` scores it 0 for searches).
The HTTP client, retries, timeouts and cost caps are ``api_judge``'s.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Mapping, Optional

import torch

from milr.critics.api_judge import APIJudge, APIJudgeError, image_to_data_url
from milr.interfaces import given_arg
from milr.registry import CRITICS

VERSION = "1"
WEIGHTS = (0.7, 0.2, 0.1)  # consistency, realism, aesthetic quality, within an image
CATEGORY_WEIGHTS = {"CULTURE": 0.4, "TIME": 0.167, "SPACE": 0.133, "BIOLOGY": 0.1, "PHYSICS": 0.1, "CHEMISTRY": 0.1}
CRITERIA = ("consistency", "realism", "aesthetic quality")

SYSTEM_PROMPT = "You are a meticulous expert auditor of image quality, judging AI-generated images strictly and precisely."

PROTOCOL = """Evaluate the AI-generated image below against the PROMPT. Be absolutely ruthless: judge only what is visible, give no benefit of the doubt.

Score each criterion on a 0-2 scale: 0 = Rejected, 1 = Conditional, 2 = Exemplary.

1. Consistency: does the image reflect every element and nuance of the PROMPT{consistency_extra}?
   0: key elements are missing or wrong. 1: the main idea is there but details are missing or wrong. 2: every element and nuance is rendered exactly.
2. Realism: is the image realistic?
   0: clearly artificial or physically impossible. 1: plausible but with visible flaws. 2: photorealistic, indistinguishable from a photograph, and physically correct.
3. Aesthetic Quality: how good are composition, colour and style?
   0: poor. 1: acceptable. 2: masterpiece-level composition, colour and style.

Output exactly three lines and nothing else:
Consistency: x
Realism: y
Aesthetic Quality: z

A 2 should be exceedingly rare. If in any doubt, downgrade.

PROMPT: "{prompt}"
"""
EXPLANATION_LINE = 'EXPLANATION: "{explanation}"\n'

_LABELLED = re.compile(r"(consistency|realism|aesthetic\s+quality)\s*\**\s*:?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*")


def _valid(values: list[str]) -> Optional[tuple[int, int, int]]:
    out = []
    for v in values:
        x = float(v)
        if x not in (0.0, 1.0, 2.0):  # out of range or fractional: not a WISE score
            return None
        out.append(int(x))
    return tuple(out)  # type: ignore[return-value]


def parse_scores(text: str) -> Optional[tuple[int, int, int]]:
    """``(consistency, realism, aesthetic)`` from a judge's answer, or None when unparseable."""
    found: dict[str, str] = {}
    for m in _LABELLED.finditer(text or ""):
        key = " ".join(m.group(1).lower().split())
        found.setdefault(key, m.group(2))  # the first mention of each criterion counts
    if all(c in found for c in CRITERIA):
        return _valid([found[c] for c in CRITERIA])
    bare = [m.group(1) for line in (text or "").splitlines() if (m := _BARE.fullmatch(line))]
    if len(bare) >= 3:
        return _valid(bare[:3])
    return None


def wiscore(consistency: float, realism: float, aesthetic: float) -> float:
    """WISE's per-image score, normalised to [0, 1]: ``(0.7 C + 0.2 R + 0.1 A) / 2``."""
    return (WEIGHTS[0] * consistency + WEIGHTS[1] * realism + WEIGHTS[2] * aesthetic) / 2


def wise_overall(category_scores: Mapping[str, float]) -> float:
    """WISE's overall from per-category mean WiScores (keys CULTURE, TIME, SPACE, BIOLOGY, PHYSICS,
    CHEMISTRY, any case); all six are required, as the official script requires every prompt."""
    scores = {k.upper(): float(v) for k, v in category_scores.items()}
    scores.setdefault("CULTURE", scores.get("CULTURAL", math.nan))
    missing = [c for c in CATEGORY_WEIGHTS if c not in scores or math.isnan(scores[c])]
    if missing:
        raise ValueError(f"WISE overall needs all six categories; missing {missing}")
    return sum(w * scores[c] for c, w in CATEGORY_WEIGHTS.items())


@CRITICS.register("wise_judge")
class WiseJudge(APIJudge):
    """WISE's WiScore from an OpenAI-compatible chat model; in [0, 1], higher is better.

    Args:
        base_url / model_name / api_key_env: the endpoint (GPT-4o, or a local vLLM/SGLang server).
        use_explanation: send the prompt's ``explanation`` metadata (WISE's intended answer) to the
            judge, as the official protocol does; marks the critic privileged.
        unparsed: ``drop`` (NaN: WISE drops the image) or ``zero``.
        parse_attempts: calls per image until its answer parses (WISE: 3).
        max_tokens, timeout_s, max_retries, backoff_s, max_calls, max_cost_usd, prices, max_workers:
            as ``api_judge``.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """The API key must be in its environment variable before the generator loads."""
        env = given_arg(cls, args, "api_key_env")
        if env and not os.environ.get(str(env)):
            raise ValueError(f"wise_judge: environment variable {env} is not set; export the API key there, or set "
                             "`api_key_env: null` for a server without authentication")

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        model_name: str = "gpt-4o-2024-05-13",
        api_key_env: Optional[str] = "OPENAI_API_KEY",
        use_explanation: bool = False,
        unparsed: Literal["drop", "zero"] = "drop",
        parse_attempts: int = 3,
        max_tokens: int = 2000,
        image_detail: Optional[Literal["low", "high", "auto"]] = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_calls: Optional[int] = None,
        max_cost_usd: Optional[float] = None,
        price_per_call_usd: float = 0.0,
        price_per_input_token_usd: float = 0.0,
        price_per_output_token_usd: float = 0.0,
        max_workers: int = 4,
    ):
        if unparsed not in ("drop", "zero"):
            raise ValueError(f"wise_judge: unparsed must be 'drop' or 'zero', got {unparsed!r}")
        if int(parse_attempts) < 1:
            raise ValueError(f"wise_judge: parse_attempts must be >= 1, got {parse_attempts}")
        super().__init__(
            base_url=base_url, model_name=model_name, api_key_env=api_key_env, questions="prompt", normalize=False,
            system_prompt=SYSTEM_PROMPT, logprobs=False, top_logprobs=0, max_tokens=max_tokens, image_detail=image_detail,
            timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s, max_calls=max_calls,
            max_cost_usd=max_cost_usd, price_per_call_usd=price_per_call_usd,
            price_per_input_token_usd=price_per_input_token_usd, price_per_output_token_usd=price_per_output_token_usd,
            max_workers=max_workers,
        )
        self.use_explanation = bool(use_explanation)
        self.privileged_fields: tuple[str, ...] = ("explanation",) if self.use_explanation else ()
        self.unparsed, self.parse_attempts = unparsed, int(parse_attempts)
        self._config = dict(url=self.url, model_name=model_name, use_explanation=self.use_explanation, unparsed=unparsed,
                            max_tokens=max_tokens, image_detail=image_detail)
        self.last_scores: list[Optional[tuple[int, int, int]]] = []  # (C, R, A) per image of the last call
        self.last_texts: list[str] = []
        self.unparsed_images = 0

    def identity(self) -> str:
        return f"wise_judge:v{VERSION}:{sorted(self._config.items())!r}"

    def protocol_text(self, prompt: str, metadata: Optional[Mapping[str, Any]] = None) -> str:
        """The user message's text for one image."""
        md = metadata or {}
        text = PROTOCOL.format(prompt=prompt, consistency_extra=" and the EXPLANATION" if self.use_explanation else "")
        if self.use_explanation:
            explanation = md.get("explanation", md.get("Explanation"))
            if not explanation:
                raise ValueError("wise_judge: use_explanation is on but the prompt's metadata has no 'explanation' "
                                 "(WISE's suite provides it)")
            text += EXPLANATION_LINE.format(explanation=explanation)
        return text

    def _judge(self, job: tuple[str, str]) -> tuple[Optional[tuple[int, int, int]], str]:
        image_url, text = job
        answer = ""
        for _ in range(self.parse_attempts):
            response = self._post(self.request_body(image_url, text))
            try:
                answer = response["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise APIJudgeError(f"wise_judge: response has no message content: {str(response)[:300]}") from None
            parsed = parse_scores(answer)
            if parsed is not None:
                return parsed, answer
        return None, answer

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"wise_judge: images must be a [B, 3, H, W] tensor in [0, 1], got {getattr(images, 'shape', type(images))}")
        if images.shape[0] != len(prompts):
            raise ValueError(f"wise_judge: {images.shape[0]} images but {len(prompts)} prompts")
        md = list(metadata) if metadata is not None else [{}] * len(prompts)
        jobs = [(image_to_data_url(img), self.protocol_text(p, m)) for img, p, m in zip(images, prompts, md)]
        if self.max_workers == 1:
            results = [self._judge(j) for j in jobs]
        else:
            with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                results = list(pool.map(self._judge, jobs))  # keeps the input order
        self.last_scores = [r[0] for r in results]
        self.last_texts = [r[1] for r in results]
        out = []
        for parsed in self.last_scores:
            if parsed is None:
                self.unparsed_images += 1
                out.append(math.nan if self.unparsed == "drop" else 0.0)
            else:
                out.append(wiscore(*parsed))
        return torch.tensor(out, dtype=torch.float32, device=images.device)
