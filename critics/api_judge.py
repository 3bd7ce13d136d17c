"""A remote yes/no judge behind an OpenAI-compatible chat-completions endpoint.

Reference: OpenAI Chat Completions API (``POST {base_url}/chat/completions`` with image content parts
as ``data:image/png;base64,...`` URLs and ``logprobs``/``top_logprobs``), which vLLM, SGLang,
llama.cpp's server and most hosted providers also speak. Scoring follows VQAScore (Lin et al. 2024,
arXiv 2404.01291): P("Yes") of the first answer token, taken from ``top_logprobs`` when the server
returns them, else 1/0 from the parsed answer text. Questions come from ``milr.critics.questions``.

Only the standard library is used (``urllib``). Every request has a timeout; transient failures
(timeouts, connection errors, HTTP 429 and 5xx) are retried a bounded number of times with
exponential backoff; a cost cap (``max_calls`` and/or ``max_cost_usd``) stops the critic with
:class:`APIBudgetExceeded` before a request would exceed it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal, Mapping

import torch

from milr.critics.questions import YesNoJudge
from milr.errors import UserError
from milr.registry import CRITICS

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class APIJudgeError(RuntimeError):
    """The endpoint failed (after retries) or answered something unusable."""


class APIBudgetExceeded(APIJudgeError, UserError):
    """The next request would exceed ``max_calls`` or ``max_cost_usd`` (the CLI: one line, exit 2)."""

    kind = "api budget"


def image_to_data_url(image: torch.Tensor) -> str:
    """``[3, H, W]`` in [0, 1] to a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _word(token: str) -> str:
    return token.strip().strip(".,!:;\"'").lower()


def p_yes_from_response(response: Mapping[str, Any], normalize: bool = True) -> tuple[float, str]:
    """``(P(yes), source)`` from a chat-completions response; source is "logprobs" or "text".

    With ``top_logprobs`` of the first answer token, P(yes) sums the probabilities of tokens that
    read "yes" (any case/space/punctuation); with ``normalize`` it is divided by P(yes) + P(no).
    Otherwise the answer text is parsed: "yes..." gives 1, "no..." gives 0.
    """
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise APIJudgeError(f"response has no choices: {json.dumps(response)[:300]}") from None
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if content:
        first = content[0]
        candidates = first.get("top_logprobs") or [first]
        p_yes = sum(math.exp(c["logprob"]) for c in candidates if _word(c.get("token", "")) == "yes")
        p_no = sum(math.exp(c["logprob"]) for c in candidates if _word(c.get("token", "")) == "no")
        if p_yes + p_no > 0:
            return (p_yes / (p_yes + p_no) if normalize else p_yes), "logprobs"
    text = ((choice.get("message") or {}).get("content") or "").strip()
    words = text.split()
    answer = _word(words[0]) if words else ""
    if answer == "yes":
        return 1.0, "text"
    if answer == "no":
        return 0.0, "text"
    raise APIJudgeError(f"could not read a yes/no answer from {text[:200]!r}")


class SpendFile:
    """One judge configuration's spend in a run, checked against its caps before each request.

    With a run folder, kept in ``RUN_DIR/api_judge-spend-<key>.json``, written before the request it
    counts is sent, so a resumed run continues the caps instead of restarting them. A Ray run keeps
    one per key in a single ledger actor (:mod:`milr.executors.ray_executor`), so workers share caps.
    """

    def __init__(self, run_dir: Any = None, key: str = ""):
        self.path = os.path.join(str(run_dir), f"api_judge-spend-{key}.json") if run_dir is not None else None
        self.calls, self.spent_usd = 0, 0.0
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            self.calls, self.spent_usd = int(saved.get("calls", 0)), float(saved.get("spent_usd", 0.0))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise APIJudgeError(f"api_judge: cannot read its spend record {self.path}: {e}") from None

    def reserve(self, max_calls: int | None, max_cost_usd: float | None, price_call: float) -> tuple:
        """Count one request: ``(calls, spent_usd, None)``, or ``(calls, spent_usd, message)`` at a cap (not counted)."""
        if max_calls is not None and self.calls + 1 > max_calls:
            return self.calls, self.spent_usd, (
                f"api_judge cost cap: max_calls={max_calls} reached ({self.calls} requests sent, "
                f"${self.spent_usd:.4f} spent); raise max_calls in the recipe to continue")
        if max_cost_usd is not None and self.spent_usd + price_call > max_cost_usd:
            return self.calls, self.spent_usd, (
                f"api_judge cost cap: max_cost_usd={max_cost_usd} would be exceeded "
                f"(${self.spent_usd:.4f} spent over {self.calls} requests); raise max_cost_usd in the recipe to continue")
        self.calls += 1
        self._save(max_calls, max_cost_usd)
        return self.calls, self.spent_usd, None

    def charge(self, usd: float, max_calls: int | None, max_cost_usd: float | None) -> tuple:
        """Add a response's cost: ``(calls, spent_usd, None)``."""
        self.spent_usd += usd
        self._save(max_calls, max_cost_usd)
        return self.calls, self.spent_usd, None

    def _save(self, max_calls: int | None, max_cost_usd: float | None) -> None:
        if self.path is None:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"calls": self.calls, "spent_usd": self.spent_usd, "max_calls": max_calls,
                       "max_cost_usd": max_cost_usd}, f)
        os.replace(tmp, self.path)


@CRITICS.register("api_judge")
class APIJudge(YesNoJudge):
    """Yes/no questions to an OpenAI-compatible chat endpoint, combined per image.

    Args:
        base_url: endpoint root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model_name: the served model (not ``model``: the runner passes the MUG model to that name).
        api_key_env: environment variable holding the key (never stored in recipes or records);
            ``None`` for servers without authentication.
        questions, combine, prompt_templates, clause_templates: see ``questions.py``.
        normalize: with logprobs, ``P(yes) / (P(yes) + P(no))`` instead of raw ``P(yes)``.
        system_prompt: optional system message.
        logprobs / top_logprobs: ask for the first token's log-probabilities (fall back to text).
        max_tokens: answer length requested (1 is enough for "Yes"/"No").
        image_detail: the ``detail`` of the image part ("low", "high", "auto"), or ``None`` to omit.
        timeout_s: per-request timeout; max_retries / backoff_s / max_backoff_s: bounded retries
            of timeouts, connection errors, 429 and 5xx, waiting ``backoff_s * 2**attempt`` (capped).
        max_calls: cap on requests sent (retries included); max_cost_usd: cap on spend, priced by
            ``price_per_call_usd`` + tokens x ``price_per_input_token_usd`` / ``price_per_output_token_usd``.
            Both are checked before each request; token costs are known only after a response, so
            spend can pass ``max_cost_usd`` by at most one call's token cost per worker.
        max_workers: concurrent requests (results keep the input order).
    """

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        model_name: str = "gpt-4o-mini",
        api_key_env: str | None = "OPENAI_API_KEY",
        questions: Literal["prompt", "decomposed", "auto"] = "auto",
        combine: Literal["product", "mean"] = "product",
        prompt_templates: Mapping[str, str] | None = None,
        clause_templates: Mapping[str, str] | None = None,
        normalize: bool = True,
        system_prompt: str | None = None,
        logprobs: bool = True,
        top_logprobs: int = 5,
        max_tokens: int = 1,
        image_detail: str | None = "low",
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_calls: int | None = 1000,
        max_cost_usd: float | None = None,
        price_per_call_usd: float = 0.0,
        price_per_input_token_usd: float = 0.0,
        price_per_output_token_usd: float = 0.0,
        max_workers: int = 4,
    ):
        super().__init__(questions, combine, prompt_templates, clause_templates)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model_name:
            raise ValueError("model_name must name the served model")
        for name, value in (("timeout_s", timeout_s), ("backoff_s", backoff_s), ("max_backoff_s", max_backoff_s)):
            if value < 0 or (name == "timeout_s" and value == 0):
                raise ValueError(f"{name} must be positive, got {value}")
        if max_retries < 0 or max_workers < 1 or max_tokens < 1 or not 0 <= top_logprobs <= 20:
            raise ValueError("need max_retries >= 0, max_workers >= 1, max_tokens >= 1 and 0 <= top_logprobs <= 20")
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {max_calls}")
        if max_cost_usd is not None and max_cost_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {max_cost_usd}")
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(
                    f"api_judge: environment variable {api_key_env} is not set; export the API key there, or set "
                    "`api_key_env: null` for a server without authentication"
                )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_name = model_name
        self.normalize = normalize
        self.system_prompt = system_prompt
        self.logprobs, self.top_logprobs, self.max_tokens = logprobs, top_logprobs, max_tokens
        self.image_detail = image_detail
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_calls, self.max_cost_usd = max_calls, max_cost_usd
        self.prices = (price_per_call_usd, price_per_input_token_usd, price_per_output_token_usd)
        self.max_workers = max_workers
        # spend so far (all score() calls of this critic)
        self.calls = 0
        self.spent_usd = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        self.answers_from_text = 0
        self._lock = threading.Lock()
        # Where the caps are counted: in memory; the run folder (bind_run_folder); a run's shared ledger (share_spend).
        self._spend: Any = SpendFile()
        self._config = dict(
            url=self.url, model_name=model_name, questions=questions, combine=combine, normalize=normalize,
            system_prompt=system_prompt, logprobs=logprobs, image_detail=image_detail,
            prompt_templates=sorted(self.prompt_templates.items()), clause_templates=sorted(self.clause_templates.items()),
        )

    def identity(self) -> str:
        return f"api_judge:{sorted(self._config.items())!r}"

    # -- requests ------------------------------------------------------------------------------
    def request_body(self, image_url: str, question: str) -> dict:
        image_part: dict[str, Any] = {"url": image_url}
        if self.image_detail:
            image_part["detail"] = self.image_detail
        messages: list[dict] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({
            "role": "user",
            "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": image_part}],
        })
        body: dict[str, Any] = {"model": self.model_name, "messages": messages, "max_tokens": self.max_tokens,
                                "temperature": 0}
        if self.logprobs:
            body["logprobs"] = True
            if self.top_logprobs:
                body["top_logprobs"] = self.top_logprobs
        return body

    def spend_key(self) -> str:
        """Names this configuration's spend record (judges asking the same endpoint the same way share one)."""
        return hashlib.sha256(json.dumps(self._config, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def bind_run_folder(self, run_dir: Any) -> None:
        """Keep this critic's spend in ``run_dir``, so a resumed run continues the caps, not restarts them."""
        spend = SpendFile(run_dir, self.spend_key())
        with self._lock:
            spend.calls, spend.spent_usd = max(self.calls, spend.calls), max(self.spent_usd, spend.spent_usd)
            self.calls, self.spent_usd, self._spend = spend.calls, spend.spent_usd, spend

    def share_spend(self, open_spend: Callable[[str], Any]) -> None:
        """Count spend in ``open_spend(spend_key)`` (``reserve``/``charge`` as :class:`SpendFile`'s): one ledger
        for every worker of a run, so ``max_calls``/``max_cost_usd`` hold for the run, not for each worker."""
        with self._lock:
            self._spend = open_spend(self.spend_key())

    def _redact(self, text: str) -> str:
        """Remove the API key from text that may echo request headers (a server's error body, say)."""
        if self.api_key and len(self.api_key) >= 4:
            text = text.replace(self.api_key, "***")
        return text

    def _reserve_call(self) -> None:
        """Count a request against the caps before sending it."""
        with self._lock:
            self.calls, self.spent_usd, capped = self._spend.reserve(self.max_calls, self.max_cost_usd, self.prices[0])
        if capped:
            raise APIBudgetExceeded(capped)

    def _charge(self, response: Mapping[str, Any]) -> None:
        usage = response.get("usage") or {}
        tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        with self._lock:
            self.input_tokens += tin
            self.output_tokens += tout
            usd = self.prices[0] + tin * self.prices[1] + tout * self.prices[2]
            self.calls, self.spent_usd, _ = self._spend.charge(usd, self.max_calls, self.max_cost_usd)

    def _post(self, body: dict) -> dict:
        """One chat-completions call with bounded retries; returns the parsed JSON response."""
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            self._reserve_call()
            retry_after = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    response = json.loads(resp.read().decode("utf-8"))
                self._charge(response)
                return response
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                last_error = f"HTTP {e.code}: {detail}"
                if e.code not in _RETRY_STATUS:
                    raise APIJudgeError(f"api_judge: {self.url} answered {last_error}") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                last_error = f"{type(reason).__name__}: {reason}"
            except json.JSONDecodeError as e:
                raise APIJudgeError(f"api_judge: {self.url} returned invalid JSON ({e})") from None
            if attempt < self.max_retries:
                wait = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                if retry_after is not None:
                    try:
                        wait = min(self.max_backoff_s, max(wait, float(retry_after)))
                    except ValueError:
                        pass
                time.sleep(wait)
        raise APIJudgeError(f"api_judge: {self.url} failed after {self.max_retries + 1} attempts; last error {last_error}")

    def _ask(self, pair: tuple[str, str]) -> float:
        image_url, question = pair
        try:
            response = self._post(self.request_body(image_url, question))
            p, source = p_yes_from_response(response, self.normalize)
        except APIBudgetExceeded:
            raise
        except APIJudgeError as e:  # messages quote the server's words, which may echo our headers
            raise APIJudgeError(self._redact(str(e))) from None
        if source == "text":
            with self._lock:
                self.answers_from_text += 1
        return p

    def answer(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        if images.shape[0] != len(questions):
            raise ValueError(f"got {images.shape[0]} images but {len(questions)} questions")
        # An image asked several questions is encoded once.
        urls: dict[bytes, str] = {}
        encoded = []
        for img, q in zip(images, questions):
            digest = hashlib.sha1(img.detach().float().cpu().numpy().tobytes()).digest()
            if digest not in urls:
                urls[digest] = image_to_data_url(img)
            encoded.append((urls[digest], q))
        before = self.answers_from_text
        if self.max_workers == 1:
            values = [self._ask(p) for p in encoded]
        else:
            with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                values = list(pool.map(self._ask, encoded))  # map keeps the input order
        if self.logprobs and self.answers_from_text > before:
            warnings.warn(
                f"api_judge: {self.answers_from_text - before} answers had no usable logprobs and were parsed "
                "from text (scores 0 or 1)",
                stacklevel=2,
            )
        return torch.tensor(values, dtype=torch.float32)
