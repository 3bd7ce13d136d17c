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
        latents=("text", "image"),
        weights="shipped in the package (safetensors)",
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
        weights="deepseek-community/Janus-Pro-7B (or -1B), or a local folder",
        reference="Chen et al. 2025, Janus-Pro (arXiv 2501.17811)",
    ),
)
