"""Run the reference ``image-reward`` 1.5 package (Xu et al. 2023, arXiv 2304.05977) on transformers 5.

``milr.critics.image_reward`` does not need this module: it loads ImageReward checkpoints into
transformers' own BLIP classes. This module exists so that the reference implementation can still
be executed, offline, to check that critic's parity (tests) and to compare against by hand.

The package (``pip install --no-deps image-reward==1.5 fairscale==0.4.13``) breaks on transformers
>= 4.57 and needs the hub; the fixes below are those listed in the project's dependency notes
(``docs/dependencies.md`` section 1.4). Each applies only when the attribute it supplies
is missing, so on an older transformers nothing is changed:

1. the package ``__init__`` (which imports OpenAI ``clip``, diffusers, datasets) is never run:
   empty parent packages pointing at the installed folders are registered instead;
2. ``transformers.modeling_utils`` gets back ``apply_chunking_to_forward``,
   ``prune_linear_layer`` (re-exported from ``transformers.pytorch_utils``) and
   ``find_pruneable_heads_and_indices`` (reimplemented);
3. ``med.BertModel`` gets ``invert_attention_mask`` / ``get_head_mask`` and its early
   ``init_weights()`` call goes through ``post_init()``;
4. the BLIP tokenizer is a lower-casing ``BertTokenizer`` built from a local ``vocab.txt`` (plus
   ``[DEC]`` and ``[ENC]``) instead of a hub download;
5. BLIP's ``med_config.json`` is written locally (:func:`write_med_config`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

# BERT-base with cross-attention, as in BLIP's med_config.json.
MED_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}

_PATCHED = False


def write_med_config(path: str | Path, **overrides: Any) -> Path:
    """Write BLIP's ``med_config.json`` (BERT-base with cross-attention); ``overrides`` shrink it."""
    unknown = set(overrides) - set(MED_CONFIG)
    if unknown:
        raise ValueError(f"unknown med_config keys {sorted(unknown)}; known: {sorted(MED_CONFIG)}")
    path = Path(path)
    path.write_text(json.dumps({**MED_CONFIG, **overrides}, indent=2))
    return path


def _register_empty_package(name: str, folder: Path) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]  # submodules import from the installed folder
    module.__package__ = name
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(folder)]
    sys.modules[name] = module


def _find_pruneable_heads_and_indices(heads, n_heads: int, head_size: int, already_pruned_heads: set):
    """Heads still to prune and the flat indices of the weights to keep (removed from transformers 4.57)."""
    import torch

    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        # heads already pruned shift the index of those after them
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    index = torch.arange(len(mask))[mask].long()
    return heads, index


def _patch_transformers() -> None:
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    if not hasattr(mu, "apply_chunking_to_forward"):
        mu.apply_chunking_to_forward = pu.apply_chunking_to_forward
    if not hasattr(mu, "prune_linear_layer"):
        mu.prune_linear_layer = pu.prune_linear_layer
    if not hasattr(mu, "find_pruneable_heads_and_indices"):
        mu.find_pruneable_heads_and_indices = _find_pruneable_heads_and_indices


def _patch_med(med: types.ModuleType) -> None:
    import torch

    bert = med.BertModel
    if not hasattr(bert, "invert_attention_mask"):

        def invert_attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
            if mask.dim() == 3:
                mask = mask[:, None, :, :]
            elif mask.dim() == 2:
                mask = mask[:, None, None, :]
            mask = mask.to(dtype=self.dtype)
            return (1.0 - mask) * torch.finfo(self.dtype).min

        bert.invert_attention_mask = invert_attention_mask
    if not hasattr(bert, "get_head_mask"):

        def get_head_mask(self, head_mask, num_hidden_layers: int):
            if head_mask is not None:
                raise NotImplementedError("head masks are not supported by this compatibility layer")
            return [None] * num_hidden_layers

        bert.get_head_mask = get_head_mask

    # transformers 5: init_weights() before post_init() fails ('all_tied_weights_keys' missing).
    # Harmless on 4.x, where post_init() is what init_weights() used to be followed by.
    base = med.BertPreTrainedModel
    original = base.init_weights
    if getattr(original, "_milr_compat", False):
        return

    def init_weights(self):
        if getattr(self, "_milr_in_post_init", False) or hasattr(self, "all_tied_weights_keys"):
            return original(self)
        self._milr_in_post_init = True  # post_init() calls init_weights() again
        try:
            self.post_init()
        finally:
            self._milr_in_post_init = False

    init_weights._milr_compat = True
    base.init_weights = init_weights


def _tokenizer_factory(vocab_path: str | Path):
    """Replacement for BLIP's ``init_tokenizer``: bert-base-uncased plus [DEC]/[ENC], from a local vocab."""
    from milr.critics.image_reward import blip_tokenizer

    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise FileNotFoundError(f"BERT vocab file not found: {vocab_path}")
    return lambda: blip_tokenizer(vocab_path)


def import_reference(vocab_path: str | Path) -> types.ModuleType:
    """Import ``ImageReward.ImageReward`` (the reference model code) with the fixes applied.

    ``vocab_path`` is the BERT-uncased ``vocab.txt`` the BLIP tokenizer is built from.
    """
    global _PATCHED
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the reference ImageReward code is not installed; "
            "pip install --no-deps image-reward==1.5 fairscale==0.4.13"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    _register_empty_package("ImageReward", root)
    _register_empty_package("ImageReward.models", root / "models")
    _register_empty_package("ImageReward.models.BLIP", root / "models" / "BLIP")
    _patch_transformers()
    med = importlib.import_module("ImageReward.models.BLIP.med")
    if not _PATCHED:
        _patch_med(med)
        _PATCHED = True
    factory = _tokenizer_factory(vocab_path)
    for name in ("ImageReward.models.BLIP.blip", "ImageReward.models.BLIP.blip_pretrain"):
        importlib.import_module(name).init_tokenizer = factory
    return importlib.import_module("ImageReward.ImageReward")


def build_reference(
    med_config: str | Path, vocab_path: str | Path, device: str = "cpu", vit_factory=None, skip_init: bool = False
):
    """The reference ``ImageReward`` model with random weights, in eval mode.

    ``vit_factory`` (optional) replaces BLIP's ``create_vit`` for the duration of the build, e.g.
    to build the reference ``VisionTransformer`` at a smaller size in fast tests; the reference
    hard-codes ViT-L/16. ``skip_init=True`` leaves parameters uninitialised (fast; the caller must
    overwrite every parameter, e.g. with a checkpoint).
    """
    ref = import_reference(vocab_path)
    blip_pretrain = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    vit = importlib.import_module("ImageReward.models.BLIP.vit")
    original_create, original_trunc = blip_pretrain.create_vit, vit.trunc_normal_
    context = contextlib.nullcontext()
    if skip_init:
        from milr.critics.image_reward import _skip_init

        context = _skip_init()  # torch.nn.init and transformers' init_weights
        vit.trunc_normal_ = lambda tensor, *args, **kwargs: tensor  # timm's own initialiser
    if vit_factory is not None:
        blip_pretrain.create_vit = vit_factory
    try:
        with context:
            model = ref.ImageReward(med_config=str(med_config), device=device)
    finally:
        blip_pretrain.create_vit, vit.trunc_normal_ = original_create, original_trunc
    return model.to(device).eval()


def reference_vit(embed_dim: int, depth: int, num_heads: int, patch_size: int = 16):
    """A ``vit_factory`` for :func:`build_reference` that builds the reference ViT at another size."""

    def create_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        vit_mod = importlib.import_module("ImageReward.models.BLIP.vit")
        encoder = vit_mod.VisionTransformer(
            img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads
        )
        return encoder, embed_dim

    return create_vit
