"""MiniMUG: a small Janus-like unified model of the shape world :mod:`milr.world` (model, tokenizer, training, weights)."""
