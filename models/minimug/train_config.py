"""The ``milr train minimug`` recipe: a pydantic schema read by the one config system.

Read like every recipe (:mod:`milr.config`): YAML with ``extends``, dotted overrides after the
file (``milr train minimug recipes/train-minimug-smoke.yaml trainer.max_steps=3``), every problem
one line naming the file and key path with a did-you-mean, before torch is imported or anything
trains. The sections and their meaning are those of :mod:`milr.models.minimug.train` (Janus-Pro's
unified training at toy scale); the defaults are the shipped run's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from milr.recipe import MAX_SEED


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TokenizerSpec(_Section):
    images: int = Field(20000, ge=1, le=10_000_000)  # rendered images the patch codebook is fitted on
    codebook_size: int = Field(2048, ge=2, le=1 << 20)
    weight_power: float = Field(0.5, ge=0.0)
    iters: int = Field(30, ge=1, le=10_000)


class ModelSpec(_Section):
    hidden_size: int = Field(192, ge=1, le=65536)
    layers: int = Field(6, ge=1, le=1024)
    heads: int = Field(6, ge=1, le=1024)
    gen_embed_dim: int = Field(64, ge=1, le=65536)
    max_positions: int = Field(192, ge=1, le=1 << 20)
    max_plan_tokens: int = Field(24, ge=1, le=4096)
    default_cfg: float = Field(1.5, ge=0.0)
    default_temperature: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelSpec":
        # checked here too (MiniMUGConfig checks it) so the error comes before the tokenizer is fitted
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        return self


class DataSpec(_Section):
    batch_size: int = Field(64, ge=1, le=1_000_000)
    understanding_fraction: float = Field(0.25, ge=0.0, le=1.0)
    questions_per_image: int = Field(4, ge=1, le=1000)
    no_plan_fraction: float = Field(0.15, ge=0.0, le=1.0)
    cond_dropout: float = Field(0.1, ge=0.0, le=1.0)
    violating_fraction: float = Field(0.4, ge=0.0, le=1.0)
    random_scene_fraction: float = Field(0.2, ge=0.0, le=1.0)


class LossSpec(_Section):
    image: float = Field(1.0, ge=0.0)
    plan: float = Field(1.0, ge=0.0)
    answer: float = Field(1.0, ge=0.0)


class OptimSpec(_Section):
    lr: float = Field(1.0e-3, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float = Field(1.0, ge=0.0)


class TrainerSpec(_Section):
    max_steps: int = Field(6000, ge=1)
    max_minutes: float = Field(58.0, gt=0.0)
    checkpoint_minutes: float = Field(3.0, gt=0.0)
    log_every: int = Field(50, ge=1)
    progress_bar: bool = False
    num_workers: int = Field(0, ge=0, le=1)  # the world stream is one sequence of batches (WorldBatches)


class MiniMUGTrainConfig(_Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    threads: int = Field(2, ge=1, le=1024)
    tokenizer: TokenizerSpec = TokenizerSpec()
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    loss: LossSpec = LossSpec()
    optim: OptimSpec = OptimSpec()
    trainer: TrainerSpec = TrainerSpec()


def load_config(ref: Union[str, Path, dict], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The validated training config as a plain dict (every section, defaults filled in).

    ``ref``: a YAML path, a shipped recipe name or a dict. Raises :class:`milr.recipe.RecipeError`
    (a ``ValueError``) naming the key path."""
    from milr.config import load_data, validate_schema

    data, file = load_data(ref, list(overrides))
    cfg = validate_schema(MiniMUGTrainConfig, data, file, group_unknown=True)
    return cfg.model_dump(mode="json")


DEFAULTS: dict[str, Any] = MiniMUGTrainConfig().model_dump(mode="json")

__all__ = ["MiniMUGTrainConfig", "load_config", "DEFAULTS"]
