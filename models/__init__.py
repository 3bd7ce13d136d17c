"""MUG models: the index of built-in models and their cards.

A model implements :class:`milr.interfaces.MUGModel` in its own module and registers itself with
``@MODELS.register(name)``; names take timm's ``arch.tag`` form for weight variants.
"""

from milr.cards import ModelCard
from milr.registry import MODELS

MODELS.register_lazy(
    "minimug",
    "milr.models.minimug.model:MiniMUG",
    card=ModelCard(
        summary="MiniMUG: a small Janus-like unified model of a procedural shape world, weights shipped",
        image_tokens=64,
        image_size=32,
        hidden_size=128,
        latents=("text", "image"),
        default_cfg=1.5,
        default_temperature=1.0,
        weights="shipped in the package (safetensors, models/minimug/weights; card: MODEL_CARD.md)",
        reference="this project; structure after Janus-Pro (arXiv 2501.17811)",
    ),
)
MODELS.register_lazy(
    "janus-pro",
    "milr.models.janus_pro:JanusPro",
    card=ModelCard(
        summary="Janus-Pro 1B/7B through transformers' JanusForConditionalGeneration (hub name or local folder)",
        image_tokens=576,
        image_size=384,
        hidden_size=4096,
        latents=("text", "image"),
        default_cfg=5.0,
        default_temperature=1.0,
        weights="checkpoint: deepseek-community/Janus-Pro-7B (default; hidden 4096) or -1B (hidden 2048), "
        "or a local folder; offline, an uncached hub name fails at once",
        reference="Chen et al. 2025, Janus-Pro (arXiv 2501.17811); MILR's reasoning template (arXiv 2509.22761)",
        extra={"args": "checkpoint, device, dtype (bf16 on GPU), attn_implementation, max_text_tokens=512, "
               "cfg=5, temperature=1, top_k=None, kv_cache=static, compile=False, decode_chunk=16, plan_cache=64"},
    ),
    tags={"1b": {"checkpoint": "deepseek-community/Janus-Pro-1B"}, "7b": {"checkpoint": "deepseek-community/Janus-Pro-7B"}},
)
