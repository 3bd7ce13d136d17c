"""Training code (never imported by inference): one module per thing trained.

* :mod:`milr.training.detector` -- the world detector, a multi-class YOLO trained with ultralytics
  on rendered MiniMUG scenes (``milr train-detector``).
* critics (``milr train-critic``): :mod:`~milr.training.critic` (entry point), :mod:`~milr.training.config`
  (recipe schema), :mod:`~milr.training.data` (formats, grouped split), :mod:`~milr.training.module`
  (LightningModule, task losses, Trainer), :mod:`~milr.training.reward` / :mod:`~milr.training.contrastive` /
  :mod:`~milr.training.distill` (one file per task), :mod:`~milr.training.card` (the checkpoint folder).
  The reward network itself is :mod:`milr.critics.reward_net`, next to the critic that loads it.
"""
