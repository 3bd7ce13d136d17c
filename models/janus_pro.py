"""Janus-Pro (1B / 7B) through transformers' ``JanusForConditionalGeneration``, as a :class:`MUGModel`.

References:

* Chen et al. 2025, "Janus-Pro: Unified Multimodal Understanding and Generation with Data and Model
  Scaling" (arXiv 2501.17811): one Llama-style decoder for text and image tokens, a text head
  (``lm_head``) and an image-generation head (``generation_head``) on the final-normed last-layer
  state, CFG weight 5 and temperature 1 for image tokens, 576 VQ tokens per 384 px image.
* MILR (Mi et al., arXiv 2509.22761) and its authors' code (``src/opt_generation_janus.py``), for
  the reasoning stage: the system prompt and the six-rule user template below, greedy decoding up to
  512 tokens, then the image prompt ``"{prompt}. {plan}"`` in the SFT template with an empty system
  prompt followed by ``<begin_of_image>``; the unconditional row keeps only BOS and BOI.
* transformers (>= 4.52, tested on 5.24) ``models/janus/modeling_janus.py``: the image branch of
  ``generate()`` this adapter reproduces token for token (rows ``[cond x R, uncond x R]``, guidance
  ``u + (c - u) * w``, ``softmax`` then one ``torch.multinomial`` call per step over all rows).

Why an own decoding loop instead of ``generate()``: MILR needs the last-layer states behind every
token, forced token prefixes, and one encoding of a prompt reused by every candidate and every
search step. The prompt prefix (both CFG rows) is encoded once under ``no_grad``; each call copies
its key/value tensors into a fresh cache with the rows it needs (``index_select`` both expands
``num_samples`` and copies, so the stored prefix is never mutated and no ``crop`` is needed; ``crop``
changed meaning between 4.5x and 5.x and ``deepcopy`` fails on caches built with grad). By default
that cache is a buffer preallocated for the whole call (``models/janus_cache.py``), so no step
re-copies it as ``DynamicCache``'s ``torch.cat`` does; prompts encoded separately are merged into
one batch with left padding (``merge_states`` / ``merge_contexts``, the runner's multi-prompt path).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch

from milr.devices import resolve_device, torch_dtype
from milr.hub import cached_file, is_offline
from milr.interfaces import (
    ImageResult, MUGModel, TextResult, TokenCounter, generator_runs, given_arg, multinomial_rows,
)
from milr.models.janus_cache import Prefix, cache_tensors, grow, merge_prefixes, new_cache, select_prefix, static_supported
from milr.registry import MODELS

# -- prompt templates (authors' code: src/opt_generation_janus.py, src/ori_generation_janus.py) ----
REASONING_SYSTEM_PROMPT = (
    "You are a helpful assistant that receives an image prompt and generate a visualization of the prompt."
)
REASONING_TEMPLATE = (
    'You are asked to generate an image based on this prompt: "{}"\n'
    "Provide a brief, precise visualization of all elements in the prompt. Your description should:\n"
    "1. Include every object mentioned in the prompt\n"
    "2. Specify visual attributes (color, number, shape, texture) if specified in the prompt\n"
    "3. Clarify relationships (e.g., spatial) between objects if specified in the prompt\n"
    "4. Be concise (50 words or less)\n"
    "5. Focus only on what's explicitly stated in the prompt\n"
    "6. Do not elaborate beyond the attributes or relationships specified in the prompt\n"
    "Do not miss objects. Output your visualization directly without explanation:"
)
# The authors' reasoning call names the roles "User"/"Assistant" while their image call uses
# Janus's "<|User|>"/"<|Assistant|>"; both are kept as the code has them.
REASONING_ROLES = ("User", "Assistant")
CHAT_ROLES = ("<|User|>", "<|Assistant|>")
# Janus's default understanding system prompt (deepseek-ai/Janus VLChatProcessor).
UNDERSTANDING_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
YES_WORDS = ("Yes", " Yes", "yes", " yes")
NO_WORDS = ("No", " No", "no", " no")

DEFAULT_CHECKPOINT = "deepseek-community/Janus-Pro-7B"


def deepseek_sft_prompt(user_text: str, system_prompt: str = "", roles: tuple[str, str] = CHAT_ROLES) -> str:
    """Janus's "deepseek" SFT format for one user turn and an open assistant turn.

    ``{system}\\n\\n{user}: {text}\\n\\n{assistant}:`` (the system part only when non-empty), as
    ``VLChatProcessor.apply_sft_template_for_multi_turn_prompts`` writes it.
    """
    head = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{head}{roles[0]}: {user_text.strip()}\n\n{roles[1]}:"


def reasoning_prompt(prompt: str) -> str:
    """The reasoning-stage prompt MILR's code feeds Janus-Pro for one image prompt."""
    return deepseek_sft_prompt(REASONING_TEMPLATE.format(prompt), REASONING_SYSTEM_PROMPT, REASONING_ROLES)


def image_prompt_text(prompt: str, plan: Optional[str] = None) -> str:
    """The user text of the image-generation prompt: the prompt, then ``". "`` and the plan."""
    return prompt if plan is None else f"{prompt}. {plan}"


@dataclass
class JanusPromptState:
    """``encode_prompts`` result: the reasoning-stage prefix of each prompt."""

    prompts: list[str]
    prefix: Prefix


@dataclass
class JanusImageContext:
    """``image_context`` result: rows ``[cond x B, uncond x B]`` of the image-generation prefix."""

    prompts: list[str]
    texts: list[str]  # the user text of each image prompt (prompt, or "prompt. plan")
    prefix: Prefix

    @property
    def batch(self) -> int:
        return len(self.prompts)


@MODELS.register("janus_pro")
class JanusPro(MUGModel):
    """Janus-Pro 1B/7B (or any ``JanusForConditionalGeneration`` checkpoint) as a MUG model.

    Args:
        checkpoint: a hub name (``deepseek-community/Janus-Pro-7B`` or ``-1B``) or a local folder
            holding the transformers checkpoint (``config.json``, weights, processor/tokenizer files).
            (Not called ``model``: recipes reserve that argument name for the injected MUG model.)
        device: ``cuda``, ``cuda:N``, ``cpu``, ``mps`` or ``auto`` (default: CUDA when available).
        dtype: ``bfloat16`` / ``float16`` / ``float32`` or ``auto`` (bf16 on GPU, fp32 on CPU).
        attn_implementation: passed to ``from_pretrained`` (``sdpa``, ``eager``, ``flash_attention_2``).
        max_text_tokens: cap of the reasoning text (the paper's code: 512).
        cfg, temperature: image sampling defaults (the paper: 5 and 1).
        top_k: keep only the ``top_k`` most likely image tokens before sampling (``None``: the full
            distribution, as the paper's and the official Janus code sample). transformers'
            ``generate()`` applies its global default ``top_k=50`` unless told ``top_k=0``; set
            ``top_k: 50`` to reproduce a plain ``generate()`` call.
        revision: hub revision, if a hub name is given.
        kv_cache: ``static`` (default): one key/value buffer preallocated per call, written in
            place; ``dynamic``: transformers' ``DynamicCache`` (``torch.cat`` every token). Same tokens.
        compile: ``torch.compile`` the one-token decoding step (dynamic shapes); off by default.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager``/``eager`` to debug).
        decode_chunk: rows per pixel-decoder call (bounds the VQ decoder's activation memory).
        plan_cache: how many greedy plan continuations to remember (0: off). Re-decoding a plan from
            an unchanged forced prefix returns the remembered one; the token counter still counts
            it, so budgets and records do not depend on what was remembered.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the checkpoint the recipe names without loading them (called before any load)."""
        _resolve_source(given_arg(cls, args, "checkpoint"), given_arg(cls, args, "revision"))

    def __init__(
        self,
        checkpoint: str = DEFAULT_CHECKPOINT,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        attn_implementation: Optional[str] = None,
        max_text_tokens: int = 512,
        cfg: float = 5.0,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        revision: Optional[str] = None,
        kv_cache: Literal["static", "dynamic"] = "static",
        compile: bool = False,
        compile_backend: str = "inductor",
        decode_chunk: int = 16,
        plan_cache: int = 64,
    ):
        _check_args(max_text_tokens, temperature, top_k, kv_cache, decode_chunk, plan_cache)
        from transformers import AutoProcessor, JanusForConditionalGeneration

        self.device = torch.device(resolve_device(device, check=True))
        self.dtype = _resolve_dtype(dtype, self.device)
        source = _resolve_source(checkpoint, revision)
        load_kwargs: dict[str, Any] = {_dtype_kwarg(): self.dtype}
        attn_implementation = _resolve_attn(attn_implementation, self.device)
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        if revision is not None and not os.path.isdir(source):
            load_kwargs["revision"] = revision
        model = JanusForConditionalGeneration.from_pretrained(source, **load_kwargs)
        proc_kwargs = {"revision": revision} if revision is not None and not os.path.isdir(source) else {}
        processor = AutoProcessor.from_pretrained(source, **proc_kwargs)
        self._setup(model, processor, str(source), max_text_tokens, cfg, temperature, top_k,
                    kv_cache, compile, compile_backend, decode_chunk, plan_cache)

    @classmethod
    def from_modules(cls, model: Any, processor: Any, source: str = "<in memory>", device: Optional[str] = None,
                     dtype: Optional[str] = None, **kwargs: Any) -> "JanusPro":
        """Wrap an already built ``JanusForConditionalGeneration`` and its processor (no loading).

        For randomly initialised models of a real shape (``benchmarks/janus_random.py``), where
        writing and re-reading a 15 GB checkpoint would only cost time. ``kwargs``: the
        constructor's sampling and speed arguments.
        """
        self = cls.__new__(cls)
        self.device = torch.device(resolve_device(device, check=True))
        self.dtype = _resolve_dtype(dtype, self.device)
        model = model.to(dtype=self.dtype)
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"from_modules() got unexpected arguments {sorted(unknown)}")
        a = {**defaults, **kwargs}
        _check_args(a["max_text_tokens"], a["temperature"], a["top_k"], a["kv_cache"], a["decode_chunk"], a["plan_cache"])
        self._setup(model, processor, source, a["max_text_tokens"], a["cfg"], a["temperature"], a["top_k"],
                    a["kv_cache"], a["compile"], a["compile_backend"], a["decode_chunk"], a["plan_cache"])
        return self

    def _setup(self, model: Any, processor: Any, source: str, max_text_tokens: int, cfg: float, temperature: float,
               top_k: Optional[int], kv_cache: str, compile: bool, compile_backend: str, decode_chunk: int,
               plan_cache: int) -> None:
        self.source = source
        self.model = model.to(self.device).eval()
        # Only latents get gradients (through the heads); frozen weights keep backward cheap.
        self.model.requires_grad_(False)
        self.processor = processor
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"{source}: the processor has no tokenizer; is this a Janus checkpoint?")
        self._setup_ids()

        cfg_all = self.model.config
        self.lm = self.model.model.language_model  # the LlamaModel; its last_hidden_state is final-normed
        self.image_tokens = int(self.model.model.vision_model.config.num_image_tokens)
        self.understanding_image_tokens = int(cfg_all.vision_config.num_image_tokens)
        self.hidden_size = int(cfg_all.text_config.hidden_size)
        self.codebook_size = int(cfg_all.vq_config.num_embeddings)
        self.max_text_tokens = int(max_text_tokens)
        self.default_cfg = float(cfg)
        self.default_temperature = float(temperature)
        self.top_k = top_k or None  # 0 means off, as in transformers
        self.counter = TokenCounter()
        if type(self).card is not None:
            # The instance's card describes the loaded checkpoint (1B and 7B differ), which also
            # keeps score-cache keys that include it (e.g. self_judge's) apart per checkpoint.
            self.card = dataclasses.replace(
                type(self).card, weights=str(source), hidden_size=self.hidden_size, image_tokens=self.image_tokens
            )
        params = inspect.signature(self.lm.forward).parameters
        # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # The preallocated buffer needs per-layer cache objects (transformers >= 4.56).
        self.kv_cache = kv_cache if static_supported() else "dynamic"
        self.decode_chunk = int(decode_chunk)
        self.plan_cache = int(plan_cache)
        self._plans: OrderedDict[tuple, tuple[list[int], torch.Tensor, int]] = OrderedDict()
        # Only the one-token decoding step is compiled: the prefill's shapes vary per prompt.
        self._decode_forward = self._forward
        self.compiled = bool(compile)
        if compile:
            self._decode_forward = torch.compile(self._forward, dynamic=True, backend=compile_backend)

    # -- setup ---------------------------------------------------------------------------------
    def _setup_ids(self) -> None:
        tok = self.tokenizer
        missing = [a for a in ("image_token", "boi_token", "eoi_token") if not getattr(tok, a, None)]
        if missing:
            raise ValueError(
                f"{self.source}: the tokenizer lacks Janus's special-token attributes {missing} "
                "(a transformers Janus checkpoint's tokenizer_config.json declares image_token, boi_token "
                "and eoi_token)"
            )
        self.boi_id = _token_id(tok, tok.boi_token)
        self.eoi_id = _token_id(tok, tok.eoi_token)
        self.image_placeholder_id = _token_id(tok, tok.image_token)
        if self.image_placeholder_id != self.model.config.image_token_id:
            raise ValueError(
                f"{self.source}: tokenizer image token id {self.image_placeholder_id} differs from "
                f"config.image_token_id {self.model.config.image_token_id}"
            )
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise ValueError(f"{self.source}: the tokenizer needs bos and eos tokens")
        self.bos_id = int(tok.bos_token_id)
        self.eos_id = int(tok.eos_token_id)
        # Janus's VLChatProcessor falls back to EOS when the tokenizer has no pad token.
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    # -- encoding --------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=True)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _forward(self, embeds: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.lm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **{self._cache_kw: cache}
        )
        return out.last_hidden_state

    @torch.no_grad()
    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefix:
        from transformers import DynamicCache

        # Left padding: real tokens start at position 0 in every row.
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        embeds = self.model.get_input_embeddings()(input_ids)
        hidden = self._forward(embeds, attention_mask, positions, cache)
        return Prefix(
            input_ids=input_ids,
            attention_mask=attention_mask,
            kv=cache_tensors(cache),
            last_hidden=hidden[:, -1],
            next_position=attention_mask.long().sum(-1),
        )

    def _rows(self, prefix: Prefix, rows: torch.Tensor, use_cache: bool, extra: int):
        """(cache, last hidden, mask or None, next positions) for ``rows`` of a prefix, reused or
        recomputed; the cache has room for ``extra`` more positions."""
        if not use_cache:
            prefix = self._encode(prefix.input_ids.index_select(0, rows), prefix.attention_mask.index_select(0, rows))
            rows = torch.arange(rows.numel(), device=self.device)
        mask = prefix.attention_mask.index_select(0, rows)
        capacity = prefix.length + extra if self.kv_cache == "static" else None
        return (
            new_cache(prefix.kv, rows, capacity),
            prefix.last_hidden.index_select(0, rows),
            # Without padding no mask is needed after the prefill; skipping it saves building a
            # causal mask every step (about 15% of a step on small models).
            None if bool(mask.all()) else mask,
            prefix.next_position.index_select(0, rows),
        )

    def encode_prompts(self, prompts: list[str]) -> JanusPromptState:
        prompts = _check_prompts(prompts)
        ids, mask = self._tokenize([reasoning_prompt(p) for p in prompts])
        return JanusPromptState(prompts=prompts, prefix=self._encode(ids, mask))

    # -- reasoning -------------------------------------------------------------------------------
    @torch.no_grad()
    def reason(
        self,
        state: JanusPromptState,
        prefix_ids: Optional[list[torch.Tensor]] = None,
        max_new_tokens: Optional[int] = None,
        use_prompt_cache: bool = True,
    ) -> TextResult:
        """Greedy reasoning text. ``max_new_tokens`` caps the whole text (forced prefix included;
        a longer forced prefix is kept whole); decoding stops at EOS, which is not returned.

        A row whose (prompt, forced prefix, cap) was decoded before returns the remembered
        continuation (``plan_cache``): greedy decoding of the same input gives the same text, and in
        most MILR steps the optimised prefix does not change. Only the other rows are decoded."""
        if not isinstance(state, JanusPromptState):
            raise TypeError(f"reason() needs the state from encode_prompts(), got {type(state).__name__}")
        b = len(state.prompts)
        cap = self.max_text_tokens if max_new_tokens is None else int(max_new_tokens)
        if cap < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {cap}")
        forced = self._check_text_prefixes(prefix_ids, b)
        caps = [max(cap, len(f)) for f in forced]
        remember = self.plan_cache > 0 and use_prompt_cache
        keys = [(state.prompts[r], tuple(forced[r].tolist()), caps[r]) for r in range(b)]
        rows: list[Optional[tuple[list[int], torch.Tensor, int]]] = [None] * b
        if remember:
            for r, key in enumerate(keys):
                if key in self._plans:
                    self._plans.move_to_end(key)
                    rows[r] = self._plans[key]
        todo = [r for r in range(b) if rows[r] is None]
        if todo:
            index = torch.tensor(todo, device=self.device)
            for r, row in zip(todo, self._decode_text(state.prefix, index, [forced[r] for r in todo],
                                                      [caps[r] for r in todo], use_prompt_cache)):
                rows[r] = row
                if remember:
                    self._plans[keys[r]] = row
                    while len(self._plans) > self.plan_cache:
                        self._plans.popitem(last=False)
        # Remembered rows count as decoded: budgets measure the search, not this cache.
        self.counter.add_text([row[2] for row in rows])
        id_t = [torch.tensor(row[0], dtype=torch.long) for row in rows]
        return TextResult(ids=id_t, texts=[self.decode_text(x) for x in id_t], hidden=[row[1].clone() for row in rows])

    def _decode_text(self, prefix: Prefix, index: torch.Tensor, forced: list[torch.Tensor], caps: list[int],
                     use_prompt_cache: bool) -> list[tuple[list[int], torch.Tensor, int]]:
        """Greedy decoding of prefix rows ``index``: per row (ids, states ``[n, H]``, tokens decoded)."""
        b = len(forced)
        lens = [len(f) for f in forced]
        cache, h, mask, pos = self._rows(prefix, index, use_prompt_cache, extra=max(caps))
        ids: list[list[int]] = [[] for _ in range(b)]
        hidden: list[list[torch.Tensor]] = [[] for _ in range(b)]
        decoded = [0] * b

        # The part of the forced prefixes every row shares in length goes through in one forward.
        common = min(lens)
        if common:
            toks = torch.stack([f[:common] for f in forced]).to(self.device)  # [b, common]
            out = self._step(toks, mask, pos, cache, image=False)
            states = torch.cat([h[:, None], out[:, :-1]], dim=1)
            for r in range(b):
                ids[r].extend(toks[r].tolist())
                hidden[r].extend(states[r].unbind(0))
                decoded[r] += common
            h = out[:, -1]
            mask = grow(mask, common)
            pos = pos + common

        done = [len(ids[r]) >= caps[r] for r in range(b)]
        t = common
        while not all(done):
            # fp32 argmax as generate() does (it upcasts the last logits before processing).
            greedy = self.model.lm_head(h).float().argmax(-1).tolist()
            step = []
            for r in range(b):
                tok = int(forced[r][t]) if t < lens[r] else greedy[r]
                step.append(tok)
                if done[r]:
                    continue
                decoded[r] += 1
                if tok == self.eos_id and t >= lens[r]:
                    done[r] = True
                    continue
                ids[r].append(tok)
                hidden[r].append(h[r])
                done[r] = len(ids[r]) >= caps[r]
            t += 1
            if all(done):
                break
            out = self._step(torch.tensor(step, device=self.device)[:, None], mask, pos, cache, image=False)
            h = out[:, -1]
            mask = grow(mask, 1)
            pos = pos + 1
        empty = torch.zeros(0, self.hidden_size, dtype=self.dtype, device=self.device)
        return [(ids[r], torch.stack(hidden[r]) if hidden[r] else empty, decoded[r]) for r in range(b)]

    def _step(self, toks: torch.Tensor, mask: Optional[torch.Tensor], pos: torch.Tensor, cache: Any, image: bool) -> torch.Tensor:
        """Feed ``toks`` ``[rows, T]`` after the cached prefix; returns their last-layer states."""
        n = toks.shape[1]
        if image:
            embeds = self.model.prepare_embeddings_for_image_generation(toks)
        else:
            embeds = self.model.get_input_embeddings()(toks)
        mask = grow(mask, n)
        positions = pos[:, None] + torch.arange(n, device=self.device)[None]
        return (self._decode_forward if n == 1 else self._forward)(embeds, mask, positions, cache)

    def _check_text_prefixes(self, prefix_ids: Optional[list[torch.Tensor]], b: int) -> list[torch.Tensor]:
        if prefix_ids is None:
            return [torch.zeros(0, dtype=torch.long)] * b
        if len(prefix_ids) != b:
            raise ValueError(f"prefix_ids has {len(prefix_ids)} rows but the state has {b} prompts")
        out = []
        vocab = self.model.config.text_config.vocab_size
        for r, p in enumerate(prefix_ids):
            p = torch.as_tensor(p).detach().reshape(-1).long().cpu()
            if p.numel() and (int(p.min()) < 0 or int(p.max()) >= vocab):
                raise ValueError(f"prefix_ids[{r}] has ids outside the text vocabulary [0, {vocab})")
            out.append(p)
        return out

    def decode_text(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(torch.as_tensor(ids).tolist(), skip_special_tokens=True).strip()

    # -- many prompts in one batch ------------------------------------------------------------------
    batches_prompts = True

    def merge_rows(self, parts: list[Any]) -> Union[JanusPromptState, JanusImageContext]:
        """States or image contexts of separately encoded prompts as one batch, left padded.

        Image contexts keep their ``[cond x B, uncond x B]`` row order: all parts' cond rows, then
        all parts' uncond rows. No forward pass: the stored key/values are padded and concatenated."""
        if not parts:
            raise ValueError("merge_rows needs at least one part")
        kind = type(parts[0])
        if kind not in (JanusPromptState, JanusImageContext) or any(type(p) is not kind for p in parts):
            raise TypeError("merge_rows needs all states (encode_prompts) or all contexts (image_context)")
        prompts = [q for p in parts for q in p.prompts]
        if kind is JanusPromptState:
            return JanusPromptState(prompts=prompts, prefix=merge_prefixes([p.prefix for p in parts], self.pad_id))
        halves = [select_prefix(p.prefix, self._context_rows(p, 0, p.batch, half)) for half in (0, 1) for p in parts]
        return JanusImageContext(prompts=prompts, texts=[t for p in parts for t in p.texts],
                                 prefix=merge_prefixes(halves, self.pad_id))

    def split_rows(self, batch: Union[JanusPromptState, JanusImageContext], rows: list[int]) -> list[Any]:
        """Consecutive blocks of ``rows`` prompt rows, each as its own state or context (shared
        left padding trimmed)."""
        b = len(batch.prompts)
        if sum(rows) != b or any(int(n) < 1 for n in rows):
            raise ValueError(f"split_rows: blocks {rows} do not partition {b} prompt rows")
        out, start = [], 0
        for n in rows:
            if isinstance(batch, JanusImageContext):
                index = torch.cat([self._context_rows(batch, start, n, half) for half in (0, 1)])
                out.append(JanusImageContext(prompts=batch.prompts[start : start + n], texts=batch.texts[start : start + n],
                                             prefix=select_prefix(batch.prefix, index)))
            elif isinstance(batch, JanusPromptState):
                index = torch.arange(start, start + n, device=self.device)
                out.append(JanusPromptState(prompts=batch.prompts[start : start + n], prefix=select_prefix(batch.prefix, index)))
            else:
                raise TypeError(f"split_rows needs a state or an image context, got {type(batch).__name__}")
            start += n
        return out

    def _context_rows(self, ctx: JanusImageContext, start: int, n: int, half: int) -> torch.Tensor:
        """Prefix rows of prompts ``start .. start + n`` of a context: cond (``half`` 0) or uncond (1)."""
        return torch.arange(start, start + n, device=self.device) + half * ctx.batch

    # -- image generation --------------------------------------------------------------------------
    def image_context(self, state: JanusPromptState, plans: Optional[list[str]] = None) -> JanusImageContext:
        if not isinstance(state, JanusPromptState):
            raise TypeError(f"image_context() needs the state from encode_prompts(), got {type(state).__name__}")
        b = len(state.prompts)
        if plans is not None and len(plans) != b:
            raise ValueError(f"got {len(plans)} plans for {b} prompts")
        texts = [image_prompt_text(p, None if plans is None else plans[i]) for i, p in enumerate(state.prompts)]
        ids, mask = self._tokenize([deepseek_sft_prompt(t) + self.tokenizer.boi_token for t in texts])
        # The unconditional row: every token except BOS and BOI becomes pad (transformers' rule;
        # the same as the authors' "tokens 1..-2" on an unpadded row; left pads stay pads).
        uncond = ids.masked_fill((ids != self.bos_id) & (ids != self.boi_id), self.pad_id)
        prefix = self._encode(torch.cat([ids, uncond]), torch.cat([mask, mask]))
        return JanusImageContext(prompts=list(state.prompts), texts=texts, prefix=prefix)

    @torch.no_grad()
    def sample_image(
        self,
        context: JanusImageContext,
        num_samples: int = 1,
        prefix_tokens: Optional[torch.Tensor] = None,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        return_hidden: bool = True,
        use_prompt_cache: bool = True,
    ) -> ImageResult:
        """CFG sampling as ``generate(generation_mode="image")`` does it; ``temperature=0`` is greedy.

        With the same global seed (``generator=None``) or a generator in the same state, and no
        forced prefix, the tokens equal transformers' for the same prompts and ``num_samples``.
        A generator on another device than the model seeds a model-device generator from one draw.
        A list of generators, one per prompt, samples each prompt's rows from its own stream, so a
        prompt's tokens do not depend on the prompts batched with it.
        """
        if not isinstance(context, JanusImageContext):
            raise TypeError(f"sample_image() needs the context from image_context(), got {type(context).__name__}")
        w, temp = self._sampling_args(num_samples, cfg, temperature)
        b, n = context.batch, self.image_tokens
        r_rows = b * num_samples
        forced = self._check_image_prefix(prefix_tokens, r_rows, self.codebook_size)
        k = 0 if forced is None else forced.shape[1]
        # Runs of rows sharing a generator draw in one call, as an unbatched call on them would.
        # A generator on another device is replaced once per call (one seed drawn from it).
        moved: dict[int, Optional[torch.Generator]] = {}
        runs = []
        for lo, hi, g in generator_runs(generator, b, num_samples):
            if id(g) not in moved:
                moved[id(g)] = _generator_for(g, self.device)
            runs.append((lo, hi, moved[id(g)]))

        # Prompt-major rows: [cond of each sample, then uncond of each sample], as generate() expands.
        idx = torch.arange(b, device=self.device).repeat_interleave(num_samples)
        cache, h, mask, pos = self._rows(context.prefix, torch.cat([idx, idx + b]), use_prompt_cache, extra=n)
        tokens = torch.empty(r_rows, n, dtype=torch.long, device=self.device)
        hidden = torch.empty(r_rows, n, 2, self.hidden_size, dtype=h.dtype, device=self.device) if return_hidden else None

        if k:
            tokens[:, :k] = forced
            if hidden is not None:
                hidden[:, 0] = torch.stack([h[:r_rows], h[r_rows:]], dim=1)
            # Forced tokens go through in one forward; feeding token i yields the state of position i + 1.
            feed = forced[:, : min(k, n - 1)]
            if feed.shape[1]:
                out = self._step(torch.cat([feed, feed]), mask, pos, cache, image=True)
                if hidden is not None:
                    hidden[:, 1 : feed.shape[1] + 1] = torch.stack([out[:r_rows], out[r_rows:]], dim=2)
                h = out[:, -1]
                mask = grow(mask, feed.shape[1])
                pos = pos + feed.shape[1]

        head = self.model.model.generation_head
        for i in range(k, n):
            if hidden is not None:
                hidden[:, i] = torch.stack([h[:r_rows], h[r_rows:]], dim=1)
            scores = head(h)
            cond, uncond = scores[:r_rows], scores[r_rows:]
            # Same expression and order as ClassifierFreeGuidanceLogitsProcessor, for bitwise parity.
            fused = uncond + (cond - uncond) * w
            if temp == 0:
                tok = fused.argmax(-1)
            else:
                if temp != 1.0:
                    fused = fused / temp
                if self.top_k is not None:
                    # TopKLogitsWarper's rule, applied after temperature as generate() orders them.
                    kth = torch.topk(fused, min(self.top_k, fused.shape[-1]))[0][..., -1, None]
                    fused = fused.masked_fill(fused < kth, float("-inf"))
                tok = multinomial_rows(torch.softmax(fused, dim=-1), runs)
            tokens[:, i] = tok
            if i + 1 < n:
                h = self._step(torch.cat([tok, tok])[:, None], mask, pos, cache, image=True)[:, -1]
                mask = grow(mask, 1)
                pos = pos + 1
        # Both CFG rows of every position are decoded through the transformer, forced ones included.
        self.counter.add_image([2 * n] * r_rows)
        return ImageResult(tokens=tokens, hidden=hidden, cfg=w, temperature=temp)

    @torch.no_grad()
    def decode_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pixels of all rows, ``decode_chunk`` rows per VQ-decoder call (its activations at 384 px
        are about 50 MB per row in bf16, so a chunk bounds memory while still batching)."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.shape[1] != self.image_tokens:
            raise ValueError(f"decode_image needs tokens [R, {self.image_tokens}], got {tuple(tokens.shape)}")
        tokens = tokens.long().to(self.device)
        out = []
        for chunk in tokens.split(self.decode_chunk):
            pixels = self.model.decode_image_tokens(chunk)  # [r, H, W, 3], about [-1, 1]
            out.append(((pixels.permute(0, 3, 1, 2).float() + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    # -- heads ---------------------------------------------------------------------------------------
    def text_head(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        return head(hidden.to(head.weight.dtype)).float()

    def image_head(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.model.generation_head
        return head(hidden.to(head.proj_out.weight.dtype)).float()

    # -- understanding -------------------------------------------------------------------------------
    @torch.no_grad()
    def yes_probability(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """P(yes) / (P(yes) + P(no)) of Janus's first answer token, for each (image, question)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a tensor [B, 3, H, W] in [0, 1], got {getattr(images, 'shape', type(images))}")
        if len(questions) != images.shape[0]:
            raise ValueError(f"got {len(questions)} questions for {images.shape[0]} images")
        yes, no = self._answer_ids()
        arrays = [
            (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            for img in images
        ]
        pixel_values = self.processor.image_processor(images=arrays, return_tensors="pt")["pixel_values"]
        tok = self.tokenizer
        placeholder = tok.boi_token + tok.image_token * self.understanding_image_tokens + tok.eoi_token
        texts = [deepseek_sft_prompt(f"{placeholder}\n{q}", UNDERSTANDING_SYSTEM_PROMPT) for q in questions]
        ids, mask = self._tokenize(texts)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=pixel_values.to(self.device, self.dtype),
            logits_to_keep=1,
        )
        probs = out.logits[:, -1].float().softmax(-1)
        p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
        return (p_yes / (p_yes + p_no).clamp_min(1e-30)).cpu()

    def _answer_ids(self) -> tuple[list[int], list[int]]:
        """First-token ids of the yes and no spellings the tokenizer knows."""

        def first_ids(words):
            found = []
            for w in words:
                enc = self.tokenizer(w, add_special_tokens=False)["input_ids"]
                if enc and enc[0] != self.tokenizer.unk_token_id and enc[0] not in found:
                    found.append(enc[0])
            return found

        yes, no = first_ids(YES_WORDS), first_ids(NO_WORDS)
        if not yes or not no or set(yes) & set(no):
            raise ValueError(f"{self.source}: cannot find distinct yes/no answer tokens (yes {yes}, no {no})")
        return yes, no


# -- loading helpers ---------------------------------------------------------------------------------
_resolve_dtype = torch_dtype  # None/auto: bfloat16 on CUDA, float32 elsewhere (milr.devices)


def _resolve_attn(attn: Optional[str], device: torch.device) -> Optional[str]:
    """SDPA (fused attention kernels) by default on CUDA; elsewhere transformers' own default."""
    return "sdpa" if attn is None and device.type == "cuda" else attn


def _dtype_kwarg() -> str:
    """``from_pretrained`` took ``torch_dtype`` before transformers 4.56 and ``dtype`` since."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _resolve_source(model: str, revision: Optional[str]) -> str:
    """A local checkpoint folder, or a hub name that is available (cached, or downloadable online)."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"checkpoint must be a hub name or a folder, got {model!r}")
    path = os.path.expanduser(model)
    if os.path.exists(path):
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{model}: not a transformers checkpoint folder (no config.json inside)")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(f"checkpoint {model!r}: no such folder, and not a hub name of the form 'owner/name'")
    if is_offline():
        if cached_file(model, "config.json", revision=revision) is None:
            raise FileNotFoundError(
                f"Janus checkpoint {model!r} is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). Download it on a machine with network access, e.g. "
                f"`hf download {model} --local-dir /path/to/{model.split('/')[-1]}`, then point the recipe at "
                "it: `model: {name: janus_pro, checkpoint: /path/to/" + model.split("/")[-1] + "}`."
            )
    return model


def _check_args(max_text_tokens: int, temperature: float, top_k: Optional[int], kv_cache: str, decode_chunk: int,
                plan_cache: int) -> None:
    """The constructor's value checks, before anything loads."""
    if max_text_tokens < 1:
        raise ValueError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
    if kv_cache not in ("static", "dynamic"):
        raise ValueError(f"kv_cache must be 'static' or 'dynamic', got {kv_cache!r}")
    if not isinstance(decode_chunk, int) or decode_chunk < 1:
        raise ValueError(f"decode_chunk must be a positive integer, got {decode_chunk!r}")
    if not isinstance(plan_cache, int) or plan_cache < 0:
        raise ValueError(f"plan_cache must be a non-negative integer, got {plan_cache!r}")


def _token_id(tok: Any, token: str) -> int:
    i = tok.convert_tokens_to_ids(token)
    if i is None or i == tok.unk_token_id:
        raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
    return int(i)


def _check_prompts(prompts: list[str]) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("every prompt must be a non-empty string")
    return list(prompts)


def _generator_for(generator: Optional[torch.Generator], device: torch.device) -> Optional[torch.Generator]:
    """``generator`` if it lives on ``device``; else a ``device`` generator seeded from one draw of it."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)
