"""Reward networks of trained critics: ``r(image, prompt)`` for ``milr train-critic`` and the ``trained`` critic.

Inference code: the ``trained`` critic (:mod:`milr.critics.trained`) restores a :class:`RewardNet`
from the ``network`` config in a checkpoint's ``critic.json``; training (:mod:`milr.training`)
builds the same class, so loading a critic never imports training code.

Backbones: ``cnn`` -- a small CNN whose feature maps are modulated by the prompt (FiLM, Perez et
al. 2018, arXiv 1709.07871), with a word-level prompt encoder; ``open_clip`` -- an open_clip CLIP
(Radford et al. 2021, arXiv 2103.00020) with an MLP head on ``[image, text, image*text]`` or, with
``head: cosine``, the scaled cosine of HPSv2 (Wu et al. 2023, arXiv 2306.09341) and PickScore
(Kirstain et al. 2023, arXiv 2305.01569); ``blip`` -- a transformers BLIP whose text encoder
attends to the image (image-grounded text encoder) with an MLP on its [CLS] output, as ImageReward
(Xu et al. 2023, arXiv 2304.05977).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level ids over a fixed vocabulary; 0 is padding, 1 an unknown word."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, vocab: list[str], max_words: int):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_words = int(max_words)

    @classmethod
    def build(cls, texts: Sequence[str], max_words: int) -> "WordTokenizer":
        words = sorted({w for t in texts for w in split_words(t)})
        return cls([cls.PAD, cls.UNK] + words, max_words)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.max_words, dtype=torch.long)
        for i, t in enumerate(texts):
            ws = [self.index.get(w, 1) for w in split_words(t)][: self.max_words]
            if ws:
                ids[i, : len(ws)] = torch.tensor(ws)
        return ids


class WordEncoder(nn.Module):
    """Prompt vector from word ids: mean of embeddings (``bow``) or a small transformer (``words``)."""

    def __init__(self, vocab_size: int, dim: int, max_words: int, mode: str, layers: int):
        super().__init__()
        self.mode = mode
        self.emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        if mode == "words":
            self.pos = nn.Parameter(torch.randn(max_words, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, nhead=4 if dim % 4 == 0 else 1, dim_feedforward=2 * dim,
                                               dropout=0.0, batch_first=True, norm_first=True)
            self.enc = nn.TransformerEncoder(layer, num_layers=max(1, int(layers)), enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.emb(ids)
        if self.mode == "words":
            x = x + self.pos[: ids.shape[1]]
            # An all-padding row (empty prompt) would make attention NaN: let it attend to slot 0.
            pad_attn = pad.clone()
            pad_attn[:, 0] = False
            x = self.enc(x, src_key_padding_mask=pad_attn)
        keep = (~pad).unsqueeze(-1).float()
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class FiLMCNN(nn.Module):
    """Conv blocks (conv -> GroupNorm -> FiLM(prompt) -> ReLU -> pool) and a flattened final map.

    ``stem="patch"`` starts with a non-overlapping 2x2 patch convolution (a linear map of each
    patch, as ViT's patch embedding) so the later blocks run at half resolution: about four times
    less activation memory traffic, which dominates small-CNN training on a CPU. The final map is
    flattened, not pooled, so where things are survives (for "left of"/"above").
    """

    def __init__(self, image_size: int, width: int, depth: int, cond_dim: int, stem: str = "conv"):
        super().__init__()
        if stem not in ("conv", "patch"):
            raise ValueError(f"model.stem must be 'conv' or 'patch', got {stem!r}")
        chans = [3] + [width * 2 ** min(i, 2) for i in range(depth)]
        self.convs, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            if i == 0 and stem == "patch":
                self.convs.append(nn.Conv2d(cin, cout, 2, stride=2))
            else:
                self.convs.append(nn.Conv2d(cin, cout, 3, padding=1))
            self.norms.append(nn.GroupNorm(min(8, cout), cout))
            film = nn.Linear(cond_dim, 2 * cout)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
            self.films.append(film)
        s = image_size // 2 if stem == "patch" else image_size
        self.pools = []
        for i in range(depth):
            pool = i < depth - 1 and s >= 8 and not (i == 0 and stem == "patch")
            self.pools.append(pool)
            s = s // 2 if pool else s
        self.final = min(s, 4)
        self.out_dim = chans[-1] * self.final * self.final

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = x * 2.0 - 1.0
        for conv, norm, film, pool in zip(self.convs, self.norms, self.films, self.pools):
            h = norm(conv(h))
            g, b = film(cond).chunk(2, dim=-1)
            h = F.relu(h * (1.0 + g[..., None, None]) + b[..., None, None])
            if pool:
                h = F.max_pool2d(h, 2)
        h = F.adaptive_avg_pool2d(h, self.final)
        return h.flatten(1)


class RewardNet(nn.Module):
    """``r(image, prompt)``: an image encoder and a prompt encoder joined by an MLP head.

    ``config`` (JSON) describes the whole network, so ``RewardNet(config)`` plus the saved state
    dict restores it. Images are ``[B, 3, H, W]`` in [0, 1]; they are resized to the trained size.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        c = config
        self.image_size = int(c["image_size"])
        self.backbone = c["backbone"]
        self.text_kind = c["text_encoder"] if c["backbone"] == "cnn" else ("blip" if c["backbone"] == "blip" else "clip")
        self.head_kind = c.get("head", "mlp")
        self.pp_cfg: dict = {}
        if self.backbone == "blip":
            self.blip = BlipBackbone(_in_folder(c["blip_model"], c), restoring=bool(c.get("_restoring")))
            self.blip.requires_grad_(bool(c["finetune"]))
            self.blip.train(bool(c["finetune"]))
            self.text_context = self.blip.max_tokens
            tdim = self.blip.out_dim
        elif self.backbone == "open_clip" or self.text_kind == "clip":
            from milr.open_clip_loading import load_open_clip

            # When restoring a checkpoint its weights are loaded afterwards: build the architecture only.
            pretrained = None if c.get("_restoring") else c.get("clip_pretrained")
            self.clip, self.clip_tokenizer, self.pp_cfg = load_open_clip(_in_folder(str(c["clip_model"]), c), pretrained)
            self.clip_context = self.text_context = int(getattr(self.clip, "context_length", 77) or 77)
            for p in self.clip.parameters():
                p.requires_grad_(bool(c["finetune"]))
            # A frozen tower stays in eval mode (fixed features, no dropout); a fine-tuned one trains.
            self.clip.train(bool(c["finetune"]))
            with torch.no_grad():
                tdim = int(self.clip.encode_text(self.clip_tokenizer(["a"])).shape[-1])
        else:
            self.tokenizer = WordTokenizer(c["vocab"], c["max_words"])
            self.text = WordEncoder(len(c["vocab"]), int(c["text_dim"]), int(c["max_words"]), self.text_kind, int(c["text_layers"]))
            tdim = self.text.out_dim
        hid = int(c["head_hidden"])
        if self.backbone == "cnn":
            self.image = FiLMCNN(self.image_size, int(c["width"]), int(c["depth"]), tdim, c.get("stem", "conv"))
            in_dim = self.image.out_dim + tdim
        elif self.backbone == "blip":
            in_dim = tdim  # the [CLS] state of the image-grounded text encoder (ImageReward's input to its MLP)
        else:
            in_dim = 3 * tdim  # [image, text, image * text] of unit-norm CLIP embeddings
        if self.head_kind != "cosine":  # cosine: the CLIP's own scaled cosine is the reward (HPSv2, PickScore)
            self.head = nn.Sequential(nn.Linear(in_dim, hid), nn.ReLU(), nn.Dropout(float(c["dropout"])), nn.Linear(hid, 1))

    def save_backbone_files(self, folder: Path) -> list[str]:
        """Files that describe the backbone's architecture, written into ``folder`` (BLIP only)."""
        return self.blip.save_files(folder) if self.backbone == "blip" else []

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.text_kind == "clip":
            return self.clip.encode_text(tokens).float()
        return self.text(tokens)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text_kind == "blip":
            return self.blip.tokenize(prompts)
        if self.text_kind == "clip":
            return self.clip_tokenizer(list(prompts))
        return self.tokenizer(prompts)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.backbone == "blip":
            return self.head(self.blip(images, tokens)).squeeze(-1)
        t = self.encode_text(tokens)
        if self.backbone == "cnn":
            if images.shape[-2:] != (self.image_size, self.image_size):
                images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                       align_corners=False, antialias=images.shape[-1] > self.image_size)
            return self.head(torch.cat([self.image(images, t), t], dim=-1)).squeeze(-1)
        from milr.open_clip_loading import preprocess_tensor

        i = self.clip.encode_image(preprocess_tensor(images, self.pp_cfg)).float()
        i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
        if self.head_kind == "cosine":
            return self.clip.logit_scale.exp().float() * (i * t).sum(-1)
        return self.head(torch.cat([i, t, i * t], dim=-1)).squeeze(-1)


def _in_folder(ref: str, c: dict) -> str:
    """A relative backbone reference saved inside a checkpoint folder resolves against that folder."""
    if c.get("_folder") and not os.path.isabs(ref) and (Path(c["_folder"]) / ref).exists():
        return str(Path(c["_folder"]) / ref)
    return ref


class BlipBackbone(nn.Module):
    """A transformers BLIP (Li et al. 2022, arXiv 2201.12086) as ImageReward uses it: the ViT encodes
    the image, the text encoder reads the prompt while cross-attending to the image; its [CLS]
    state feeds the reward head.

    ``folder``: a local ``save_pretrained`` folder of ``BlipForImageTextRetrieval`` (or any BLIP with
    ``vision_model`` and ``text_encoder``) holding its tokenizer (a BERT ``vocab.txt`` is enough).
    """

    MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP's (= OpenAI CLIP's) pixel statistics
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, folder: str, restoring: bool = False, max_tokens: int = 35):
        super().__init__()
        from transformers import BlipConfig, BlipForImageTextRetrieval

        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.blip_model: {path} is not a local transformers BLIP folder (no config.json)")
        if restoring:  # the weights come from the critic's model.safetensors
            model = BlipForImageTextRetrieval(BlipConfig.from_pretrained(str(path)))
        else:
            model = BlipForImageTextRetrieval.from_pretrained(str(path), local_files_only=True)
        self.vision, self.text = model.vision_model, model.text_encoder
        self.blip_config = model.config
        self.image_size = int(model.config.vision_config.image_size)
        self.out_dim = int(model.config.text_config.hidden_size)
        self.max_tokens = int(max_tokens)
        self.tokenizer = self._tokenizer(path)
        self.source = path
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _tokenizer(path: Path):
        if (path / "vocab.txt").is_file():
            from milr.critics.image_reward import blip_tokenizer

            return blip_tokenizer(path / "vocab.txt")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def save_files(self, folder: Path) -> list[str]:
        """Config and tokenizer (the architecture; weights travel in the critic's safetensors)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.blip_config.save_pretrained(str(folder))
        if (self.source / "vocab.txt").is_file():  # the vocabulary the tokenizer is rebuilt from
            import shutil

            if (self.source / "vocab.txt").resolve() != (folder / "vocab.txt").resolve():
                shutil.copyfile(self.source / "vocab.txt", folder / "vocab.txt")
        else:
            self.tokenizer.save_pretrained(str(folder))
        return sorted(p.name for p in folder.iterdir())

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, 2, L]``: token ids and attention mask (one tensor, so batches concatenate as others do)."""
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt")
        ids = enc["input_ids"]
        enc_id = getattr(self.tokenizer, "enc_token_id", None)
        if enc_id is not None:
            ids = ids.clone()
            ids[:, 0] = enc_id  # BLIP's image-grounded encoder starts with [ENC], as in ImageReward
        return torch.stack([ids, enc["attention_mask"]], dim=1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False,
                                   antialias=images.shape[-1] > s).clamp(0, 1)
        pixels = (images - self.mean.to(images)) / self.std.to(images)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=tokens[:, 0], attention_mask=tokens[:, 1], encoder_hidden_states=image_embeds,
                        encoder_attention_mask=mask).last_hidden_state
        return out[:, 0].float()


def open_clip_model_cfg(arch: str) -> Optional[dict]:
    """The model config behind an open_clip reference that is a file or folder (None for built-in names)."""
    p = Path(str(arch))
    if p.is_dir():
        return json.loads((p / "open_clip_config.json").read_text())["model_cfg"]
    if p.is_file():
        cfg = json.loads(p.read_text())
        return cfg.get("model_cfg", cfg)
    return None




@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Raw network outputs for float images ``[B, 3, H, W]`` in [0, 1]."""
    net.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(net(images[i : i + batch_size], net.tokenize(prompts[i : i + batch_size])).float())
    return torch.cat(out) if out else torch.zeros(0)




def output_transform(task: str, loss_kind: Optional[str], target_mean: float, target_std: float):
    """Maps raw network outputs to the critic's scores (what ``TrainedCritic.score`` returns)."""
    if task == "pointwise" and loss_kind == "bce":
        return torch.sigmoid, (0.0, 1.0)
    if task == "pointwise":
        return (lambda r: r * target_std + target_mean), (-math.inf, math.inf)
    return (lambda r: r), (-math.inf, math.inf)


