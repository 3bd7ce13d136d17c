"""MiniMUG: a small Janus-like unified model of a procedural shape world, with its exact scorer."""
