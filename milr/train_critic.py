"""Compatibility names for ``milr.train_critic``: critic training now lives in :mod:`milr.training`.

``milr.training.critic`` (entry point), ``.config`` (recipe schema), ``.data`` (formats and the
grouped split), ``.module`` (the LightningModule and Trainer), ``.reward`` / ``.contrastive`` /
``.distill`` (one file per task), ``.card`` (the checkpoint folder); the reward network is
:mod:`milr.critics.reward_net`, next to the ``trained`` critic that loads it.
"""

from milr.critics.reward_net import RewardNet, WordTokenizer, output_transform, predict
from milr.training.card import write_card_files
from milr.training.config import load_train_recipe
from milr.training.critic import train_critic
from milr.training.data import read_jsonl
from milr.training.distill import build_teacher
from milr.training.module import check_stall as _check_stall

__all__ = ["train_critic", "load_train_recipe", "RewardNet", "WordTokenizer", "build_teacher", "read_jsonl", "predict",
           "output_transform", "write_card_files", "_check_stall"]
