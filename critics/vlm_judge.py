"""VQAScore-style judge: the probability that a vision-language model answers "Yes".

Reference: Lin et al. 2024, "Evaluating Text-to-Visual Generation with Image-to-Text Generation"
(VQAScore, arXiv 2404.01291): score = P("Yes" | image, 'Does this figure show "{prompt}"? Please
answer yes or no.'), read from the next-token distribution, no sampling. Here any transformers
image-text-to-text model (``AutoModelForImageTextToText`` + ``AutoProcessor``: LLaVA, Qwen2-VL,
Idefics, Gemma 3, ...) can be the judge, with whole-prompt or decomposed GenEval questions
(``milr.critics.questions``).

Batching never pads: pairs are grouped by token length, so a batched score equals the unbatched one
and results always follow the input order.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch

from milr.argtypes import PositiveInt
from milr.critics.questions import YesNoJudge
from milr.devices import DType, dtype_name, torch_dtype
from milr.interfaces import given_arg
from milr.registry import CRITICS

YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")


def resolve_pretrained(name: str) -> tuple[str, bool]:
    """``(path or repo, is_local)`` for a transformers checkpoint; never touches the network.

    A hub name is accepted only when its ``config.json`` is already in the local Hugging Face
    cache; otherwise this fails at once with what to download and where to point the recipe.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; expected a transformers model folder (save_pretrained)")
        return str(path), True
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; expected a transformers model folder with config.json")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an invalid repo id, or no huggingface_hub
        cached = None
    if not isinstance(cached, str):
        raise FileNotFoundError(
            f"{name!r} is not a local folder and is not in the local Hugging Face cache. Download it first "
            f"(`huggingface-cli download {name} --local-dir DIR`) and set `checkpoint: DIR` in the recipe."
        )
    return name, False


def _first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Ids of the first token of each spelling (with and without a leading space) that decodes
    to the word itself, so pieces like a bare "▁" never count as an answer."""
    ids: set[int] = set()
    for word in words:
        for text in (word, " " + word):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if enc and tokenizer.decode([enc[0]]).strip().lower() == word.strip().lower():
                ids.add(enc[0])
    return sorted(ids)


def images_to_arrays(images: torch.Tensor) -> list:
    """``[B, 3, H, W]`` in [0, 1] to uint8 HWC arrays, what image processors take."""
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [img.permute(1, 2, 0).cpu().numpy() for img in x]


@CRITICS.register("vlm_judge")
class VLMJudge(YesNoJudge):
    """P("Yes") from a transformers image-text-to-text model, per question, combined per image.

    Args:
        checkpoint: a local folder (``save_pretrained`` layout) or a hub name already in the local cache.
            (Not called ``model``: the runner passes the MUG model to a parameter of that name.)
        questions: ``"auto"`` (decomposed when metadata has GenEval ``include``, else whole prompt),
            ``"decomposed"`` or ``"prompt"``.
        combine: ``"product"`` or ``"mean"`` over an image's questions.
        normalize: score ``P(yes) / (P(yes) + P(no))`` instead of the raw ``P(yes)``.
        prompt_templates / clause_templates: override question templates (see ``questions.py``).
        use_chat_template: wrap the question with the processor's chat template (default: when it
            has one); otherwise ``prompt_format`` with ``{image}`` (the image token) and ``{question}``.
        system_prompt: optional system message for the chat template.
        device, dtype, batch_size: where, in which precision, and how many pairs per forward pass.
        trust_remote_code: passed to ``from_pretrained`` (off by default).
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the weights the recipe names without loading them (called before any load)."""
        checkpoint = given_arg(cls, args, "checkpoint")
        if checkpoint is not None:
            resolve_pretrained(str(checkpoint))

    def __init__(
        self,
        checkpoint: str,
        questions: Literal["prompt", "decomposed", "auto"] = "auto",
        combine: Literal["product", "mean"] = "product",
        normalize: bool = True,
        prompt_templates: Mapping[str, str] | None = None,
        clause_templates: Mapping[str, str] | None = None,
        use_chat_template: bool | None = None,
        prompt_format: str = "{image}\n{question}\n",
        system_prompt: str | None = None,
        yes_words: Sequence[str] = YES_WORDS,
        no_words: Sequence[str] = NO_WORDS,
        device: str = "cpu",
        dtype: DType = "float32",
        batch_size: PositiveInt = 8,
        trust_remote_code: bool = False,
    ):
        super().__init__(questions, combine, prompt_templates, clause_templates)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dtype_name(dtype)  # a Python caller's unknown precision fails here, before anything loads
        if "{question}" not in prompt_format:
            raise ValueError(f"prompt_format must contain '{{question}}', got {prompt_format!r}")
        source, _ = resolve_pretrained(str(checkpoint))
        kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        self.device, self.dtype = torch.device(device), torch_dtype(dtype)
        self.processor = AutoProcessor.from_pretrained(source, **kwargs)
        # load in the target precision (a 7B judge in fp32 first would need twice the memory)
        self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype, **kwargs)
        self.model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"the processor of {checkpoint!r} has no tokenizer")
        self.yes_ids = _first_token_ids(self.tokenizer, yes_words)
        self.no_ids = _first_token_ids(self.tokenizer, no_words)
        if not self.yes_ids or (normalize and not self.no_ids):
            raise ValueError(
                f"the tokenizer of {checkpoint!r} has no single token for {list(yes_words) if not self.yes_ids else list(no_words)}; "
                "pass yes_words/no_words that it has"
            )
        has_template = bool(getattr(self.processor, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError(f"use_chat_template=True but the processor of {checkpoint!r} has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        self.prompt_format = prompt_format
        self.system_prompt = system_prompt
        self.normalize = normalize
        self.batch_size = batch_size
        self._keep_one = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        # what changes scores; kept apart from init_args, which the runner overwrites
        self._config = dict(
            checkpoint=str(checkpoint), questions=questions, combine=combine, normalize=normalize, dtype=dtype,
            use_chat_template=self.use_chat_template, prompt_format=prompt_format, system_prompt=system_prompt,
            prompt_templates=sorted(self.prompt_templates.items()), clause_templates=sorted(self.clause_templates.items()),
        )
        self._weights_id = _weights_id(source)

    def identity(self) -> str:
        return f"vlm_judge:{self._weights_id}:{sorted(self._config.items())!r}"

    # -- prompting -----------------------------------------------------------------------------
    def format_question(self, question: str) -> str:
        """The full text fed with one image (chat template or ``prompt_format``)."""
        if self.use_chat_template:
            messages = []
            if self.system_prompt:
                messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
            messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", None) or getattr(self.tokenizer, "image_token", None) or ""
        return self.prompt_format.format(image=image_token, question=question)

    # -- answering -----------------------------------------------------------------------------
    def answer(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        if images.shape[0] != len(questions):
            raise ValueError(f"got {images.shape[0]} images but {len(questions)} questions")
        arrays = images_to_arrays(images)
        encoded = [
            self.processor(text=[self.format_question(q)], images=[a], return_tensors="pt")
            for q, a in zip(questions, arrays)
        ]
        # Group equal-length inputs so no row is padded: exact, order-independent batching.
        groups: dict[int, list[int]] = {}
        for i, enc in enumerate(encoded):
            groups.setdefault(enc["input_ids"].shape[1], []).append(i)
        out = torch.empty(len(questions))
        with torch.no_grad():
            for rows in groups.values():
                for k in range(0, len(rows), self.batch_size):
                    chunk = rows[k : k + self.batch_size]
                    batch = {key: torch.cat([encoded[i][key] for i in chunk]) for key in encoded[chunk[0]].keys()}
                    out[chunk] = self._p_yes(batch).cpu()
        return out

    def _p_yes(self, batch: dict) -> torch.Tensor:
        inputs = {
            k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device)) for k, v in batch.items()
        }
        if self._keep_one:
            inputs["logits_to_keep"] = 1
        logits = self.model(**inputs).logits[:, -1].float()
        probs = logits.softmax(-1)
        p_yes = probs[:, self.yes_ids].sum(-1)
        if not self.normalize:
            return p_yes
        p_no = probs[:, self.no_ids].sum(-1)
        return p_yes / (p_yes + p_no).clamp_min(1e-30)


def _weights_id(source: str) -> str:
    """A short fingerprint of a model folder's weight files (names, sizes, mtimes) or the repo name."""
    import hashlib

    path = Path(source)
    h = hashlib.sha256(source.encode())
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]

