"""MUG models: the index of built-in models and their cards.

A model implements :class:`milr.interfaces.MUGModel` in its own module and registers itself with
``@MODELS.register(name)``; ``index.yaml`` beside this file lists each one with its card and its
``tags`` (timm's ``arch.tag`` form for weight variants).
"""

from pathlib import Path

from milr.cards import ModelCard, register_index
from milr.registry import MODELS

register_index(MODELS, ModelCard, Path(__file__).with_name("index.yaml"), __name__)
