"""``t2i_blip_vqa``: T2I-CompBench's BLIP-VQA score (colour, shape and texture categories).

Reference: Huang et al. 2023, "T2I-CompBench" (arXiv 2307.06350), github.com/Karine-Huang/T2I-CompBench
(``BLIPvqa_eval``); rules paraphrased in ``docs/benchmarks.md`` section 3. The model is BLIP
ViT-B VQA (Li et al. 2022, arXiv 2201.12086; ``model_base_vqa_capfilt_large``, ported to
transformers as ``Salesforce/blip-vqa-capfilt-large``) at 480 px. The prompt is split into noun
chunks (:mod:`milr.critics.t2i_text`); each chunk is asked as ``"<chunk>?"``; the answer is
``P(yes) / (P(yes) + P(no))`` from the answer decoder's first token; the image score is the
**product** over chunks (a prompt without chunks scores 1).

transformers' ``BlipForQuestionAnswering.forward`` returns no answer logits, so this critic runs its
three parts (vision model, question encoder, answer decoder) itself. As in the original BLIP VQA,
the question's first token is replaced by ``[ENC]`` when the tokenizer has it.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from milr.argtypes import PositiveInt
from milr.devices import torch_dtype
from milr.hub import hub_offline, module_fingerprint
from milr.image_inputs import check_batch
from milr.critics.t2i_text import blip_questions, check_chunker, load_analyzer
from milr.critics.vlm_judge import resolve_pretrained
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

VERSION = "1"
DEFAULT_CHECKPOINT = "Salesforce/blip-vqa-capfilt-large"
IMAGE_SIZE = 480  # T2I-CompBench runs BLIP VQA at 480 px


@CRITICS.register("t2i_blip_vqa")
class T2IBlipVQA(Critic):
    """Product over noun chunks of BLIP's P(yes | image, "<chunk>?"); in [0, 1], higher is better.

    Args:
        checkpoint: a transformers BLIP VQA folder (model + processor, ``save_pretrained`` layout) or
            a hub name already in the local cache.
        chunker: ``/path/to/en_core_web_sm`` (what the benchmark uses; needs ``pip install spacy``) or
            ``rules`` (the rule-based stand-in of :mod:`milr.critics.t2i_text`).
        image_size: square input size (480 as the benchmark; position embeddings are interpolated
            when it differs from the checkpoint's).
        batch_size: image-question pairs per forward pass.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the chunker and weights the recipe names without loading them."""
        check_chunker(str(given_arg(cls, args, "chunker")))
        resolve_pretrained(str(given_arg(cls, args, "checkpoint")))

    def __init__(
        self,
        checkpoint: str = DEFAULT_CHECKPOINT,
        chunker: str = "rules",
        image_size: int = IMAGE_SIZE,
        batch_size: PositiveInt = 16,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ):
        if int(image_size) < 16 or int(batch_size) < 1:
            raise ValueError(f"t2i_blip_vqa: need image_size >= 16 and batch_size >= 1, got {image_size}, {batch_size}")
        self.analyzer = load_analyzer(chunker)  # cheap; fails first when the spaCy folder is missing
        path, _ = resolve_pretrained(checkpoint)  # fails at once when not local
        from transformers import AutoProcessor, BlipForQuestionAnswering

        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        with hub_offline():
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = BlipForQuestionAnswering.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        tok = self.processor.tokenizer
        self.tokenizer = tok
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if tok.unk_token_id in (self.yes_id, self.no_id):
            raise ValueError(f"t2i_blip_vqa: the tokenizer of {checkpoint} has no 'yes'/'no' tokens")
        enc = tok.convert_tokens_to_ids("[ENC]")
        self.enc_id = None if enc in (None, tok.unk_token_id) else int(enc)
        self.bos_id = int(self.model.config.text_config.bos_token_id)
        ip = self.processor.image_processor
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.image_size = int(image_size)
        self.interpolate = self.image_size != int(self.model.config.vision_config.image_size)
        self.batch_size = int(batch_size)
        self.init_args = dict(checkpoint=str(checkpoint), chunker=self.analyzer.name, image_size=self.image_size, dtype=dtype)
        self._fingerprint: Optional[str] = None
        self.last_questions: list[list[str]] = []
        self.last_answers: list[list[float]] = []

    def identity(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.model)
        return f"t2i_blip_vqa:v{VERSION}:{sorted(self.init_args.items())!r}:w={self._fingerprint}"

    def questions(self, prompt: str) -> list[str]:
        return blip_questions(self.analyzer, prompt)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        # BLIP's eval transform: resize to a square (bicubic), normalise.
        x = images.detach().float().clamp(0, 1).cpu()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.device, self.dtype)

    @torch.no_grad()
    def answer(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """``P(yes) / (P(yes) + P(no))`` for each (image, question) pair, in order.

        Questions are batched only with questions of the same token length, so nothing is padded and
        a score never depends on what else is in the batch.
        """
        ids = [self.tokenizer(q, truncation=True, max_length=35)["input_ids"] for q in questions]
        by_length: dict[int, list[int]] = {}
        for i, t in enumerate(ids):
            by_length.setdefault(len(t), []).append(i)
        out = torch.zeros(len(questions))
        for rows in by_length.values():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                out[chunk] = self._answer_batch(images[chunk], torch.tensor([ids[i] for i in chunk]))
        return out

    def _answer_batch(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        if self.enc_id is not None:
            ids[:, 0] = self.enc_id
        mask = torch.ones_like(ids)
        vis = self.model.vision_model(pixel_values=self._pixels(images),
                                      interpolate_pos_encoding=self.interpolate).last_hidden_state
        vis_mask = torch.ones(vis.shape[:-1], dtype=torch.long, device=self.device)
        question = self.model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=vis,
                                           encoder_attention_mask=vis_mask)[0]
        bos = torch.full((ids.shape[0], 1), self.bos_id, dtype=torch.long, device=self.device)
        logits = self.model.text_decoder(input_ids=bos, encoder_hidden_states=question,
                                         encoder_attention_mask=mask).logits[:, 0].float()
        # P(yes) / (P(yes) + P(no)) is the softmax over the two logits alone.
        return torch.stack([logits[:, self.yes_id], logits[:, self.no_id]], dim=-1).softmax(-1)[:, 0].cpu()

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> torch.Tensor:
        check_batch(images, prompts, "t2i_blip_vqa")
        asked = [self.questions(p) for p in prompts]
        rows = [b for b, qs in enumerate(asked) for _ in qs]
        flat = [q for qs in asked for q in qs]
        p = self.answer(images[rows], flat) if flat else torch.zeros(0)
        self.last_questions, self.last_answers, scores, start = asked, [], [], 0
        for qs in asked:
            part = p[start : start + len(qs)]
            start += len(qs)
            self.last_answers.append(part.tolist())
            scores.append(float(part.prod()) if len(qs) else 1.0)  # a missing chunk is a factor of 1
        return torch.tensor(scores, dtype=torch.float32, device=images.device)
